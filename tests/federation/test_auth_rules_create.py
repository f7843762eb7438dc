"""Auth rules for m.room.create, the room/auth-event consistency rules, m.federate, the v1-v5
m.room.aliases special case, and the auth events selection algorithm."""

from __future__ import annotations

from typing import Any

import pytest

from federation.auth_rules import (
    AuthError,
    auth_types_for_event,
    check_auth,
    check_auth_events_selection,
)
from federation.events import Event
from federation.room_versions import KNOWN_ROOM_VERSIONS
from tests.federation.authfactory import (
    ALICE,
    ALL_VERSIONS,
    BOB,
    CREATOR,
    MOD,
    Room,
    standard_room,
    versions,
)

PRE_V12 = versions(lambda rv: not rv.room_id_is_create_event_hash)
V12 = versions(lambda rv: rv.room_id_is_create_event_hash)


def _create(room: Room, content: dict[str, Any] | None = None, **extra: Any) -> Event:
    base = dict(room.create.content)
    base.update(content or {})
    return room.make("m.room.create", CREATOR, base, "", prev_events=[], **extra)


# -- m.room.create -----------------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_create_allowed(version: str) -> None:
    room = Room(version)
    check_auth(room.create, {})


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_create_with_prev_events_rejected(version: str) -> None:
    room = Room(version)
    bad = room.make("m.room.create", CREATOR, room.create.content, "", prev_events=["$x:a.test"])
    with pytest.raises(AuthError, match="prev_events"):
        check_auth(bad, {})


@pytest.mark.parametrize("version", PRE_V12)
def test_create_room_id_domain_must_match_sender(version: str) -> None:
    room = Room(version)
    with pytest.raises(AuthError, match="room_id"):
        check_auth(_create(room, room_id="!room:elsewhere.test"), {})


@pytest.mark.parametrize("version", V12)
def test_v12_create_with_room_id_rejected(version: str) -> None:
    room = Room(version)
    with pytest.raises(AuthError, match="room_id"):
        check_auth(_create(room, room_id="!room:a.test"), {})


@pytest.mark.parametrize("version", ALL_VERSIONS)
@pytest.mark.parametrize("room_version", ["999", 1, None])
def test_create_unrecognised_room_version_rejected(version: str, room_version: object) -> None:
    room = Room(version)
    with pytest.raises(AuthError, match="room version"):
        check_auth(_create(room, {"room_version": room_version}), {})


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_create_without_room_version_means_v1(version: str) -> None:
    room = Room(version)
    content = {k: v for k, v in room.create.content.items() if k != "room_version"}
    check_auth(room.make("m.room.create", CREATOR, content, "", prev_events=[]), {})


@pytest.mark.parametrize("version", versions(lambda rv: not rv.implicit_room_creator))
def test_create_without_creator_rejected_before_v11(version: str) -> None:
    room = Room(version)
    content = {"room_version": version}
    with pytest.raises(AuthError, match="creator"):
        check_auth(room.make("m.room.create", CREATOR, content, "", prev_events=[]), {})


@pytest.mark.parametrize("version", versions(lambda rv: rv.implicit_room_creator))
def test_create_without_creator_allowed_from_v11(version: str) -> None:
    room = Room(version)
    assert "creator" not in room.create.content
    check_auth(room.create, {})


@pytest.mark.parametrize("version", V12)
@pytest.mark.parametrize(
    "additional",
    [[], ["@bob:c.test"], ["@bob:c.test", "@x:[::1]:8448"], ["@Legacy Name:c.test"]],
)
def test_v12_valid_additional_creators_allowed(version: str, additional: list[str]) -> None:
    room = Room(version, create_content={"additional_creators": additional})
    check_auth(room.create, {})


