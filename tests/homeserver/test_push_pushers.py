"""Pushers on both engines: /pushers and /pushers/set, and delivery to a real push gateway
(an HTTP server on 127.0.0.1): both formats, retries with backoff, rejected pushkeys, badge
updates after receipts."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.web import resource, server

from homeserver.services.push.gateway import GatewayError, PushGatewayClient, check_gateway_url
from tests.support.client import Client, User, q
from tests.support.server import RunningServer

_txn = 0


@dataclass
class Hit:
    at: float
    body: dict[str, Any]


@dataclass
class Gateway:
    """A push gateway: records each /notify and answers from ``replies`` (then 200)."""

    hits: list[Hit] = field(default_factory=list)
    replies: list[tuple[int, Any]] = field(default_factory=list)
    # Pushkeys this gateway rejects.
    dead: set[str] = field(default_factory=set)
    port: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}/_matrix/push/v1/notify"

    async def wait_for(self, n: int, timeout: float = 10.0) -> list[Hit]:
        waited = 0.0
        while len(self.hits) < n and waited < timeout:
            await task.deferLater(reactor, 0.02, lambda: None)
            waited += 0.02
        assert len(self.hits) >= n, f"expected {n} pushes, got {len(self.hits)}"
        return self.hits

    async def settle(self, seconds: float = 0.3) -> None:
        await task.deferLater(reactor, seconds, lambda: None)


class _Notify(resource.Resource):
    isLeaf = True

    def __init__(self, gateway: Gateway) -> None:
        super().__init__()
        self.gateway = gateway

    def render_POST(self, request: Any) -> bytes:
        assert request.path == b"/_matrix/push/v1/notify"
        body = json.loads(request.content.read())
        self.gateway.hits.append(Hit(reactor.seconds(), body))
        keys = [d["pushkey"] for d in body["notification"]["devices"]]
        status, body = self.gateway.replies.pop(0) if self.gateway.replies else (
            200, {"rejected": [k for k in keys if k in self.gateway.dead]})
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(body).encode()


@pytest.fixture
def gateway() -> Any:
    gw = Gateway()
    gw.port = reactor.listenTCP(0, server.Site(_Notify(gw)), interface="127.0.0.1")
    yield gw
    gw.port.stopListening()


async def _setup(hs: RunningServer) -> tuple[Client, User, User, str]:
    c = Client(hs.client_url)
    alice, bob = await c.register("alice"), await c.register("bob")
    r = await c.call("POST", "/createRoom", {"preset": "public_chat", "name": "Lobby"},
                     token=alice.access_token)
    room = r.json()["room_id"]
    r = await c.call("POST", f"/join/{q(room)}", {}, token=bob.access_token)
    assert r.status == 200
    r = await c.call("PUT", f"/profile/{q(bob.user_id)}/displayname",
                     {"displayname": "Bobby"}, token=bob.access_token)
    assert r.status == 200
    return c, alice, bob, room


async def _send(c: Client, user: User, room: str, body: str, **content: Any) -> str:
    global _txn
    _txn += 1
    r = await c.call("PUT", f"/rooms/{q(room)}/send/m.room.message/p{_txn}",
                     {"msgtype": "m.text", "body": body, **content}, token=user.access_token)
    assert r.status == 200, r.body
    return str(r.json()["event_id"])


def _pusher(url: str, pushkey: str = "key-1", **extra: Any) -> dict[str, Any]:
    return {"kind": "http", "app_id": "com.example.app.ios", "pushkey": pushkey,
            "app_display_name": "Example", "device_display_name": "Alice's phone",
            "profile_tag": "xyz", "lang": "en", "data": {"url": url, **extra}}


async def _set(c: Client, user: User, body: Any) -> tuple[int, Any]:
    r = await c.call("POST", "/pushers/set", body, token=user.access_token)
    return r.status, r.json()


async def _list(c: Client, user: User) -> list[dict[str, Any]]:
    r = await c.call("GET", "/pushers", token=user.access_token)
    assert r.status == 200, r.body
    return list(r.json()["pushers"])


@pytest_twisted.ensureDeferred
async def test_set_list_replace_and_delete(hs: RunningServer, gateway: Gateway) -> None:
    c, alice, bob, _ = await _setup(hs)
    assert await _list(c, alice) == []
    body = _pusher(gateway.url, format="event_id_only", custom="kept")
    assert await _set(c, alice, body) == (200, {})
    assert await _list(c, alice) == [{
        "pushkey": "key-1", "kind": "http", "app_id": "com.example.app.ios",
        "app_display_name": "Example", "device_display_name": "Alice's phone",
        "profile_tag": "xyz", "lang": "en",
        "data": {"url": gateway.url, "format": "event_id_only", "custom": "kept"},
    }]
    # Same app ID and pushkey: updated, not duplicated.
    assert await _set(c, alice, {**body, "lang": "fr"}) == (200, {})
    assert [p["lang"] for p in await _list(c, alice)] == ["fr"]
    # Another user taking the same pushkey takes it over unless append is set.
    assert await _set(c, bob, {**body, "append": True}) == (200, {})
    assert len(await _list(c, alice)) == 1 and len(await _list(c, bob)) == 1
    assert await _set(c, bob, body) == (200, {})
    assert await _list(c, alice) == [] and len(await _list(c, bob)) == 1
    # kind null deletes (and deleting what is not there is fine).
    assert await _set(c, bob, {"kind": None, "app_id": body["app_id"],
                               "pushkey": "key-1"}) == (200, {})
    assert await _list(c, bob) == []
    assert await _set(c, bob, {"kind": None, "app_id": "x", "pushkey": "y"}) == (200, {})
    # Email pushers are stored and listed.
    email = {"kind": "email", "app_id": "m.email", "pushkey": "alice@example.com",
             "app_display_name": "Email", "device_display_name": "alice@example.com",
             "lang": "en", "data": {}}
    assert await _set(c, alice, email) == (200, {})
    assert [p["kind"] for p in await _list(c, alice)] == ["email"]

    # A pusher goes with the device that set it.
    r = await c.login("alice", alice.password)
    phone = r.json()
    r = await c.call("POST", "/pushers/set", _pusher(gateway.url, "phone-key"),
                     token=phone["access_token"])
    assert r.status == 200
    assert sorted(p["pushkey"] for p in await _list(c, alice)) == ["alice@example.com",
                                                                   "phone-key"]
    r = await c.call("POST", "/logout", {}, token=phone["access_token"])
    assert r.status == 200
    assert [p["pushkey"] for p in await _list(c, alice)] == ["alice@example.com"]


@pytest_twisted.ensureDeferred
async def test_bad_input(hs: RunningServer, gateway: Gateway) -> None:
    c, alice, _, _ = await _setup(hs)
    ok = _pusher(gateway.url)
    cases: list[tuple[Any, str]] = [
        ({k: v for k, v in ok.items() if k != "kind"}, "M_MISSING_PARAM"),
        ({k: v for k, v in ok.items() if k != "app_id"}, "M_MISSING_PARAM"),
        ({k: v for k, v in ok.items() if k != "pushkey"}, "M_MISSING_PARAM"),
        ({k: v for k, v in ok.items() if k != "lang"}, "M_MISSING_PARAM"),
        ({k: v for k, v in ok.items() if k != "app_display_name"}, "M_MISSING_PARAM"),
        ({k: v for k, v in ok.items() if k != "device_display_name"}, "M_MISSING_PARAM"),
        ({k: v for k, v in ok.items() if k != "data"}, "M_MISSING_PARAM"),
        ({**ok, "data": {}}, "M_MISSING_PARAM"),
        ({**ok, "kind": "carrier-pigeon"}, "M_INVALID_PARAM"),
        ({**ok, "kind": 5}, "M_BAD_JSON"),
        ({**ok, "app_id": "x" * 65}, "M_INVALID_PARAM"),
        ({**ok, "pushkey": "x" * 513}, "M_INVALID_PARAM"),
        ({**ok, "data": "url"}, "M_BAD_JSON"),
        ({**ok, "data": {"url": 5}}, "M_BAD_JSON"),
        ({**ok, "data": {"url": "ftp://gw.example/_matrix/push/v1/notify"}}, "M_INVALID_PARAM"),
        ({**ok, "data": {"url": "https://gw.example/notify"}}, "M_INVALID_PARAM"),
        ({**ok, "data": {"url": "not a url"}}, "M_INVALID_PARAM"),
        ({**ok, "data": {"url": gateway.url, "format": 1}}, "M_BAD_JSON"),
        ({**ok, "append": "yes"}, "M_BAD_JSON"),
        ({**ok, "kind": "email"}, "M_INVALID_PARAM"),  # app_id must be m.email
        ([ok], "M_BAD_JSON"),
    ]
    for body, errcode in cases:
        status, reply = await _set(c, alice, body)
        assert (status, reply.get("errcode")) == (400, errcode), body
    assert await _list(c, alice) == []
    assert check_gateway_url("https://push.example.com:8443/_matrix/push/v1/notify") is None


@pytest_twisted.ensureDeferred
async def test_delivery_in_both_formats(hs: RunningServer, gateway: Gateway) -> None:
    c, alice, bob, room = await _setup(hs)
    assert await _set(c, alice, _pusher(gateway.url, "full-key", custom="x")) == (200, {})
    assert await _set(c, alice, _pusher(gateway.url, "short-key",
                                        format="event_id_only")) == (200, {})
    event_id = await _send(c, bob, room, "Hello Alice", **{"m.mentions": {
        "user_ids": [alice.user_id]}})
    hits = await gateway.wait_for(2)
    by_key = {h.body["notification"]["devices"][0]["pushkey"]: h.body["notification"]
              for h in hits}
    full = by_key["full-key"]
    assert full["event_id"] == event_id and full["room_id"] == room
    assert full["type"] == "m.room.message" and full["sender"] == bob.user_id
    assert full["sender_display_name"] == "Bobby" and full["room_name"] == "Lobby"
    assert full["content"]["body"] == "Hello Alice"
    assert full["counts"] == {"unread": 1} and full["prio"] == "high"
    device = full["devices"][0]
    assert device["app_id"] == "com.example.app.ios"
    assert device["data"] == {"custom": "x"}  # url left out
    assert device["tweaks"] == {"sound": "default", "highlight": True}
    assert isinstance(device["pushkey_ts"], int) and device["pushkey_ts"] < 10**11  # seconds
    short = by_key["short-key"]
    assert set(short) == {"event_id", "room_id", "counts", "devices", "prio"}
    assert short["devices"][0]["data"] == {"format": "event_id_only"}
    # Bob's own message is pushed to nobody; events that do not notify are not pushed.
    reaction = {"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": "+"}}
    r = await c.call("PUT", f"/rooms/{q(room)}/send/m.reaction/r1", reaction,
                     token=bob.access_token)
    assert r.status == 200
    await _send(c, bob, room, "bot", msgtype="m.notice")
    await gateway.settle()
    assert len(gateway.hits) == 2
    # The badge counts every unread notification.
    await _send(c, bob, room, "again")
    hits = await gateway.wait_for(4)
    assert {h.body["notification"]["counts"]["unread"] for h in hits[2:]} == {2}

    # A read receipt sends the new badge count (no event).
    r = await c.call("POST", f"/rooms/{q(room)}/receipt/m.read/{q(event_id)}", {},
                     token=alice.access_token)
    assert r.status == 200
    hits = await gateway.wait_for(6)
    badges = [h.body["notification"] for h in hits[4:]]
    assert all("event_id" not in b for b in badges)
    assert {b["counts"]["unread"] for b in badges} == {1}
    assert hs.hs.services is not None and hs.hs.services.push.pushers.sent == 4


@pytest_twisted.ensureDeferred
async def test_retries_with_backoff(hs: RunningServer, gateway: Gateway) -> None:
    c, alice, bob, room = await _setup(hs)
    assert hs.hs.services is not None
    pool = hs.hs.services.push.pushers
    pool.INITIAL_BACKOFF_S = 0.1
    assert await _set(c, alice, _pusher(gateway.url)) == (200, {})
    gateway.replies = [(500, {}), (503, {}), (429, {})]
    first = await _send(c, bob, room, "one")
    second = await _send(c, bob, room, "two")
    hits = await gateway.wait_for(5)
    events = [h.body["notification"]["event_id"] for h in hits]
    # The first notification is retried until it goes through, then the next follows.
    assert events == [first, first, first, first, second]
    gaps = [b.at - a.at for a, b in itertools.pairwise(hits[:4])]
    assert gaps[0] >= 0.09 and gaps[1] >= 0.19 and gaps[2] >= 0.39  # 0.1, 0.2, 0.4 s
    # Another 4xx is not worth retrying: that notification is skipped.
    gateway.replies = [(400, {"errcode": "M_BAD_JSON"})]
    third = await _send(c, bob, room, "three")
    fourth = await _send(c, bob, room, "four")
    hits = await gateway.wait_for(7)
    assert [h.body["notification"]["event_id"] for h in hits[5:]] == [third, fourth]
    await gateway.settle()
    assert len(gateway.hits) == 7


@pytest_twisted.ensureDeferred
async def test_rejected_pushkey_removes_the_pusher(hs: RunningServer, gateway: Gateway) -> None:
    c, alice, bob, room = await _setup(hs)
    assert await _set(c, alice, _pusher(gateway.url, "dead-key")) == (200, {})
    assert await _set(c, alice, _pusher(gateway.url, "live-key")) == (200, {})
    gateway.dead = {"dead-key"}
    await _send(c, bob, room, "one")
    await gateway.wait_for(2)
    await gateway.settle()
    assert [p["pushkey"] for p in await _list(c, alice)] == ["live-key"]
    await _send(c, bob, room, "two")
    hits = await gateway.wait_for(3)
    await gateway.settle()
    assert len(gateway.hits) == 3
    assert hits[2].body["notification"]["devices"][0]["pushkey"] == "live-key"


@pytest_twisted.ensureDeferred
async def test_gateway_client_refuses_private_addresses(gateway: Gateway) -> None:
    guarded = PushGatewayClient(reactor, allow_private=False, timeout_s=5)
    with pytest.raises(GatewayError, match="private"):
        await guarded.notify(gateway.url, {"notification": {"devices": []}})
    local = gateway.url.replace("127.0.0.1", "localhost")
    with pytest.raises(GatewayError):
        await guarded.notify(local, {"notification": {"devices": []}})
    assert gateway.hits == []
    allowed = PushGatewayClient(reactor, allow_private=True, timeout_s=5)
    reply = await allowed.notify(gateway.url, {"notification": {"devices": []}})
    assert reply.rejected == [] and len(gateway.hits) == 1
    await defer.gatherResults([defer.ensureDeferred(guarded.close()),
                               defer.ensureDeferred(allowed.close())])


@pytest_twisted.ensureDeferred
async def test_pending_notifications_survive_a_restart(hs: RunningServer,
                                                       gateway: Gateway) -> None:
    from homeserver.services.push.pushers import PusherPool

    c, alice, bob, room = await _setup(hs)
    assert hs.hs.services is not None
    push = hs.hs.services.push
    push.pushers.INITIAL_BACKOFF_S = 3600.0  # the first failure parks it
    assert await _set(c, alice, _pusher(gateway.url)) == (200, {})
    gateway.replies = [(502, {})]
    first = await _send(c, bob, room, "one")
    await gateway.wait_for(1)
    second = await _send(c, bob, room, "two")
    await gateway.settle()
    assert len(gateway.hits) == 1  # backing off
    push.pushers.stop()  # the process goes away...

    # ...and a new one picks up where the stored progress says, failure time included.
    stored = await push.store.get_pusher(alice.user_id, "com.example.app.ios", "key-1")
    assert stored is not None and stored.failing_since is not None
    client = PushGatewayClient(reactor, allow_private=True, timeout_s=5)
    pool = PusherPool(store=push.store, gateway=client, pipeline=hs.hs.services.pipeline,
                      clock=hs.hs.services.clock, reactor=reactor)
    await pool.start()
    hits = await gateway.wait_for(3)
    assert [h.body["notification"]["event_id"] for h in hits] == [first, first, second]
    await gateway.settle()
    stored = await push.store.get_pusher(alice.user_id, "com.example.app.ios", "key-1")
    assert stored is not None and stored.failing_since is None
    pool.stop()
    await client.close()
