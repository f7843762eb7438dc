"""A gap larger than /get_missing_events can fill: the receiver takes the state before the
missing prev events from the origin (/state_ids, then /event) and accepts the new event on
it; a forged event in that state refuses the whole fill (issue #8).

a.test stops sending to b.test (its federation sender stopped), alice changes the topic and
sends more than MISSING_EVENTS_LIMIT messages, then a.test hands b.test only the newest.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest_twisted

from federation.events import JsonDict
from homeserver.services.federation_in import MISSING_EVENTS_LIMIT
from homeserver.services.registry import Services
from homeserver.storage.engine import Txn
from tests.homeserver.test_federation_rooms import (
    eventually,
    joined_room,
    messages,
    send_text,
    services,
)
from tests.support.client import Client, User
from tests.support.server import RunningServer

TOPIC = "after the gap"


async def _held_back_gap(
    pair: tuple[RunningServer, RunningServer],
) -> tuple[Services, Services, Client, User, str, str, str]:
    """The room with b.test missing a topic change and MISSING_EVENTS_LIMIT + 5 messages;
    returns the services, bob's client and user, the room, the topic event and the newest
    event (not yet sent)."""
    a, b = pair
    ca, cb, alice, bob, room_id = await joined_room(a, b)
    sa, sb = services(a), services(b)

    async def bob_joined() -> bool:
        m = await sa.state_store.membership(room_id, bob.user_id)
        return m is not None and m.membership == "join"

    await eventually(bob_joined)
    await sa.federation_sender.stop()
    r = await ca.call("PUT", f"/rooms/{room_id}/state/m.room.topic", {"topic": TOPIC},
                      alice.access_token)
    assert r.status == 200, r.body
    topic_id = r.json()["event_id"]
    for i in range(MISSING_EVENTS_LIMIT + 5):
        await send_text(ca, alice, room_id, f"held back {i}", f"held{i}")
    newest = await send_text(ca, alice, room_id, "the newest", "newest")
    return sa, sb, cb, bob, room_id, topic_id, newest


async def _deliver(sa: Services, event_id: str, txn_id: str) -> JsonDict:
    """a.test sends b.test a transaction with just this event."""
    stored = await sa.events.get_event(event_id)
    assert stored is not None
    answer = await sa.federation_client.put_json(
        "b.test", f"/_matrix/federation/v1/send/{txn_id}",
        {"origin": "a.test", "origin_server_ts": int(time.time() * 1000),
         "pdus": [stored.event.pdu_json()], "edus": []})
    results: JsonDict = answer["pdus"]
    return results


async def _topic(s: Services, room_id: str) -> Any:
    stored = await s.pipeline.current_state_event(room_id, ("m.room.topic", ""))
    return stored.event.content.get("topic") if stored is not None else None


@pytest_twisted.ensureDeferred
async def test_a_big_gap_is_filled_from_the_state_before_it(
    pair: tuple[RunningServer, RunningServer],
) -> None:
    sa, sb, cb, bob, room_id, topic_id, newest = await _held_back_gap(pair)
    r = await cb.call("GET", "/sync?timeout=0", None, bob.access_token)
    since = r.json()["next_batch"]

    start = time.monotonic()
    results = await _deliver(sa, newest, "gap-1")
    elapsed = time.monotonic() - start
    assert results == {newest: {}}, results
    assert elapsed < 20

    # b.test took the state before the gap from a.test: the new topic is current.
    assert await _topic(sb, room_id) == TOPIC
    assert await sb.events.get_event(topic_id) is not None
    # The newest event is in bob's /sync and /messages (which backfills the messages
    # before the gap from a.test as bob pages back).
    r = await cb.call("GET", f"/sync?timeout=0&since={since}", None, bob.access_token)
    timeline = r.json()["rooms"]["join"][room_id]["timeline"]["events"]
    assert newest in [e["event_id"] for e in timeline]
    bodies = await messages(cb, bob, room_id)
    assert bodies[-1] == "the newest"
    assert f"held back {MISSING_EVENTS_LIMIT + 4}" in bodies
    # A forward extremity now; the one from before the gap stays one too (b.test does not
    # know the held-back events joined it), so bob's next message merges both.
    head = await sb.events.get_room(room_id)
    assert head is not None and newest in head.extremities
    after = await send_text(cb, bob, room_id, "bob after the gap", "bob-after")
    stored = await sb.events.get_event(after)
    assert stored is not None and newest in stored.event.prev_event_ids

    async def seen_by_a() -> bool:
        return any(e["content"].get("body") == "bob after the gap"
                   for e in await _timeline(sa, room_id))

    await eventually(seen_by_a)


async def _timeline(s: Services, room_id: str) -> list[JsonDict]:
    head = await s.events.get_room(room_id)
    assert head is not None
    found = await s.events.get_events(head.extremities)
    return [se.event.pdu_json() for se in found.values()]


@pytest_twisted.ensureDeferred
async def test_a_forged_event_in_the_gap_state_changes_nothing(
    pair: tuple[RunningServer, RunningServer],
) -> None:
    sa, sb, _cb, _bob, room_id, topic_id, newest = await _held_back_gap(pair)

    # a.test now serves the topic event with a signature that does not verify.
    def forge(txn: Txn) -> None:
        row = txn.execute(
            "SELECT e.json FROM events e JOIN event_nids n ON n.event_nid = e.event_nid"
            " WHERE n.event_id = ?", (topic_id,)).fetchone()
        pdu = json.loads(row[0])
        sigs = pdu["signatures"]["a.test"]
        key = next(iter(sigs))
        sigs[key] = ("A" if sigs[key][0] != "A" else "B") + sigs[key][1:]
        txn.execute(
            "UPDATE events SET json = ? WHERE event_nid ="
            " (SELECT event_nid FROM event_nids WHERE event_id = ?)",
            (json.dumps(pdu), topic_id))

    await sa.db.run("forge", forge)
    sa.events.invalidate(topic_id)
    state_before = dict(await sb.state_store.current_state(room_id))
    head_before = await sb.events.get_room(room_id)
    assert head_before is not None

    results = await _deliver(sa, newest, "gap-forged")
    assert "error" in results[newest], results
    assert await sb.events.get_event(newest) is None
    assert await sb.events.get_event(topic_id) is None
    assert dict(await sb.state_store.current_state(room_id)) == state_before
    head = await sb.events.get_room(room_id)
    assert head is not None and head.extremities == head_before.extremities
    assert await _topic(sb, room_id) is None


@pytest_twisted.ensureDeferred
async def test_an_event_stored_rejected_is_not_gap_state(
    pair: tuple[RunningServer, RunningServer],
) -> None:
    sa, sb, _cb, _bob, room_id, _topic_id, newest = await _held_back_gap(pair)
    # b.test holds the room's power levels as rejected: the state a.test gives for the gap
    # (and the new event's auth events) cite it, so the fill is refused.
    pl = await sb.pipeline.current_state_event(room_id, ("m.room.power_levels", ""))
    assert pl is not None

    def reject(txn: Txn) -> None:
        txn.execute(
            "UPDATE events SET rejected = ? WHERE event_nid ="
            " (SELECT event_nid FROM event_nids WHERE event_id = ?)",
            ("test", pl.event.event_id))

    await sb.db.run("reject", reject)
    sb.events.invalidate(pl.event.event_id)
    results = await _deliver(sa, newest, "gap-rejected")
    assert "error" in results[newest], results
    assert await sb.events.get_event(newest) is None
    assert await _topic(sb, room_id) is None
