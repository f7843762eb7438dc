"""The public room directory: which local rooms are published, and their summaries.

A room is published by the ``rooms.is_public`` flag (``createRoom`` with
``visibility: public`` sets it, ``PUT /directory/list/room/{roomId}`` changes it). A listing
reads each published room's current state (name, topic, alias, avatar, join rule, history
visibility, guest access, room type) and its joined member count, filters by the search term
and room types, orders by joined members (most first) then room ID, and pages with keyset
tokens (the last room's sort key), so a page never skips or repeats a room that stays put.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from federation.events import JsonDict, StateKey
from federation.power_levels import get_send_level, get_user_power_level
from homeserver.config import Config
from homeserver.http.errors import Codes, MatrixError, forbidden, not_found
from homeserver.services.events import EventsService
from homeserver.storage.events import EventStore
from homeserver.storage.state import StateFilter, StateStore
from homeserver.storage.users import UserStore

CREATE: StateKey = ("m.room.create", "")
POWER_LEVELS: StateKey = ("m.room.power_levels", "")
NAME: StateKey = ("m.room.name", "")
TOPIC: StateKey = ("m.room.topic", "")
AVATAR: StateKey = ("m.room.avatar", "")
CANONICAL_ALIAS: StateKey = ("m.room.canonical_alias", "")
JOIN_RULES: StateKey = ("m.room.join_rules", "")
HISTORY_VISIBILITY: StateKey = ("m.room.history_visibility", "")
GUEST_ACCESS: StateKey = ("m.room.guest_access", "")
SUMMARY_KEYS = [CREATE, NAME, TOPIC, AVATAR, CANONICAL_ALIAS, JOIN_RULES, HISTORY_VISIBILITY,
                GUEST_ACCESS]
MAX_LIMIT = 500


@dataclass(frozen=True)
class DirectoryPage:
    chunk: list[JsonDict]
    next_batch: str | None
    prev_batch: str | None
    total_room_count_estimate: int


def _str(content: dict[str, Any] | None, key: str) -> str | None:
    value = (content or {}).get(key)
    return value if isinstance(value, str) else None


def _encode_token(direction: str, key: tuple[int, str]) -> str:
    raw = json.dumps([key[0], key[1]], separators=(",", ":")).encode()
    return direction + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str) -> tuple[str, tuple[int, str]]:
    """("n" | "p", (num_joined_members, room_id)); 400 M_INVALID_PARAM if malformed."""
    try:
        direction, body = token[0], token[1:]
        if direction not in ("n", "p"):
            raise ValueError(token)
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        count, room_id = json.loads(raw)
        if not isinstance(count, int) or not isinstance(room_id, str):
            raise ValueError(token)
        return direction, (count, room_id)
    except (ValueError, IndexError, TypeError):
        raise MatrixError(400, Codes.INVALID_PARAM, "Invalid pagination token") from None


def _sort_key(entry: JsonDict) -> tuple[int, str]:
    # Most joined members first, then room ID: compare (-count, room_id) ascending.
    return (-int(entry["num_joined_members"]), str(entry["room_id"]))


class DirectoryService:
    def __init__(self, *, config: Config, pipeline: EventsService, users: UserStore) -> None:
        self.config = config
        self.pipeline = pipeline
        self.store: EventStore = pipeline.store
        self.state_store: StateStore = pipeline.state_store
        self.users = users

    # -- visibility of one room ---------------------------------------------------------------
    async def get_visibility(self, room_id: str) -> str:
        room = await self.store.get_room(room_id)
        if room is None:
            raise not_found(f"Unknown room {room_id}")
        return "public" if room.is_public else "private"

    async def set_visibility(self, user_id: str, room_id: str, visibility: str) -> None:
        """Publish or unpublish a room. Server admins may always; otherwise the user needs
        the power to send ``m.room.canonical_alias`` in the room, and publishing (as with
        ``createRoom``) also needs ``room_directory.publish_by_anyone``."""
        if visibility not in ("public", "private"):
            raise MatrixError(400, Codes.INVALID_PARAM, "visibility must be public or private")
        if await self.store.get_room(room_id) is None:
            raise not_found(f"Unknown room {room_id}")
        user = await self.users.get(user_id)
        if user is None or not user.is_admin:
            ids = await self.pipeline.current_state_ids(
                room_id, StateFilter.from_keys([CREATE, POWER_LEVELS, ("m.room.member", user_id)])
            )
            found = await self.store.get_events(ids.values())
            state = {k: found[i].event for k, i in ids.items() if i in found}
            member = state.get(("m.room.member", user_id))
            if member is None or member.membership != "join":
                raise forbidden(f"{user_id} is not in room {room_id}")
            needed = get_send_level(CANONICAL_ALIAS[0], "", state)
            if get_user_power_level(user_id, state) < needed:
                raise forbidden("You need the power to set the room's canonical alias"
                                " to change its directory visibility")
            if visibility == "public" and not self.config.room_directory_publish_by_anyone:
                raise forbidden("Only server admins may publish rooms to the directory")
        await self.store.set_public(room_id, visibility == "public")

    # -- listing -----------------------------------------------------------------------------
    async def summary(self, room_id: str) -> JsonDict | None:
        """The directory entry of a room (None if the room is unknown)."""
        try:
            ids = await self.pipeline.current_state_ids(
                room_id, StateFilter.from_keys(SUMMARY_KEYS)
            )
        except MatrixError:
            return None
        found = await self.store.get_events(ids.values())
        content = {k: found[i].event.content for k, i in ids.items() if i in found}
        joined = await self.state_store.members(room_id, ["join"])
        entry: JsonDict = {
            "room_id": room_id,
            "num_joined_members": len(joined),
            "world_readable":
                _str(content.get(HISTORY_VISIBILITY), "history_visibility") == "world_readable",
            "guest_can_join": _str(content.get(GUEST_ACCESS), "guest_access") == "can_join",
            "join_rule": _str(content.get(JOIN_RULES), "join_rule") or "invite",
        }
        for key, field, out in ((NAME, "name", "name"), (TOPIC, "topic", "topic"),
                                (AVATAR, "url", "avatar_url"),
                                (CANONICAL_ALIAS, "alias", "canonical_alias"),
                                (CREATE, "type", "room_type")):
            value = _str(content.get(key), field)
            if value:
                entry[out] = value
        return entry

    async def public_rooms(
        self,
        *,
        limit: int | None = None,
        since: str | None = None,
        search_term: str | None = None,
        room_types: Sequence[str | None] | None = None,
        network_rooms: Sequence[str] = (),
        include_main: bool = True,
    ) -> DirectoryPage:
        """The published rooms (``include_main``) and ``network_rooms``, the rooms listed by
        application services for their third-party networks."""
        entries = []
        candidates = await self.store.public_rooms() if include_main else []
        for room_id in dict.fromkeys([*candidates, *network_rooms]):
            entry = await self.summary(room_id)
            if entry is None:
                continue
            if room_types is not None and entry.get("room_type") not in room_types:
                continue
            if search_term:
                term = search_term.casefold()
                haystack = [entry.get("name"), entry.get("topic"), entry.get("canonical_alias")]
                if not any(isinstance(h, str) and term in h.casefold() for h in haystack):
                    continue
            entries.append(entry)
        entries.sort(key=_sort_key)
        total = len(entries)
        keys = [_sort_key(e) for e in entries]
        start, end = 0, total
        if since:
            direction, (count, room_id) = _decode_token(since)
            pivot = (-count, room_id)
            if direction == "n":
                start = next((i for i, k in enumerate(keys) if k > pivot), total)
            else:
                end = next((i for i, k in enumerate(keys) if k >= pivot), total)
        if limit is not None:
            if since and since.startswith("p"):
                start = max(start, end - limit)
            else:
                end = min(end, start + limit)
        page = entries[start:end]
        next_batch = prev_batch = None
        if page and end < total:
            last = page[-1]
            next_batch = _encode_token("n", (last["num_joined_members"], last["room_id"]))
        if page and start > 0:
            first = page[0]
            prev_batch = _encode_token("p", (first["num_joined_members"], first["room_id"]))
        return DirectoryPage(page, next_batch, prev_batch, total)