@pytest.mark.parametrize("version", V12)
@pytest.mark.parametrize(
    "additional",
    ["@bob:c.test", [1], ["bob"], ["@bob"], ["@bob:bad_host!"], [None], {"@bob:c.test": 1}],
)
def test_v12_invalid_additional_creators_rejected(version: str, additional: object) -> None:
    room = Room(version, create_content={"additional_creators": additional})
    with pytest.raises(AuthError, match="additional_creators"):
        check_auth(room.create, {})


@pytest.mark.parametrize("version", versions(lambda rv: not rv.creators_infinite_power))
def test_additional_creators_not_validated_before_v12(version: str) -> None:
    room = Room(version, create_content={"additional_creators": "garbage"})
    check_auth(room.create, {})


# -- create event / room consistency -----------------------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_event_without_create_in_auth_events_rejected(version: str) -> None:
    room = standard_room(version)
    msg = room.make("m.room.message", MOD, {"body": "hi"})
    auth = room.auth_for(msg)
    check_auth(msg, auth)
    del auth[("m.room.create", "")]
    with pytest.raises(AuthError, match="create"):
        check_auth(msg, auth)


@pytest.mark.parametrize("version", V12)
def test_v12_room_id_must_be_create_event_id(version: str) -> None:
    room = standard_room(version)
    other = Room(version)
    # An event claiming this room but judged against another room's create event.
    msg = room.make("m.room.message", MOD, {"body": "hi"})
    auth = room.auth_for(msg)
    auth[("m.room.create", "")] = other.create
    with pytest.raises(AuthError, match="room ID"):
        check_auth(msg, auth)


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_auth_event_from_another_room_rejected(version: str) -> None:
    room = standard_room(version)
    other = standard_room(version)
    msg = room.make("m.room.message", MOD, {"body": "hi"})
    auth = room.auth_for(msg)
    auth[("m.room.member", MOD)] = other.state[("m.room.member", MOD)]
    with pytest.raises(AuthError, match="room"):
        check_auth(msg, auth)


# -- m.federate --------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_unfederated_room_rejects_remote_sender(version: str) -> None:
    room = standard_room(version, create_content={"m.federate": False}, members=(MOD,))
    # Even a (forced) joined remote member cannot send.
    room.set_member(ALICE, "join")
    with pytest.raises(AuthError, match="federated"):
        room.check(room.make("m.room.message", ALICE, {"body": "hi"}))
    room.check(room.make("m.room.message", MOD, {"body": "hi"}))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_federate_true_allows_remote_sender(version: str) -> None:
    room = standard_room(version, create_content={"m.federate": True})
    room.send(room.member_event(ALICE, "join"))
    assert room.state[("m.room.member", ALICE)].membership == "join"


@pytest.mark.parametrize("version", ["1", "12"])
@pytest.mark.parametrize("federate", ["false", 0, None])
def test_m_federate_non_boolean_follows_synapse(version: str, federate: object) -> None:
    """Spec: reject if m.federate is "set to false". Synapse federates only when it is
    absent or literally true; we follow Synapse."""
    room = standard_room(version, create_content={"m.federate": federate})
    with pytest.raises(AuthError, match="federated"):
        room.check(room.member_event(ALICE, "join"))


@pytest.mark.parametrize("version", ["1", "12"])
def test_unfederated_room_rejects_remote_target_like_synapse(version: str) -> None:
    """Not in the spec (which checks only the sender's server); Synapse also refuses to
    invite a user of another server into an unfederated room."""
    room = standard_room(version, create_content={"m.federate": False}, members=(MOD,))
    with pytest.raises(AuthError, match="target"):
        room.check(room.member_event(ALICE, "invite", sender=MOD))
    room.check(room.member_event("@local:a.test", "invite", sender=MOD))


# -- m.room.aliases (v1-v5 special case) -------------------------------------------------------

ALIASES_SPECIAL = versions(lambda rv: rv.special_case_aliases_auth)
ALIASES_NORMAL = versions(lambda rv: not rv.special_case_aliases_auth)


@pytest.mark.parametrize("version", ALIASES_SPECIAL)
def test_v1_5_aliases_from_non_member_server_allowed(version: str) -> None:
    room = standard_room(version)
    room.check(room.make("m.room.aliases", BOB, {"aliases": ["#x:c.test"]}, "c.test"))


