"""Rooms across two real servers over TLS on loopback: joining through the resident server,
messages both ways in the same order on both, state changes, kicks, typing, and events that
must be refused (bad signatures, wrong content hashes, unauthorised events)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest_twisted
from twisted.internet import reactor, task

from federation.builder import build_event
from federation.events import Event
from federation.keys import generate_signing_key
from homeserver.services.registry import Services

# ``pair`` lives in tests/homeserver/conftest.py; other modules still import it from here.
from tests.support.client import Client, User, q
from tests.support.databases import fresh_database
from tests.support.server import RunningServer, start_pair


def services(server: RunningServer) -> Services:
    assert server.hs.services is not None
    return server.hs.services


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    waited = 0.0
    while not await check():
        if waited > timeout:
            raise AssertionError("condition not reached in time")
        await task.deferLater(reactor, 0.05, lambda: None)
        waited += 0.05


async def messages(c: Client, user: User, room_id: str) -> list[str]:
    r = await c.call("GET", f"/rooms/{q(room_id)}/messages?dir=b&limit=100", None,
                     user.access_token)
    assert r.status == 200, r.body
    return [e["content"].get("body") for e in reversed(r.json()["chunk"])
            if e["type"] == "m.room.message"]


async def send_text(c: Client, user: User, room_id: str, body: str, txn: str) -> str:
    r = await c.call("PUT", f"/rooms/{q(room_id)}/send/m.room.message/{txn}",
                     {"msgtype": "m.text", "body": body}, user.access_token)
    assert r.status == 200, r.body
    return str(r.json()["event_id"])


async def state_of(c: Client, user: User, room_id: str, event_type: str,
                   state_key: str = "") -> Any:
    path = f"/rooms/{q(room_id)}/state/{event_type}"
    r = await c.call("GET", path + (f"/{q(state_key)}" if state_key else ""), None,
                     user.access_token)
    assert r.status in (200, 404), r.body
    return r.json() if r.status == 200 else None


async def joined_room(
    a: RunningServer, b: RunningServer
) -> tuple[Client, Client, User, User, str]:
    """A public room on a.test with an alias; bob of b.test joins it by the alias."""
    ca, cb = Client(a.client_url), Client(b.client_url)
    alice = await ca.register("alice")
    bob = await cb.register("bob")
    r = await ca.call("POST", "/createRoom",
                      {"preset": "public_chat", "room_alias_name": "lobby", "name": "Lobby"},
                      alice.access_token)
    assert r.status == 200, r.body
    room_id = r.json()["room_id"]
    r = await cb.call("POST", f"/join/{q('#lobby:a.test')}", {}, bob.access_token)
    assert r.status == 200, r.body
    assert r.json()["room_id"] == room_id
    return ca, cb, alice, bob, room_id


@pytest_twisted.ensureDeferred
async def test_join_over_federation_and_messages_both_ways(
    pair: tuple[RunningServer, RunningServer],
) -> None:
    a, b = pair
    ca, cb, alice, bob, room_id = await joined_room(a, b)

    # b holds the room's state as a.test has it, with bob joined.
    assert (await state_of(cb, bob, room_id, "m.room.name"))["name"] == "Lobby"
    assert (await state_of(cb, bob, room_id, "m.room.member", bob.user_id))[
        "membership"] == "join"

    # a.test learns of bob's join through send_join.
    async def bob_joined_on_a() -> bool:
        m = await state_of(ca, alice, room_id, "m.room.member", bob.user_id)
        return m is not None and m.get("membership") == "join"

    await eventually(bob_joined_on_a)

    expected: list[str] = []
    for i, (c, u) in enumerate([(ca, alice), (cb, bob), (ca, alice), (ca, alice), (cb, bob)]):
        body = f"message {i} from {u.user_id}"
        await send_text(c, u, room_id, body, f"t{i}")
        expected.append(body)

        async def both_have(n: int = len(expected)) -> bool:
            return (len(await messages(ca, alice, room_id)) == n
                    and len(await messages(cb, bob, room_id)) == n)

        await eventually(both_have)
    # The same messages in the same order on both servers.
    assert await messages(ca, alice, room_id) == expected
    assert await messages(cb, bob, room_id) == expected

    # A state change on b.test reaches a.test.
    r = await cb.call("PUT", f"/rooms/{q(room_id)}/state/m.room.topic",
                      {"topic": "from b"}, bob.access_token)
    assert r.status == 403  # bob has no power to set the topic (public_chat: 50)
    r = await ca.call("PUT", f"/rooms/{q(room_id)}/state/m.room.topic",
                      {"topic": "set on a"}, alice.access_token)
    assert r.status == 200, r.body

    async def topic_on_b() -> bool:
        t = await state_of(cb, bob, room_id, "m.room.topic")
        return t is not None and t.get("topic") == "set on a"

    await eventually(topic_on_b)


@pytest_twisted.ensureDeferred
async def test_kick_across_servers(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    ca, cb, alice, bob, room_id = await joined_room(a, b)
    r = await ca.call("POST", f"/rooms/{q(room_id)}/kick",
                      {"user_id": bob.user_id, "reason": "bye"}, alice.access_token)
    assert r.status == 200, r.body

    async def kicked_on_b() -> bool:
        r = await cb.call("GET", "/joined_rooms", None, bob.access_token)
        return room_id not in r.json()["joined_rooms"]

    await eventually(kicked_on_b)
    # bob can no longer send into the room from b.test.
    r = await cb.call("PUT", f"/rooms/{q(room_id)}/send/m.room.message/x",
                      {"msgtype": "m.text", "body": "still here?"}, bob.access_token)
    assert r.status == 403


@pytest_twisted.ensureDeferred
async def test_forged_and_unauthorised_events_are_rejected(
    pair: tuple[RunningServer, RunningServer],
) -> None:
    a, b = pair
    ca, _cb, alice, bob, room_id = await joined_room(a, b)
    sa, sb = services(a), services(b)

    async def joined_on_a() -> bool:
        m = await sa.state_store.membership(room_id, bob.user_id)
        return m is not None and m.membership == "join"

    await eventually(joined_on_a)
    room = await sa.events.get_room(room_id)
    assert room is not None
    head = await sa.events.get_events(room.extremities)
    state_ids = await sa.state_store.current_state(room_id)
    found = await sa.events.get_events(state_ids.values())
    state = {k: found[v].event for k, v in state_ids.items()}

    def event_by_b(event_type: str, content: dict[str, Any], state_key: str | None = None,
                   key: Any = None) -> Event:
        assert b.hs.signing_key is not None
        return build_event(
            room_version=room.room_version, event_type=event_type, sender=bob.user_id,
            content=content, room_id=room_id, prev_events=[e.event for e in head.values()],
            current_state=state, origin_server_ts=sa.clock.time_ms(),
            signing_key=key or b.hs.signing_key, server_name="b.test", state_key=state_key)

    forged = event_by_b("m.room.message", {"msgtype": "m.text", "body": "forged"},
                        key=generate_signing_key(b.hs.signing_key.version))
    tampered_pdu = dict(event_by_b("m.room.message", {"msgtype": "m.text", "body": "x"})
                        .pdu_json())
    tampered_pdu["content"] = {"msgtype": "m.text", "body": "changed after signing"}
    unauthorised = event_by_b("m.room.name", {"name": "bob's room now"}, state_key="")
    name_before = state_ids[("m.room.name", "")]

    # Sent as b.test would, signed with b.test's key (X-Matrix).
    response = await sb.federation_client.put_json(
        "a.test", "/_matrix/federation/v1/send/forged1",
        {"origin": "b.test", "origin_server_ts": 1,
         "pdus": [forged.pdu_json(), tampered_pdu, unauthorised.pdu_json()], "edus": []})
    results = response["pdus"]
    assert "error" in results[forged.event_id]
    assert "error" in results[unauthorised.event_id]
    assert await sa.events.get_event(forged.event_id) is None
    after = await sa.state_store.current_state(room_id)
    assert after[("m.room.name", "")] == name_before
    # The tampered event is kept only redacted: its changed body never shows.
    assert "changed after signing" not in await messages(ca, alice, room_id)

    # A request with a bad X-Matrix header is refused before anything is read.
    from tests.support.http import request

    r = await request("PUT", f"{a.federation_url}/_matrix/federation/v1/send/x2",
                      {"origin": "b.test", "pdus": [], "edus": []},
                      headers={"Authorization": 'X-Matrix origin="b.test",key="ed25519:x",'
                                                'sig="bm9wZQ"'})
    assert r.status == 401


@pytest_twisted.ensureDeferred
async def test_typing_and_receipts_across_servers(
    pair: tuple[RunningServer, RunningServer],
) -> None:
    a, b = pair
    ca, cb, alice, bob, room_id = await joined_room(a, b)
    sa, sb = services(a), services(b)

    async def bob_joined_on_a() -> bool:
        return "b.test" in await sa.federation.joined_servers(room_id)

    await eventually(bob_joined_on_a)
    r = await ca.call("PUT", f"/rooms/{q(room_id)}/typing/{q(alice.user_id)}",
                      {"typing": True, "timeout": 20000}, alice.access_token)
    assert r.status == 200, r.body

    async def alice_typing_on_b() -> bool:
        return sb.typing.typing_users(room_id) == [alice.user_id]

    await eventually(alice_typing_on_b)
    r = await ca.call("PUT", f"/rooms/{q(room_id)}/typing/{q(alice.user_id)}",
                      {"typing": False}, alice.access_token)
    assert r.status == 200

    async def stopped_on_b() -> bool:
        return sb.typing.typing_users(room_id) == []

    await eventually(stopped_on_b)

    # bob reads alice's message; a.test records bob's read receipt.
    event_id = await send_text(ca, alice, room_id, "read me", "r1")

    async def arrived_on_b() -> bool:
        return await sb.events.get_event(event_id) is not None

    await eventually(arrived_on_b)
    r = await cb.call("POST", f"/rooms/{q(room_id)}/receipt/m.read/{q(event_id)}", {},
                      bob.access_token)
    assert r.status == 200, r.body
    # A private receipt stays on b.test.
    r = await cb.call("POST", f"/rooms/{q(room_id)}/receipt/m.read.private/{q(event_id)}", {},
                      bob.access_token)
    assert r.status == 200, r.body

    async def receipt_on_a() -> bool:
        found = await sa.receipts.for_rooms([room_id], 0, await sa.receipts.current_position())
        return any(x.user_id == bob.user_id and x.event_id == event_id for x in found)

    await eventually(receipt_on_a)
    found = await sa.receipts.for_rooms([room_id], 0, await sa.receipts.current_position())
    assert {(x.user_id, x.receipt_type) for x in found} == {(bob.user_id, "m.read")}


@pytest_twisted.ensureDeferred
async def test_stopped_server_catches_up_in_order(
    engine: str, tmp_path: Any
) -> None:
    import os

    from tests.support.server import start_server

    with fresh_database(engine, str(tmp_path / "dba")) as db_a, \
            fresh_database(engine, str(tmp_path / "dbb")) as db_b:
        a, b = await start_pair(str(tmp_path), db_a, db_b)
        try:
            ca, cb, alice, bob, room_id = await joined_room(a, b)
            sa = services(a)

            async def bob_joined_on_a() -> bool:
                return "b.test" in await sa.federation.joined_servers(room_id)

            await eventually(bob_joined_on_a)
            port_b = int(b.federation_url.rsplit(":", 1)[1])
            static = services(a).config.federation.static_servers
            await b.stop()
            # As if b.test's process had gone: its kept-alive connections are gone too (an
            # in-process shutdown leaves them open).
            await sa.federation_client.close()
            # a.test keeps sending while b.test is down: all of it waits in the outbox.
            sent = [f"while away {i}" for i in range(4)]
            for i, body in enumerate(sent):
                await send_text(ca, alice, room_id, body, f"away{i}")

            async def queued() -> bool:
                return len(await sa.federation_sender.store.pending("b.test", 50, 100)) >= 4

            await eventually(queued)
            b = await start_server(os.path.join(str(tmp_path), "b"), db_b, "b.test", port_b,
                                   federation={"static_servers": dict(static)})
            cb = Client(b.client_url)
            # b.test contacting a.test tells a.test it is back: the outbox flushes at once.
            await send_text(cb, bob, room_id, "back again", "back")

            async def caught_up() -> bool:
                have = await messages(cb, bob, room_id)
                return all(m in have for m in sent)

            await eventually(caught_up)
            on_b = [m for m in await messages(cb, bob, room_id) if m in sent]
            assert on_b == sent
            assert await sa.federation_sender.store.pending("b.test", 50, 100) == []

            async def back_on_a() -> bool:
                return "back again" in await messages(ca, alice, room_id)

            await eventually(back_on_a)
        finally:
            await a.stop()
            await b.stop()


@pytest_twisted.ensureDeferred
async def test_invite_only_room_joined_after_invite(
    pair: tuple[RunningServer, RunningServer],
) -> None:
    a, b = pair
    ca, cb = Client(a.client_url), Client(b.client_url)
    alice = await ca.register("alice")
    bob = await cb.register("bob")
    r = await ca.call("POST", "/createRoom", {"preset": "private_chat"}, alice.access_token)
    room_id = r.json()["room_id"]
    # Not invited yet: the resident server refuses to make a join.
    r = await cb.call("POST", f"/join/{q(room_id)}?server_name=a.test", {}, bob.access_token)
    assert r.status == 403, r.body
    assert "a.test" in r.json()["error"]
    assert not await services(b).pipeline.room_exists(room_id)
    r = await ca.call("POST", f"/rooms/{q(room_id)}/invite", {"user_id": bob.user_id},
                      alice.access_token)
    assert r.status == 200, r.body
    r = await cb.call("POST", f"/join/{q(room_id)}?via=a.test", {}, bob.access_token)
    assert r.status == 200, r.body
    r = await cb.call("GET", "/joined_rooms", None, bob.access_token)
    assert room_id in r.json()["joined_rooms"]


@pytest_twisted.ensureDeferred
async def test_blocked_server_is_refused_both_ways(engine: str, tmp_path: Any) -> None:
    from federation.transport.client import HttpResponseError
    from homeserver.services.federation_policy import DestinationBlocked

    with fresh_database(engine, str(tmp_path / "dba")) as db_a, \
            fresh_database(engine, str(tmp_path / "dbb")) as db_b:
        a, b = await start_pair(str(tmp_path), db_a, db_b,
                                federation_a={"blocked_servers": ["b.*"]})
        try:
            sa, sb = services(a), services(b)
            ca, cb = Client(a.client_url), Client(b.client_url)
            alice = await ca.register("alice")
            bob = await cb.register("bob")
            r = await ca.call("POST", "/createRoom",
                              {"preset": "public_chat", "room_alias_name": "open"},
                              alice.access_token)
            room_id = r.json()["room_id"]
            # Inbound: b.test's signed requests are refused with a clear 403.
            try:
                await sb.federation_client.put_json(
                    "a.test", "/_matrix/federation/v1/send/t1",
                    {"origin": "b.test", "pdus": [], "edus": []})
                raise AssertionError("a.test accepted a transaction from a blocked server")
            except HttpResponseError as e:
                assert e.status == 403
                assert e.body["errcode"] == "M_FORBIDDEN"
                assert "not allowed" in e.body["error"]
            r = await cb.call("POST", f"/join/{q(room_id)}?via=a.test", {}, bob.access_token)
            assert r.status == 403
            assert not await sb.pipeline.room_exists(room_id)
            members = await sa.state_store.members(room_id)
            assert [m.user_id for m in members] == [alice.user_id]
            # Outbound: nothing is ever sent to b.test.
            try:
                await sa.federation_client.get_json("b.test", "/_matrix/federation/v1/version")
                raise AssertionError("a.test contacted a blocked server")
            except DestinationBlocked:
                pass
        finally:
            await a.stop()
            await b.stop()


@pytest_twisted.ensureDeferred
async def test_state_auth_and_backfill_served_to_peers_and_acl(
    pair: tuple[RunningServer, RunningServer],
) -> None:
    from federation.transport.client import HttpResponseError

    a, b = pair
    ca, cb, alice, bob, room_id = await joined_room(a, b)
    sa, sb = services(a), services(b)

    async def joined_on_a() -> bool:
        return "b.test" in await sa.federation.joined_servers(room_id)

    await eventually(joined_on_a)
    first = await send_text(ca, alice, room_id, "one", "s1")
    last = await send_text(ca, alice, room_id, "two", "s2")
    fc = sb.federation_client
    ids = await fc.get_json("a.test", f"/_matrix/federation/v1/state_ids/{q(room_id)}",
                            {"event_id": last})
    current = await sa.state_store.current_state(room_id)
    assert set(ids["pdu_ids"]) == set(current.values())
    assert set(ids["auth_chain_ids"]) <= set(current.values())
    full = await fc.get_json("a.test", f"/_matrix/federation/v1/state/{q(room_id)}",
                             {"event_id": last})
    assert len(full["pdus"]) == len(current)
    auth = await fc.get_json("a.test",
                             f"/_matrix/federation/v1/event_auth/{q(room_id)}/{q(last)}")
    assert {e["type"] for e in auth["auth_chain"]} >= {"m.room.create", "m.room.power_levels"}
    back = await fc.get_json("a.test", f"/_matrix/federation/v1/backfill/{q(room_id)}",
                             {"v": last, "limit": "2"})
    bodies = [p["content"].get("body") for p in back["pdus"]]
    assert bodies == ["two", "one"]
    single = await fc.get_json("a.test", f"/_matrix/federation/v1/event/{q(first)}")
    assert single["pdus"][0]["content"]["body"] == "one"

    # The room's server ACL shuts b.test out: its requests and its events are refused.
    r = await ca.call("PUT", f"/rooms/{q(room_id)}/state/m.room.server_acl",
                      {"allow": ["*"], "deny": ["b.test"]}, alice.access_token)
    assert r.status == 200, r.body

    async def acl_on_b() -> bool:
        return await sb.pipeline.current_state_event(room_id, ("m.room.server_acl", "")) \
            is not None

    await eventually(acl_on_b)
    try:
        await fc.get_json("a.test", f"/_matrix/federation/v1/state_ids/{q(room_id)}",
                          {"event_id": last})
        raise AssertionError("the ACL was not enforced")
    except HttpResponseError as e:
        assert e.status == 403
    denied = await send_text(cb, bob, room_id, "from a denied server", "s3")
    await send_text(ca, alice, room_id, "after the acl", "s4")

    async def bob_message_settled() -> bool:
        return await sb.federation_sender.store.pending("a.test", 50, 100) == []

    await eventually(bob_message_settled)
    assert await sa.events.get_event(denied) is None
    assert "from a denied server" not in await messages(ca, alice, room_id)
    # Nor may it move receipts in the room.
    await sa.federation.on_edu("b.test", {"edu_type": "m.receipt", "content": {room_id: {
        "m.read": {bob.user_id: {"event_ids": [last], "data": {"ts": 1}}}}}})
    assert await sa.receipts.store.read_up_to(bob.user_id, room_id) is None


@pytest_twisted.ensureDeferred
async def test_presence_across_servers(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    ca, cb, alice, bob, room_id = await joined_room(a, b)
    sa = services(a)

    async def joined_on_a() -> bool:
        return "b.test" in await sa.federation.joined_servers(room_id)

    await eventually(joined_on_a)
    r = await cb.call("PUT", f"/presence/{q(bob.user_id)}/status",
                      {"presence": "unavailable", "status_msg": "lunch"}, bob.access_token)
    assert r.status == 200, r.body

    async def seen_on_a() -> bool:
        r = await ca.call("GET", f"/presence/{q(bob.user_id)}/status", None,
                          alice.access_token)
        return r.status == 200 and r.json().get("status_msg") == "lunch"

    await eventually(seen_on_a)
    r = await ca.call("GET", f"/presence/{q(bob.user_id)}/status", None, alice.access_token)
    assert r.json()["presence"] == "unavailable"


@pytest_twisted.ensureDeferred
async def test_make_leave_and_send_leave(pair: tuple[RunningServer, RunningServer]) -> None:
    from federation.hashes import add_hashes
    from federation.room_versions import get_room_version
    from federation.signing import sign_event
    from federation.transport.client import HttpResponseError

    a, b = pair
    _ca, _cb, alice, bob, room_id = await joined_room(a, b)
    sa, sb = services(a), services(b)

    async def joined_on_a() -> bool:
        return "b.test" in await sa.federation.joined_servers(room_id)

    await eventually(joined_on_a)
    fc = sb.federation_client
    # A server may only make leaves for its own users.
    try:
        await fc.get_json("a.test",
                          f"/_matrix/federation/v1/make_leave/{q(room_id)}/{q(alice.user_id)}")
        raise AssertionError("b.test made a leave for a user of a.test")
    except HttpResponseError as e:
        assert e.status == 403
    made = await fc.get_json(
        "a.test", f"/_matrix/federation/v1/make_leave/{q(room_id)}/{q(bob.user_id)}")
    rv = get_room_version(made["room_version"])
    pdu = dict(made["event"], origin_server_ts=sb.clock.time_ms())
    assert b.hs.signing_key is not None
    pdu = sign_event(add_hashes(pdu), rv, b.hs.signing_key, "b.test")
    leave = Event(pdu, rv)
    assert await fc.put_json(
        "a.test", f"/_matrix/federation/v2/send_leave/{q(room_id)}/{q(leave.event_id)}",
        pdu) == {}
    m = await sa.state_store.membership(room_id, bob.user_id)
    assert m is not None and m.membership == "leave"
    assert "b.test" not in await sa.federation.joined_servers(room_id)


@pytest_twisted.ensureDeferred
async def test_get_missing_events_validates_its_request(
    pair: tuple[RunningServer, RunningServer],
) -> None:
    from federation.transport.client import HttpResponseError

    a, b = pair
    ca, _cb, alice, _bob, room_id = await joined_room(a, b)
    sa, sb = services(a), services(b)

    async def joined_on_a() -> bool:
        return "b.test" in await sa.federation.joined_servers(room_id)

    await eventually(joined_on_a)
    earliest = await send_text(ca, alice, room_id, "one", "m1")
    await send_text(ca, alice, room_id, "two", "m2")
    latest = await send_text(ca, alice, room_id, "three", "m3")
    path = f"/_matrix/federation/v1/get_missing_events/{q(room_id)}"
    got = await sb.federation_client.post_json(
        "a.test", path, {"earliest_events": [earliest], "latest_events": [latest], "limit": 5})
    assert [e["content"].get("body") for e in got["events"]] == ["two"]
    bad: list[dict[str, Any]] = [
        {"earliest_events": [earliest], "latest_events": [latest], "limit": True},
        {"earliest_events": [earliest], "latest_events": [latest], "limit": "5"},
        {"earliest_events": [earliest] * 21, "latest_events": [latest], "limit": 5},
        {"earliest_events": [earliest], "latest_events": [latest] * 21, "limit": 5},
        {"earliest_events": earliest, "latest_events": [latest], "limit": 5},
    ]
    for body in bad:
        try:
            await sb.federation_client.post_json("a.test", path, body)
            raise AssertionError(f"accepted {body}")
        except HttpResponseError as e:
            assert (e.status, e.errcode) == (400, "M_BAD_JSON"), body
