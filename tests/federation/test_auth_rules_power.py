"""Auth rules for non-membership events: sender membership, m.room.third_party_invite,
required power levels, user-owned state keys, m.room.power_levels changes (stringy/floaty
values before v10, integers from v10, notifications from v6, creators in v12), v1-v2
redactions; and the power-level helpers state resolution uses."""

from __future__ import annotations

import math
from typing import Any

import pytest

from federation.auth_rules import (
    AuthError,
    get_creators,
    get_user_power_level,
    is_power_event,
)
from federation.events import Event
from federation.power_levels import parse_power_level
from federation.room_versions import KNOWN_ROOM_VERSIONS
from tests.federation.authfactory import (
    ALICE,
    ALL_VERSIONS,
    BOB,
    CREATOR,
    HALF,
    MOD,
    Room,
    standard_room,
    versions,
)

STRINGY = versions(lambda rv: not rv.enforce_int_power_levels)
INT_ONLY = versions(lambda rv: rv.enforce_int_power_levels)
V12 = versions(lambda rv: rv.creators_infinite_power)
PRE_V12 = versions(lambda rv: not rv.creators_infinite_power)


def _pl(room: Room, sender: str, **changes: Any) -> Event:
    """A power levels event from ``sender``: the current content with ``changes``."""
    current = room.power_levels
    content = dict(current.content) if current is not None else {}
    content.update(changes)
    return room.make("m.room.power_levels", sender, content, "")


def _users(room: Room, **changes: Any) -> dict[str, Any]:
    current = room.power_levels
    assert current is not None
    users = dict(current.content["users"])
    for user, level in changes.items():
        user_id = {"mod": MOD, "half": HALF, "alice": ALICE, "bob": BOB}[user]
        if level is None:
            users.pop(user_id, None)
        else:
            users[user_id] = level
    return users


# -- sender membership, third_party_invite events, required power level ------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
@pytest.mark.parametrize("membership", [None, "invite", "leave", "ban"])
def test_sender_must_be_joined(version: str, membership: str | None) -> None:
    room = standard_room(version)
    if membership:
        room.set_member(ALICE, membership, sender=MOD)
    with pytest.raises(AuthError, match="not joined"):
        room.check(room.make("m.room.message", ALICE, {"body": "hi"}))
    room.set_member(ALICE, "join")
    room.check(room.make("m.room.message", ALICE, {"body": "hi"}))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_third_party_invite_event_needs_invite_level(version: str) -> None:
    room = standard_room(version, invite=50, members=(MOD, HALF, ALICE))
    content = {"public_key": "AAAA", "display_name": "x"}
    with pytest.raises(AuthError, match="may not invite"):
        room.check(room.make("m.room.third_party_invite", ALICE, content, "tok"))
    room.check(room.make("m.room.third_party_invite", HALF, content, "tok"))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_third_party_invite_event_ignores_events_levels(version: str) -> None:
    # The invite level decides, even if `events` demands more for the type.
    room = standard_room(version, events={"m.room.third_party_invite": 100}, members=(HALF,))
    room.check(room.make("m.room.third_party_invite", HALF, {"public_key": "A"}, "tok"))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_state_needs_state_default(version: str) -> None:
    room = standard_room(version, members=(MOD, HALF, ALICE))
    with pytest.raises(AuthError, match="power level"):
        room.check(room.make("m.room.name", ALICE, {"name": "x"}, ""))
    room.check(room.make("m.room.name", HALF, {"name": "x"}, ""))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_message_needs_events_default(version: str) -> None:
    room = standard_room(version, events_default=10, members=(MOD, HALF, ALICE))
    with pytest.raises(AuthError, match="power level"):
        room.check(room.make("m.room.message", ALICE, {"body": "x"}))
    room.check(room.make("m.room.message", HALF, {"body": "x"}))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_events_map_overrides_defaults(version: str) -> None:
    room = standard_room(
        version,
        events={"m.room.name": 0, "m.custom": 60, "m.room.redaction": 60},
        members=(MOD, HALF, ALICE),
    )
    room.check(room.make("m.room.name", ALICE, {"name": "x"}, ""))
    with pytest.raises(AuthError, match="power level"):
        room.check(room.make("m.custom", HALF, {}))
    # Redactions are subject to `events` like anything else.
    with pytest.raises(AuthError, match="power level"):
        room.check(room.make("m.room.redaction", HALF, {}, redacts="$x:b.test"))
    room.check(room.make("m.custom", MOD, {}))


