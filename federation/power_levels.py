"""Power-level arithmetic shared by the authorisation rules and state resolution.

Values are read from ``m.room.power_levels`` with the room version's parsing rules: from v10
they must be JSON integers; before v10 they may also be strings holding an integer
("stringy" levels) or floats, which are truncated ("floaty" levels, v1-v5 in the spec,
tolerated until v10 like Synapse's ``int()``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Final

from federation.auth_error import AuthError
from federation.events import Event, StateKey
from federation.room_versions import RoomVersion

CREATE_KEY: Final[StateKey] = ("m.room.create", "")
POWER_LEVELS_KEY: Final[StateKey] = ("m.room.power_levels", "")
JOIN_RULES_KEY: Final[StateKey] = ("m.room.join_rules", "")

# v12: room creators outrank any integer level.
CREATOR_POWER_LEVEL: Final[float] = float("inf")

# Defaults from the m.room.power_levels schema, used when the key or the whole event is absent.
NAMED_LEVEL_DEFAULTS: Final[Mapping[str, int]] = {
    "users_default": 0,
    "events_default": 0,
    "state_default": 50,
    "ban": 50,
    "kick": 50,
    "redact": 50,
    "invite": 0,
}

# The spec's stringy grammar: optional sign, ASCII decimal digits, surrounding whitespace
# (stripped first). Stricter than Python's int(), which also takes "1_000" and non-ASCII digits.
_STRINGY_INT_RE = re.compile(r"[+-]?[0-9]+\Z", re.ASCII)

PowerLevel = int | float  # float only for CREATOR_POWER_LEVEL


def parse_power_level(value: Any, room_version: RoomVersion) -> int:
    """Interpret one power level value, raising AuthError if it is not one."""
    if room_version.enforce_int_power_levels:
        # bool is an int subclass in Python, but JSON true is not an integer.
        if type(value) is int:
            return value
        raise AuthError(f"power level {value!r} is not an integer")
    if isinstance(value, int):
        # Includes JSON booleans (true == 1): Synapse's int() accepts them before v10.
        return int(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise AuthError(f"power level {value!r} is not a finite number")
        return math.trunc(value)
    if isinstance(value, str):
        stripped = value.strip()
        if _STRINGY_INT_RE.match(stripped):
            return int(stripped)
    raise AuthError(f"power level {value!r} is not an integer")


def _content_of(event: Event | None) -> Mapping[str, Any]:
    return event.content if event is not None else {}


def _level_map(content: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """``users``/``events``/``notifications``: absent (or null) is empty; else an object."""
    value = content.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise AuthError(f"power levels {key!r} is not an object")
    return value


def get_creators(create_event: Event) -> set[str]:
    """The room's creators: ``content.creator`` before v11, the sender from v11, plus (v12)
    ``additional_creators``."""
    rv = create_event.room_version
    if not rv.implicit_room_creator:
        creator = create_event.content.get("creator")
        return {creator} if isinstance(creator, str) else set()
    creators = {create_event.sender}
    if rv.creators_infinite_power:
        extra = create_event.content.get("additional_creators")
        if isinstance(extra, list):
            creators.update(u for u in extra if isinstance(u, str))
    return creators


def get_named_level(auth_events: Mapping[StateKey, Event], name: str) -> int:
    """``ban``/``kick``/``invite``/``redact``/... with its default when absent or null."""
    pl = auth_events.get(POWER_LEVELS_KEY)
    value = _content_of(pl).get(name)
    if value is None or pl is None:
        return NAMED_LEVEL_DEFAULTS[name]
    return parse_power_level(value, pl.room_version)


def get_user_power_level(user_id: str, auth_events: Mapping[StateKey, Event]) -> PowerLevel:
    """The user's power level given (a subset of) the room state holding the create event
    and the power levels event, if any.

    v12 creators have infinite power. Without a power levels event the creator(s) have 100
    (v1-v11) and everyone else 0. Raises AuthError if the relevant value in the power
    levels event cannot be parsed (possible before v10, where only ``users`` is validated).
    """
    create = auth_events.get(CREATE_KEY)
    creators = get_creators(create) if create is not None else set()
    if create is not None and create.room_version.creators_infinite_power and user_id in creators:
        return CREATOR_POWER_LEVEL
    pl = auth_events.get(POWER_LEVELS_KEY)
    if pl is None:
        return 100 if user_id in creators else 0
    value = _level_map(pl.content, "users").get(user_id)
    if value is None:
        return get_named_level(auth_events, "users_default")
    return parse_power_level(value, pl.room_version)


def sender_power_level(event: Event, auth_events: Mapping[StateKey, Event]) -> PowerLevel:
    """The power level of ``event``'s sender as of ``auth_events`` (for state resolution's
    reverse topological power ordering). In v12 pass the room's create event in
    ``auth_events`` too: it is not among the event's own auth events."""
    return get_user_power_level(event.sender, auth_events)


def get_send_level(
    event_type: str, state_key: str | None, auth_events: Mapping[StateKey, Event]
) -> int:
    """The spec's *required power level* for sending an event of this type."""
    pl = auth_events.get(POWER_LEVELS_KEY)
    if pl is not None:
        value = _level_map(pl.content, "events").get(event_type)
        if value is not None:
            return parse_power_level(value, pl.room_version)
    return get_named_level(
        auth_events, "state_default" if state_key is not None else "events_default"
    )


def is_power_event(event: Event) -> bool:
    """State resolution v2's *power event*: one that may take an ability away from someone.

    Like Synapse, the create event counts too and PL/join rules must have state_key "".
    """
    if not event.is_state():
        return False
    if event.state_tuple in (POWER_LEVELS_KEY, JOIN_RULES_KEY, CREATE_KEY):
        return True
    if event.type == "m.room.member" and event.membership in ("leave", "ban"):
        return event.sender != event.state_key
    return False
