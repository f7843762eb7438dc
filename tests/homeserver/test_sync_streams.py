"""/sync as a stream on both engines: tokens only move forward and nothing is skipped or
repeated across many interleaved sends and syncs; long-polling wakes the moment something
relevant arrives (and only then, and only for users who can see it); to-device messages are
delivered once and deleted when acknowledged; device lists; a no-change sync's cost does not
grow with history."""

from __future__ import annotations

import random
import time
from collections import defaultdict
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from homeserver.config import DatabaseConfig
from homeserver.services.sync import SyncToken
from homeserver.storage.engine import Database
from tests.support.client import Client, User, q
from tests.support.e2ee import CrossSigning, Device
from tests.support.server import RunningServer, start_server
from tests.support.sync import (
    bodies,
    create_room,
    join,
    leave,
    send,
    sync,
    timed_sync,
)

# Presence changes (users coming online as they sync) would wake requests too.
QUIET = {"presence": {"types": []}}


def sleep(seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)


def _streams(token: str) -> dict[str, int]:
    return SyncToken.parse(token).streams()


def _assert_forward(old: str, new: str) -> None:
    before, after = _streams(old), _streams(new)
    assert all(after[k] >= before[k] for k in before), (old, new)


@pytest.mark.parametrize("seed", [1, 2])
@pytest_twisted.ensureDeferred
async def test_no_gap_no_duplicate_across_interleaved_sends_and_syncs(
    hs: RunningServer, seed: int
) -> None:
    rng = random.Random(seed)
    c = Client(hs.client_url)
    users = [await c.register(n) for n in ("alice", "bob", "carol")]
    alice, bob, carol = users
    r1 = await create_room(c, alice, invite=[bob.user_id])
    r2 = await create_room(c, alice, preset="public_chat")
    r3 = await create_room(c, bob, preset="public_chat")
    await join(c, bob, r1)
    await join(c, bob, r2)
    await join(c, carol, r2)
    await join(c, carol, r3)
    members = {r1: [alice, bob], r2: [alice, bob, carol], r3: [bob, carol]}

    big = {"room": {"timeline": {"limit": 1000}}}
    seen: dict[str, dict[str, list[str]]] = {u.user_id: defaultdict(list) for u in users}
    tokens: dict[str, list[str]] = {u.user_id: [] for u in users}
    done = [False]

    def take(user: User, body: dict[str, Any]) -> bool:
        got = False
        for room, data in body["rooms"]["join"].items():
            assert data["timeline"]["limited"] is False
            for e in data["timeline"]["events"]:
                if e["type"] == "m.room.message":
                    seen[user.user_id][room].append(e["event_id"])
                    got = True
        return got

    async def loop(user: User) -> None:
        # The initial sync may already see some of the messages (sending has begun).
        body = await sync(c, user, filter=big)
        take(user, body)
        token = body["next_batch"]
        tokens[user.user_id].append(token)
        idle_rounds = 0
        while idle_rounds < 2:
            body = await sync(c, user, token, filter=big, timeout=rng.choice([0, 50, 300]))
            _assert_forward(token, body["next_batch"])
            token = body["next_batch"]
            tokens[user.user_id].append(token)
            if not take(user, body) and done[0]:
                idle_rounds += 1

    async def sender(user: User, n: int) -> list[tuple[str, str]]:
        out = []
        mine = [r for r, ms in members.items() if user in ms]
        for i in range(n):
            room = rng.choice(mine)
            out.append((room, await send(c, user, room, f"{user.user_id} {i}")))
            if rng.random() < 0.3:
                await sleep(rng.random() * 0.02)
        return out

    loops = [defer.ensureDeferred(loop(u)) for u in users]
    await sleep(0.05)
    sent = await defer.gatherResults(
        [defer.ensureDeferred(sender(u, 25)) for u in users], consumeErrors=True
    )
    done[0] = True
    await defer.gatherResults(loops, consumeErrors=True)

    by_room: dict[str, set[str]] = defaultdict(set)
    for batch in sent:
        for room, event_id in batch:
            by_room[room].add(event_id)
    for user in users:
        for room, ms in members.items():
            got = seen[user.user_id][room]
            if user not in ms:
                assert got == []
                continue
            assert len(got) == len(set(got)), "an event was delivered twice"
            assert set(got) == by_room[room], "an event was missed"
            # In the server's order: the room's history read forwards.
            r = await c.call("GET", f"/rooms/{q(room)}/messages?dir=f&limit=1000",
                             token=user.access_token)
            order = [e["event_id"] for e in r.json()["chunk"] if e["type"] == "m.room.message"]
            assert got == order
        streams = [_streams(t) for t in tokens[user.user_id]]
        assert streams[-1]["events"] > streams[0]["events"]


