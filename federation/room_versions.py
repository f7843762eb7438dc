"""One table of every room version the server knows and what differs between them.

Everything that varies by room version (event format, redaction rules, auth rule variant,
state resolution algorithm, feature flags) is a field here, so protocol code asks the
version rather than comparing identifiers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class EventFormat(enum.Enum):
    # v1, v2: server-assigned event_id field; prev/auth events are [[id, {hashes}], ...]
    V1 = 1
    # v3: event ID is the reference hash, standard base64
    V2 = 2
    # v4-v11: event ID is the reference hash, URL-safe base64
    V3 = 3
    # v12: as V3, and the room ID is the create event's reference hash ("!" sigil)
    V4 = 4


class StateResAlgorithm(enum.Enum):
    V1 = 1
    V2 = 2
    V2_1 = 3  # room v12: conflicted subgraph, iterative checks start from empty state


class RedactionRules(enum.Enum):
    V1 = 1  # v1-v5
    V6 = 6  # v6-v8: m.room.create keeps only creator... see redaction module
    V9 = 9  # v9-v10: member keeps join_authorised_via_users_server
    V11 = 11  # v11+: updated rules (MSC2176/MSC3821/MSC3989)


@dataclass(frozen=True)
class RoomVersion:
    identifier: str
    event_format: EventFormat
    state_res: StateResAlgorithm
    redaction: RedactionRules
    # v1-v4 allow keys past their valid_until_ts; v5+ enforce key validity
    enforce_key_validity: bool
    # v1-v5: m.room.aliases events have their own auth rule
    special_case_aliases_auth: bool
    # v6+: integers outside [-(2**53)+1, 2**53-1] and floats are rejected
    strict_canonicaljson: bool
    # v6+: `notifications` power levels are checked when changing power levels
    limit_notifications_power_levels: bool
    # v7+
    knock_join_rule: bool
    # v8+
    restricted_join_rule: bool
    # v9+: join_authorised_via_users_server survives redaction
    restricted_join_rule_fix: bool
    # v10+
    knock_restricted_join_rule: bool
    # v10+: power level values must be integers, not strings
    enforce_int_power_levels: bool
    # v11+: creator is the sender of m.room.create; no `creator` key
    implicit_room_creator: bool
    # v11+: redacts is a content key; updated redaction algorithm
    updated_redaction_rules: bool
    # v12: room creators (sender + additional_creators) have infinite power
    creators_infinite_power: bool
    # v12: room ID is the create event's reference hash; create not in auth_events
    room_id_is_create_event_hash: bool

    @property
    def uses_server_assigned_event_ids(self) -> bool:
        return self.event_format is EventFormat.V1


def _v(identifier: str, n: int) -> RoomVersion:
    if n <= 2:
        fmt = EventFormat.V1
    elif n == 3:
        fmt = EventFormat.V2
    elif n <= 11:
        fmt = EventFormat.V3
    else:
        fmt = EventFormat.V4
    if n >= 11:
        redaction = RedactionRules.V11
    elif n >= 9:
        redaction = RedactionRules.V9
    elif n >= 6:
        redaction = RedactionRules.V6
    else:
        redaction = RedactionRules.V1
    if n == 1:
        state_res = StateResAlgorithm.V1
    elif n >= 12:
        state_res = StateResAlgorithm.V2_1
    else:
        state_res = StateResAlgorithm.V2
    return RoomVersion(
        identifier=identifier,
        event_format=fmt,
        state_res=state_res,
        redaction=redaction,
        enforce_key_validity=n >= 5,
        special_case_aliases_auth=n <= 5,
        strict_canonicaljson=n >= 6,
        limit_notifications_power_levels=n >= 6,
        knock_join_rule=n >= 7,
        restricted_join_rule=n >= 8,
        restricted_join_rule_fix=n >= 9,
        knock_restricted_join_rule=n >= 10,
        enforce_int_power_levels=n >= 10,
        implicit_room_creator=n >= 11,
        updated_redaction_rules=n >= 11,
        creators_infinite_power=n >= 12,
        room_id_is_create_event_hash=n >= 12,
    )


KNOWN_ROOM_VERSIONS: dict[str, RoomVersion] = {str(n): _v(str(n), n) for n in range(1, 13)}

# What Synapse creates by default; overridable in config.
DEFAULT_ROOM_VERSION = "12"


class UnknownRoomVersion(ValueError):
    pass


def get_room_version(identifier: str) -> RoomVersion:
    try:
        return KNOWN_ROOM_VERSIONS[identifier]
    except KeyError:
        raise UnknownRoomVersion(identifier) from None