@pytest.mark.parametrize("version", ALIASES_SPECIAL)
@pytest.mark.parametrize("state_key", ["a.test", "", None])
def test_v1_5_aliases_state_key_must_be_sender_domain(version: str, state_key: str | None) -> None:
    room = standard_room(version)
    with pytest.raises(AuthError, match="aliases"):
        room.check(room.make("m.room.aliases", BOB, {"aliases": []}, state_key))


@pytest.mark.parametrize("version", ALIASES_NORMAL)
def test_v6_plus_aliases_follow_ordinary_rules(version: str) -> None:
    room = standard_room(version)
    # A non-member is rejected like for any other event...
    with pytest.raises(AuthError, match="not joined"):
        room.check(room.make("m.room.aliases", BOB, {"aliases": []}, "c.test"))
    # ...a member below state_default too, and a member at it is allowed.
    room.set_member(BOB, "join")
    with pytest.raises(AuthError, match="power level"):
        room.check(room.make("m.room.aliases", BOB, {"aliases": []}, "c.test"))
    room.check(room.make("m.room.aliases", MOD, {"aliases": []}, "a.test"))
    # Any state_key goes: the domain rule is gone.
    room.check(room.make("m.room.aliases", MOD, {"aliases": []}, "c.test"))


# -- auth events selection ---------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_auth_types_for_create_is_empty(version: str) -> None:
    rv = KNOWN_ROOM_VERSIONS[version]
    assert auth_types_for_event(rv, "m.room.create", "", CREATOR, {}) == set()


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_auth_types_for_message(version: str) -> None:
    rv = KNOWN_ROOM_VERSIONS[version]
    expected = {("m.room.power_levels", ""), ("m.room.member", ALICE)}
    if version != "12":
        expected.add(("m.room.create", ""))
    assert auth_types_for_event(rv, "m.room.message", None, ALICE, {"body": "x"}) == expected


@pytest.mark.parametrize("version", ALL_VERSIONS)
@pytest.mark.parametrize(
    ("membership", "with_join_rules"),
    [("join", True), ("invite", True), ("knock", True), ("leave", False), ("ban", False)],
)
def test_auth_types_for_membership(version: str, membership: str, with_join_rules: bool) -> None:
    rv = KNOWN_ROOM_VERSIONS[version]
    got = auth_types_for_event(rv, "m.room.member", BOB, ALICE, {"membership": membership})
    assert ("m.room.member", BOB) in got
    assert ("m.room.member", ALICE) in got
    assert (("m.room.join_rules", "") in got) is with_join_rules
    assert (("m.room.create", "") in got) is (version != "12")


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_auth_types_for_third_party_invite(version: str) -> None:
    rv = KNOWN_ROOM_VERSIONS[version]
    content = {
        "membership": "invite",
        "third_party_invite": {"signed": {"token": "tok", "mxid": BOB}},
    }
    got = auth_types_for_event(rv, "m.room.member", BOB, ALICE, content)
    assert ("m.room.third_party_invite", "tok") in got