@pytest_twisted.ensureDeferred
async def test_long_poll_wakes_promptly_and_not_before(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, bob = await c.register("alice"), await c.register("bob")
    room = await create_room(c, alice, preset="public_chat")
    await join(c, bob, room)
    since = (await sync(c, bob))["next_batch"]

    # Nothing happens: the request waits out its timeout and answers empty.
    body, elapsed = await timed_sync(c, bob, since, 600, filter=QUIET)
    assert elapsed >= 0.55
    assert body["rooms"]["join"] == {} and body["next_batch"] == since

    waiting = defer.ensureDeferred(timed_sync(c, bob, since, 20_000, filter=QUIET))
    await sleep(0.4)
    assert not waiting.called  # still waiting: nothing happened yet
    event_id = await send(c, alice, room, "wake up")
    sent_at = time.monotonic()
    body, elapsed = await waiting
    woke_after = time.monotonic() - sent_at
    assert woke_after < 1.0, woke_after
    assert elapsed < 5
    assert [e["event_id"] for e in body["rooms"]["join"][room]["timeline"]["events"]] == [
        event_id
    ]


@pytest_twisted.ensureDeferred
async def test_users_who_cannot_see_a_room_are_not_woken(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, bob, carol = (await c.register("alice"), await c.register("bob"),
                         await c.register("carol"))
    room = await create_room(c, alice, preset="public_chat")
    await join(c, bob, room)
    carol_room = await create_room(c, carol)
    carol_since = (await sync(c, carol))["next_batch"]
    bob_since = (await sync(c, bob))["next_batch"]

    carol_wait = defer.ensureDeferred(timed_sync(c, carol, carol_since, 1500, filter=QUIET))
    bob_wait = defer.ensureDeferred(timed_sync(c, bob, bob_since, 10_000, filter=QUIET))
    await sleep(0.2)
    for i in range(3):
        await send(c, alice, room, f"not for carol {i}")
    bob_body, _ = await bob_wait
    assert bodies(bob_body["rooms"]["join"][room]["timeline"]["events"])
    await sleep(0.2)
    assert not carol_wait.called, "carol was woken by a room she is not in"
    carol_body, elapsed = await carol_wait
    assert elapsed >= 1.4
    assert carol_body["rooms"]["join"] == {}
    assert room not in str(carol_body)
    # But her own room wakes her.
    waiting = defer.ensureDeferred(
        timed_sync(c, carol, carol_body["next_batch"], 10_000, filter=QUIET)
    )
    await sleep(0.2)
    await send(c, carol, carol_room, "mine")
    body, elapsed = await waiting
    assert elapsed < 5 and bodies(body["rooms"]["join"][carol_room]["timeline"]["events"])


@pytest_twisted.ensureDeferred
async def test_invite_wakes_the_invitee(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, bob = await c.register("alice"), await c.register("bob")
    room = await create_room(c, alice)
    since = (await sync(c, bob))["next_batch"]
    waiting = defer.ensureDeferred(timed_sync(c, bob, since, 10_000, filter=QUIET))
    await sleep(0.2)
    r = await c.call("POST", f"/rooms/{q(room)}/invite", {"user_id": bob.user_id},
                     token=alice.access_token)
    assert r.status == 200
    body, elapsed = await waiting
    assert elapsed < 5
    assert list(body["rooms"]["invite"]) == [room]


async def _to_device(c: Client, sender: User, txn: str, messages: Any) -> None:
    r = await c.call("PUT", f"/sendToDevice/m.test/{txn}", {"messages": messages},
                     sender.access_token)
    assert r.status == 200, r.body


@pytest_twisted.ensureDeferred
async def test_to_device_delivered_once_and_deleted_after_acknowledgement(
    hs: RunningServer,
) -> None:
    c = Client(hs.client_url)
    alice, bob = await c.register("alice"), await c.register("bob")
    assert hs.hs.services is not None
    td = hs.hs.services.e2ee.to_device
    s0 = (await sync(c, bob))["next_batch"]

    # A waiting sync is woken by a to-device message.
    waiting = defer.ensureDeferred(timed_sync(c, bob, s0, 10_000, filter=QUIET))
    await sleep(0.2)
    await _to_device(c, alice, "t1", {bob.user_id: {bob.device_id: {"n": 1}}})
    first, elapsed = await waiting
    assert elapsed < 5
    assert first["to_device"]["events"] == [
        {"sender": alice.user_id, "type": "m.test", "content": {"n": 1}}
    ]
    # The response was lost: the retry with the old token gets the message again.
    retry = await sync(c, bob, s0)
    assert [e["content"] for e in retry["to_device"]["events"]] == [{"n": 1}]
    # Using the new token acknowledges it: not delivered again, and gone from the inbox.
    second = await sync(c, bob, retry["next_batch"])
    assert second["to_device"]["events"] == []
    assert (await td.get_to_device(bob.user_id, bob.device_id, 0)).events == []

    # 150 messages: 100, then the other 50, each once.
    for i in range(150):
        await _to_device(c, alice, f"bulk{i}", {bob.user_id: {"*": {"i": i}}})
    a = await sync(c, bob, second["next_batch"])
    assert [e["content"]["i"] for e in a["to_device"]["events"]] == list(range(100))
    b = await sync(c, bob, a["next_batch"])
    assert [e["content"]["i"] for e in b["to_device"]["events"]] == list(range(100, 150))
    _assert_forward(a["next_batch"], b["next_batch"])
    c_ = await sync(c, bob, b["next_batch"])
    assert c_["to_device"]["events"] == []
    assert (await td.get_to_device(bob.user_id, bob.device_id, 0)).events == []


@pytest_twisted.ensureDeferred
async def test_device_lists_and_key_counts(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, bob, carol = (await c.register("alice"), await c.register("bob"),
                         await c.register("carol"))
    room = await create_room(c, alice, preset="public_chat")
    await join(c, bob, room)
    since = (await sync(c, alice))["next_batch"]

    bob_dev, carol_dev = Device(bob), Device(carol)
    r = await bob_dev.upload(c, {"device_keys": bob_dev.device_keys(),
                                 "one_time_keys": bob_dev.one_time_keys(3),
                                 "fallback_keys": bob_dev.one_time_keys(1, fallback=True)})
    assert r.status == 200, r.body
    r = await carol_dev.upload(c, {"device_keys": carol_dev.device_keys()})
    assert r.status == 200, r.body
    body = await sync(c, alice, since)
    # Bob shares a room with alice; carol does not.
    assert body["device_lists"]["changed"] == [bob.user_id]
    assert body["device_lists"]["left"] == []

    # /keys/changes takes sync tokens.
    r = await c.call("GET", f"/keys/changes?from={q(since)}&to={q(body['next_batch'])}",
                     token=alice.access_token)
    assert r.status == 200, r.body
    assert bob.user_id in r.json()["changed"]

    # Bob's own sync reports his one-time keys and unused fallback key.
    mine = await sync(c, bob)
    assert mine["device_one_time_keys_count"] == {"signed_curve25519": 3}
    assert mine["device_unused_fallback_key_types"] == ["signed_curve25519"]

    # Carol joins: alice must now track her. Bob leaves: alice no longer shares a room.
    await join(c, carol, room)
    joined = await sync(c, alice, body["next_batch"])
    assert carol.user_id in joined["device_lists"]["changed"]
    await leave(c, bob, room)
    left = await sync(c, alice, joined["next_batch"])
    assert left["device_lists"]["left"] == [bob.user_id]
    assert bob.user_id not in left["device_lists"]["changed"]

    # A device-list change wakes a waiting sync of someone sharing a room.
    waiting = defer.ensureDeferred(timed_sync(c, alice, left["next_batch"], 10_000, filter=QUIET))
    await sleep(0.2)
    r = await c.call("POST", "/keys/device_signing/upload",
                     CrossSigning(carol.user_id).upload_body(), carol.access_token)
    assert r.status == 200, r.body
    woke, elapsed = await waiting
    assert woke["device_lists"]["changed"] == [carol.user_id]
    assert elapsed < 5


class _CountingDb:
    """Counts the transactions a request makes."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.count = 0
        self.names: list[str] = []
        self._run = db.run

    async def run(self, desc: str, fn: Any, *args: Any) -> Any:
        self.count += 1
        self.names.append(desc)
        return await self._run(desc, fn, *args)


@pytest_twisted.ensureDeferred
async def test_no_change_sync_costs_the_same_whatever_the_history(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, bob = await c.register("alice"), await c.register("bob")
    room = await create_room(c, alice, preset="public_chat")
    await join(c, bob, room)
    assert hs.hs.db is not None
    counter = _CountingDb(hs.hs.db)

    async def cost() -> int:
        token = (await sync(c, bob))["next_batch"]
        hs.hs.db.run = counter.run  # type: ignore[method-assign]
        try:
            counter.count = 0
            counter.names.clear()
            body = await sync(c, bob, token)
            assert body["rooms"]["join"] == {}
            return counter.count
        finally:
            del hs.hs.db.run  # type: ignore[method-assign]

    small = await cost()
    for i in range(150):
        await send(c, alice, room, f"history {i}")
    large = await cost()
    assert small == large
    # The access token, the memberships, the stream positions, the device's key counts.
    assert small <= 5, counter.names


@pytest_twisted.ensureDeferred
async def test_shutdown_answers_waiting_syncs_at_once(
    db_config: DatabaseConfig, tmp_path: Any
) -> None:
    server = await start_server(str(tmp_path), db_config)
    stopped = False
    try:
        c = Client(server.client_url)
        alice = await c.register("alice")
        since = (await sync(c, alice))["next_batch"]
        waiting = defer.ensureDeferred(timed_sync(c, alice, since, 30_000, filter=QUIET))
        await sleep(0.3)
        assert server.hs.services is not None
        assert server.hs.services.notifier.waiting() == 1  # type: ignore[attr-defined]
        started = time.monotonic()
        await server.stop()
        stopped = True
        assert time.monotonic() - started < 5
        body, elapsed = await waiting
        assert elapsed < 5
        assert body["next_batch"] == since
    finally:
        if not stopped:
            await server.stop()
