"""Space hierarchies: GET /rooms/{roomId}/hierarchy over local rooms.

A breadth-first walk from the root along ``m.space.child`` state events (those with a
non-empty ``via``; only ``suggested`` ones with ``suggested_only``), children in the spec's
order (``order``, then the child event's timestamp, then room ID), to ``max_depth``, never
visiting a room twice. A room is shown if the user may see it: joined or invited, world
readable, a public or knock join rule, or a restricted one whose allowed rooms include one
the user is joined to; others (and unknown or remote rooms) are left out. The root must be
visible (403 otherwise). Pages are offsets into the walk (``next_batch``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from federation.events import Event, JsonDict, StateKey
from homeserver.http.errors import Codes, MatrixError, forbidden
from homeserver.services.directory import DirectoryService
from homeserver.services.events import EventsService
from homeserver.storage.state import StateFilter

SPACE_CHILD = "m.space.child"
MAX_LIMIT = 100
DEFAULT_LIMIT = 50
MAX_DEPTH = 50


@dataclass
class HierarchyPage:
    rooms: list[JsonDict]
    next_batch: str | None


def _valid_order(value: Any) -> str | None:
    if isinstance(value, str) and len(value) <= 50 and all(0x20 <= ord(c) <= 0x7E for c in value):
        return value
    return None


class HierarchyService:
    def __init__(self, *, pipeline: EventsService, directory: DirectoryService) -> None:
        self.pipeline = pipeline
        self.store = pipeline.store
        self.state_store = pipeline.state_store
        self.directory = directory

    async def _room_state(self, room_id: str, types: list[str]) -> dict[StateKey, Event]:
        ids = await self.pipeline.current_state_ids(room_id, StateFilter.from_types(types))
        found = await self.store.get_events(ids.values())
        return {k: found[i].event for k, i in ids.items() if i in found}

    async def _accessible(self, room_id: str, user_id: str) -> bool:
        if not await self.pipeline.room_exists(room_id):
            return False
        member = await self.state_store.membership(room_id, user_id)
        if member is not None and member.membership in ("join", "invite"):
            return True
        state = await self._room_state(
            room_id, ["m.room.history_visibility", "m.room.join_rules"]
        )
        hv = state.get(("m.room.history_visibility", ""))
        if hv is not None and hv.content.get("history_visibility") == "world_readable":
            return True
        jr = state.get(("m.room.join_rules", ""))
        rule = jr.content.get("join_rule") if jr is not None else None
        if rule in ("public", "knock"):
            return True
        if rule in ("restricted", "knock_restricted") and jr is not None:
            allow = jr.content.get("allow")
            for entry in allow if isinstance(allow, list) else []:
                other = entry.get("room_id") if isinstance(entry, dict) else None
                if isinstance(other, str) and other != room_id:
                    m = await self.state_store.membership(other, user_id)
                    if m is not None and m.membership == "join":
                        return True
        return False

    async def _children(self, room_id: str, suggested_only: bool) -> list[Event]:
        state = await self._room_state(room_id, [SPACE_CHILD])
        children = []
        for (_, child_id), ev in state.items():
            via = ev.content.get("via")
            if not child_id or not isinstance(via, list) or not via:
                continue
            if suggested_only and ev.content.get("suggested") is not True:
                continue
            children.append(ev)

        def key(ev: Event) -> tuple[int, str, int, str]:
            order = _valid_order(ev.content.get("order"))
            return (0 if order is not None else 1, order or "", ev.origin_server_ts,
                    ev.state_key or "")

        return sorted(children, key=key)

    async def hierarchy(
        self, room_id: str, user_id: str, *, suggested_only: bool = False,
        max_depth: int | None = None, limit: int = DEFAULT_LIMIT, from_token: str | None = None,
    ) -> HierarchyPage:
        offset = 0
        if from_token is not None:
            try:
                offset = int(from_token)
            except ValueError:
                raise MatrixError(400, Codes.INVALID_PARAM, "Invalid pagination token") from None
            if offset < 0:
                raise MatrixError(400, Codes.INVALID_PARAM, "Invalid pagination token")
        if not await self._accessible(room_id, user_id):
            raise forbidden("You may not view this room's hierarchy")
        depth_limit = MAX_DEPTH if max_depth is None else min(max_depth, MAX_DEPTH)
        queue: deque[tuple[str, int]] = deque([(room_id, 0)])
        seen = {room_id}
        rooms: list[JsonDict] = []
        index = 0
        more = False
        while queue:
            current, depth = queue.popleft()
            if current != room_id and not await self._accessible(current, user_id):
                continue
            if index >= offset + limit:
                more = True
                break
            children = await self._children(current, suggested_only)
            if index >= offset:
                entry = await self.directory.summary(current)
                if entry is not None:
                    entry["children_state"] = [
                        {"type": ev.type, "state_key": ev.state_key, "content": ev.content,
                         "sender": ev.sender, "origin_server_ts": ev.origin_server_ts}
                        for ev in children
                    ]
                    rooms.append(entry)
            index += 1
            if depth < depth_limit:
                for ev in children:
                    child = ev.state_key or ""
                    if child not in seen:
                        seen.add(child)
                        queue.append((child, depth + 1))
        return HierarchyPage(rooms, str(offset + limit) if more else None)
