"""Validation of sync filters (the spec's Filter schema), so bad filters fail at upload."""

from __future__ import annotations

from typing import Any

from homeserver.http.errors import Codes, MatrixError

_EVENT_FILTER_LISTS = ("types", "not_types", "senders", "not_senders")
_ROOM_EVENT_FILTER_LISTS = (*_EVENT_FILTER_LISTS, "rooms", "not_rooms")
_ROOM_EVENT_FILTER_BOOLS = (
    "contains_url", "include_redundant_members", "lazy_load_members", "unread_thread_notifications"
)
MAX_LIST = 10_000


def _bad(path: str, expected: str) -> MatrixError:
    return MatrixError(400, Codes.BAD_JSON, f"Invalid filter: {path} must be {expected}")


def _obj(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(path, "an object")
    return value


def _str_list(value: Any, path: str) -> None:
    if not isinstance(value, list) or len(value) > MAX_LIST:
        raise _bad(path, "a list of strings")
    if not all(isinstance(v, str) for v in value):
        raise _bad(path, "a list of strings")


def _limit(value: Any, path: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value > 2**31:
        raise _bad(path, "a positive integer")


def _event_filter(value: Any, path: str, room: bool) -> None:
    f = _obj(value, path)
    for key in _ROOM_EVENT_FILTER_LISTS if room else _EVENT_FILTER_LISTS:
        if key in f:
            _str_list(f[key], f"{path}.{key}")
    if "limit" in f:
        _limit(f["limit"], f"{path}.limit")
    if room:
        for key in _ROOM_EVENT_FILTER_BOOLS:
            if key in f and not isinstance(f[key], bool):
                raise _bad(f"{path}.{key}", "true or false")


def validate_filter(body: dict[str, Any]) -> None:
    if "event_fields" in body:
        _str_list(body["event_fields"], "event_fields")
    if "event_format" in body and body["event_format"] not in ("client", "federation"):
        raise _bad("event_format", "'client' or 'federation'")
    for key in ("presence", "account_data"):
        if key in body:
            _event_filter(body[key], key, room=False)
    if "room" in body:
        room = _obj(body["room"], "room")
        for key in ("rooms", "not_rooms"):
            if key in room:
                _str_list(room[key], f"room.{key}")
        for key in ("include_leave",):
            if key in room and not isinstance(room[key], bool):
                raise _bad(f"room.{key}", "true or false")
        for key in ("timeline", "state", "ephemeral", "account_data"):
            if key in room:
                _event_filter(room[key], f"room.{key}", room=True)