@pytest.mark.parametrize("version", PRE_V12)
def test_without_power_levels_creator_has_100(version: str) -> None:
    room = standard_room(version, join_rule=None, members=())
    del room.state[("m.room.power_levels", "")]
    room.set_member(ALICE, "join")
    room.check(room.make("m.room.name", CREATOR, {"name": "x"}, ""))
    # state_default is 50 even without a power levels event.
    with pytest.raises(AuthError, match="power level"):
        room.check(room.make("m.room.name", ALICE, {"name": "x"}, ""))
    room.check(room.make("m.room.message", ALICE, {"body": "x"}))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_state_key_of_another_user_rejected(version: str) -> None:
    room = standard_room(version)
    with pytest.raises(AuthError, match="another user"):
        room.check(room.make("m.custom.state", MOD, {}, HALF))
    room.check(room.make("m.custom.state", MOD, {}, MOD))
    # Only a leading @ makes a state key user-owned.
    room.check(room.make("m.custom.state", MOD, {}, "x" + HALF))


# -- m.room.power_levels: shape --------------------------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
@pytest.mark.parametrize("users", [[MOD], "x", 5])
def test_power_levels_users_must_be_object(version: str, users: Any) -> None:
    room = standard_room(version)
    with pytest.raises(AuthError, match="users"):
        room.check(_pl(room, MOD, users=users))


@pytest.mark.parametrize("version", ALL_VERSIONS)
@pytest.mark.parametrize("key", ["alice", "@alice", "#alice:b.test", "@alice:bad host"])
def test_power_levels_users_keys_must_be_user_ids(version: str, key: str) -> None:
    room = standard_room(version)
    with pytest.raises(AuthError, match="user ID"):
        room.check(_pl(room, MOD, users={**_users(room), key: 10}))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_power_levels_users_historical_user_ids_allowed(version: str) -> None:
    room = standard_room(version)
    room.check(_pl(room, MOD, users={**_users(room), "@Old User:b.test": 10}))


@pytest.mark.parametrize("version", ALL_VERSIONS)
@pytest.mark.parametrize("value", ["ten", None, [], {}, "1.5", "1e2", "1_0"])
def test_power_levels_users_values_must_be_integers(version: str, value: Any) -> None:
    room = standard_room(version)
    with pytest.raises(AuthError, match="integer"):
        room.check(_pl(room, MOD, users={**_users(room), ALICE: value}))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_power_levels_without_users_allowed(version: str) -> None:
    """Spec: "if users is not an object ... reject". Like Synapse, we read an absent users
    map as empty rather than rejecting."""
    room = Room(version)
    room.send(room.member_event(CREATOR, "join"))
    room.check(room.make("m.room.power_levels", CREATOR, {"ban": 50}, ""))


@pytest.mark.parametrize("version", STRINGY)
@pytest.mark.parametrize("value", ["10", " +010 ", "-5", "\t7\n", 10.9, True])
def test_pre_v10_stringy_and_floaty_users_values_allowed(version: str, value: Any) -> None:
    room = standard_room(version)
    room.check(_pl(room, MOD, users={**_users(room), ALICE: value}))


@pytest.mark.parametrize("version", INT_ONLY)
@pytest.mark.parametrize("value", ["10", 10.0, True])
def test_v10_plus_users_values_must_be_json_integers(version: str, value: Any) -> None:
    room = standard_room(version)
    with pytest.raises(AuthError, match="integer"):
        room.check(_pl(room, MOD, users={**_users(room), ALICE: value}))


