"""Space hierarchies: GET /rooms/{roomId}/hierarchy over local rooms.

A breadth-first walk from the root along ``m.space.child`` state events (those with a
non-empty ``via``; only ``suggested`` ones with ``suggested_only``), children in the spec's
order (``order``, then the child event's timestamp, then room ID), to ``max_depth``, never
visiting a room twice. A room is shown if the user may see it: joined or invited, world
readable, a public or knock join rule, or a restricted one whose allowed rooms include one
the user is joined to; others are left out. Rooms this server does not have (the root
included) are described by other servers (``remote_lookup``, set by
``services/federation_directory``). The root must be visible (403 otherwise). Pages are
offsets into the walk (``next_batch``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Sequence
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


RemoteLookup = Callable[[str, Sequence[str]], Awaitable[JsonDict | None]]


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
        # Rooms this server does not have: set by the federation side to a factory of one
        # walk's lookup, (room ID, via servers) -> the room's summary with its
        # children_state, or None.
        self.remote_lookup: Callable[[bool], RemoteLookup] | None = None

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

    # For room summaries (services/room_summary).
    async def accessible(self, room_id: str, user_id: str) -> bool:
        return await self._accessible(room_id, user_id)

    async def remote_visible(self, entry: JsonDict, user_id: str) -> bool:
        return await self._remote_visible(entry, user_id)

    # For the federation side (services/federation_directory).
    async def room_state(self, room_id: str, types: list[str]) -> dict[StateKey, Event]:
        return await self._room_state(room_id, types)

    async def children(self, room_id: str, suggested_only: bool) -> list[Event]:
        return await self._children(room_id, suggested_only)

    async def hierarchy(
        self, room_id: str, user_id: str, *, suggested_only: bool = False,
        max_depth: int | None = None, limit: int = DEFAULT_LIMIT, from_token: str | None = None,
        via: Sequence[str] = (),
    ) -> HierarchyPage:
        """The walk from ``room_id``. Rooms this server does not have (the root included)
        come from other servers' ``/hierarchy`` answers through ``remote_lookup`` (asked of
        the ``via`` servers of the child event, or for the root of ``via`` and the room
        ID's server)."""
        offset = 0
        if from_token is not None:
            try:
                offset = int(from_token)
            except ValueError:
                raise MatrixError(400, Codes.INVALID_PARAM, "Invalid pagination token") from None
            if offset < 0:
                raise MatrixError(400, Codes.INVALID_PARAM, "Invalid pagination token")
        lookup = self.remote_lookup(suggested_only) if self.remote_lookup is not None else None
        root_via = [*via, *([d] if (d := _domain(room_id)) else [])]
        if await self.pipeline.room_exists(room_id):
            if not await self._accessible(room_id, user_id):
                raise forbidden("You may not view this room's hierarchy")
        else:
            remote_root = await lookup(room_id, root_via) if lookup is not None else None
            if remote_root is None or not await self._remote_visible(remote_root, user_id):
                raise forbidden("You may not view this room's hierarchy")
        depth_limit = MAX_DEPTH if max_depth is None else min(max_depth, MAX_DEPTH)
        queue: deque[tuple[str, int, list[str]]] = deque([(room_id, 0, root_via)])
        seen = {room_id}
        rooms: list[JsonDict] = []
        index = 0
        more = False
        while queue:
            current, depth, child_via = queue.popleft()
            remote: JsonDict | None = None
            if not await self.pipeline.room_exists(current):
                remote = await lookup(current, child_via) if lookup is not None else None
                if remote is None or not await self._remote_visible(remote, user_id):
                    continue
            elif current != room_id and not await self._accessible(current, user_id):
                continue
            if index >= offset + limit:
                more = True
                break
            if remote is not None:
                children = _remote_children(remote, suggested_only)
            else:
                children = [
                    {"type": ev.type, "state_key": ev.state_key, "content": ev.content,
                     "sender": ev.sender, "origin_server_ts": ev.origin_server_ts}
                    for ev in await self._children(current, suggested_only)
                ]
            if index >= offset:
                entry = dict(remote) if remote is not None else \
                    await self.directory.summary(current)
                if entry is not None:
                    entry["children_state"] = children
                    rooms.append(entry)
            index += 1
            if depth < depth_limit:
                for child in children:
                    child_id = child["state_key"] or ""
                    if child_id not in seen:
                        seen.add(child_id)
                        hint = child["content"].get("via")
                        queue.append((child_id, depth + 1,
                                      [v for v in hint if isinstance(v, str)]))
        return HierarchyPage(rooms, str(offset + limit) if more else None)

    async def _remote_visible(self, entry: JsonDict, user_id: str) -> bool:
        """Whether a user may see a room described by another server (which already left
        out what this server may not see): world readable, public or knockable, or
        restricted to a room the user is joined to here."""
        if entry.get("world_readable") is True or entry.get("join_rule") in ("public", "knock"):
            return True
        if entry.get("join_rule") in ("restricted", "knock_restricted"):
            allowed = entry.get("allowed_room_ids")
            for other in allowed if isinstance(allowed, list) else []:
                if isinstance(other, str):
                    m = await self.state_store.membership(other, user_id)
                    if m is not None and m.membership == "join":
                        return True
        return False


def _domain(room_id: str) -> str | None:
    _, sep, domain = room_id.partition(":")
    return domain if sep and domain else None


def _remote_children(entry: JsonDict, suggested_only: bool) -> list[JsonDict]:
    """The valid ``m.space.child`` entries of a remote summary, in the spec's order."""
    raw = entry.get("children_state")
    children = []
    for child in raw if isinstance(raw, list) else []:
        if not isinstance(child, dict) or child.get("type") != SPACE_CHILD:
            continue
        content, child_id = child.get("content"), child.get("state_key")
        if not isinstance(content, dict) or not isinstance(child_id, str) or not child_id:
            continue
        via = content.get("via")
        if not isinstance(via, list) or not via:
            continue
        if suggested_only and content.get("suggested") is not True:
            continue
        ts = child.get("origin_server_ts")
        children.append({**child, "origin_server_ts": ts if isinstance(ts, int) else 0})

    def key(child: JsonDict) -> tuple[int, str, int, str]:
        order = _valid_order(child["content"].get("order"))
        return (0 if order is not None else 1, order or "", child["origin_server_ts"],
                child["state_key"])

    return sorted(children, key=key)
