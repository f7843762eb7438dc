"""Backfilling: when a client pages back through a room past where our copy of its history
stops (a server that joined late sees the room from its join on), ask the other servers in
the room for the events before that point (``GET /backfill``), check them as any received
event (format, signatures, content hash, the auth rules against their auth events) and store
them as history (``EventsService.persist_backfilled``) before answering the page.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import TYPE_CHECKING

from federation.auth_rules import AuthError, check_auth
from federation.events import Event
from federation.identifiers import create_event_id_from_room_id
from federation.pdu_checks import AuthEventsRejected, PduRejected, check_auth_events
from federation.room_versions import RoomVersion
from federation.transport.client import FederationClientError
from homeserver.storage.cache import LruCache

if TYPE_CHECKING:
    from homeserver.services.federation_in import FederationRooms
    from homeserver.services.registry import Services

logger = logging.getLogger(__name__)

# Events asked for per request, and gaps asked about at once.
BACKFILL_LIMIT = 50
MAX_EXTREMITIES = 5
MAX_FETCHED_AUTH = 20
# After a round that brought nothing, leave the room's gap alone for a while.
RETRY_AFTER_MS = 30_000
# A client's /messages waits for it.
BACKFILL_TIMEOUT_S = 20.0


class Backfiller:
    def __init__(self, s: Services, rooms: FederationRooms) -> None:
        self.s = s
        self.rooms = rooms
        self._failed: LruCache[str, int] = LruCache(10_000)
        s.rooms.backfiller = self.backfill

    async def backfill(self, room_id: str, low: int, high: int | None) -> bool:
        """Fill the gaps in the room's history at depths [low, high] (high None: the
        newest); True if any event was stored."""
        now = self.s.clock.time_ms()
        failed = self._failed.get(room_id)
        if failed is not None and now - failed < RETRY_AFTER_MS:
            return False
        gaps = await self.s.events.backward_extremities(room_id, low, high, MAX_EXTREMITIES)
        if not gaps:
            return False
        rv = await self.rooms.room_version(room_id)
        servers = sorted(await self.rooms.destinations(room_id))
        if rv is None or not servers:
            return False
        missing = list(dict.fromkeys(g[0] for g in gaps))
        successor = gaps[0][1]
        for server in servers:
            try:
                if await self._backfill_from(server, room_id, rv, missing, successor):
                    return True
            except (FederationClientError, PduRejected, ValueError, TypeError) as e:
                logger.info("backfilling %s from %s failed: %s", room_id, server, e)
        self._failed.set(room_id, now)
        return False

    async def _backfill_from(self, server: str, room_id: str, rv: RoomVersion,
                             missing: list[str], successor: str) -> bool:
        answer = await self.s.federation_client.get_json(
            server, f"/_matrix/federation/v1/backfill/{_q(room_id)}",
            {"v": missing, "limit": str(BACKFILL_LIMIT)}, timeout_s=BACKFILL_TIMEOUT_S)
        pdus = answer.get("pdus") if isinstance(answer, dict) else None
        if not isinstance(pdus, list):
            raise ValueError("the backfill answer has no pdus")
        batch: dict[str, Event] = {}
        for pdu in pdus[:BACKFILL_LIMIT]:
            try:
                event = await self.rooms.check_pdu(pdu, rv)
            except PduRejected as e:
                logger.info("a backfilled event from %s is invalid: %s", server, e.reason)
                continue
            if event.room_id == room_id:
                batch[event.event_id] = event
        known = await self.s.events.get_events(batch)
        for event_id in known:
            del batch[event_id]
        if not batch:
            return False
        await self._fetch_auth_events(server, room_id, rv, batch)
        ordered = _topological(batch)
        checked: list[tuple[Event, str | None]] = []
        failed: set[str] = set()  # failed auth earlier in this batch: rejected for later ones
        for ev in ordered:
            verdict = await self._auth_verdict(ev, batch, failed)
            if verdict is not None:
                failed.add(ev.event_id)
            checked.append((ev, verdict))
        stored = await self.s.pipeline.persist_backfilled(room_id, checked, successor)
        logger.info("backfilled %d events of %s from %s", len(stored), room_id, server)
        return bool(stored)

    async def _fetch_auth_events(self, server: str, room_id: str, rv: RoomVersion,
                                 batch: dict[str, Event]) -> None:
        """Auth events of the batch that we have nowhere, fetched one by one (bounded)."""
        for _ in range(3):
            wanted = {a for e in batch.values() for a in e.auth_event_ids} - set(batch)
            if rv.room_id_is_create_event_hash:
                wanted.discard(create_event_id_from_room_id(room_id))
            have = await self.s.events.get_events(wanted)
            todo = sorted(wanted - set(have))[:MAX_FETCHED_AUTH]
            if not todo:
                return
            for event_id in todo:
                fetched = await self.rooms._fetch_event(server, event_id, rv)
                if fetched is not None and fetched.room_id == room_id:
                    batch[event_id] = fetched

    async def _auth_verdict(self, event: Event, batch: dict[str, Event],
                            failed: Collection[str] = ()) -> str | None:
        """Why the event fails the auth rules against its own auth events (None: it
        passes)."""
        rv = event.room_version
        ids = list(event.auth_event_ids)
        create_id = None
        if rv.room_id_is_create_event_hash:
            create_id = create_event_id_from_room_id(event.room_id)
            ids.append(create_id)
        stored = await self.s.events.get_events([i for i in ids if i not in batch])
        auth = {i: batch[i] for i in ids if i in batch}
        auth.update({i: se.event for i, se in stored.items()})
        rejected = {i for i, se in stored.items() if se.rejected is not None} | set(failed)
        if any(i not in auth for i in event.auth_event_ids):
            return "auth events are missing"
        try:
            by_key = check_auth_events(
                event, {i: auth[i] for i in event.auth_event_ids}, rejected=rejected,
                create_event=auth.get(create_id) if create_id else None)
            check_auth(event, by_key)
        except AuthEventsRejected as e:
            return e.reason
        except AuthError as e:
            return e.reason
        return None


def _topological(batch: dict[str, Event]) -> list[Event]:
    """The batch with every event after the events of the batch it cites (prev and auth
    events), shallowest first otherwise."""
    out: list[Event] = []
    done: set[str] = set()
    entered: set[str] = set()  # a cycle (only forgeable in v1/v2 rooms) ends here
    for start in sorted(batch.values(), key=lambda e: (e.depth, e.event_id)):
        stack = [(start, False)]
        while stack:
            e, expanded = stack.pop()
            if e.event_id in done:
                continue
            if expanded:
                done.add(e.event_id)
                out.append(e)
                continue
            if e.event_id in entered:
                continue
            entered.add(e.event_id)
            stack.append((e, True))
            for p in [*e.prev_event_ids, *e.auth_event_ids]:
                if p in batch and p not in done:
                    stack.append((batch[p], False))
    return out


def _q(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")