@pytest.mark.parametrize("version", INT_ONLY)
@pytest.mark.parametrize(
    "name", ["users_default", "events_default", "state_default", "ban", "redact", "kick", "invite"]
)
@pytest.mark.parametrize("value", ["50", 50.0, None, False])
def test_v10_plus_named_levels_must_be_integers(version: str, name: str, value: Any) -> None:
    room = standard_room(version)
    with pytest.raises(AuthError, match="integer"):
        room.check(_pl(room, MOD, **{name: value}))
    room.check(_pl(room, MOD, **{name: 50}))


@pytest.mark.parametrize("version", STRINGY)
def test_pre_v10_named_levels_may_be_strings(version: str) -> None:
    room = standard_room(version)
    room.send(_pl(room, MOD, ban="60", kick=" 40 ", invite=1.0))
    # ...and are honoured: HALF (50) is now below the ban level but above kick.
    room.set_member(ALICE, "join")
    with pytest.raises(AuthError, match="may not ban"):
        room.check(room.member_event(ALICE, "ban", sender=HALF))
    room.check(room.member_event(ALICE, "leave", sender=HALF))


@pytest.mark.parametrize("version", INT_ONLY)
@pytest.mark.parametrize("name", ["events", "notifications"])
@pytest.mark.parametrize("value", [[], "x", {"m.room.name": "50"}, {"room": 1.5}])
def test_v10_plus_events_and_notifications_must_be_integer_maps(
    version: str, name: str, value: Any
) -> None:
    room = standard_room(version)
    with pytest.raises(AuthError, match="integers"):
        room.check(_pl(room, MOD, **{name: value}))


# -- m.room.power_levels: v12 creators -------------------------------------------------------


@pytest.mark.parametrize("version", V12)
def test_v12_creator_may_not_appear_in_users(version: str) -> None:
    room = standard_room(version)
    with pytest.raises(AuthError, match="creators"):
        room.check(_pl(room, MOD, users={**_users(room), CREATOR: 100}))


@pytest.mark.parametrize("version", V12)
def test_v12_additional_creator_may_not_appear_in_users(version: str) -> None:
    room = standard_room(version, create_content={"additional_creators": [ALICE]})
    with pytest.raises(AuthError, match="creators"):
        room.check(_pl(room, MOD, users={**_users(room), ALICE: 0}))
    room.check(_pl(room, MOD, users={**_users(room), BOB: 0}))


@pytest.mark.parametrize("version", V12)
def test_v12_first_power_levels_may_not_list_creator(version: str) -> None:
    room = Room(version)
    room.send(room.member_event(CREATOR, "join"))
    with pytest.raises(AuthError, match="creators"):
        room.check(room.make("m.room.power_levels", CREATOR, {"users": {CREATOR: 100}}, ""))


@pytest.mark.parametrize("version", PRE_V12)
def test_pre_v12_creator_may_appear_in_users(version: str) -> None:
    room = standard_room(version)
    assert room.power_levels is not None and CREATOR in room.power_levels.content["users"]


@pytest.mark.parametrize("version", V12)
def test_v12_creator_may_set_any_level(version: str) -> None:
    room = standard_room(version)
    room.check(_pl(room, CREATOR, ban=10**9, users={**_users(room, mod=None), ALICE: 10**9}))


# -- m.room.power_levels: changes --------------------------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_first_power_levels_allowed_with_any_levels(version: str) -> None:
    room = Room(version)
    room.send(room.member_event(CREATOR, "join"))
    users = {} if version == "12" else {CREATOR: 100}
    users[ALICE] = 10**6
    room.check(room.make("m.room.power_levels", CREATOR, {"users": users, "ban": 10**6}, ""))


