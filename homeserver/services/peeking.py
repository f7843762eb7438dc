"""The pre-/sync APIs clients still use to peek into rooms they are not in (matrix-js-sdk's
``peekInRoom``: ``/rooms/{id}/initialSync``, then ``/events?room_id=``): a room's state and
latest messages, and a long-poll for its new events; and ``/events/{eventId}``.

Every read goes through the history visibility rules of ``RoomService`` (members, former
members up to their leave, anyone for ``world_readable`` rooms); ``/events`` without a room
is the deprecated stream of every room the user is joined to.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from federation.events import JsonDict
from homeserver.http.errors import Codes, MatrixError, forbidden, not_found
from homeserver.services.notifier import Notifier
from homeserver.services.rooms import RoomService
from homeserver.storage.event_stream import events_after
from homeserver.storage.events import EVENTS_STREAM, Position, StoredEvent
from homeserver.storage.streams import current_position

HISTORY_VISIBILITY = ("m.room.history_visibility", "")
MEMBER = "m.room.member"
# Events in one /events answer; the client asks again from `end` for more.
STREAM_LIMIT = 100


class PeekingService:
    def __init__(self, rooms: RoomService, notifier: Notifier) -> None:
        self.rooms = rooms
        self.store = rooms.store
        self.notifier = notifier

    async def _require_room(self, room_id: str) -> None:
        if not await self.rooms.pipeline.room_exists(room_id):
            raise not_found(f"Unknown room {room_id}")

    async def _membership(self, room_id: str, user_id: str) -> str | None:
        ev = await self.rooms.pipeline.current_state_event(room_id, (MEMBER, user_id))
        return ev.event.membership if ev is not None else None

    async def _world_readable(self, room_id: str) -> bool:
        ev = await self.rooms.pipeline.current_state_event(room_id, HISTORY_VISIBILITY)
        return ev is not None and ev.event.content.get("history_visibility") == "world_readable"

    async def room_initial_sync(self, room_id: str, user_id: str, limit: int) -> JsonDict:
        """GET /rooms/{id}/initialSync: state (now, or when a former member left) and the
        latest ``limit`` messages the user may see, oldest first."""
        await self._require_room(room_id)
        # get_state refuses (403) whoever may not read the room; paginate applies the
        # history visibility of each event.
        state = await self.rooms.get_state(room_id, user_id)
        page = await self.rooms.paginate(room_id, user_id, direction="b", limit=limit)
        row = await self.store.get_room(room_id)
        out: JsonDict = {
            "room_id": room_id,
            "messages": {
                "chunk": list(reversed(page.chunk)),
                # Paginate /messages backwards from `start`; stream /events from `end`.
                "start": page.end if page.end is not None else Position(0, 0).token(),
                "end": page.start,
            },
            "state": state,
            "visibility": "public" if row is not None and row.is_public else "private",
        }
        membership = await self._membership(room_id, user_id)
        if membership is not None:
            out["membership"] = membership
        return out

    async def _stream_rooms(self, user_id: str, room_id: str | None) -> list[str]:
        if room_id is None:
            return await self.rooms.joined_rooms(user_id)
        await self._require_room(room_id)
        if await self._membership(room_id, user_id) != "join" \
                and not await self._world_readable(room_id):
            raise forbidden(f"{user_id} is not in room {room_id}, and it is not world readable")
        return [room_id]

    async def stream(
        self, user_id: str, room_id: str | None, from_token: str | None, timeout_ms: int
    ) -> JsonDict:
        """GET /events: the events after ``from`` (default: now) in the room, or in every
        room the user is joined to, waiting up to ``timeout_ms`` for one."""
        rooms = await self._stream_rooms(user_id, room_id)
        now = await current_position(self.store.db, EVENTS_STREAM)
        if from_token is None:
            start = now
        else:
            try:
                pos = Position.parse(from_token)
            except ValueError:
                raise MatrixError(400, Codes.INVALID_PARAM, "Invalid 'from' token") from None
            # A /messages token ('t…') also names a stream position: its event's.
            start = min(max(pos.stream, 0), now)
        if start >= now and timeout_ms > 0:
            await self.notifier.wait_for(user_id, rooms, {EVENTS_STREAM: start}, timeout_ms)
            now = await current_position(self.store.db, EVENTS_STREAM)
        events = await events_after(self.store.db, self.store, rooms, start, now, STREAM_LIMIT)
        # A full page ends at its last event; the rest comes with the next request.
        end = events[-1].stream_ordering if len(events) >= STREAM_LIMIT else now
        by_room: dict[str, list[StoredEvent]] = defaultdict(list)
        for e in events:
            by_room[e.room_id].append(e)
        visible: list[StoredEvent] = []
        for rid, evs in by_room.items():
            visible.extend(await self.rooms.filter_visible(rid, user_id, evs))
        visible.sort(key=lambda e: e.stream_ordering)
        chunk: list[Any] = await self.rooms.serialize(visible, user_id)
        return {"chunk": chunk, "start": Position(None, start).token(),
                "end": Position(None, end).token()}

    async def event(self, user_id: str, event_id: str) -> JsonDict:
        """GET /events/{eventId}: any event the user may see, wherever it is."""
        stored = await self.store.get_event(event_id)
        if stored is None or not await self.rooms.filter_visible(
                stored.room_id, user_id, [stored]):
            raise not_found("Event not found or you may not see it")
        return (await self.rooms.serialize([stored], user_id))[0]
