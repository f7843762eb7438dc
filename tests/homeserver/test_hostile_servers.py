"""A hostile server in a room: what it sends is rejected or bounded, and changes nothing
(issue #13). b.test signs with its real key (so requests pass X-Matrix) and crafts PDUs and
transactions by hand; a.test must hold.

Already covered elsewhere, not repeated here: forged signatures, altered content (kept only
redacted) and an unauthorised name change (test_federation_rooms.py
``test_forged_and_unauthorised_events_are_rejected``); an unknown room, ACLs and the server
policy (test_federation_rooms.py); the PDU format checks one by one
(tests/federation/test_pdu_checks.py); a response that never ends or is too large
(test_reliability_peer_outage.py).

The bounds, each named: at most ``MAX_PDUS`` (50) PDUs and ``MAX_EDUS`` (100) EDUs per
transaction, else 400; the listener's ``limits.max_json_body_bytes`` per request body, else
413 before the body is buffered; ``MAX_PREV_EVENTS`` (20) prev and ``MAX_AUTH_EVENTS`` (10)
auth events per PDU; depth within 0..2**53-1 (v6+); per PDU with unknown ancestors one
``/get_missing_events`` of at most ``MISSING_EVENTS_LIMIT`` (20) events and at most
``MAX_FETCHED_AUTH`` (50) ``/event`` fetches, one level deep (so a chain of thousands of
missing events, or a cycle in a v1/v2 room whose event IDs the sender chooses, cannot make
the server walk on), and a gap left after that filled from the state before it with at most
``MAX_GAP_FETCHES`` (500) /state_ids and /event requests; the transaction cache (10,000
(origin, txn ID) entries) answers replays.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import pytest_twisted

from federation.builder import build_event
from federation.events import Event, JsonDict, StateKey
from federation.pdu_checks import MAX_PREV_EVENTS
from federation.transport.client import HttpResponseError
from homeserver.services.federation_in import (
    MAX_EDUS,
    MAX_PDUS,
    MISSING_EVENTS_LIMIT,
)
from homeserver.services.registry import Services
from tests.homeserver.test_federation_rooms import (
    eventually,
    joined_room,
    messages,
    send_text,
    services,
)
from tests.support.client import Client, User
from tests.support.rooms import count
from tests.support.server import RunningServer

BODY_LIMIT = 65536


@pytest.fixture
def pair_config() -> dict[str, Any]:
    """a.test and b.test with the smallest request body limit the config allows."""
    return {"limits": {"max_json_body_bytes": BODY_LIMIT}}


class Room:
    """The room as a.test sees it, and a way to build events as b.test."""

    def __init__(self, a: RunningServer, b: RunningServer, room_id: str, bob: User) -> None:
        self.sa, self.sb = services(a), services(b)
        self.b = b
        self.room_id = room_id
        self.bob = bob

    async def load(self) -> None:
        room = await self.sa.events.get_room(self.room_id)
        assert room is not None
        self.version = room.room_version
        self.head = list((await self.sa.events.get_events(room.extremities)).values())
        self.state_ids = dict(await self.sa.state_store.current_state(self.room_id))
        found = await self.sa.events.get_events(self.state_ids.values())
        self.state: dict[StateKey, Event] = {
            k: found[v].event for k, v in self.state_ids.items()}

    def event(self, event_type: str, content: JsonDict, state_key: str | None = None,
              prev_events: list[Any] | None = None, depth: int | None = None) -> Event:
        assert self.b.hs.signing_key is not None
        return build_event(
            room_version=self.version, event_type=event_type, sender=self.bob.user_id,
            content=content, room_id=self.room_id,
            prev_events=prev_events if prev_events is not None else [e.event for e in self.head],
            current_state=self.state, origin_server_ts=int(time.time() * 1000),
            signing_key=self.b.hs.signing_key, server_name="b.test", state_key=state_key,
            depth=depth)

    async def send(self, txn_id: str, pdus: list[JsonDict],
                   edus: list[JsonDict] | None = None) -> Any:
        return await self.sb.federation_client.put_json(
            "a.test", f"/_matrix/federation/v1/send/{txn_id}",
            {"origin": "b.test", "origin_server_ts": int(time.time() * 1000), "pdus": pdus,
             "edus": edus or []})


async def _setup(pair: tuple[RunningServer, RunningServer]) -> tuple[Room, Client, User]:
    a, b = pair
    ca, _cb, alice, bob, room_id = await joined_room(a, b)
    sa = services(a)

    async def bob_joined() -> bool:
        m = await sa.state_store.membership(room_id, bob.user_id)
        return m is not None and m.membership == "join"

    await eventually(bob_joined)
    room = Room(a, b, room_id, bob)
    await room.load()
    return room, ca, alice


async def _stored(s: Services, event_id: str) -> bool:
    return await s.events.get_event(event_id) is not None


@pytest_twisted.ensureDeferred
async def test_oversized_and_replayed_transactions(
    pair: tuple[RunningServer, RunningServer],
) -> None:
    room, ca, alice = await _setup(pair)
    msg = {"msgtype": "m.text"}

    # Too many PDUs or EDUs: 400, and none of them is looked at.
    many = [room.event("m.room.message", {**msg, "body": f"flood {i}"}).pdu_json()
            for i in range(MAX_PDUS + 1)]
    with pytest.raises(HttpResponseError) as e:
        await room.send("flood-pdus", many)
    assert e.value.status == 400
    edus = [{"edu_type": "m.typing", "content": {"room_id": room.room_id,
                                                  "user_id": room.bob.user_id, "typing": True}}
            for _ in range(MAX_EDUS + 1)]
    with pytest.raises(HttpResponseError) as e:
        await room.send("flood-edus", [], edus)
    assert e.value.status == 400
    assert not any([await _stored(room.sa, Event(p, room.version).event_id) for p in many])

    # A body past the limit: 413 M_TOO_LARGE, never parsed.
    big = [room.event("m.room.message", {**msg, "body": "x" * (BODY_LIMIT // 2)})
           for _ in range(2)]
    with pytest.raises(HttpResponseError) as e:
        await room.send("too-big", [p.pdu_json() for p in big])
    assert e.value.status == 413
    assert not any([await _stored(room.sa, p.event_id) for p in big])

    # A replayed transaction ID gets the first answer; its new content is ignored.
    first = room.event("m.room.message", {**msg, "body": "first"})
    answer = await room.send("replayed", [first.pdu_json()])
    assert answer == {"pdus": {first.event_id: {}}}
    await room.load()
    sneaked = room.event("m.room.message", {**msg, "body": "sneaked in by replay"})
    assert await room.send("replayed", [sneaked.pdu_json()]) == answer
    assert not await _stored(room.sa, sneaked.event_id)
    # The same PDU again in another transaction: accepted, stored once.
    assert await room.send("again", [first.pdu_json()]) == {"pdus": {first.event_id: {}}}
    assert (await messages(ca, alice, room.room_id)).count("first") == 1


@pytest_twisted.ensureDeferred
async def test_hostile_pdus_change_nothing(pair: tuple[RunningServer, RunningServer]) -> None:
    room, ca, alice = await _setup(pair)
    msg = {"msgtype": "m.text"}
    state_before = dict(room.state_ids)

    # Auth-failing state: bob (power 0) makes himself admin.
    pl = room.state[("m.room.power_levels", "")].content
    escalate = room.event("m.room.power_levels",
                          {**pl, "users": {**pl.get("users", {}), room.bob.user_id: 100}},
                          state_key="")
    # More prev events than allowed.
    fake = [f"${'A' * 42}{chr(ord('A') + i)}" for i in range(MAX_PREV_EVENTS + 1)]
    too_many = dict(room.event("m.room.message", {**msg, "body": "too many prevs"},
                               prev_events=fake[:MAX_PREV_EVENTS], depth=10).pdu_json())
    too_many["prev_events"] = fake  # (our builder refuses to make it: added afterwards)
    # Prev events nobody has (b.test cannot produce them either): fetched within the bounds,
    # then the PDU is refused.
    unknown = room.event("m.room.message", {**msg, "body": "orphan"},
                         prev_events=fake[:MAX_PREV_EVENTS], depth=10)
    # Depths no event can have.
    deep = dict(room.event("m.room.message", {**msg, "body": "deep"}).pdu_json())
    deep["depth"] = 2**53
    negative = dict(deep, depth=-1)

    start = time.monotonic()
    answer = await room.send("hostile", [escalate.pdu_json(), too_many,
                                         unknown.pdu_json(), deep, negative])
    elapsed = time.monotonic() - start
    results = answer["pdus"]
    assert "error" in results[escalate.event_id]
    assert "error" in results[unknown.event_id]
    malformed = [Event(p, room.version).event_id for p in (too_many, deep, negative)]
    assert all("error" in results[m] for m in malformed), results
    # Fetching the unknown ancestors is bounded (one /get_missing_events, then at most
    # MAX_FETCHED_AUTH /event requests, all answered 404 by b.test here).
    assert elapsed < 10
    for event_id in (escalate.event_id, unknown.event_id, *malformed):
        event = await room.sa.events.get_event(event_id)
        assert event is None or event.rejected, event_id
    assert dict(await room.sa.state_store.current_state(room.room_id)) == state_before
    r = await ca.call("GET", f"/rooms/{room.room_id}/state/m.room.power_levels", None,
                      alice.access_token)
    assert room.bob.user_id not in r.json().get("users", {})

    # The room still works both ways.
    await send_text(ca, alice, room.room_id, "still fine", "after-hostile")
    assert "still fine" in await messages(ca, alice, room.room_id)
    bodies = await messages(ca, alice, room.room_id)
    assert not {"too many prevs", "orphan", "deep"} & set(bodies)


@pytest_twisted.ensureDeferred
async def test_a_long_missing_history_is_fetched_within_bounds(
    pair: tuple[RunningServer, RunningServer],
) -> None:
    """b.test holds back 300 events, then sends a.test only the newest: a.test fetches a
    bounded number of them, never walks the whole history, and its state does not move.
    Since the gap fill (issue #8, services/federation_gap.py) the newest is accepted: the
    oldest of the /get_missing_events answer takes the state before it from /state_ids, so
    a.test stores those MISSING_EVENTS_LIMIT events, its missing prev event and the newest."""
    room, _ca, _alice = await _setup(pair)
    cb = Client(pair[1].client_url)
    # b.test stops delivering to a.test; bob's messages pile up on b.test only.
    await room.sb.federation_sender.stop()
    for i in range(300):
        await send_text(cb, room.bob, room.room_id, f"held back {i}", f"held{i}")
    head = await room.sb.events.get_room(room.room_id)
    assert head is not None
    newest = list((await room.sb.events.get_events(head.extremities)).values())
    latest = newest[0].event
    before = await count(room.sa, "events", "room_id = ?", (room.room_id,))
    state_before = dict(await room.sa.state_store.current_state(room.room_id))

    start = time.monotonic()
    answer = await room.send("gap", [latest.pdu_json()])
    elapsed = time.monotonic() - start
    after = await count(room.sa, "events", "room_id = ?", (room.room_id,))
    assert after - before <= MISSING_EVENTS_LIMIT + 2
    assert answer["pdus"][latest.event_id] == {}
    assert dict(await room.sa.state_store.current_state(room.room_id)) == state_before
    assert elapsed < 30
    stored = await room.sa.events.get_event(latest.event_id)
    assert stored is not None and not stored.rejected