@pytest.mark.parametrize("version", ALL_VERSIONS)
@pytest.mark.parametrize(
    "name", ["users_default", "events_default", "state_default", "ban", "redact", "kick", "invite"]
)
def test_named_level_change_bounded_by_sender_level(version: str, name: str) -> None:
    # Pin the level needed to send power levels, so raising state_default doesn't lock HALF out.
    room = standard_room(version, events={"m.room.power_levels": 50})
    room.check(_pl(room, HALF, **{name: 50}))  # may set up to own level
    room.check(_pl(room, HALF, **{name: 10}))
    with pytest.raises(AuthError, match="above your level"):
        room.check(_pl(room, HALF, **{name: 51}))
    # A level currently above the sender cannot be changed or removed by them.
    room.send(_pl(room, MOD, **{name: 75}))
    with pytest.raises(AuthError, match="above your level"):
        room.check(_pl(room, HALF, **{name: 10}))
    content = {k: v for k, v in room.power_levels.content.items() if k != name}  # type: ignore[union-attr]
    with pytest.raises(AuthError, match="above your level"):
        room.check(room.make("m.room.power_levels", HALF, content, ""))
    room.check(room.make("m.room.power_levels", MOD, content, ""))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_events_entries_bounded_by_sender_level(version: str) -> None:
    room = standard_room(version, events={"m.high": 75, "m.low": 10})
    room.check(_pl(room, HALF, events={"m.high": 75, "m.low": 50, "m.new": 50}))
    with pytest.raises(AuthError, match="above your level"):
        room.check(_pl(room, HALF, events={"m.high": 75, "m.low": 10, "m.new": 51}))
    with pytest.raises(AuthError, match="above your level"):
        room.check(_pl(room, HALF, events={"m.high": 50, "m.low": 10}))
    with pytest.raises(AuthError, match="above your level"):
        room.check(_pl(room, HALF, events={"m.low": 10}))  # removing m.high


NOTIFY = versions(lambda rv: rv.limit_notifications_power_levels)
NO_NOTIFY = versions(lambda rv: not rv.limit_notifications_power_levels)


@pytest.mark.parametrize("version", NOTIFY)
def test_v6_plus_notifications_bounded_by_sender_level(version: str) -> None:
    room = standard_room(version, notifications={"room": 75})
    with pytest.raises(AuthError, match="above your level"):
        room.check(_pl(room, HALF, notifications={"room": 10}))
    with pytest.raises(AuthError, match="above your level"):
        room.check(_pl(room, HALF, notifications={"room": 75, "x": 60}))
    room.check(_pl(room, HALF, notifications={"room": 75, "x": 50}))


@pytest.mark.parametrize("version", NO_NOTIFY)
def test_pre_v6_notifications_unchecked(version: str) -> None:
    room = standard_room(version, notifications={"room": 75})
    room.check(_pl(room, HALF, notifications={"room": 10, "x": 100}))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_users_promotion_up_to_own_level(version: str) -> None:
    room = standard_room(version)
    room.check(_pl(room, HALF, users=_users(room, alice=50)))
    with pytest.raises(AuthError, match="above your level"):
        room.check(_pl(room, HALF, users=_users(room, alice=51)))
    with pytest.raises(AuthError, match="above your level"):
        room.check(_pl(room, HALF, users=_users(room, half=51)))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_users_cannot_demote_or_remove_peers_or_superiors(version: str) -> None:
    room = standard_room(version)
    room.send(_pl(room, MOD, users=_users(room, alice=50, bob=10)))
    # A peer at the same level:
    with pytest.raises(AuthError, match="not below yours"):
        room.check(_pl(room, HALF, users=_users(room, alice=0)))
    with pytest.raises(AuthError, match="not below yours"):
        room.check(_pl(room, HALF, users=_users(room, alice=None)))
    # A superior:
    with pytest.raises(AuthError, match="above your level"):
        room.check(_pl(room, HALF, users=_users(room, mod=0)))
    # An inferior may be demoted or removed.
    room.check(_pl(room, HALF, users=_users(room, bob=0)))
    room.check(_pl(room, HALF, users=_users(room, bob=None)))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_users_may_demote_self(version: str) -> None:
    room = standard_room(version)
    room.check(_pl(room, HALF, users=_users(room, half=10)))
    room.check(_pl(room, HALF, users=_users(room, half=None)))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_power_levels_change_needs_send_level(version: str) -> None:
    room = standard_room(version, members=(MOD, HALF, ALICE))
    with pytest.raises(AuthError, match="power level"):
        room.check(_pl(room, ALICE, users=_users(room, bob=0)))


