"""A bridge's life against the server, over real HTTP on both engines: a real application
service (tests/support/appservice.py) registers puppets with m.login.application_service, acts
as them with user_id=, joins them to rooms and sends as them (with timestamp massaging), and
receives every event it is interested in once, in order; namespaces are enforced; the server
restarts mid-stream without losing or repeating a transaction."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from homeserver.config import ConfigError, DatabaseConfig
from tests.support.appservice import FakeAppService, Registration
from tests.support.client import Client, User, q
from tests.support.http import Response, request
from tests.support.server import RunningServer, start_server

SERVER = "test.local"


@dataclass
class Bridge:
    hs: RunningServer
    app: FakeAppService
    c: Client

    async def call(self, method: str, path: str, body: Any = None, *,
                   user_id: str | None = None, token: str | None = None,
                   query: str = "") -> Response:
        params = [p for p in (query, f"user_id={q(user_id)}" if user_id else "") if p]
        url = self.c.url(path) + ("?" + "&".join(params) if params else "")
        return await request(method, url, body, access_token=token or self.app.reg.as_token)

    async def puppet(self, name: str) -> str:
        r = await self.call("POST", "/register", {
            "type": "m.login.application_service", "username": f"ig_{name}",
            "inhibit_login": True})
        assert r.status == 200, r.body
        assert "access_token" not in r.json()
        return str(r.json()["user_id"])


async def _start(tmp: str, db: DatabaseConfig, app: FakeAppService, **kw: Any) -> RunningServer:
    path = os.path.join(tmp, f"{app.reg.id}.yaml")
    with open(path, "w") as f:
        f.write(app.reg.to_yaml(app.url))
    return await start_server(tmp, db, app_service_config_files=[path], **kw)


@pytest_twisted.async_yield_fixture
async def bridge(db_config: DatabaseConfig, tmp_path: object) -> AsyncIterator[Bridge]:
    app = FakeAppService(Registration.make("instagram", "ig", SERVER, receive_ephemeral=True,
                                           aliases=[(r"#ig_.*", True)], protocols=["instagram"]))
    app.start()
    hs = await _start(str(tmp_path), db_config, app)
    try:
        yield Bridge(hs, app, Client(hs.client_url))
    finally:
        await hs.stop()
        await app.stop()


async def _room(c: Client, user: User, **body: Any) -> str:
    r = await c.call("POST", "/createRoom", body, token=user.access_token)
    assert r.status == 200, r.body
    return str(r.json()["room_id"])


@pytest_twisted.ensureDeferred
async def test_puppets_join_send_and_events_arrive_in_order_once(bridge: Bridge) -> None:
    b = bridge
    alice = await b.c.register("alice")
    room = await _room(b.c, alice, preset="public_chat")
    # The sender user exists from the start; acting as it needs no user_id.
    r = await b.call("GET", "/account/whoami")
    assert r.status == 200 and r.json()["user_id"] == f"@igbot:{SERVER}", r.body

    bob = await b.puppet("bob")
    r = await b.call("PUT", f"/profile/{q(bob)}/displayname", {"displayname": "Bob (IG)"},
                     user_id=bob)
    assert r.status == 200, r.body
    r = await b.call("POST", f"/join/{q(room)}", {}, user_id=bob)
    assert r.status == 200, r.body
    sent = []
    for i in range(5):
        r = await b.call("PUT", f"/rooms/{q(room)}/send/m.room.message/t{i}",
                         {"msgtype": "m.text", "body": f"from instagram {i}"},
                         user_id=bob, query=f"ts={1_600_000_000_000 + i}")
        assert r.status == 200, r.body
        sent.append(r.json()["event_id"])
    r = await b.call("PUT", f"/rooms/{q(room)}/send/m.room.message/bad",
                     {"msgtype": "m.text", "body": "x"}, user_id=bob, query="ts=yesterday")
    assert (r.status, r.json()["errcode"]) == (400, "M_INVALID_PARAM")
    # Alice answers: the room has a puppet in it, so the bridge gets her message too.
    r = await b.c.call("PUT", f"/rooms/{q(room)}/send/m.room.message/a1",
                       {"msgtype": "m.text", "body": "hi bob"}, token=alice.access_token)
    assert r.status == 200, r.body
    alice_msg = r.json()["event_id"]

    await b.app.wait_for(lambda: alice_msg in [e["event_id"] for e in b.app.events()])
    events = b.app.events()
    ids = [e["event_id"] for e in events]
    assert len(ids) == len(set(ids)), "an event was delivered twice"
    messages = [e for e in events if e["type"] == "m.room.message"]
    assert [e["event_id"] for e in messages] == [*sent, alice_msg]
    # Timestamp massaging: the bridge's own times.
    assert [e["origin_server_ts"] for e in messages[:5]] == [
        1_600_000_000_000 + i for i in range(5)]
    joins = [e for e in events if e["type"] == "m.room.member" and e["state_key"] == bob]
    assert joins and joins[-1]["content"]["membership"] == "join"
    assert joins[-1]["content"].get("displayname") == "Bob (IG)"
    # Transaction IDs are consecutive and nothing was resent.
    txn_ids = [int(t) for t, _ in b.app.received]
    assert txn_ids == list(range(txn_ids[0], txn_ids[0] + len(txn_ids)))
    # Events of rooms without the bridge's users do not reach it.
    carol = await b.c.register("carol")
    other = await _room(b.c, carol)
    r = await b.c.call("PUT", f"/rooms/{q(other)}/send/m.room.message/c1",
                       {"msgtype": "m.text", "body": "private"}, token=carol.access_token)
    assert r.status == 200
    r = await b.c.call("PUT", f"/rooms/{q(room)}/send/m.room.message/a2",
                       {"msgtype": "m.text", "body": "again"}, token=alice.access_token)
    last = r.json()["event_id"]
    await b.app.wait_for(lambda: last in [e["event_id"] for e in b.app.events()])
    assert not [e for e in b.app.events() if e["room_id"] == other]


@pytest_twisted.ensureDeferred
async def test_identity_assertion_and_tokens(bridge: Bridge) -> None:
    b = bridge
    alice = await b.c.register("alice")
    # A bad as_token is an unknown token.
    r = await b.call("GET", "/account/whoami", token="not-the-as-token")
    assert (r.status, r.json()["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    # The as_token in the query string works too.
    r = await request("GET", b.c.url(f"/account/whoami?access_token={b.app.reg.as_token}"))
    assert r.status == 200 and r.json()["user_id"] == f"@igbot:{SERVER}"
    # Outside the namespace: forbidden, even for existing users.
    r = await b.call("GET", "/account/whoami", user_id=alice.user_id)
    assert (r.status, r.json()["errcode"]) == (403, "M_FORBIDDEN")
    # In the namespace but not registered yet.
    r = await b.call("GET", "/account/whoami", user_id=f"@ig_nobody:{SERVER}")
    assert (r.status, r.json()["errcode"]) == (403, "M_FORBIDDEN")
    puppet = await b.puppet("dave")
    r = await b.call("GET", "/account/whoami", user_id=puppet)
    assert r.status == 200 and r.json()["user_id"] == puppet
    # Registering outside the namespace, or twice.
    r = await b.call("POST", "/register", {"type": "m.login.application_service",
                                           "username": "mallory", "inhibit_login": True})
    assert (r.status, r.json()["errcode"]) == (400, "M_EXCLUSIVE")
    r = await b.call("POST", "/register", {"type": "m.login.application_service",
                                           "username": "ig_dave", "inhibit_login": True})
    assert (r.status, r.json()["errcode"]) == (400, "M_USER_IN_USE")
    # m.login.application_service with an unknown token.
    r = await b.call("POST", "/register", {"type": "m.login.application_service",
                                           "username": "ig_x"}, token="wrong")
    assert (r.status, r.json()["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    # Logging in as a puppet gives it a device of its own.
    r = await b.call("POST", "/login", {"type": "m.login.application_service",
                                        "identifier": {"type": "m.id.user", "user": "ig_dave"}})
    assert r.status == 200, r.body
    device = r.json()["device_id"]
    r = await b.call("GET", "/account/whoami", user_id=puppet, query=f"device_id={device}")
    assert r.json()["device_id"] == device
    r = await b.call("GET", "/account/whoami", user_id=puppet, query="device_id=NOPE")
    assert (r.status, r.json()["errcode"]) == (400, "M_UNKNOWN_DEVICE")
    r = await b.call("POST", "/login", {"type": "m.login.application_service",
                                        "identifier": {"type": "m.id.user", "user": "alice"}})
    assert (r.status, r.json()["errcode"]) == (400, "M_EXCLUSIVE")


@pytest_twisted.ensureDeferred
async def test_exclusive_namespaces_refused_to_others(bridge: Bridge) -> None:
    b = bridge
    alice = await b.c.register("alice")
    r = await b.c.call("POST", "/register", {"username": "ig_fake", "password": "pw-123456",
                                             "auth": {"type": "m.login.dummy"}})
    assert (r.status, r.json()["errcode"]) == (400, "M_EXCLUSIVE")
    r = await b.c.call("GET", "/register/available?username=ig_fake")
    assert (r.status, r.json()["errcode"]) == (400, "M_EXCLUSIVE")
    room = await _room(b.c, alice)
    r = await b.c.call("PUT", f"/directory/room/{q('#ig_chat:' + SERVER)}", {"room_id": room},
                       token=alice.access_token)
    assert (r.status, r.json()["errcode"]) == (400, "M_EXCLUSIVE")
    r = await b.c.call("POST", "/createRoom", {"room_alias_name": "ig_chat2"},
                       token=alice.access_token)
    assert (r.status, r.json()["errcode"]) == (400, "M_EXCLUSIVE")
    # The bridge itself may, but only in its own namespace.
    r = await b.call("POST", "/createRoom", {"room_alias_name": "ig_chat"})
    assert r.status == 200, r.body
    r = await b.call("PUT", f"/directory/room/{q('#elsewhere:' + SERVER)}",
                     {"room_id": r.json()["room_id"]})
    assert (r.status, r.json()["errcode"]) == (400, "M_EXCLUSIVE")


async def _send_as(c: Client, user: User, room: str, text: str) -> str:
    r = await c.call("PUT", f"/rooms/{q(room)}/send/m.room.message/{text}",
                     {"msgtype": "m.text", "body": text}, token=user.access_token)
    assert r.status == 200, r.body
    return str(r.json()["event_id"])


@pytest_twisted.ensureDeferred
async def test_restart_mid_stream_loses_and_repeats_nothing(
    db_config: DatabaseConfig, tmp_path: object
) -> None:
    tmp = str(tmp_path)
    app = FakeAppService(Registration.make("instagram", "ig", SERVER))
    app.start()
    hs = await _start(tmp, db_config, app)
    try:
        b = Bridge(hs, app, Client(hs.client_url))
        alice = await b.c.register("alice")
        room = await _room(b.c, alice, preset="public_chat")
        bob = await b.puppet("bob")
        assert (await b.call("POST", f"/join/{q(room)}", {}, user_id=bob)).status == 200
        sent = [await _send_as(b.c, alice, room, f"before{i}") for i in range(5)]
        await app.wait_for(lambda: sent[-1] in [e["event_id"] for e in app.events()])

        # The bridge goes down: the next transaction is built, stored, and refused.
        app.fail_with = 503
        failing = [await _send_as(b.c, alice, room, f"during{i}") for i in range(3)]
        await app.wait_for(lambda: any(t not in app.transactions for t, _ in app.received))
        failed_id, failed_body = app.received[-1]
        assert failed_id not in app.transactions
        sent += failing
    finally:
        # The homeserver stops while the transaction is unacknowledged.
        await hs.stop()
    app.fail_with = None
    hs = await _start(tmp, db_config, app)
    try:
        b = Bridge(hs, app, Client(hs.client_url))
        # The stored transaction goes out again, same ID, same events.
        await app.wait_for(lambda: failed_id in app.transactions)
        assert app.transactions[failed_id]["events"] == failed_body["events"]
        r = await b.c.login("alice", "s3cret-pass")
        alice = User(alice.user_id, r.json()["access_token"], r.json()["device_id"], "")
        sent += [await _send_as(b.c, alice, room, f"after{i}") for i in range(3)]
        await app.wait_for(lambda: sent[-1] in [e["event_id"] for e in app.events()])
    finally:
        await hs.stop()
        await app.stop()
    messages = [e["event_id"] for e in app.events() if e["type"] == "m.room.message"]
    assert messages == sent, "lost, repeated or reordered across the restart"
    # Each transaction ID stands for one body: a resend carried exactly the stored one, and
    # every ID after the refused one is new.
    ids = [int(t) for t in app.transactions]
    assert ids == sorted(ids) and len(ids) == len(set(ids))
    assert all(body == failed_body for t, body in app.received if t == failed_id)


@pytest_twisted.ensureDeferred
async def test_ephemeral_and_to_device(db_config: DatabaseConfig, tmp_path: object) -> None:
    reg = Registration.make("instagram", "ig", SERVER, receive_ephemeral=True,
                            extra={"de.sorunome.msc2409.push_ephemeral": True,
                                   "org.matrix.msc3202": True})
    app = FakeAppService(reg)
    app.start()
    hs = await _start(str(tmp_path), db_config, app)
    try:
        b = Bridge(hs, app, Client(hs.client_url))
        alice = await b.c.register("alice")
        room = await _room(b.c, alice, preset="public_chat")
        bob = await b.puppet("bob")
        assert (await b.call("POST", f"/join/{q(room)}", {}, user_id=bob)).status == 200
        msg = await _send_as(b.c, alice, room, "hello")
        r = await b.c.call("PUT", f"/rooms/{q(room)}/typing/{q(alice.user_id)}",
                           {"typing": True, "timeout": 30000}, token=alice.access_token)
        assert r.status == 200, r.body
        await app.wait_for(lambda: any(
            e["type"] == "m.typing" and alice.user_id in e["content"]["user_ids"]
            for e in app.ephemeral()))
        r = await b.c.call("POST", f"/rooms/{q(room)}/receipt/m.read/{q(msg)}", {},
                           token=alice.access_token)
        assert r.status == 200, r.body
        await app.wait_for(lambda: any(e["type"] == "m.receipt" for e in app.ephemeral()))
        receipt = next(e for e in app.ephemeral() if e["type"] == "m.receipt")
        assert receipt["room_id"] == room
        assert alice.user_id in receipt["content"][msg]["m.read"]
        typing = next(e for e in app.ephemeral() if e["type"] == "m.typing")
        assert typing["room_id"] == room
        # Presence of someone sharing a room with a puppet.
        r = await b.c.call("PUT", f"/presence/{q(alice.user_id)}/status",
                           {"presence": "unavailable", "status_msg": "away"},
                           token=alice.access_token)
        assert r.status == 200, r.body
        await app.wait_for(lambda: any(
            e["type"] == "m.presence" and e["sender"] == alice.user_id
            and e["content"]["presence"] == "unavailable" for e in app.ephemeral()))
        # Both spellings of the ephemeral list, as bridges read either.
        body = next(body for body in app.transactions.values() if body.get("ephemeral"))
        assert body["de.sorunome.msc2409.ephemeral"] == body["ephemeral"]

        # To-device messages for a puppet's device reach the bridge.
        r = await b.call("POST", "/login", {"type": "m.login.application_service",
                                            "identifier": {"type": "m.id.user",
                                                           "user": "ig_bob"}})
        device = r.json()["device_id"]
        r = await b.c.call("PUT", "/sendToDevice/m.room_key_request/td1",
                           {"messages": {bob: {device: {"action": "cancel"}}}},
                           token=alice.access_token)
        assert r.status == 200, r.body
        await app.wait_for(lambda: bool(app.to_device()))
        (message,) = app.to_device()
        assert message == {"type": "m.room_key_request", "sender": alice.user_id,
                           "content": {"action": "cancel"}, "to_user_id": bob,
                           "to_device_id": device}
        # Alice's own to-device messages are not the bridge's business.
        assert all(m["to_user_id"] == bob for m in app.to_device())
    finally:
        await hs.stop()
        await app.stop()


@pytest_twisted.ensureDeferred
async def test_user_and_alias_queries(bridge: Bridge) -> None:
    b = bridge
    alice = await b.c.register("alice")

    async def make_user(user_id: str) -> bool:
        r = await b.call("POST", "/register", {"type": "m.login.application_service",
                                               "username": user_id[1:].split(":")[0],
                                               "inhibit_login": True})
        return r.status == 200

    async def make_alias(alias: str) -> bool:
        r = await b.call("POST", "/createRoom",
                         {"room_alias_name": alias[1:].split(":")[0], "preset": "public_chat"})
        return r.status == 200

    b.app.on_user_query = make_user
    b.app.on_alias_query = make_alias
    zed = f"@ig_zed:{SERVER}"
    r = await b.c.call("GET", f"/profile/{q(zed)}", token=alice.access_token)
    assert r.status == 200, r.body
    assert b.app.user_queries == [zed]
    # Users outside every namespace are not asked about.
    r = await b.c.call("GET", f"/profile/{q('@nobody:' + SERVER)}", token=alice.access_token)
    assert r.status == 404 and b.app.user_queries == [zed]
    # An invite to a puppet that does not exist yet creates it first.
    room = await _room(b.c, alice)
    yan = f"@ig_yan:{SERVER}"
    r = await b.c.call("POST", f"/rooms/{q(room)}/invite", {"user_id": yan},
                       token=alice.access_token)
    assert r.status == 200, r.body
    assert b.app.user_queries[-1] == yan

    alias = f"#ig_lobby:{SERVER}"
    r = await b.c.call("GET", f"/directory/room/{q(alias)}")
    assert r.status == 200, r.body
    assert b.app.alias_queries == [alias]
    r = await b.c.call("POST", f"/join/{q(alias)}", {}, token=alice.access_token)
    assert r.status == 200, r.body
    # The service says no: 404.
    b.app.on_alias_query = None
    r = await b.c.call("GET", f"/directory/room/{q('#ig_none:' + SERVER)}")
    assert (r.status, r.json()["errcode"]) == (404, "M_NOT_FOUND")


@pytest_twisted.ensureDeferred
async def test_ping_thirdparty_and_network_directory(bridge: Bridge) -> None:
    b = bridge
    alice = await b.c.register("alice")
    ping = "/_matrix/client/v1/appservice/instagram/ping"
    r = await request("POST", b.hs.client_url + ping, {"transaction_id": "meow"},
                      access_token=b.app.reg.as_token)
    assert r.status == 200 and isinstance(r.json()["duration_ms"], int), r.body
    assert b.app.pings == [{"transaction_id": "meow"}]
    r = await request("POST", b.hs.client_url + ping.replace("instagram", "other"), {},
                      access_token=b.app.reg.as_token)
    assert (r.status, r.json()["errcode"]) == (403, "M_FORBIDDEN")
    r = await request("POST", b.hs.client_url + ping, {}, access_token=alice.access_token)
    assert (r.status, r.json()["errcode"]) == (403, "M_FORBIDDEN")
    # The service answers with another hs_token in mind: 502 M_BAD_STATUS.
    b.app.reg.hs_token, real = "changed", b.app.reg.hs_token
    r = await request("POST", b.hs.client_url + ping, {}, access_token=b.app.reg.as_token)
    assert (r.status, r.json()["errcode"], r.json()["status"]) == (502, "M_BAD_STATUS", 403)
    b.app.reg.hs_token = real

    token = alice.access_token
    r = await b.c.call("GET", "/thirdparty/protocols", token=token)
    assert r.status == 200, r.body
    instagram = r.json()["instagram"]
    assert instagram["instances"][0]["instance_id"] == "instagram|net1"
    assert instagram["user_fields"] == ["username"]
    r = await b.c.call("GET", "/thirdparty/protocol/instagram", token=token)
    assert r.status == 200 and r.json() == instagram
    r = await b.c.call("GET", "/thirdparty/protocol/irc", token=token)
    assert (r.status, r.json()["errcode"]) == (404, "M_NOT_FOUND")
    r = await b.c.call("GET", "/thirdparty/user/instagram?username=bob", token=token)
    assert r.status == 200 and r.json()[0]["fields"] == {"username": "bob"}, r.body
    r = await b.c.call("GET", "/thirdparty/location/instagram?channel=%23chat", token=token)
    assert r.status == 200 and r.json()[0]["fields"] == {"channel": "#chat"}, r.body
    r = await b.c.call("GET", f"/thirdparty/user?userid={q('@ig_bob:' + SERVER)}", token=token)
    assert r.status == 200 and r.json(), r.body
    r = await b.c.call("GET", "/thirdparty/location", token=token)
    assert (r.status, r.json()["errcode"]) == (400, "M_MISSING_PARAM")
    r = await b.c.call("GET", "/thirdparty/protocols")
    assert r.status == 401

    # A room listed for the bridge's network shows up only when that network is asked for.
    room = await _room(b.c, alice, name="Bridged chat")
    r = await b.call("PUT", f"/directory/list/appservice/net1/{q(room)}",
                     {"visibility": "public"})
    assert r.status == 200, r.body
    r = await b.c.call("PUT", f"/directory/list/appservice/net1/{q(room)}",
                       {"visibility": "public"}, token=token)
    assert (r.status, r.json()["errcode"]) == (403, "M_FORBIDDEN")

    async def listed(body: dict[str, Any]) -> list[str]:
        r = await b.c.call("POST", "/publicRooms", body, token=token)
        assert r.status == 200, r.body
        return [e["room_id"] for e in r.json()["chunk"]]

    assert await listed({}) == []
    assert await listed({"third_party_instance_id": "instagram|net1"}) == [room]
    assert await listed({"third_party_instance_id": "instagram|net2"}) == []
    assert await listed({"include_all_networks": True}) == [room]
    r = await b.call("PUT", f"/directory/list/appservice/net1/{q(room)}",
                     {"visibility": "private"})
    assert r.status == 200
    assert await listed({"third_party_instance_id": "instagram|net1"}) == []


@pytest_twisted.ensureDeferred
async def test_rate_limits_and_a_second_service(
    db_config: DatabaseConfig, tmp_path: object
) -> None:
    """rate_limited: false lifts message limits for puppets only of that service; a second
    service gets only what concerns it, and one that is down holds up nobody else."""
    tmp = str(tmp_path)
    ig = FakeAppService(Registration.make("instagram", "ig", SERVER))
    wa = FakeAppService(Registration.make("whatsapp", "wa", SERVER, rate_limited=True))
    ig.start()
    wa.start()
    paths = []
    for app in (ig, wa):
        paths.append(os.path.join(tmp, f"{app.reg.id}.yaml"))
        with open(paths[-1], "w") as f:
            f.write(app.reg.to_yaml(app.url))
    # mautrix's double puppeting: no URL, every local user, not exclusive.
    dp = Registration("doublepuppet", "dp-as", "dp-hs", "dpbot",
                      users=[(rf"@.*:{SERVER}", False)])
    paths.append(os.path.join(tmp, "dp.yaml"))
    with open(paths[-1], "w") as f:
        f.write(dp.to_yaml(None))
    limits = {"enabled": True, "messages_per_user": {"per_second": 0.01, "burst": 2},
              "registration_per_address": {"per_second": 100, "burst": 100},
              "login_per_address": {"per_second": 100, "burst": 100}}
    hs = await start_server(tmp, db_config, app_service_config_files=paths,
                            rate_limiting=limits)
    try:
        b_ig, b_wa = Bridge(hs, ig, Client(hs.client_url)), Bridge(hs, wa, Client(hs.client_url))
        alice = await b_ig.c.register("alice")
        room = await _room(b_ig.c, alice, preset="public_chat")
        igbob = await b_ig.puppet("bob")
        r = await b_wa.call("POST", "/register", {"type": "m.login.application_service",
                                                  "username": "wa_bob", "inhibit_login": True})
        assert r.status == 200, r.body
        wabob = r.json()["user_id"]
        # Each service acts only as its own users.
        r = await b_wa.call("GET", "/account/whoami", user_id=igbob)
        assert (r.status, r.json()["errcode"]) == (403, "M_FORBIDDEN")
        r = await b_wa.call("POST", "/register", {"type": "m.login.application_service",
                                                  "username": "ig_carl"})
        assert (r.status, r.json()["errcode"]) == (400, "M_EXCLUSIVE")
        # Double puppeting acts as a real user with its token; it cannot take a bridge's IDs.
        r = await request("GET", b_ig.c.url(f"/account/whoami?user_id={q(alice.user_id)}"),
                          access_token="dp-as")
        assert r.status == 200 and r.json()["user_id"] == alice.user_id, r.body
        r = await request("POST", b_ig.c.url("/register"), {
            "type": "m.login.application_service", "username": "ig_zoe"}, access_token="dp-as")
        assert (r.status, r.json()["errcode"]) == (400, "M_EXCLUSIVE")
        wa.fail_with = 500  # WhatsApp's bridge is down the whole time
        for b, user in ((b_ig, igbob), (b_wa, wabob)):
            assert (await b.call("POST", f"/join/{q(room)}", {}, user_id=user)).status == 200
        statuses = {}
        for b, user in ((b_ig, igbob), (b_wa, wabob)):
            statuses[user] = [
                (await b.call("PUT", f"/rooms/{q(room)}/send/m.room.message/r{i}",
                              {"msgtype": "m.text", "body": str(i)}, user_id=user)).status
                for i in range(4)
            ]
        assert statuses[igbob] == [200] * 4
        assert statuses[wabob] == [200, 200, 429, 429]
        last = await _send_as(b_ig.c, alice, room, "last")
        await ig.wait_for(lambda: last in [e["event_id"] for e in ig.events()])
        # Instagram saw everything in the shared room; WhatsApp, down, got nothing through.
        assert {e["sender"] for e in ig.events()} >= {alice.user_id, igbob, wabob}
        assert not wa.transactions and wa.received
        # The bridge comes back and says so by calling the server: delivery resumes within a
        # second of its last attempt rather than after the whole backoff.
        wa.fail_with = None
        for _ in range(15):
            assert (await b_wa.call("GET", "/account/whoami")).status == 200
            if last in [e["event_id"] for e in wa.events()]:
                break
            await task.deferLater(reactor, 0.2, lambda: None)
        assert last in [e["event_id"] for e in wa.events()]
        ids = [e["event_id"] for e in wa.events()]
        assert len(ids) == len(set(ids))
    finally:
        await hs.stop()
        await ig.stop()
        await wa.stop()


@pytest_twisted.ensureDeferred
async def test_interest_follows_membership_at_each_event(bridge: Bridge) -> None:
    """While the bridge is down its puppet leaves: it still gets what the puppet saw, and
    nothing after (membership at each event, not at delivery time)."""
    b = bridge
    alice = await b.c.register("alice")
    room = await _room(b.c, alice, preset="public_chat")
    bob = await b.puppet("bob")
    assert (await b.call("POST", f"/join/{q(room)}", {}, user_id=bob)).status == 200
    await b.app.wait_for(lambda: any(e.get("state_key") == bob for e in b.app.events()))
    b.app.fail_with = 503
    seen = [await _send_as(b.c, alice, room, f"seen{i}") for i in range(2)]
    r = await b.call("POST", f"/rooms/{q(room)}/leave", {}, user_id=bob)
    assert r.status == 200, r.body
    unseen = await _send_as(b.c, alice, room, "unseen")
    b.app.fail_with = None
    await b.call("GET", "/account/whoami")  # the bridge is back: no waiting out the backoff
    await b.app.wait_for(lambda: any(
        e.get("state_key") == bob and e["content"]["membership"] == "leave"
        for e in b.app.events()))
    ids = [e["event_id"] for e in b.app.events()]
    assert all(s in ids for s in seen) and unseen not in ids


@pytest_twisted.ensureDeferred
async def test_self_signed_service_only_in_dev_mode(
    db_config: DatabaseConfig, tmp_path: object
) -> None:
    """A bridge behind a self-signed certificate is reached with --dev-federation's
    accept_self_signed, and refused without it (the federation TLS policy)."""
    tmp = str(tmp_path)
    app = FakeAppService(Registration.make("instagram", "ig", SERVER))
    app.start(tls_dir=tmp)
    ping = "/_matrix/client/v1/appservice/instagram/ping"
    try:
        for accept, expected in ((True, 200), (False, 502)):
            hs = await _start(tmp, db_config, app, outbound_requests={
                "accept_self_signed": accept, "allow_private_addresses": True})
            try:
                r = await request("POST", hs.client_url + ping, {},
                                  access_token=app.reg.as_token)
                assert r.status == expected, r.body
                if expected == 502:
                    assert r.json()["errcode"] == "M_CONNECTION_FAILED"
            finally:
                await hs.stop()
        assert len(app.pings) == 1
    finally:
        await app.stop()


@pytest_twisted.ensureDeferred
async def test_bridge_on_loopback_needs_only_the_app_service_switch(
    db_config: DatabaseConfig, tmp_path: object
) -> None:
    """A bridge beside the server (loopback URL) is reached with
    app_service_allow_private_addresses alone; federation's address policy stays closed, and
    without either switch the registration is refused at start."""
    tmp = str(tmp_path)
    app = FakeAppService(Registration.make("instagram", "ig", SERVER))
    app.start()
    ping = "/_matrix/client/v1/appservice/instagram/ping"
    closed = {"accept_self_signed": False, "allow_private_addresses": False}
    try:
        hs = await _start(tmp, db_config, app, outbound_requests=closed,
                          app_service_allow_private_addresses=True)
        try:
            assert hs.hs.config.outbound.allow_private_addresses is False
            r = await request("POST", hs.client_url + ping, {}, access_token=app.reg.as_token)
            assert r.status == 200, r.body
        finally:
            await hs.stop()
        assert len(app.pings) == 1
        with pytest.raises(ConfigError, match="private"):
            await _start(tmp, db_config, app, outbound_requests=closed)
    finally:
        await app.stop()


@pytest_twisted.ensureDeferred
async def test_shutdown_does_not_wait_for_a_silent_service(
    db_config: DatabaseConfig, tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transaction in flight to a service that never answers is cancelled at shutdown,
    without a retry's backoff after it: stopping takes moments, not the backoff."""
    from twisted.internet.protocol import Factory, Protocol

    from homeserver.services.appservice import sender

    monkeypatch.setattr(sender, "MIN_BACKOFF_S", 120.0)
    received: list[bytes] = []

    class Silent(Protocol):
        def dataReceived(self, data: bytes) -> None:
            received.append(data)

    port = reactor.listenTCP(0, Factory.forProtocol(Silent), interface="127.0.0.1")
    tmp = str(tmp_path)
    reg = Registration.make("instagram", "ig", SERVER)
    path = os.path.join(tmp, "silent.yaml")
    with open(path, "w") as f:
        f.write(reg.to_yaml(f"http://127.0.0.1:{port.getHost().port}"))
    try:
        hs = await start_server(tmp, db_config, app_service_config_files=[path])
        try:
            r = await request("POST", Client(hs.client_url).url("/createRoom"), {},
                              access_token=reg.as_token)
            assert r.status == 200, r.body
            for _ in range(100):  # the transaction's PUT has arrived
                if b"PUT /_matrix/app/v1/transactions/" in b"".join(received):
                    break
                await task.deferLater(reactor, 0.05, lambda: None)
            assert b"PUT /_matrix/app/v1/transactions/" in b"".join(received)
        finally:
            started = reactor.seconds()
            await hs.stop()
            assert reactor.seconds() - started < 5
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_app_service_token_is_not_one_client_for_the_concurrency_cap(
    db_config: DatabaseConfig, tmp_path: object
) -> None:
    """limits.max_concurrent_requests_per_client counts requests per access token; a bridge's
    as_token acts for all its users at once, so it is not capped as one client."""
    app = FakeAppService(Registration.make("instagram", "ig", SERVER))
    app.start()
    try:
        hs = await _start(str(tmp_path), db_config, app,
                          limits={"max_concurrent_requests_per_client": 2})
        try:
            v3 = hs.client_url + "/_matrix/client/v3"
            first = await request("GET", v3 + "/sync?timeout=0", None,
                                  access_token=app.reg.as_token)
            assert first.status == 200, first.body
            since = q(first.json()["next_batch"])
            polls = [defer.ensureDeferred(request(
                "GET", v3 + f"/sync?since={since}&timeout=1500", None,
                access_token=app.reg.as_token)) for _ in range(4)]
            await task.deferLater(reactor, 0.3, lambda: None)
            r = await request("GET", v3 + "/account/whoami", None,
                              access_token=app.reg.as_token)
            assert r.status == 200, r.body
            assert [p.status for p in await defer.gatherResults(polls)] == [200] * 4
        finally:
            await hs.stop()
    finally:
        await app.stop()
