"""Read receipts and read markers on both engines: m.read in everyone's ephemeral section,
m.read.private only in its owner's, threaded receipts, receipts only moving forward,
read markers (m.fully_read account data), the storage function push counts use, and unread
notification counts reset by receipts."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet import defer, reactor, task

from homeserver.storage.receipts import read_up_to
from tests.support.client import Client, User, q
from tests.support.server import RunningServer
from tests.support.sync import create_room, join, send, sync, timed_sync

# Presence changes (users coming online as they sync) would wake requests too.
QUIET = {"presence": {"types": []}}


def sleep(seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)


async def _receipt(c: Client, user: User, room: str, event_id: str,
                   receipt_type: str = "m.read", body: Any = None, expect: int = 200) -> None:
    r = await c.call("POST", f"/rooms/{q(room)}/receipt/{receipt_type}/{q(event_id)}",
                     body if body is not None else {}, token=user.access_token)
    assert r.status == expect, r.body


def _receipts(body: dict[str, Any], room: str) -> dict[str, Any] | None:
    data = body["rooms"]["join"].get(room)
    if data is None:
        return None
    found = [e for e in data["ephemeral"]["events"] if e["type"] == "m.receipt"]
    assert len(found) <= 1
    return found[0]["content"] if found else None


async def _room_with_bob(c: Client) -> tuple[User, User, str]:
    alice, bob = await c.register("alice"), await c.register("bob")
    room = await create_room(c, alice, preset="public_chat")
    await join(c, bob, room)
    return alice, bob, room


@pytest_twisted.ensureDeferred
async def test_public_and_private_receipts(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, bob, room = await _room_with_bob(c)
    e1 = await send(c, alice, room, "one")
    e2 = await send(c, alice, room, "two")
    a0 = (await sync(c, alice))["next_batch"]
    b0 = (await sync(c, bob))["next_batch"]

    # A waiting sync wakes for a receipt.
    waiting = defer.ensureDeferred(timed_sync(c, alice, a0, 10_000, filter=QUIET))
    await sleep(0.2)
    await _receipt(c, bob, room, e1)
    body, elapsed = await waiting
    assert elapsed < 5
    content = _receipts(body, room)
    assert content is not None
    assert list(content) == [e1]
    assert set(content[e1]["m.read"]) == {bob.user_id}
    assert isinstance(content[e1]["m.read"][bob.user_id]["ts"], int)

    # A private receipt: bob sees it, alice never does (and is not even woken for it).
    waiting = defer.ensureDeferred(timed_sync(c, alice, body["next_batch"], 800, filter=QUIET))
    await _receipt(c, bob, room, e2, "m.read.private")
    mine = await sync(c, bob, b0)
    assert set(_receipts(mine, room) or {}) == {e1, e2}
    assert bob.user_id in (_receipts(mine, room) or {})[e2]["m.read.private"]
    others, elapsed = await waiting
    assert _receipts(others, room) is None and elapsed >= 0.7
    initial = await sync(c, alice)
    assert "m.read.private" not in str(_receipts(initial, room))
    assert bob.user_id in (_receipts(initial, room) or {})[e1]["m.read"]

    # The storage function push counts rely on: the furthest m.read / m.read.private.
    assert hs.hs.services is not None
    db = hs.hs.services.db
    e2_stream = (await hs.hs.services.events.get_event(e2))
    assert e2_stream is not None
    assert await read_up_to(db, bob.user_id, room) == e2_stream.stream_ordering
    assert await read_up_to(db, alice.user_id, room) is None

    # Receipts only move forward: an older one is ignored.
    await _receipt(c, bob, room, e1, "m.read.private")
    assert await read_up_to(db, bob.user_id, room) == e2_stream.stream_ordering


@pytest_twisted.ensureDeferred
async def test_threaded_receipts(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, bob, room = await _room_with_bob(c)
    root = await send(c, alice, room, "root")
    reply = await send(c, alice, room, "", content={
        "msgtype": "m.text", "body": "in thread",
        "m.relates_to": {"rel_type": "m.thread", "event_id": root},
    })
    main = await send(c, alice, room, "main again")
    since = (await sync(c, alice))["next_batch"]
    await _receipt(c, bob, room, reply, body={"thread_id": root})
    await _receipt(c, bob, room, main, body={"thread_id": "main"})
    body = await sync(c, alice, since)
    content = _receipts(body, room) or {}
    assert content[reply]["m.read"][bob.user_id]["thread_id"] == root
    assert content[main]["m.read"][bob.user_id]["thread_id"] == "main"
    assert hs.hs.services is not None
    db = hs.hs.services.db
    stored = await hs.hs.services.events.get_events([reply, main])
    assert await read_up_to(db, bob.user_id, room, root) == stored[reply].stream_ordering
    assert await read_up_to(db, bob.user_id, room, "main") == stored[main].stream_ordering
    assert await read_up_to(db, bob.user_id, room) is None  # no unthreaded receipt yet

    # The thread must match the event.
    await _receipt(c, bob, room, reply, body={"thread_id": "main"}, expect=400)
    await _receipt(c, bob, room, main, body={"thread_id": root}, expect=400)
    await _receipt(c, bob, room, main, body={"thread_id": ""}, expect=400)
    await _receipt(c, bob, room, main, body={"thread_id": 5}, expect=400)


@pytest_twisted.ensureDeferred
async def test_receipt_errors_and_hooks(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, bob, room = await _room_with_bob(c)
    carol = await c.register("carol")
    e1 = await send(c, alice, room, "one")
    assert hs.hs.services is not None
    calls: list[tuple[Any, ...]] = []
    hs.hs.services.receipts.on_receipt.append(lambda *args: calls.append(args))
    await _receipt(c, bob, room, e1, "m.unknown", expect=400)
    await _receipt(c, carol, room, e1, expect=403)  # not in the room
    await _receipt(c, bob, room, "$missing", expect=404)
    other = await create_room(c, alice)
    await _receipt(c, alice, other, e1, expect=404)  # an event of another room
    # No body at all is accepted.
    r = await c.call("POST", f"/rooms/{q(room)}/receipt/m.read/{q(e1)}", None,
                     token=bob.access_token)
    assert r.status == 200, r.body
    assert calls == [(bob.user_id, room, e1, "m.read", None)]


@pytest_twisted.ensureDeferred
async def test_read_markers(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, bob, room = await _room_with_bob(c)
    e1 = await send(c, alice, room, "one")
    e2 = await send(c, alice, room, "two")
    since = (await sync(c, bob))["next_batch"]
    alice_since = (await sync(c, alice))["next_batch"]
    r = await c.call("POST", f"/rooms/{q(room)}/read_markers",
                     {"m.fully_read": e2, "m.read": e1, "m.read.private": e2},
                     token=bob.access_token)
    assert r.status == 200, r.body
    body = await sync(c, bob, since)
    data = body["rooms"]["join"][room]
    assert {"type": "m.fully_read", "content": {"event_id": e2}} in data["account_data"]["events"]
    content = _receipts(body, room) or {}
    assert bob.user_id in content[e1]["m.read"]
    assert bob.user_id in content[e2]["m.read.private"]
    # Alice sees only the public receipt, and not bob's read marker.
    seen = await sync(c, alice, alice_since)
    assert set(_receipts(seen, room) or {}) == {e1}
    assert "m.fully_read" not in str(seen)

    # The marker never moves back; m.fully_read through /receipt works too.
    r = await c.call("POST", f"/rooms/{q(room)}/read_markers", {"m.fully_read": e1},
                     token=bob.access_token)
    assert r.status == 200
    uid = q(bob.user_id)
    r = await c.call("GET", f"/user/{uid}/rooms/{q(room)}/account_data/m.fully_read",
                     token=bob.access_token)
    assert r.json() == {"event_id": e2}
    e3 = await send(c, alice, room, "three")
    await _receipt(c, bob, room, e3, "m.fully_read")
    r = await c.call("GET", f"/user/{uid}/rooms/{q(room)}/account_data/m.fully_read",
                     token=bob.access_token)
    assert r.json() == {"event_id": e3}
    await _receipt(c, bob, room, e3, "m.fully_read", body={"thread_id": "main"}, expect=400)
    # Setting it directly stays refused.
    r = await c.call("PUT", f"/user/{uid}/rooms/{q(room)}/account_data/m.fully_read",
                     {"event_id": e1}, token=bob.access_token)
    assert r.status == 405
    r = await c.call("POST", f"/rooms/{q(room)}/read_markers", {"m.fully_read": 7},
                     token=bob.access_token)
    assert r.status == 400


@pytest_twisted.ensureDeferred
async def test_receipts_reset_notification_counts(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, bob = await c.register("alice"), await c.register("bob")
    room = await create_room(c, alice, invite=[bob.user_id], is_direct=True)
    await join(c, bob, room)
    sent = [await send(c, alice, room, f"hello {i}") for i in range(3)]
    body = await sync(c, bob)
    counts = body["rooms"]["join"][room]["unread_notifications"]
    assert counts["notification_count"] == 3
    await _receipt(c, bob, room, sent[1])
    after = await sync(c, bob, body["next_batch"])
    assert after["rooms"]["join"][room]["unread_notifications"]["notification_count"] == 1
    await _receipt(c, bob, room, sent[2], "m.read.private")
    done = await sync(c, bob, after["next_batch"])
    assert done["rooms"]["join"][room]["unread_notifications"] == {
        "notification_count": 0, "highlight_count": 0,
    }
