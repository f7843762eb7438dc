"""Typing notifications on both engines: set and cleared, shown in /sync's ephemeral section
(only when they change), expiring after their timeout, waking long-polls; only for oneself and
only in rooms one is joined to."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet import defer, reactor, task

from tests.support.client import Client, User, q
from tests.support.server import RunningServer
from tests.support.sync import create_room, join, leave, sync, timed_sync

# Presence changes (users coming online as they sync) would wake requests too.
QUIET = {"presence": {"types": []}}


def sleep(seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)


async def _typing(c: Client, user: User, room: str, body: Any, target: str | None = None,
                  expect: int = 200) -> None:
    r = await c.call("PUT", f"/rooms/{q(room)}/typing/{q(target or user.user_id)}", body,
                     token=user.access_token)
    assert r.status == expect, r.body


def _typing_users(body: dict[str, Any], room: str) -> list[str] | None:
    data = body["rooms"]["join"].get(room)
    if data is None:
        return None
    found = [e for e in data["ephemeral"]["events"] if e["type"] == "m.typing"]
    return found[0]["content"]["user_ids"] if found else None


@pytest_twisted.ensureDeferred
async def test_typing_shown_cleared_and_only_when_changed(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, bob = await c.register("alice"), await c.register("bob")
    room = await create_room(c, alice, preset="public_chat")
    await join(c, bob, room)
    since = (await sync(c, bob))["next_batch"]
    assert hs.hs.services is not None
    told: list[tuple[str, str, bool]] = []
    hs.hs.services.typing.on_change.append(lambda *args: told.append(args))

    await _typing(c, alice, room, {"typing": True, "timeout": 30000})
    assert told == [(room, alice.user_id, True)]
    body = await sync(c, bob, since)
    assert _typing_users(body, room) == [alice.user_id]
    assert body["rooms"]["join"][room]["timeline"]["events"] == []
    # Unchanged: the next sync says nothing about typing.
    quiet = await sync(c, bob, body["next_batch"])
    assert _typing_users(quiet, room) is None
    # An initial sync shows who is typing now.
    assert _typing_users(await sync(c, bob), room) == [alice.user_id]
    # Renewing does not count as a change either.
    await _typing(c, alice, room, {"typing": True, "timeout": 30000})
    assert _typing_users(await sync(c, bob, quiet["next_batch"]), room) is None

    await _typing(c, bob, room, {"typing": True})
    both = await sync(c, alice, since)
    assert _typing_users(both, room) == sorted([alice.user_id, bob.user_id])

    await _typing(c, alice, room, {"typing": False})
    assert told[-1] == (room, alice.user_id, False)
    stopped = await sync(c, bob, quiet["next_batch"])
    assert _typing_users(stopped, room) == [bob.user_id]

    # Leaving the room stops typing there.
    await leave(c, bob, room)
    gone = await sync(c, alice, both["next_batch"])
    assert _typing_users(gone, room) == []


@pytest_twisted.ensureDeferred
async def test_typing_times_out_and_wakes_long_polls(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, bob = await c.register("alice"), await c.register("bob")
    room = await create_room(c, alice, preset="public_chat")
    await join(c, bob, room)
    since = (await sync(c, bob))["next_batch"]

    waiting = defer.ensureDeferred(timed_sync(c, bob, since, 10_000, filter=QUIET))
    await sleep(0.2)
    await _typing(c, alice, room, {"typing": True, "timeout": 400})
    body, elapsed = await waiting
    assert elapsed < 5
    assert _typing_users(body, room) == [alice.user_id]

    # The timeout expires by itself, and that too wakes the waiting request.
    expired, elapsed = await timed_sync(c, bob, body["next_batch"], 10_000, filter=QUIET)
    assert 0.1 < elapsed < 3
    assert _typing_users(expired, room) == []


@pytest_twisted.ensureDeferred
async def test_typing_rules(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, bob = await c.register("alice"), await c.register("bob")
    room = await create_room(c, alice)
    # Only for oneself.
    await _typing(c, alice, room, {"typing": True}, target=bob.user_id, expect=403)
    # Only when joined.
    await _typing(c, bob, room, {"typing": True}, expect=403)
    # Well-formed bodies.
    await _typing(c, alice, room, {"timeout": 100}, expect=400)
    await _typing(c, alice, room, {"typing": "yes"}, expect=400)
    await _typing(c, alice, room, {"typing": True, "timeout": "soon"}, expect=400)
    await _typing(c, alice, room, {"typing": True, "timeout": -5}, expect=400)
    await _typing(c, alice, "!nope:test.local", {"typing": True}, expect=404)