@pytest.mark.parametrize("version", STRINGY)
def test_pre_v10_stringy_equal_value_is_no_change(version: str) -> None:
    # HALF may not touch MOD's 100, but "100" is the same level, so nothing changed.
    room = standard_room(version)
    room.check(_pl(room, HALF, users=_users(room, mod="100"), ban=" 50"))
    with pytest.raises(AuthError, match="above your level"):
        room.check(_pl(room, HALF, users=_users(room, mod="99")))


@pytest.mark.parametrize("version", STRINGY)
def test_pre_v10_unparseable_current_level_rejects_dependent_events(version: str) -> None:
    """Before v10 only `users` is validated, so a first power levels event may carry junk
    elsewhere. Synapse's int() then fails for events that need the value; we reject them."""
    room = Room(version)
    room.send(room.member_event(CREATOR, "join"))
    room.send(
        room.make("m.room.power_levels", CREATOR, {"users": {CREATOR: 100}, "ban": "lots"}, "")
    )
    room.set_member(ALICE, "join")
    with pytest.raises(AuthError, match="integer"):
        room.check(room.member_event(ALICE, "ban", sender=CREATOR))
    room.check(room.make("m.room.message", ALICE, {"body": "unaffected"}))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_power_levels_with_other_state_key_not_compared(version: str) -> None:
    """Synapse compares a power levels event only with the current one of the same state
    key, so one with state_key "x" is just shape-checked."""
    room = standard_room(version)
    content = {"users": {ALICE: 50}, "ban": 50}
    room.check(room.make("m.room.power_levels", HALF, content, "x"))
    with pytest.raises(AuthError, match="user ID"):
        room.check(room.make("m.room.power_levels", HALF, {"users": {"x": 1}}, "x"))


# -- power level parsing -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (5, 5),
        ("100", 100),
        ("000100", 100),
        ("+100", 100),
        ("-100", -100),
        (" 00100 ", 100),
        (" +100 ", 100),
        (5.114698e4, 51146),
        (-7.9, -7),
        (True, 1),
    ],
)
def test_parse_stringy_and_floaty_levels_before_v10(value: Any, expected: int) -> None:
    """Booleans: not covered by the spec; Synapse's int() makes true 1, so do we."""
    assert parse_power_level(value, KNOWN_ROOM_VERSIONS["1"]) == expected


@pytest.mark.parametrize(
    "value",
    [
        "1_000",
        "1.0",
        "1e3",
        "++1",
        "",
        " ",
        "\u0661\u0660",
        math.inf,
        -math.inf,
        math.nan,
        None,
        [1],
    ],
)
def test_parse_rejects_non_integers_before_v10(value: Any) -> None:
    """Follows the spec's stringy grammar, stricter than Python's int() (underscores, non-ASCII)."""
    with pytest.raises(AuthError):
        parse_power_level(value, KNOWN_ROOM_VERSIONS["9"])


@pytest.mark.parametrize("value", ["5", 5.0, True])
def test_parse_requires_json_integers_from_v10(value: Any) -> None:
    with pytest.raises(AuthError):
        parse_power_level(value, KNOWN_ROOM_VERSIONS["10"])
    assert parse_power_level(5, KNOWN_ROOM_VERSIONS["10"]) == 5


# -- v1-v2 redactions ----------------------------------------------------------------------------

V1_REDACTION = versions(lambda rv: rv.uses_server_assigned_event_ids)
V3_REDACTION = versions(lambda rv: not rv.uses_server_assigned_event_ids)


