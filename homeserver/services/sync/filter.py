"""Sync filters (the spec's Filter, RoomFilter, EventFilter and RoomEventFilter) as predicates.

A filter comes inline (JSON starting with '{') or by the ID of one the user uploaded; both are
validated by ``services.filters.validate_filter``. Type patterns may use '*' as a wildcard.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from federation.events import JsonDict
from homeserver.http.errors import Codes, MatrixError
from homeserver.services.filters import validate_filter

DEFAULT_TIMELINE_LIMIT = 10
MAX_TIMELINE_LIMIT = 1000


@lru_cache(maxsize=4096)
def _pattern(glob: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in glob.split("*")), re.DOTALL)


def type_matches(pattern: str, value: str) -> bool:
    if "*" not in pattern:
        return pattern == value
    return _pattern(pattern).fullmatch(value) is not None


def _set(value: Any) -> frozenset[str] | None:
    return frozenset(value) if isinstance(value, list) else None


@dataclass(frozen=True)
class EventFilter:
    """An EventFilter, or a RoomEventFilter when the room fields are used."""

    types: tuple[str, ...] | None = None
    not_types: tuple[str, ...] = ()
    senders: frozenset[str] | None = None
    not_senders: frozenset[str] = frozenset()
    rooms: frozenset[str] | None = None
    not_rooms: frozenset[str] = frozenset()
    contains_url: bool | None = None
    limit: int | None = None
    lazy_load_members: bool = False
    include_redundant_members: bool = False
    unread_thread_notifications: bool = False

    @staticmethod
    def parse(raw: Any) -> EventFilter:
        if not isinstance(raw, Mapping):
            return EventFilter()
        types = raw.get("types")
        limit = raw.get("limit")
        contains_url = raw.get("contains_url")
        return EventFilter(
            types=tuple(types) if isinstance(types, list) else None,
            not_types=tuple(raw.get("not_types") or ()),
            senders=_set(raw.get("senders")),
            not_senders=frozenset(raw.get("not_senders") or ()),
            rooms=_set(raw.get("rooms")),
            not_rooms=frozenset(raw.get("not_rooms") or ()),
            contains_url=contains_url if isinstance(contains_url, bool) else None,
            limit=limit if isinstance(limit, int) and not isinstance(limit, bool) else None,
            lazy_load_members=raw.get("lazy_load_members") is True,
            include_redundant_members=raw.get("include_redundant_members") is True,
            unread_thread_notifications=raw.get("unread_thread_notifications") is True,
        )

    def allows_room(self, room_id: str) -> bool:
        if room_id in self.not_rooms:
            return False
        return self.rooms is None or room_id in self.rooms

    def allows_type(self, event_type: str) -> bool:
        if any(type_matches(p, event_type) for p in self.not_types):
            return False
        return self.types is None or any(type_matches(p, event_type) for p in self.types)

    def allows_sender(self, sender: str) -> bool:
        if sender in self.not_senders:
            return False
        return self.senders is None or sender in self.senders

    def matches(
        self, event_type: str, sender: str | None = None, content: Mapping[str, Any] | None = None
    ) -> bool:
        if not self.allows_type(event_type):
            return False
        if sender is not None and not self.allows_sender(sender):
            return False
        if self.contains_url is not None and content is not None:
            if isinstance(content.get("url"), str) != self.contains_url:
                return False
        return True

    @property
    def blocks_everything(self) -> bool:
        return self.types is not None and not self.types


@dataclass(frozen=True)
class SyncFilter:
    event_fields: tuple[str, ...] | None = None
    event_format: str = "client"
    presence: EventFilter = field(default_factory=EventFilter)
    account_data: EventFilter = field(default_factory=EventFilter)
    rooms: frozenset[str] | None = None
    not_rooms: frozenset[str] = frozenset()
    include_leave: bool = False
    timeline: EventFilter = field(default_factory=EventFilter)
    state: EventFilter = field(default_factory=EventFilter)
    ephemeral: EventFilter = field(default_factory=EventFilter)
    room_account_data: EventFilter = field(default_factory=EventFilter)

    @staticmethod
    def parse(raw: Mapping[str, Any]) -> SyncFilter:
        room = raw.get("room") if isinstance(raw.get("room"), Mapping) else {}
        assert isinstance(room, Mapping)
        fields = raw.get("event_fields")
        return SyncFilter(
            event_fields=tuple(fields) if isinstance(fields, list) else None,
            event_format=raw.get("event_format") or "client",
            presence=EventFilter.parse(raw.get("presence")),
            account_data=EventFilter.parse(raw.get("account_data")),
            rooms=_set(room.get("rooms")),
            not_rooms=frozenset(room.get("not_rooms") or ()),
            include_leave=room.get("include_leave") is True,
            timeline=EventFilter.parse(room.get("timeline")),
            state=EventFilter.parse(room.get("state")),
            ephemeral=EventFilter.parse(room.get("ephemeral")),
            room_account_data=EventFilter.parse(room.get("account_data")),
        )

    def allows_room(self, room_id: str) -> bool:
        if room_id in self.not_rooms:
            return False
        return self.rooms is None or room_id in self.rooms

    @property
    def timeline_limit(self) -> int:
        limit = self.timeline.limit
        if limit is None:
            return DEFAULT_TIMELINE_LIMIT
        return max(1, min(limit, MAX_TIMELINE_LIMIT))

    @property
    def lazy_load_members(self) -> bool:
        # The spec has it on the state filter; clients sometimes put it on the timeline.
        return self.state.lazy_load_members or self.timeline.lazy_load_members

    @property
    def include_redundant_members(self) -> bool:
        return self.state.include_redundant_members

    def shape(self, event: JsonDict) -> JsonDict:
        """Apply ``event_fields``: keep only the listed dot-separated paths."""
        if self.event_fields is None:
            return event
        out: JsonDict = {}
        for path in self.event_fields:
            parts = [p.replace("\\.", ".") for p in re.split(r"(?<!\\)\.", path)]
            src: Any = event
            for p in parts:
                if not isinstance(src, Mapping) or p not in src:
                    break
                src = src[p]
            else:
                dst = out
                for p in parts[:-1]:
                    nxt = dst.setdefault(p, {})
                    if not isinstance(nxt, dict):
                        break
                    dst = nxt
                else:
                    dst[parts[-1]] = src
        return out


def parse_filter_json(text: str) -> SyncFilter:
    """An inline filter (the ``filter`` query parameter starting with '{')."""
    try:
        body = json.loads(text)
    except ValueError:
        raise MatrixError(400, Codes.BAD_JSON, "filter is not valid JSON") from None
    if not isinstance(body, dict):
        raise MatrixError(400, Codes.BAD_JSON, "filter must be a JSON object")
    validate_filter(body)
    return SyncFilter.parse(body)
