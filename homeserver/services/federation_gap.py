"""Filling a gap too big for /get_missing_events: the state before each missing prev event
from the origin (``/state_ids``), the events of it we lack fetched one by one (``/event``),
as Synapse's ``_get_state_ids_after_missing_prev_event`` does.

Every fetched event passes ``pdu_checks`` steps 1-3 and the auth rules against its own auth
events; a bad one, an answer that is not the room's state, or more than ``MAX_GAP_FETCHES``
fetches refuses the whole fill, so nothing is stored. The pipeline then stores what was
fetched as history and receives the event on its prevs' states (``receive_across_gap``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from federation.auth_rules import AuthError, check_auth
from federation.events import Event, StateKey
from federation.identifiers import create_event_id_from_room_id
from federation.pdu_checks import AuthEventsRejected, PduRejected, check_auth_events
from federation.transport.client import FederationClientError
from homeserver.services.events import MissingEvents, ReceivedResult

if TYPE_CHECKING:
    from homeserver.services.federation_in import FederationRooms
    from homeserver.storage.events import StoredEvent

logger = logging.getLogger(__name__)

# At most this many /event fetches (and /state_ids requests) for one received PDU.
MAX_GAP_FETCHES = 500
# A /state_ids answer naming more events than this is refused (IDs only; the events we
# lack count against MAX_GAP_FETCHES).
MAX_GAP_STATE = 100_000


class GapTooBig(Exception):
    """The fill would take more than ``MAX_GAP_FETCHES`` requests."""


class Budget:
    """Requests left for one received PDU, shared by every fill it leads to."""

    def __init__(self, left: int = MAX_GAP_FETCHES) -> None:
        self.left = left

    def take(self) -> None:
        if self.left <= 0:
            raise GapTooBig(f"more than {MAX_GAP_FETCHES} requests to fill a gap")
        self.left -= 1


class GapFiller:
    def __init__(self, rooms: FederationRooms) -> None:
        self.rooms = rooms
        self.s = rooms.s

    async def fill(self, origin: str, event: Event, missing_prevs: Sequence[str],
                   budget: Budget) -> ReceivedResult:
        """Receive ``event`` whose ``missing_prevs`` we lack. Raises PduRejected when the
        origin's answers are invalid, MissingEvents when they are incomplete or too big."""
        try:
            fetched: dict[str, Event] = {}
            prev_state_ids = {}
            missing_prevs = list(dict.fromkeys(missing_prevs))
            for p in missing_prevs:
                await self._fetch(origin, event, [p], fetched, budget)
                if p in fetched:  # else stored meanwhile: no gap before it any more
                    prev_state_ids[p] = await self._state_ids(origin, event, p, budget)
            gap = list(prev_state_ids)
            wanted = {i for ids in prev_state_ids.values() for i in ids}
            wanted |= {a for p in gap for a in fetched[p].auth_event_ids}
            wanted |= set(event.auth_event_ids)
            await self._fetch(origin, event, wanted, fetched, budget)
            known = await self._close_auth(origin, event, fetched, budget)
            stored = await self.s.events.get_events(wanted - fetched.keys())
            _refuse_rejected(stored)
        except (GapTooBig, FederationClientError) as e:
            logger.info("cannot fill the gap before %s from %s: %s", event.event_id,
                        origin, e)
            raise MissingEvents(list(missing_prevs)) from None
        everything = {**known, **{i: se.event for i, se in stored.items()}, **fetched}
        history = [e for e in _auth_order(fetched.values())
                   if e.event_id not in gap]
        _check_auth_chain(history, everything)
        prevs = []
        for p in gap:
            state = _state_map(prev_state_ids[p], everything, event.room_id)
            _check_auth_chain([fetched[p]], everything)
            prevs.append((fetched[p], state))
        return await self.s.pipeline.receive_across_gap(event, history, prevs)

    async def _state_ids(self, origin: str, event: Event, prev_id: str,
                         budget: Budget) -> list[str]:
        from homeserver.services.federation_in import q

        budget.take()
        answer = await self.s.federation_client.get_json(
            origin, f"/_matrix/federation/v1/state_ids/{q(event.room_id)}",
            {"event_id": prev_id})
        ids = answer.get("pdu_ids") if isinstance(answer, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise PduRejected(f"{origin} answered /state_ids without pdu_ids")
        if len(ids) > MAX_GAP_STATE:
            raise GapTooBig(f"a state of {len(ids)} events")
        return ids

    async def _fetch(self, origin: str, event: Event, ids: Iterable[str],
                     fetched: dict[str, Event], budget: Budget) -> None:
        """Fetch the events of ``ids`` we have neither stored nor fetched yet."""
        todo = [i for i in dict.fromkeys(ids) if i not in fetched]
        stored = await self.s.events.get_events(todo)
        for event_id in todo:
            if event_id in stored:
                continue
            budget.take()
            got = await self._fetch_one(origin, event_id, event)
            fetched[event_id] = got

    async def _fetch_one(self, origin: str, event_id: str, event: Event) -> Event:
        from homeserver.services.federation_in import q

        answer = await self.s.federation_client.get_json(
            origin, f"/_matrix/federation/v1/event/{q(event_id)}")
        pdus = answer.get("pdus") if isinstance(answer, dict) else None
        if not isinstance(pdus, list) or len(pdus) != 1:
            raise PduRejected(f"{origin} answered /event/{event_id} without one PDU")
        got = await self.rooms.check_pdu(pdus[0], event.room_version)
        if got.event_id != event_id or got.room_id != event.room_id:
            raise PduRejected(f"{origin} answered /event/{event_id} with another event")
        return got

    async def _close_auth(self, origin: str, event: Event, fetched: dict[str, Event],
                          budget: Budget) -> dict[str, Event]:
        """Fetch the auth events of fetched events we still lack, transitively; returns the
        stored events the fetched ones cite."""
        known: dict[str, Event] = {}
        while True:
            cited = {a for e in list(fetched.values()) for a in e.auth_event_ids}
            if event.room_version.room_id_is_create_event_hash:
                cited.add(create_event_id_from_room_id(event.room_id))
            cited -= fetched.keys() | known.keys()
            if not cited:
                return known
            stored = await self.s.events.get_events(cited)
            _refuse_rejected(stored)
            known.update({i: se.event for i, se in stored.items()})
            lacking = cited - stored.keys()
            if not lacking:
                return known
            await self._fetch(origin, event, lacking, fetched, budget)


def _auth_order(events: Iterable[Event]) -> list[Event]:
    """``events`` with each after the auth events of it among them."""
    todo = {e.event_id: e for e in events}
    out: list[Event] = []
    done: set[str] = set()

    def visit(e: Event) -> None:
        stack = [(e, False)]
        while stack:
            ev, ready = stack.pop()
            if ready:
                out.append(ev)
                continue
            if ev.event_id in done:
                continue
            done.add(ev.event_id)
            stack.append((ev, True))
            stack.extend((todo[a], False) for a in ev.auth_event_ids
                         if a in todo and a not in done)

    for e in sorted(todo.values(), key=lambda e: (e.depth, e.event_id)):
        visit(e)
    return out


def _check_auth_chain(events: Iterable[Event], by_id: Mapping[str, Event]) -> None:
    """Each event must pass the auth rules against its own auth events."""
    for e in events:
        create = None
        if e.room_version.room_id_is_create_event_hash and not e.is_create():
            create = by_id.get(create_event_id_from_room_id(e.room_id))
        try:
            # Every cited auth event must be there (and none rejected: _refuse_rejected).
            auth = check_auth_events(
                e, {a: by_id[a] for a in e.auth_event_ids if a in by_id}, create_event=create)
            check_auth(e, auth)
        except AuthEventsRejected as err:
            raise PduRejected(f"{e.event_id} from the gap has bad auth events: "
                              f"{err.reason}") from None
        except AuthError as err:
            raise PduRejected(f"{e.event_id} from the gap fails the auth rules: "
                              f"{err.reason}") from None


def _refuse_rejected(stored: Mapping[str, StoredEvent]) -> None:
    """Events we stored as rejected are neither state nor auth events for a fill."""
    bad = sorted(i for i, se in stored.items() if se.rejected is not None)
    if bad:
        raise PduRejected(f"the gap cites events rejected here: {', '.join(bad)}")


def _state_map(ids: Sequence[str], by_id: Mapping[str, Event],
               room_id: str) -> dict[StateKey, str]:
    """The (type, state_key) map of a /state_ids answer; refused unless it holds one state
    event of the room per key, with a create event."""
    state: dict[StateKey, str] = {}
    for i in ids:
        e = by_id[i]
        if not e.is_state() or e.room_id != room_id or e.state_tuple in state:
            raise PduRejected(f"the state given for the gap is not a room state ({i})")
        state[e.state_tuple] = i
    if ("m.room.create", "") not in state:
        raise PduRejected("the state given for the gap has no create event")
    return state