@pytest.mark.parametrize("version", V1_REDACTION)
def test_v1_redaction_of_own_server_event_allowed(version: str) -> None:
    room = standard_room(version, members=(MOD, ALICE))
    room.check(room.make("m.room.redaction", ALICE, {}, redacts="$target:b.test"))


@pytest.mark.parametrize("version", V1_REDACTION)
def test_v1_redaction_of_other_server_event_needs_redact_level(version: str) -> None:
    room = standard_room(version, members=(MOD, ALICE))
    with pytest.raises(AuthError, match="redact"):
        room.check(room.make("m.room.redaction", ALICE, {}, redacts="$target:a.test"))
    room.check(room.make("m.room.redaction", MOD, {}, redacts="$target:b.test"))


@pytest.mark.parametrize("version", V1_REDACTION)
def test_v1_redaction_without_redacts_allowed_like_synapse(version: str) -> None:
    """Spec compares the redacted event's domain; with no `redacts` there is none. Synapse
    allows the event; we follow."""
    room = standard_room(version, members=(MOD, ALICE))
    room.check(room.make("m.room.redaction", ALICE, {}))


@pytest.mark.parametrize("version", V3_REDACTION)
def test_v3_plus_redaction_not_limited_by_redact_level(version: str) -> None:
    room = standard_room(version, members=(MOD, ALICE))
    if KNOWN_ROOM_VERSIONS[version].updated_redaction_rules:
        event = room.make("m.room.redaction", ALICE, {"redacts": "$other"}, redacts="$other")
    else:
        event = room.make("m.room.redaction", ALICE, {}, redacts="$other")
    room.check(event)  # "handling redactions" decides later


# -- helpers for state resolution ---------------------------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_get_user_power_level_with_power_levels(version: str) -> None:
    room = standard_room(version, users_default=5)
    auth = dict(room.state)
    assert get_user_power_level(MOD, auth) == 100
    assert get_user_power_level(HALF, auth) == 50
    assert get_user_power_level(ALICE, auth) == 5
    assert get_user_power_level(CREATOR, auth) == (math.inf if version == "12" else 100)


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_get_user_power_level_without_power_levels(version: str) -> None:
    room = Room(version, create_content={"additional_creators": [ALICE]})
    auth = dict(room.state)
    assert get_user_power_level(CREATOR, auth) == (math.inf if version == "12" else 100)
    assert get_user_power_level(ALICE, auth) == (math.inf if version == "12" else 0)
    assert get_user_power_level(BOB, auth) == 0


@pytest.mark.parametrize("version", versions(lambda rv: not rv.implicit_room_creator))
def test_pre_v11_creator_comes_from_content(version: str) -> None:
    room = Room(version, create_content={"creator": ALICE})
    assert get_creators(room.create) == {ALICE}
    assert get_user_power_level(ALICE, dict(room.state)) == 100
    assert get_user_power_level(CREATOR, dict(room.state)) == 0


@pytest.mark.parametrize("version", ["11", "12"])
def test_get_creators_from_v11(version: str) -> None:
    room = Room(version, create_content={"creator": BOB, "additional_creators": [ALICE, 5]})
    expected = {CREATOR, ALICE} if version == "12" else {CREATOR}
    assert get_creators(room.create) == expected


@pytest.mark.parametrize("version", ["1", "12"])
def test_is_power_event(version: str) -> None:
    room = standard_room(version)
    assert is_power_event(room.create)  # like Synapse
    assert is_power_event(room.state[("m.room.power_levels", "")])
    assert is_power_event(room.state[("m.room.join_rules", "")])
    assert is_power_event(room.member_event(ALICE, "ban", sender=MOD))
    assert is_power_event(room.member_event(ALICE, "leave", sender=MOD))
    assert not is_power_event(room.member_event(ALICE, "leave"))
    assert not is_power_event(room.member_event(ALICE, "join"))
    assert not is_power_event(room.make("m.room.name", MOD, {"name": "x"}, ""))
    assert not is_power_event(room.make("m.room.join_rules", MOD, {}, "x"))
    assert not is_power_event(room.make("m.room.power_levels", MOD, {}))
