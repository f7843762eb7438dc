"""Peeking (matrix-js-sdk's ``peekInRoom``): ``GET /rooms/{roomId}/initialSync`` then the
``GET /events?room_id=`` long-poll, and the deprecated ``GET /events`` (all joined rooms) and
``GET /events/{eventId}``; every read under the history visibility rules."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet import defer, reactor, task

from tests.support.client import Client, User, q
from tests.support.server import RunningServer
from tests.support.sync import bodies, create_room, join, leave, put_state, send


async def _get(c: Client, path: str, user: User | None, expect: int = 200) -> Any:
    r = await c.call("GET", path, None, user.access_token if user else None)
    assert r.status == expect, r.body
    return r.json()


@pytest_twisted.ensureDeferred
async def test_room_initial_sync(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, bob = await c.register("alice"), await c.register("bob")
    room = await create_room(c, alice, preset="public_chat", name="Peekable")
    await put_state(c, alice, room, "m.room.history_visibility",
                    {"history_visibility": "world_readable"})
    for i in range(5):
        await send(c, alice, room, f"m{i}")

    # A member: current state, the latest messages oldest first, their membership.
    got = await _get(c, f"/rooms/{q(room)}/initialSync?limit=3", alice)
    assert got["room_id"] == room and got["membership"] == "join"
    assert bodies(got["messages"]["chunk"]) == ["m2", "m3", "m4"]
    assert {e["type"] for e in got["state"]} >= {"m.room.create", "m.room.name"}
    assert got["visibility"] == "private"  # not published in the directory
    # `start` pages further back through /messages.
    older = await _get(c, f"/rooms/{q(room)}/messages?dir=b&limit=2&from="
                       f"{q(got['messages']['start'])}", alice)
    assert bodies(older["chunk"]) == ["m1", "m0"]

    # A non-member peeks into the world-readable room: no membership.
    peek = await _get(c, f"/rooms/{q(room)}/initialSync", bob)
    assert "membership" not in peek and bodies(peek["messages"]["chunk"])[-1] == "m4"

    # A room that is not world readable: 403 for outsiders; a former member sees it as
    # it was when they left.
    private = await create_room(c, alice, preset="public_chat")
    await join(c, bob, private)
    await send(c, alice, private, "while bob was in")
    await leave(c, bob, private)
    await send(c, alice, private, "after bob left")
    was = await _get(c, f"/rooms/{q(private)}/initialSync", bob)
    assert was["membership"] == "leave"
    assert "after bob left" not in bodies(was["messages"]["chunk"])
    assert "while bob was in" in bodies(was["messages"]["chunk"])
    carol = await c.register("carol")
    err = await _get(c, f"/rooms/{q(private)}/initialSync", carol, 403)
    assert err["errcode"] == "M_FORBIDDEN"

    # Bad input.
    assert (await _get(c, f"/rooms/{q('!nope:test.local')}/initialSync", alice,
                       404))["errcode"] == "M_NOT_FOUND"
    assert (await _get(c, f"/rooms/{q(room)}/initialSync?limit=x", alice,
                       400))["errcode"] == "M_INVALID_PARAM"
    assert (await _get(c, f"/rooms/{q(room)}/initialSync", None,
                       401))["errcode"] == "M_MISSING_TOKEN"


@pytest_twisted.ensureDeferred
async def test_peeking_event_stream(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, bob = await c.register("alice"), await c.register("bob")
    room = await create_room(c, alice, preset="public_chat")
    await put_state(c, alice, room, "m.room.history_visibility",
                    {"history_visibility": "world_readable"})
    await send(c, alice, room, "before")
    init = await _get(c, f"/rooms/{q(room)}/initialSync", bob)
    token = init["messages"]["end"]

    # Nothing new yet, and no timeout (the default 0): an empty answer at once, `end` as
    # it was.
    quiet = await _get(c, f"/events?room_id={q(room)}&from={q(token)}", bob)
    assert quiet["chunk"] == [] and quiet["end"] == token

    # A waiting peek is woken by the next message.
    waiting = defer.ensureDeferred(
        _get(c, f"/events?room_id={q(room)}&timeout=10000&from={q(token)}", bob))
    await task.deferLater(reactor, 0.3, lambda: None)
    assert not waiting.called
    await send(c, alice, room, "new")
    got = await waiting
    assert bodies(got["chunk"]) == ["new"] and got["start"] == token
    # From its `end`, only what came after.
    await send(c, alice, room, "newer")
    nxt = await _get(c, f"/events?room_id={q(room)}&timeout=0&from={q(got['end'])}", bob)
    assert bodies(nxt["chunk"]) == ["newer"]

    # Rooms one may not read cannot be peeked; bad input is refused.
    private = await create_room(c, alice, preset="private_chat")
    err = await _get(c, f"/events?room_id={q(private)}&timeout=0", bob, 403)
    assert err["errcode"] == "M_FORBIDDEN"
    assert (await _get(c, f"/events?room_id={q('!nope:test.local')}&timeout=0", bob,
                       404))["errcode"] == "M_NOT_FOUND"
    assert (await _get(c, f"/events?room_id={q(room)}&from=garbage", bob,
                       400))["errcode"] == "M_INVALID_PARAM"
    assert (await _get(c, f"/events?room_id={q(room)}&timeout=-1", bob,
                       400))["errcode"] == "M_INVALID_PARAM"

    # Without room_id: the (deprecated) stream of every joined room.
    other = await create_room(c, alice, preset="public_chat")
    start = (await _get(c, "/events?timeout=0", alice))["end"]
    await send(c, alice, room, "in room")
    await send(c, alice, other, "in other")
    both = await _get(c, f"/events?timeout=0&from={q(start)}", alice)
    assert bodies(both["chunk"]) == ["in room", "in other"]
    # Bob is in neither room: his stream has nothing of them.
    assert (await _get(c, f"/events?timeout=0&from={q(start)}", bob))["chunk"] == []
    # Guests must name a room.
    r = await c.call("POST", "/register?kind=guest", {})
    guest = User(r.json()["user_id"], r.json()["access_token"], "", "")
    assert (await _get(c, "/events?timeout=0", guest, 400))["errcode"] == "M_MISSING_PARAM"
    assert (await _get(c, f"/events?room_id={q(room)}&timeout=0", guest))["chunk"] == []


@pytest_twisted.ensureDeferred
async def test_event_by_id(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, bob = await c.register("alice"), await c.register("bob")
    room = await create_room(c, alice, preset="private_chat")
    event_id = await send(c, alice, room, "secret")
    got = await _get(c, f"/events/{q(event_id)}", alice)
    assert got["event_id"] == event_id and got["content"]["body"] == "secret"
    assert got["room_id"] == room
    # Invisible and unknown events are both "not found".
    assert (await _get(c, f"/events/{q(event_id)}", bob, 404))["errcode"] == "M_NOT_FOUND"
    assert (await _get(c, f"/events/{q('$nope')}", alice, 404))["errcode"] == "M_NOT_FOUND"
    assert (await _get(c, f"/events/{q(event_id)}", None, 401))["errcode"] == "M_MISSING_TOKEN"
