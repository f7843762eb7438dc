"""``unsigned.membership`` (spec v1.11): the reader's membership in the state after each event,
on every read path Element uses — /sync timelines, /messages, /context and /event."""

from __future__ import annotations

from typing import Any

import pytest_twisted

from tests.support.client import Client, q
from tests.support.server import RunningServer
from tests.support.sync import create_room, invite, join, send, sync, timeline


def _by_id(events: list[dict[str, Any]]) -> dict[str, str]:
    return {e["event_id"]: e["unsigned"]["membership"] for e in events}


@pytest_twisted.ensureDeferred
async def test_membership_at_each_event(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, bob = await c.register("alice"), await c.register("bob")
    room = await create_room(c, alice, preset="private_chat",
                             initial_state=[{"type": "m.room.history_visibility",
                                             "content": {"history_visibility": "shared"}}])
    before = await send(c, alice, room, "before bob")
    await invite(c, alice, room, bob)
    await join(c, bob, room)
    after = await send(c, alice, room, "after bob joined")

    r = await c.call("GET", f"/rooms/{q(room)}/messages?dir=b&limit=50", token=bob.access_token)
    assert r.status == 200, r.body
    chunk = r.json()["chunk"]
    seen = _by_id(chunk)
    # Before the invite bob had no membership: "leave"; his invite and join carry their own.
    assert seen[before] == "leave" and seen[after] == "join"
    mine = {e["content"]["membership"]: e["event_id"] for e in chunk
            if e["type"] == "m.room.member" and e["state_key"] == bob.user_id}
    assert seen[mine["invite"]] == "invite" and seen[mine["join"]] == "join"
    # Alice was joined for both messages; it is per reader.
    r = await c.call("GET", f"/rooms/{q(room)}/messages?dir=b&limit=50", token=alice.access_token)
    assert _by_id(r.json()["chunk"])[before] == "join"

    r = await c.call("GET", f"/rooms/{q(room)}/event/{q(before)}", token=bob.access_token)
    assert (r.status, r.json()["unsigned"]["membership"]) == (200, "leave")
    r = await c.call("GET", f"/rooms/{q(room)}/context/{q(after)}?limit=4",
                     token=bob.access_token)
    assert r.status == 200, r.body
    ctx = r.json()
    assert ctx["event"]["unsigned"]["membership"] == "join"
    assert _by_id(ctx["events_before"])[mine["join"]] == "join"

    tl = timeline(await sync(c, bob), room)
    assert _by_id(tl["events"])[after] == "join"
