"""Reporting content to the server's operators, and /timestamp_to_event.

Reports of events need the event to be one the reporter may see (else 404, so a report
cannot probe for events); reports of rooms need the room to exist. Both are stored in
``event_reports`` for the admin API. ``timestamp_to_event`` walks the room's events by
``origin_server_ts`` from the given time and answers with the first the user may see.
"""

from __future__ import annotations

from dataclasses import dataclass

from federation.events import JsonDict
from homeserver.http.errors import Codes, MatrixError, not_found
from homeserver.services.rooms import RoomService
from homeserver.storage.events import StoredEvent
from homeserver.storage.room_reports import EventReport, RoomReportStore
from homeserver.storage.state import StateFilter

BATCH = 20
MAX_BATCHES = 10


@dataclass(frozen=True)
class ClosestEvent:
    event_id: str
    origin_server_ts: int


class RoomReportService:
    def __init__(self, *, rooms: RoomService, store: RoomReportStore) -> None:
        self.rooms = rooms
        self.store = store
        self.events = rooms.store

    async def report_event(
        self, room_id: str, user_id: str, event_id: str, reason: str | None, score: int | None
    ) -> int:
        if not await self.rooms.pipeline.room_exists(room_id):
            raise not_found(f"Unknown room {room_id}")
        ev = await self.events.get_event(event_id)
        if ev is None or ev.room_id != room_id:
            raise not_found("Event not found")
        if not await self.rooms.filter_visible(room_id, user_id, [ev]):
            raise not_found("Event not found or you may not see it")
        return await self.store.add_report(
            now=self.rooms.clock.time_ms(), room_id=room_id, event_id=event_id,
            user_id=user_id, reason=reason, score=score,
        )

    async def report_room(self, room_id: str, user_id: str, reason: str) -> int:
        if not await self.rooms.pipeline.room_exists(room_id):
            raise not_found(f"Unknown room {room_id}")
        return await self.store.add_report(
            now=self.rooms.clock.time_ms(), room_id=room_id, event_id=None, user_id=user_id,
            reason=reason, score=None,
        )

    async def list_reports(
        self, *, offset: int, limit: int, newest_first: bool, room_id: str | None,
        user_id: str | None,
    ) -> tuple[list[JsonDict], int]:
        reports, total = await self.store.reports(
            offset=offset, limit=limit, newest_first=newest_first, room_id=room_id,
            user_id=user_id,
        )
        events = await self.events.get_events(r.event_id for r in reports if r.event_id)
        return [await self._report_json(r, events) for r in reports], total

    async def _report_json(self, r: EventReport, events: dict[str, StoredEvent]) -> JsonDict:
        out: JsonDict = {
            "id": r.id, "received_ts": r.received_ts, "room_id": r.room_id,
            "event_id": r.event_id, "user_id": r.user_id, "reason": r.reason, "score": r.score,
        }
        ev = events.get(r.event_id) if r.event_id else None
        if ev is not None:
            out["sender"] = ev.event.sender
        try:
            ids = await self.rooms.pipeline.current_state_ids(
                r.room_id,
                StateFilter.from_keys([("m.room.name", ""), ("m.room.canonical_alias", "")]),
            )
        except MatrixError:
            return out
        found = await self.events.get_events(ids.values())
        for key, field, name in ((("m.room.name", ""), "name", "name"),
                                 (("m.room.canonical_alias", ""), "alias", "canonical_alias")):
            state = found.get(ids[key]) if key in ids else None
            value = state.event.content.get(field) if state is not None else None
            out[name] = value if isinstance(value, str) else None
        return out

    async def timestamp_to_event(
        self, room_id: str, user_id: str, ts: int, direction: str
    ) -> ClosestEvent:
        if direction not in ("f", "b"):
            raise MatrixError(400, Codes.INVALID_PARAM, "dir must be 'f' or 'b'")
        if not await self.rooms.pipeline.room_exists(room_id):
            raise not_found(f"Unknown room {room_id}")
        joined = await self.rooms._check_history_access(room_id, user_id)
        after: tuple[int, int] | None = None
        for _ in range(MAX_BATCHES):
            rows = await self.store.events_near(room_id, ts, direction == "f", after, BATCH)
            if not rows:
                break
            after = (rows[-1][1], rows[-1][2])
            loaded = await self.events.get_events(r[0] for r in rows)
            candidates = [loaded[r[0]] for r in rows if r[0] in loaded]
            visible = {
                e.event_id
                for e in await self.rooms.filter_visible(room_id, user_id, candidates, joined)
            }
            for event_id, origin_ts, _ in rows:
                if event_id in visible:
                    return ClosestEvent(event_id, origin_ts)
            if len(rows) < BATCH:
                break
        raise not_found(f"Unable to find an event {'after' if direction == 'f' else 'before'}"
                        f" {ts} in room {room_id}")