@pytest.mark.parametrize("version", ALL_VERSIONS)
@pytest.mark.parametrize("tpi", [None, "x", {}, {"signed": []}, {"signed": {"token": 5}}])
def test_auth_types_tolerates_malformed_third_party_invite(version: str, tpi: object) -> None:
    rv = KNOWN_ROOM_VERSIONS[version]
    content = {"membership": "invite", "third_party_invite": tpi}
    got = auth_types_for_event(rv, "m.room.member", BOB, ALICE, content)
    assert not any(t == "m.room.third_party_invite" for t, _ in got)


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_auth_types_restricted_join_authoriser_only_from_v8(version: str) -> None:
    rv = KNOWN_ROOM_VERSIONS[version]
    content = {"membership": "join", "join_authorised_via_users_server": MOD}
    got = auth_types_for_event(rv, "m.room.member", ALICE, ALICE, content)
    assert (("m.room.member", MOD) in got) is rv.restricted_join_rule
    # Only for joins.
    content["membership"] = "leave"
    got = auth_types_for_event(rv, "m.room.member", ALICE, ALICE, content)
    assert ("m.room.member", MOD) not in got


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_check_auth_events_selection_accepts_proper_selection(version: str) -> None:
    room = standard_room(version)
    msg = room.make("m.room.message", MOD, {"body": "hi"})
    cited = [
        e for k, e in room.auth_for(msg).items() if k != ("m.room.create", "") or version != "12"
    ]
    check_auth_events_selection(msg, cited)


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_check_auth_events_selection_rejects_duplicates(version: str) -> None:
    room = standard_room(version)
    old_pl = room.power_levels
    assert old_pl is not None
    room.force(room.make("m.room.power_levels", MOD, dict(old_pl.content), ""))
    msg = room.make("m.room.message", MOD, {"body": "hi"})
    cited = [room.create, old_pl, room.state[("m.room.power_levels", "")]]
    if version == "12":
        cited.remove(room.create)
    with pytest.raises(AuthError, match="duplicate"):
        check_auth_events_selection(msg, cited)


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_check_auth_events_selection_rejects_unexpected_entries(version: str) -> None:
    room = standard_room(version)
    msg = room.make("m.room.message", MOD, {"body": "hi"})
    cited = [room.state[("m.room.join_rules", "")]]
    if version != "12":
        cited.append(room.create)
    with pytest.raises(AuthError, match="unexpected"):
        check_auth_events_selection(msg, cited)


@pytest.mark.parametrize("version", PRE_V12)
def test_check_auth_events_selection_requires_create_before_v12(version: str) -> None:
    room = standard_room(version)
    msg = room.make("m.room.message", MOD, {"body": "hi"})
    with pytest.raises(AuthError, match="create"):
        check_auth_events_selection(msg, [room.state[("m.room.member", MOD)]])


@pytest.mark.parametrize("version", V12)
def test_v12_create_must_not_be_cited(version: str) -> None:
    room = standard_room(version)
    msg = room.make("m.room.message", MOD, {"body": "hi"})
    check_auth_events_selection(msg, [room.state[("m.room.member", MOD)]])
    with pytest.raises(AuthError, match="unexpected"):
        check_auth_events_selection(msg, [room.create, room.state[("m.room.member", MOD)]])


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_check_auth_events_selection_rejects_other_room(version: str) -> None:
    room = standard_room(version)
    other = standard_room(version)
    msg = room.make("m.room.message", MOD, {"body": "hi"})
    cited = [other.state[("m.room.member", MOD)]]
    if version != "12":
        cited.append(room.create)
    with pytest.raises(AuthError, match="another room"):
        check_auth_events_selection(msg, cited)


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_stray_create_with_other_state_key_judged_as_create(version: str) -> None:
    """Like Synapse, every m.room.create gets the create rules whatever its state_key, so a
    later one fails on its prev_events even if its sender could send other state."""
    room = standard_room(version)
    stray = room.make("m.room.create", MOD, dict(room.create.content), "x")
    with pytest.raises(AuthError, match="prev_events"):
        room.check(stray)
    rv = KNOWN_ROOM_VERSIONS[version]
    assert auth_types_for_event(rv, "m.room.create", "x", MOD, {}) == set()


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_event_without_room_id_rejected(version: str) -> None:
    room = standard_room(version)
    pdu = room.pdu("m.room.message", MOD, {"body": "hi"})
    del pdu["room_id"]
    if room.rv.uses_server_assigned_event_ids:
        pdu["event_id"] = "$noroom:a.test"
    event = Event(pdu, room.rv, event_id="$noroom:a.test")
    with pytest.raises(AuthError, match="room_id"):
        check_auth(event, room.auth_for(room.make("m.room.message", MOD, {})))
