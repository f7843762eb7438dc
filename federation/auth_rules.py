"""The room authorisation rules (rooms v1-v12) and the auth events selection algorithm.

``check_auth`` applies the rules to one event against a map of the room state it is judged
by: the event's own auth events when it is received, or the partially resolved state during
state resolution's iterative auth checks. The map must hold the create event (in v12 the
caller looks it up from the room ID, since it is not among the event's auth events).

What is *not* checked here, because it needs more than the event and that map:
- that the auth events were themselves accepted, and that the event's ``auth_events`` list
  has no duplicates or unexpected entries (``check_auth_events_selection`` helps with the
  latter two, the caller knows which events were rejected);
- cryptographic signatures of the PDU itself. For ``join_authorised_via_users_server`` only
  the presence of a signature by the authorising server is checked here; verifying it is
  the PDU signature check's job, as for the sender's own signature.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from typing import Any, Final

from signedjson.key import decode_verify_key_bytes
from signedjson.sign import SignatureVerifyException, verify_signed_json

from federation.auth_error import AuthError
from federation.events import Event, StateKey
from federation.identifiers import InvalidIdentifier, get_domain, is_valid_user_id
from federation.power_levels import (
    CREATE_KEY,
    CREATOR_POWER_LEVEL,
    JOIN_RULES_KEY,
    POWER_LEVELS_KEY,
    PowerLevel,
    get_creators,
    get_named_level,
    get_send_level,
    get_user_power_level,
    is_power_event,
    parse_power_level,
    sender_power_level,
)
from federation.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion

__all__ = [
    "CREATE_KEY",
    "CREATOR_POWER_LEVEL",
    "JOIN_RULES_KEY",
    "POWER_LEVELS_KEY",
    "AuthError",
    "PowerLevel",
    "auth_types_for_event",
    "check_auth",
    "check_auth_events_selection",
    "get_creators",
    "get_named_level",
    "get_send_level",
    "get_user_power_level",
    "is_power_event",
    "sender_power_level",
]

MEMBER: Final = "m.room.member"
AUTHORISING_USER: Final = "join_authorised_via_users_server"

# Named levels whose change is checked in rule "power levels" (and type-checked from v10).
_NAMED_LEVELS: Final = (
    "users_default",
    "events_default",
    "state_default",
    "ban",
    "redact",
    "kick",
    "invite",
)


# -- auth events selection -------------------------------------------------------------------


def auth_types_for_event(
    room_version: RoomVersion,
    event_type: str,
    state_key: str | None,
    sender: str,
    content: Mapping[str, Any],
) -> set[StateKey]:
    """The (type, state_key) pairs of the state an event's ``auth_events`` should cite.

    Tolerates malformed content (a missing token or authorising user just selects nothing),
    since it is also used to vet received events before the rules reject them.
    """
    # Any m.room.create (whatever its state_key) is judged as a create event: it cites nothing.
    if event_type == "m.room.create":
        return set()
    types: set[StateKey] = {POWER_LEVELS_KEY, (MEMBER, sender)}
    if not room_version.room_id_is_create_event_hash:
        # v12: the room ID names the create event, so it is never cited.
        types.add(CREATE_KEY)
    if event_type != MEMBER or state_key is None:
        return types
    types.add((MEMBER, state_key))
    membership = content.get("membership")
    if membership in ("join", "invite", "knock"):
        types.add(JOIN_RULES_KEY)
    if membership == "invite":
        tpi = content.get("third_party_invite")
        signed = tpi.get("signed") if isinstance(tpi, Mapping) else None
        token = signed.get("token") if isinstance(signed, Mapping) else None
        if isinstance(token, str):
            types.add(("m.room.third_party_invite", token))
    if membership == "join" and room_version.restricted_join_rule:
        authoriser = content.get(AUTHORISING_USER)
        if isinstance(authoriser, str):
            types.add((MEMBER, authoriser))
    return types


def check_auth_events_selection(event: Event, auth_events: Iterable[Event]) -> None:
    """Rules "considering the event's auth_events" that concern the cited list itself:
    no duplicate (type, state_key), nothing the selection algorithm would not pick, all in
    the event's room, and (before v12) a create event among them. The caller checks that
    none of them was rejected."""
    rv = event.room_version
    if event.type == "m.room.create":
        if event.auth_event_ids:
            raise AuthError("create event has auth events")
        return
    expected = auth_types_for_event(rv, event.type, event.state_key, event.sender, event.content)
    seen: dict[StateKey, str] = {}
    for auth_event in auth_events:
        if not auth_event.is_state():
            raise AuthError(f"auth event {auth_event.event_id} is not a state event")
        key = auth_event.state_tuple
        if key in seen:
            raise AuthError(
                f"duplicate auth events for {key}: {seen[key]} and {auth_event.event_id}"
            )
        if key not in expected:
            raise AuthError(f"unexpected auth event for {key}: {auth_event.event_id}")
        if _room_id(auth_event) != _room_id(event):
            raise AuthError(f"auth event {auth_event.event_id} is in another room")
        seen[key] = auth_event.event_id
    if not rv.room_id_is_create_event_hash and CREATE_KEY not in seen:
        raise AuthError("no m.room.create event among the auth events")


# -- the rules -------------------------------------------------------------------------------


def check_auth(event: Event, auth_events: Mapping[StateKey, Event]) -> None:
    """Raise AuthError unless ``event`` passes the authorisation rules of its room version
    against ``auth_events`` (state keyed by (type, state_key), including the create event)."""
    rv = event.room_version
    # Like Synapse, the create rules apply to the type whatever the state_key, so a stray
    # m.room.create later in the room fails on its prev_events.
    if event.type == "m.room.create":
        _check_create(event)
        return

    create = auth_events.get(CREATE_KEY)
    if create is None:
        raise AuthError("no m.room.create event in the auth events")
    room_id = _room_id(event)
    if rv.room_id_is_create_event_hash and room_id != "!" + create.event_id[1:]:
        raise AuthError(f"room ID {room_id} is not that of create event {create.event_id}")
    for auth_event in auth_events.values():
        if _room_id(auth_event) != room_id:
            raise AuthError(
                f"auth event {auth_event.event_id} is in room {auth_event.room_id}, not {room_id}"
            )

    # Synapse treats anything but a literal `true` as "don't federate" (spec: "set to false").
    if create.content.get("m.federate", True) is not True and _domain(event.sender) != _domain(
        create.sender
    ):
        raise AuthError("room is not federated and the sender is from another server")

    if rv.special_case_aliases_auth and event.type == "m.room.aliases":
        # v1-v5: any server may publish its own aliases, member or not.
        if event.state_key is None:
            raise AuthError("m.room.aliases event has no state_key")
        if event.state_key != _domain(event.sender):
            raise AuthError("m.room.aliases state_key is not the sender's server")
        return

    if event.type == MEMBER:
        _check_membership(event, create, auth_events)
        return

    if _membership(auth_events, event.sender) != "join":
        raise AuthError(f"{event.sender} is not joined to the room")

    sender_level = get_user_power_level(event.sender, auth_events)

    if event.type == "m.room.third_party_invite":
        if sender_level < get_named_level(auth_events, "invite"):
            raise AuthError("sender may not invite users")
        return

    send_level = get_send_level(event.type, event.state_key, auth_events)
    if sender_level < send_level:
        raise AuthError(
            f"sender's power level {sender_level} is below {send_level} needed for {event.type}"
        )

    if event.state_key is not None and event.state_key.startswith("@"):
        if event.state_key != event.sender:
            raise AuthError("state_key is another user's ID")

    if event.type == "m.room.power_levels":
        _check_power_levels(event, create, auth_events, sender_level)

    if event.type == "m.room.redaction" and rv.uses_server_assigned_event_ids:
        _check_v1_redaction(event, auth_events, sender_level)


def _check_create(event: Event) -> None:
    rv = event.room_version
    if event.get("prev_events"):
        raise AuthError("create event has prev_events")
    if rv.room_id_is_create_event_hash:
        if "room_id" in event.pdu_json():
            raise AuthError("create event has a room_id")
    elif _domain(_room_id(event)) != _domain(event.sender):
        raise AuthError("create event's room_id is not on the sender's server")
    # Absent means "1"; a non-string never names a version.
    room_version = event.content.get("room_version", "1")
    if not isinstance(room_version, str) or room_version not in KNOWN_ROOM_VERSIONS:
        raise AuthError(f"unrecognised room version {room_version!r}")
    if not rv.implicit_room_creator and "creator" not in event.content:
        raise AuthError("create event has no creator")
    if rv.creators_infinite_power and "additional_creators" in event.content:
        extra = event.content["additional_creators"]
        if not isinstance(extra, list) or not all(
            isinstance(u, str) and is_valid_user_id(u) for u in extra
        ):
            raise AuthError("additional_creators is not a list of valid user IDs")


def _check_membership(event: Event, create: Event, auth_events: Mapping[StateKey, Event]) -> None:
    rv = event.room_version
    target = event.state_key
    membership = event.membership
    if target is None or membership is None:
        raise AuthError("membership event has no state_key or membership")

    if rv.restricted_join_rule and AUTHORISING_USER in event.content:
        authoriser = event.content[AUTHORISING_USER]
        if not isinstance(authoriser, str) or _domain(authoriser) not in event.signatures:
            raise AuthError(f"not signed by the server of {AUTHORISING_USER} {authoriser!r}")

    # Synapse also refuses to let members of other servers into an unfederated room
    # (the spec checks only the sender's server).
    if create.content.get("m.federate", True) is not True and _domain(target) != _domain(
        create.sender
    ):
        raise AuthError("room is not federated and the target is from another server")

    sender_membership = _membership(auth_events, event.sender)
    target_membership = _membership(auth_events, target)

    if membership == "join":
        _check_join(event, create, auth_events, sender_membership)
        return

    if membership == "invite":
        if "third_party_invite" in event.content:
            if target_membership == "ban":
                raise AuthError(f"{target} is banned")
            _check_third_party_invite(event, auth_events)
            return
        if sender_membership != "join":
            raise AuthError(f"{event.sender} is not joined to the room")
        if target_membership in ("join", "ban"):
            raise AuthError(f"{target} is already {target_membership}")
        if get_user_power_level(event.sender, auth_events) < get_named_level(auth_events, "invite"):
            raise AuthError("sender may not invite users")
        return

    if membership == "leave":
        if event.sender == target:
            allowed = {"invite", "join", "knock"} if rv.knock_join_rule else {"invite", "join"}
            if sender_membership not in allowed:
                raise AuthError(f"cannot leave with membership {sender_membership!r}")
            return
        if sender_membership != "join":
            raise AuthError(f"{event.sender} is not joined to the room")
        sender_level = get_user_power_level(event.sender, auth_events)
        if target_membership == "ban" and sender_level < get_named_level(auth_events, "ban"):
            raise AuthError("sender may not unban users")
        if sender_level < get_named_level(auth_events, "kick"):
            raise AuthError("sender may not kick users")
        if get_user_power_level(target, auth_events) >= sender_level:
            raise AuthError(f"{target}'s power level is not below the sender's")
        return

    if membership == "ban":
        if sender_membership != "join":
            raise AuthError(f"{event.sender} is not joined to the room")
        sender_level = get_user_power_level(event.sender, auth_events)
        if sender_level < get_named_level(auth_events, "ban"):
            raise AuthError("sender may not ban users")
        if get_user_power_level(target, auth_events) >= sender_level:
            raise AuthError(f"{target}'s power level is not below the sender's")
        return

    if membership == "knock" and rv.knock_join_rule:
        join_rule = _join_rule(auth_events)
        knock_rules = ("knock", "knock_restricted") if rv.knock_restricted_join_rule else ("knock",)
        if join_rule not in knock_rules:
            raise AuthError(f"cannot knock with join rule {join_rule!r}")
        if event.sender != target:
            raise AuthError("cannot knock on behalf of another user")
        if sender_membership in ("ban", "invite", "join"):
            raise AuthError(f"cannot knock with membership {sender_membership!r}")
        return

    raise AuthError(f"unknown membership {membership!r}")


def _check_join(
    event: Event,
    create: Event,
    auth_events: Mapping[StateKey, Event],
    sender_membership: str | None,
) -> None:
    rv = event.room_version
    # The creator's own first join, straight after the create event. v12 says "the sender
    # of the create event": additional creators join like anyone else.
    if event.prev_event_ids == [create.event_id]:
        creator = create.sender if rv.implicit_room_creator else create.content.get("creator")
        if event.state_key == creator:
            return
    if event.sender != event.state_key:
        raise AuthError("cannot join on behalf of another user")
    if sender_membership == "ban":
        raise AuthError(f"{event.sender} is banned")

    join_rule = _join_rule(auth_events)
    if join_rule == "public":
        return
    restricted = (rv.restricted_join_rule and join_rule == "restricted") or (
        rv.knock_restricted_join_rule and join_rule == "knock_restricted"
    )
    if restricted:
        if sender_membership in ("join", "invite"):
            return
        authoriser = event.content.get(AUTHORISING_USER)
        if not isinstance(authoriser, str):
            raise AuthError(f"restricted join without {AUTHORISING_USER}")
        if _membership(auth_events, authoriser) != "join":
            raise AuthError(f"authorising user {authoriser} is not joined to the room")
        if get_user_power_level(authoriser, auth_events) < get_named_level(auth_events, "invite"):
            raise AuthError(f"authorising user {authoriser} may not invite users")
        return
    if join_rule == "invite" or (rv.knock_join_rule and join_rule == "knock"):
        if sender_membership not in ("join", "invite"):
            raise AuthError(f"{event.sender} is not invited")
        return
    raise AuthError(f"cannot join with join rule {join_rule!r}")


def _check_third_party_invite(event: Event, auth_events: Mapping[StateKey, Event]) -> None:
    tpi = event.content["third_party_invite"]
    signed = tpi.get("signed") if isinstance(tpi, Mapping) else None
    if not isinstance(signed, Mapping):
        raise AuthError("third_party_invite has no signed object")
    mxid, token = signed.get("mxid"), signed.get("token")
    if not isinstance(mxid, str) or not isinstance(token, str):
        raise AuthError("third_party_invite.signed lacks mxid or token")
    if mxid != event.state_key:
        raise AuthError("third_party_invite.signed.mxid is not the invited user")
    invite = auth_events.get(("m.room.third_party_invite", token))
    if invite is None:
        raise AuthError(f"no m.room.third_party_invite with token {token!r}")
    if invite.sender != event.sender:
        raise AuthError("sender did not send the m.room.third_party_invite")
    if not _signed_by_any(signed, _third_party_public_keys(invite)):
        raise AuthError("third_party_invite.signed has no valid signature")


def _third_party_public_keys(invite: Event) -> list[str]:
    keys: list[str] = []
    single = invite.content.get("public_key")
    if isinstance(single, str):
        keys.append(single)
    listed = invite.content.get("public_keys")
    if isinstance(listed, list):
        for entry in listed:
            if isinstance(entry, Mapping) and isinstance(entry.get("public_key"), str):
                keys.append(entry["public_key"])
    return keys


def _decode_base64(s: str) -> bytes:
    # Unpadded, standard or URL-safe alphabet: identity servers have used both.
    return base64.b64decode(s + "=" * (-len(s) % 4), altchars=b"-_", validate=False)


def _signed_by_any(signed: Mapping[str, Any], public_keys: list[str]) -> bool:
    """Whether any ed25519 signature in ``signed`` verifies with any of the public keys."""
    signatures = signed.get("signatures")
    if not isinstance(signatures, Mapping):
        return False
    for public_key in public_keys:
        try:
            key_bytes = _decode_base64(public_key)
        except (binascii.Error, ValueError):
            continue
        for server, by_key in signatures.items():
            if not isinstance(by_key, Mapping):
                continue
            for key_id in by_key:
                if not isinstance(key_id, str) or not key_id.startswith("ed25519:"):
                    continue
                try:
                    verify_key = decode_verify_key_bytes(key_id, key_bytes)
                    verify_signed_json(dict(signed), server, verify_key)
                except (SignatureVerifyException, ValueError, TypeError, KeyError):
                    continue
                return True
    return False


def _check_power_levels(
    event: Event,
    create: Event,
    auth_events: Mapping[StateKey, Event],
    sender_level: PowerLevel,
) -> None:
    rv = event.room_version
    content = event.content

    if rv.enforce_int_power_levels:
        for name in _NAMED_LEVELS:
            if name in content and type(content[name]) is not int:
                raise AuthError(f"power levels {name!r} is not an integer")
        for name in ("events", "notifications"):
            if name in content:
                value = content[name]
                if not isinstance(value, Mapping) or any(
                    type(v) is not int for v in value.values()
                ):
                    raise AuthError(f"power levels {name!r} is not an object of integers")

    # Like Synapse, an absent `users` is an empty one.
    users = content.get("users", {})
    if not isinstance(users, Mapping):
        raise AuthError("power levels 'users' is not an object")
    for user_id, value in users.items():
        if not isinstance(user_id, str) or not is_valid_user_id(user_id):
            raise AuthError(f"power levels 'users' key {user_id!r} is not a user ID")
        parse_power_level(value, rv)

    if rv.creators_infinite_power:
        listed = get_creators(create) & set(users)
        if listed:
            raise AuthError(f"room creators {sorted(listed)} may not appear in 'users'")

    # Like Synapse, only a PL event with state_key "" is compared with the current one.
    current = auth_events.get(POWER_LEVELS_KEY) if event.state_key == "" else None
    if current is None:
        return

    old, new = current.content, content
    for name in _NAMED_LEVELS:
        _check_level_change(name, old.get(name), new.get(name), rv, sender_level)

    maps = ["events", "notifications"] if rv.limit_notifications_power_levels else ["events"]
    for map_name in maps:
        old_map, new_map = _map(old, map_name), _map(new, map_name)
        for key in old_map.keys() | new_map.keys():
            _check_level_change(key, old_map.get(key), new_map.get(key), rv, sender_level)

    old_users, new_users = _map(old, "users"), _map(new, "users")
    for user_id in old_users.keys() | new_users.keys():
        old_value, new_value = old_users.get(user_id), new_users.get(user_id)
        changed = _check_level_change(user_id, old_value, new_value, rv, sender_level)
        # Nobody may demote or remove a peer; lowering your own level is fine.
        if changed and old_value is not None and user_id != event.sender:
            if parse_power_level(old_value, rv) >= sender_level:
                raise AuthError(f"cannot change the level of {user_id}, which is not below yours")


def _map(content: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = content.get(name, {})
    if not isinstance(value, Mapping):
        raise AuthError(f"power levels {name!r} is not an object")
    return value


def _check_level_change(
    name: str, old: Any, new: Any, rv: RoomVersion, sender_level: PowerLevel
) -> bool:
    """Reject if a changed, added or removed level is (or was) above the sender's own.

    Returns whether the level changed. Stringy/floaty values compare by their integer
    meaning, so "50" -> 50 is no change.
    """
    old_level = None if old is None else parse_power_level(old, rv)
    new_level = None if new is None else parse_power_level(new, rv)
    if old_level == new_level:
        return False
    if old_level is not None and old_level > sender_level:
        raise AuthError(f"cannot change {name!r} from {old_level}, above your level")
    if new_level is not None and new_level > sender_level:
        raise AuthError(f"cannot set {name!r} to {new_level}, above your level")
    return True


def _check_v1_redaction(
    event: Event, auth_events: Mapping[StateKey, Event], sender_level: PowerLevel
) -> None:
    """v1-v2: redacting needs the redact level, or must come from the redacted event's
    server (judged by event ID domains). From v3 this moves to handling redactions."""
    if sender_level >= get_named_level(auth_events, "redact"):
        return
    redacts = event.redacts
    if redacts is None:
        # Synapse lets it through: with no target there is nothing to compare.
        return
    if _domain(redacts) != _domain(event.event_id):
        raise AuthError("sender may not redact events from another server")


# -- small helpers ---------------------------------------------------------------------------


def _domain(identifier: str) -> str:
    try:
        return get_domain(identifier)
    except InvalidIdentifier as e:
        raise AuthError(str(e)) from None


def _room_id(event: Event) -> str:
    try:
        return event.room_id
    except ValueError:
        raise AuthError(f"event {event.event_id} has no room_id") from None


def _membership(auth_events: Mapping[StateKey, Event], user_id: str) -> str | None:
    member = auth_events.get((MEMBER, user_id))
    return member.membership if member is not None else None


def _join_rule(auth_events: Mapping[StateKey, Event]) -> str | None:
    # Like Synapse, no join rules event (or no join_rule key) means "invite".
    join_rules = auth_events.get(JOIN_RULES_KEY)
    if join_rules is None:
        return "invite"
    rule = join_rules.content.get("join_rule", "invite")
    return rule if isinstance(rule, str) else None
