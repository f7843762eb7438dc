"""Relations: /relations, /threads and the bundled aggregations in ``unsigned.m.relations``.

The index (``storage.relations``) is written in the persist transaction. Every read goes
through ``RoomService.filter_visible``: a relation, a thread, an edit or a reference the
reader may not see under the history visibility rules is never served, nor counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from federation.events import JsonDict
from homeserver.http.errors import Codes, MatrixError, not_found
from homeserver.services.events import client_event
from homeserver.services.rooms import RoomService
from homeserver.storage.events import Position, StoredEvent
from homeserver.storage.relations import MAX_RECURSION, RelationStore

MAX_LIMIT = 1000
# Rounds of fetching when visibility filtering leaves a page empty.
MAX_ROUNDS = 5


@dataclass
class RelationsPage:
    chunk: list[JsonDict]
    next_batch: str | None
    prev_batch: str | None
    recursion_depth: int | None


@dataclass
class ThreadsPage:
    chunk: list[JsonDict]
    next_batch: str | None


def _bad(message: str) -> MatrixError:
    return MatrixError(400, Codes.INVALID_PARAM, message)


class RelationsService:
    def __init__(self, *, rooms: RoomService, store: RelationStore) -> None:
        self.rooms = rooms
        self.store = store
        self.events = rooms.store

    async def _visible_target(self, room_id: str, user_id: str, event_id: str) -> StoredEvent:
        if not await self.rooms.pipeline.room_exists(room_id):
            raise not_found(f"Unknown room {room_id}")
        ev = await self.events.get_event(event_id)
        if ev is None or ev.room_id != room_id:
            raise not_found("Event not found")
        if not await self.rooms.filter_visible(room_id, user_id, [ev]):
            raise not_found("Event not found or you may not see it")
        return ev

    # -- GET /rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]] --------------------
    async def relations(
        self,
        room_id: str,
        user_id: str,
        event_id: str,
        *,
        rel_type: str | None = None,
        event_type: str | None = None,
        from_token: str | None = None,
        to_token: str | None = None,
        direction: str = "b",
        limit: int = 5,
        recurse: bool = False,
        device_id: str | None = None,
    ) -> RelationsPage:
        if direction not in ("b", "f"):
            raise _bad("dir must be 'b' or 'f'")
        try:
            start = Position.parse(from_token) if from_token else None
            end = Position.parse(to_token) if to_token else None
        except ValueError as e:
            raise _bad(str(e)) from None
        await self._visible_target(room_id, user_id, event_id)
        backwards = direction == "b"
        limit = max(1, min(limit, MAX_LIMIT))
        chunk: list[StoredEvent] = []
        position = start
        more = True
        for _ in range(MAX_ROUNDS):
            rows = await self.store.relations(
                room_id, event_id, rel_type=rel_type, event_type=event_type, recurse=recurse,
                start=position, end=end, backwards=backwards, limit=limit + 1,
            )
            more = len(rows) > limit
            rows = rows[:limit]
            if rows:
                last = rows[-1]
                position = Position(last.depth, last.stream - (1 if backwards else 0))
            loaded = await self.events.get_events(r.event_id for r in rows)
            found = [loaded[r.event_id] for r in rows if r.event_id in loaded]
            chunk += await self.rooms.filter_visible(room_id, user_id, found)
            if chunk or not more:
                break
        return RelationsPage(
            chunk=await self.rooms.serialize(chunk, user_id, device_id),
            next_batch=position.token() if more and position is not None else None,
            prev_batch=from_token,
            recursion_depth=MAX_RECURSION if recurse else None,
        )

    # -- GET /rooms/{roomId}/threads ---------------------------------------------------------
    async def threads(
        self,
        room_id: str,
        user_id: str,
        *,
        include: str = "all",
        from_token: str | None = None,
        limit: int = 50,
        device_id: str | None = None,
    ) -> ThreadsPage:
        if include not in ("all", "participated"):
            raise _bad("include must be 'all' or 'participated'")
        before: int | None = None
        if from_token:
            try:
                before = int(from_token)
            except ValueError:
                raise _bad("Invalid pagination token") from None
        if not await self.rooms.pipeline.room_exists(room_id):
            raise not_found(f"Unknown room {room_id}")
        await self.rooms._check_history_access(room_id, user_id)
        limit = max(1, min(limit, MAX_LIMIT))
        roots: list[StoredEvent] = []
        more = True
        for _ in range(MAX_ROUNDS):
            rows = await self.store.threads(room_id, before=before, limit=limit + 1)
            more = len(rows) > limit
            rows = rows[:limit]
            if rows:
                before = rows[-1][1]
            loaded = await self.events.get_events(root for root, _ in rows)
            found = [loaded[r] for r, _ in rows if r in loaded and loaded[r].room_id == room_id]
            visible = await self.rooms.filter_visible(room_id, user_id, found)
            if include == "participated" and visible:
                summaries = await self._threads({e.event_id: e for e in visible}, user_id)
                visible = [
                    e for e in visible
                    if e.event.sender == user_id
                    or summaries.get(e.event_id, {}).get("current_user_participated")
                ]
            roots += visible
            if len(roots) >= limit or not more:
                break
        return ThreadsPage(
            chunk=await self.rooms.serialize(roots[:limit], user_id, device_id),
            next_batch=str(before) if more and before is not None else None,
        )

    # -- bundled aggregations ------------------------------------------------------------------
    async def bundle(
        self, events: Sequence[StoredEvent], serialized: list[JsonDict], user_id: str
    ) -> None:
        """Add ``unsigned.m.relations`` to the served events that have edits, a thread or
        references the user may see. State events and redacted events get none."""
        targets = {
            e.event_id: e for e in events
            if not e.event.is_state() and e.redacted_by is None and e.rejected is None
        }
        if not targets:
            return
        related = await self.store.bundled(targets)
        if not related:
            return
        by_room: dict[str, list[StoredEvent]] = {}
        loaded = await self.events.get_events(r.event_id for r in related)
        for loaded_ev in loaded.values():
            by_room.setdefault(loaded_ev.room_id, []).append(loaded_ev)
        visible: set[str] = set()
        for room_id, evs in by_room.items():
            visible |= {e.event_id for e in await self.rooms.filter_visible(room_id, user_id, evs)}
        now = self.rooms.clock.time_ms()
        aggregations: dict[str, dict[str, Any]] = {}
        threads: dict[str, list[StoredEvent]] = {}
        edits: dict[str, StoredEvent] = {}
        for r in related:
            ev = loaded.get(r.event_id)
            target = targets.get(r.relates_to)
            if ev is None or target is None or r.event_id not in visible:
                continue
            if ev.room_id != target.room_id:
                continue
            if r.rel_type == "m.replace":
                # Only the original sender's edits of the same type count.
                if ev.event.sender != target.event.sender or ev.event.type != target.event.type:
                    continue
                if ev.event.is_state():
                    continue
                best = edits.get(r.relates_to)
                key = (ev.event.origin_server_ts, ev.event_id)
                if best is None or key > (best.event.origin_server_ts, best.event_id):
                    edits[r.relates_to] = ev
            elif r.rel_type == "m.thread":
                threads.setdefault(r.relates_to, []).append(ev)
            elif r.rel_type == "m.reference":
                refs = aggregations.setdefault(r.relates_to, {}).setdefault(
                    "m.reference", {"chunk": []}
                )
                refs["chunk"].append({"event_id": r.event_id})
        for target_id, latest_edit in edits.items():
            aggregations.setdefault(target_id, {})["m.replace"] = client_event(latest_edit, now)
        for root_id, replies in threads.items():
            latest = replies[-1]
            latest_json = client_event(latest, now)
            edit = edits.get(latest.event_id)
            if edit is not None:
                latest_json["unsigned"]["m.relations"] = {"m.replace": client_event(edit, now)}
            aggregations.setdefault(root_id, {})["m.thread"] = {
                "latest_event": latest_json,
                "count": len(replies),
                "current_user_participated": targets[root_id].event.sender == user_id
                or any(e.event.sender == user_id for e in replies),
            }
        for out in serialized:
            agg = aggregations.get(out["event_id"])
            if agg:
                out.setdefault("unsigned", {})["m.relations"] = agg

    async def _threads(
        self, roots: dict[str, StoredEvent], user_id: str
    ) -> dict[str, dict[str, Any]]:
        """The m.thread summaries of ``roots`` as served to the user."""
        items = list(roots.values())
        serialized: list[JsonDict] = [{"event_id": e.event_id} for e in items]
        await self.bundle(items, serialized, user_id)
        out: dict[str, dict[str, Any]] = {}
        for s in serialized:
            relations = s.get("unsigned", {}).get("m.relations", {})
            out[s["event_id"]] = relations.get("m.thread", {})
        return out
