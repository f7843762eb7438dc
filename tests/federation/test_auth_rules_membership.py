"""Auth rules for m.room.member: joins (incl. restricted), invites (incl. third-party),
leaves/kicks/unbans, bans and knocks, across room versions."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from signedjson.key import generate_signing_key, get_verify_key
from signedjson.sign import sign_json

from federation.auth_rules import AuthError
from federation.events import Event
from tests.federation.authfactory import (
    ALICE,
    ALL_VERSIONS,
    BOB,
    CAROL,
    CREATOR,
    HALF,
    MOD,
    Room,
    standard_room,
    versions,
)

KNOCK = versions(lambda rv: rv.knock_join_rule)
NO_KNOCK = versions(lambda rv: not rv.knock_join_rule)
RESTRICTED = versions(lambda rv: rv.restricted_join_rule)
NO_RESTRICTED = versions(lambda rv: not rv.restricted_join_rule)
KNOCK_RESTRICTED = versions(lambda rv: rv.knock_restricted_join_rule)


def _join_via(room: Room, user: str, authoriser: Any, *, signed_by: list[str]) -> Event:
    sigs = {server: {"ed25519:k": "sig"} for server in signed_by}
    content = {"membership": "join", "join_authorised_via_users_server": authoriser}
    return room.make("m.room.member", user, content, user, signatures=sigs)


# -- basic shape -------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_member_without_membership_rejected(version: str) -> None:
    room = standard_room(version)
    with pytest.raises(AuthError, match="membership"):
        room.check(room.make("m.room.member", ALICE, {"displayname": "x"}, ALICE))
    with pytest.raises(AuthError, match="membership"):
        room.check(room.make("m.room.member", ALICE, {"membership": 1}, ALICE))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_member_without_state_key_rejected(version: str) -> None:
    room = standard_room(version)
    with pytest.raises(AuthError, match="state_key"):
        room.check(room.make("m.room.member", ALICE, {"membership": "join"}))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_unknown_membership_rejected(version: str) -> None:
    room = standard_room(version)
    with pytest.raises(AuthError, match="unknown membership"):
        room.check(room.member_event(ALICE, "lurk"))


# -- the creator's first join ------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_creator_first_join_allowed(version: str) -> None:
    room = Room(version)
    room.check(room.member_event(CREATOR, "join"))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_non_creator_first_join_rejected(version: str) -> None:
    room = Room(version)
    with pytest.raises(AuthError, match="not invited"):
        room.check(room.member_event(ALICE, "join"))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_creator_join_not_directly_after_create_needs_join_rule(version: str) -> None:
    room = Room(version)
    room.force(room.make("m.room.message", CREATOR, {"body": "first"}))
    with pytest.raises(AuthError, match="not invited"):
        room.check(room.member_event(CREATOR, "join"))


@pytest.mark.parametrize("version", versions(lambda rv: not rv.implicit_room_creator))
def test_pre_v11_first_join_uses_content_creator(version: str) -> None:
    room = Room(version, create_content={"creator": ALICE})
    room.check(room.member_event(ALICE, "join"))
    with pytest.raises(AuthError):
        room.check(room.member_event(CREATOR, "join"))


@pytest.mark.parametrize("version", versions(lambda rv: rv.implicit_room_creator))
def test_v11_plus_first_join_uses_create_sender(version: str) -> None:
    room = Room(version, create_content={"creator": ALICE})
    room.check(room.member_event(CREATOR, "join"))
    with pytest.raises(AuthError):
        room.check(room.member_event(ALICE, "join"))


@pytest.mark.parametrize("version", versions(lambda rv: rv.creators_infinite_power))
def test_v12_additional_creator_gets_no_first_join_special_case(version: str) -> None:
    room = Room(version, create_content={"additional_creators": [ALICE]})
    with pytest.raises(AuthError, match="not invited"):
        room.check(room.member_event(ALICE, "join"))


# -- joins ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_join_public_allowed(version: str) -> None:
    room = standard_room(version, join_rule="public")
    room.check(room.member_event(ALICE, "join"))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_join_for_someone_else_rejected(version: str) -> None:
    room = standard_room(version, join_rule="public")
    with pytest.raises(AuthError, match="behalf"):
        room.check(room.member_event(ALICE, "join", sender=MOD))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_banned_user_cannot_join(version: str) -> None:
    room = standard_room(version, join_rule="public")
    room.set_member(ALICE, "ban", sender=MOD)
    with pytest.raises(AuthError, match="banned"):
        room.check(room.member_event(ALICE, "join"))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_join_invite_rule_requires_invite(version: str) -> None:
    room = standard_room(version, join_rule="invite")
    with pytest.raises(AuthError, match="not invited"):
        room.check(room.member_event(ALICE, "join"))
    room.send(room.member_event(ALICE, "invite", sender=MOD))
    room.check(room.member_event(ALICE, "join"))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_rejoin_when_joined_allowed_under_invite_rule(version: str) -> None:
    room = standard_room(version, join_rule="invite")
    room.check(room.member_event(MOD, "join", displayname="new name"))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_join_without_join_rules_event_treated_as_invite(version: str) -> None:
    """Spec: with no join_rule, "otherwise, reject". Synapse treats a missing
    m.room.join_rules event as `invite`, so invited users may join; we follow Synapse."""
    room = standard_room(version, join_rule=None)
    with pytest.raises(AuthError):
        room.check(room.member_event(ALICE, "join"))
    room.send(room.member_event(ALICE, "invite", sender=MOD))
    room.check(room.member_event(ALICE, "join"))


@pytest.mark.parametrize("version", ALL_VERSIONS)
@pytest.mark.parametrize("rule", ["private", "bogus"])
def test_join_unknown_rule_rejected_even_if_invited(version: str, rule: str) -> None:
    room = standard_room(version, join_rule=rule)
    room.set_member(ALICE, "invite", sender=MOD)
    with pytest.raises(AuthError, match="join rule"):
        room.check(room.member_event(ALICE, "join"))


@pytest.mark.parametrize("version", KNOCK)
def test_join_knock_rule_behaves_like_invite_from_v7(version: str) -> None:
    room = standard_room(version, join_rule="knock")
    with pytest.raises(AuthError, match="not invited"):
        room.check(room.member_event(ALICE, "join"))
    room.set_member(ALICE, "invite", sender=MOD)
    room.check(room.member_event(ALICE, "join"))


@pytest.mark.parametrize("version", NO_KNOCK)
def test_join_knock_rule_unknown_before_v7(version: str) -> None:
    room = standard_room(version, join_rule="knock")
    room.set_member(ALICE, "invite", sender=MOD)
    with pytest.raises(AuthError, match="join rule"):
        room.check(room.member_event(ALICE, "join"))


# -- restricted joins (v8+) --------------------------------------------------------------------


@pytest.mark.parametrize("version", RESTRICTED)
def test_restricted_join_authorised_by_joined_inviter_allowed(version: str) -> None:
    room = standard_room(version, join_rule="restricted")
    room.check(_join_via(room, ALICE, MOD, signed_by=["b.test", "a.test"]))


@pytest.mark.parametrize("version", RESTRICTED)
def test_restricted_join_without_authoriser_rejected(version: str) -> None:
    room = standard_room(version, join_rule="restricted")
    with pytest.raises(AuthError, match="join_authorised_via_users_server"):
        room.check(room.member_event(ALICE, "join"))


@pytest.mark.parametrize("version", RESTRICTED)
def test_restricted_join_authoriser_must_be_joined(version: str) -> None:
    room = standard_room(version, join_rule="restricted", members=(HALF,))
    room.set_member(MOD, "leave")
    with pytest.raises(AuthError, match="not joined"):
        room.check(_join_via(room, ALICE, MOD, signed_by=["b.test", "a.test"]))


@pytest.mark.parametrize("version", RESTRICTED)
def test_restricted_join_authoriser_needs_invite_power(version: str) -> None:
    room = standard_room(version, join_rule="restricted", invite=60)
    # HALF (50) is joined but below the invite level; MOD (100) is fine.
    with pytest.raises(AuthError, match="may not invite"):
        room.check(_join_via(room, ALICE, HALF, signed_by=["b.test"]))
    room.check(_join_via(room, ALICE, MOD, signed_by=["b.test", "a.test"]))


@pytest.mark.parametrize("version", RESTRICTED)
def test_restricted_join_must_be_signed_by_authorising_server(version: str) -> None:
    room = standard_room(version, join_rule="restricted")
    with pytest.raises(AuthError, match="signed"):
        room.check(_join_via(room, ALICE, MOD, signed_by=["b.test"]))


@pytest.mark.parametrize("version", RESTRICTED)
def test_restricted_join_invited_or_joined_needs_no_authoriser(version: str) -> None:
    room = standard_room(version, join_rule="restricted")
    room.set_member(ALICE, "invite", sender=MOD)
    room.check(room.member_event(ALICE, "join"))
    room.check(room.member_event(MOD, "join"))


@pytest.mark.parametrize("version", RESTRICTED)
def test_join_authorised_via_users_server_signature_checked_on_any_membership(
    version: str,
) -> None:
    """Spec (v8+ rule 4.2) applies the signature rule whenever the key is present; Synapse
    only checks it for joins. We follow the spec."""
    room = standard_room(version, members=(MOD, ALICE))
    content = {"membership": "leave", "join_authorised_via_users_server": CAROL}
    leave = room.make("m.room.member", ALICE, content, ALICE)
    with pytest.raises(AuthError, match="signed"):
        room.check(leave)
    room.check(
        room.make(
            "m.room.member",
            ALICE,
            content,
            ALICE,
            signatures={"b.test": {"ed25519:k": "s"}, "c.test": {"ed25519:k": "s"}},
        )
    )


@pytest.mark.parametrize("version", NO_RESTRICTED)
def test_restricted_rule_unknown_before_v8(version: str) -> None:
    room = standard_room(version, join_rule="restricted")
    with pytest.raises(AuthError, match="join rule"):
        room.check(_join_via(room, ALICE, MOD, signed_by=["b.test", "a.test"]))


@pytest.mark.parametrize("version", KNOCK_RESTRICTED)
def test_knock_restricted_join_like_restricted_from_v10(version: str) -> None:
    room = standard_room(version, join_rule="knock_restricted")
    room.check(_join_via(room, ALICE, MOD, signed_by=["b.test", "a.test"]))
    with pytest.raises(AuthError, match="join_authorised_via_users_server"):
        room.check(room.member_event(BOB, "join"))
    room.set_member(BOB, "invite", sender=MOD)
    room.check(room.member_event(BOB, "join"))


@pytest.mark.parametrize("version", versions(lambda rv: not rv.knock_restricted_join_rule))
def test_knock_restricted_rule_unknown_before_v10(version: str) -> None:
    room = standard_room(version, join_rule="knock_restricted")
    room.set_member(ALICE, "invite", sender=MOD)
    with pytest.raises(AuthError, match="join rule"):
        room.check(_join_via(room, ALICE, MOD, signed_by=["b.test", "a.test"]))


# -- invites -----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_invite_by_joined_member_allowed(version: str) -> None:
    room = standard_room(version, join_rule="invite", members=(MOD, ALICE))
    # Default invite level is 0, so ALICE (0) may invite.
    room.check(room.member_event(BOB, "invite", sender=ALICE))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_invite_by_non_member_rejected(version: str) -> None:
    room = standard_room(version, join_rule="invite")
    room.set_member(ALICE, "invite", sender=MOD)
    with pytest.raises(AuthError, match="not joined"):
        room.check(room.member_event(BOB, "invite", sender=ALICE))


@pytest.mark.parametrize("version", ALL_VERSIONS)
@pytest.mark.parametrize("target_membership", ["join", "ban"])
def test_invite_of_joined_or_banned_rejected(version: str, target_membership: str) -> None:
    room = standard_room(version)
    room.set_member(BOB, target_membership, sender=MOD if target_membership == "ban" else None)
    with pytest.raises(AuthError, match="already"):
        room.check(room.member_event(BOB, "invite", sender=MOD))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_invite_needs_invite_level(version: str) -> None:
    room = standard_room(version, invite=50, members=(MOD, HALF, ALICE))
    with pytest.raises(AuthError, match="may not invite"):
        room.check(room.member_event(BOB, "invite", sender=ALICE))
    room.check(room.member_event(BOB, "invite", sender=HALF))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_reinvite_of_invited_or_left_user_allowed(version: str) -> None:
    room = standard_room(version)
    room.set_member(BOB, "invite", sender=MOD)
    room.check(room.member_event(BOB, "invite", sender=MOD))
    room.set_member(BOB, "leave")
    room.check(room.member_event(BOB, "invite", sender=MOD))


# -- third-party invites -------------------------------------------------------------------------


class ThirdParty:
    """An identity server key and the pieces of a third-party invite for BOB."""

    def __init__(self, room: Room, sender: str = MOD, *, as_list: bool = False):
        self.key = generate_signing_key("0")
        public = base64.b64encode(get_verify_key(self.key).encode()).decode().rstrip("=")
        self.public = public
        content: dict[str, Any] = {"display_name": "b...@example.com"}
        if as_list:
            content["public_keys"] = [{"public_key": "AAAA"}, {"public_key": public}]
        else:
            content["public_key"] = public
        self.invite = room.force(room.make("m.room.third_party_invite", sender, content, "tok"))
        self.room = room

    def signed(self, mxid: str = BOB, token: str = "tok", key: Any = None) -> dict[str, Any]:
        return sign_json({"mxid": mxid, "token": token}, "id.test", key or self.key)

    def member(self, signed: Any, *, sender: str = MOD, target: str = BOB) -> Event:
        tpi = {"display_name": "b...", "signed": signed}
        return self.room.member_event(target, "invite", sender=sender, third_party_invite=tpi)


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_third_party_invite_with_valid_signature_allowed(version: str) -> None:
    tp = ThirdParty(standard_room(version))
    tp.room.check(tp.member(tp.signed()))


@pytest.mark.parametrize("version", ["1", "12"])
def test_third_party_invite_key_from_public_keys_list(version: str) -> None:
    tp = ThirdParty(standard_room(version), as_list=True)
    tp.room.check(tp.member(tp.signed()))


@pytest.mark.parametrize("version", ["1", "12"])
def test_third_party_invite_url_safe_public_key_accepted(version: str) -> None:
    room = standard_room(version)
    key = generate_signing_key("0")
    # Pick a key whose base64 differs between the alphabets.
    while "+" not in (b64 := base64.b64encode(get_verify_key(key).encode()).decode()) and (
        "/" not in b64
    ):
        key = generate_signing_key("0")
    urlsafe = b64.replace("+", "-").replace("/", "_").rstrip("=")
    room.force(room.make("m.room.third_party_invite", MOD, {"public_key": urlsafe}, "tok"))
    signed = sign_json({"mxid": BOB, "token": "tok"}, "id.test", key)
    tpi = {"display_name": "b", "signed": signed}
    room.check(room.member_event(BOB, "invite", sender=MOD, third_party_invite=tpi))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_third_party_invite_wrong_key_rejected(version: str) -> None:
    tp = ThirdParty(standard_room(version))
    with pytest.raises(AuthError, match="signature"):
        tp.room.check(tp.member(tp.signed(key=generate_signing_key("0"))))


@pytest.mark.parametrize("version", ["1", "12"])
def test_third_party_invite_tampered_signed_rejected(version: str) -> None:
    tp = ThirdParty(standard_room(version))
    signed = tp.signed()
    signed["extra"] = "added after signing"
    with pytest.raises(AuthError, match="signature"):
        tp.room.check(tp.member(signed))


@pytest.mark.parametrize("version", ["1", "12"])
@pytest.mark.parametrize("signatures", [None, {}, {"id.test": {"ed25519:0": "!!"}}, "x"])
def test_third_party_invite_bad_signatures_rejected(version: str, signatures: Any) -> None:
    tp = ThirdParty(standard_room(version))
    signed = {"mxid": BOB, "token": "tok", "signatures": signatures}
    with pytest.raises(AuthError, match="signature"):
        tp.room.check(tp.member(signed))


@pytest.mark.parametrize("version", ALL_VERSIONS)
@pytest.mark.parametrize("signed", [None, "x"])
def test_third_party_invite_without_signed_rejected(version: str, signed: Any) -> None:
    tp = ThirdParty(standard_room(version))
    with pytest.raises(AuthError, match="signed"):
        tp.room.check(tp.member(signed))


@pytest.mark.parametrize("version", ALL_VERSIONS)
@pytest.mark.parametrize("drop", ["mxid", "token"])
def test_third_party_invite_without_mxid_or_token_rejected(version: str, drop: str) -> None:
    tp = ThirdParty(standard_room(version))
    signed = tp.signed()
    del signed[drop]
    with pytest.raises(AuthError, match="mxid or token"):
        tp.room.check(tp.member(signed))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_third_party_invite_mxid_mismatch_rejected(version: str) -> None:
    tp = ThirdParty(standard_room(version))
    with pytest.raises(AuthError, match="mxid"):
        tp.room.check(tp.member(tp.signed(mxid=CAROL)))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_third_party_invite_unknown_token_rejected(version: str) -> None:
    tp = ThirdParty(standard_room(version))
    with pytest.raises(AuthError, match="token"):
        tp.room.check(tp.member(tp.signed(token="other")))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_third_party_invite_sender_must_match(version: str) -> None:
    tp = ThirdParty(standard_room(version), sender=MOD)
    with pytest.raises(AuthError, match="did not send"):
        tp.room.check(tp.member(tp.signed(), sender=HALF))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_third_party_invite_of_banned_target_rejected(version: str) -> None:
    tp = ThirdParty(standard_room(version))
    tp.room.set_member(BOB, "ban", sender=MOD)
    with pytest.raises(AuthError, match="banned"):
        tp.room.check(tp.member(tp.signed()))


@pytest.mark.parametrize("version", ["1", "12"])
def test_third_party_invite_skips_membership_and_invite_level_checks(version: str) -> None:
    """Spec rule 4.1.7 allows outright on a good signature, before the sender-joined and
    invite-level rules (Synapse does the same)."""
    room = standard_room(version, invite=100)
    tp = ThirdParty(room, sender=HALF)
    room.set_member(HALF, "leave")
    room.check(tp.member(tp.signed(), sender=HALF))


# -- leave / kick / unban ----------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
@pytest.mark.parametrize("current", ["join", "invite"])
def test_self_leave_allowed_from_join_or_invite(version: str, current: str) -> None:
    room = standard_room(version)
    room.set_member(ALICE, current, sender=MOD if current == "invite" else None)
    room.check(room.member_event(ALICE, "leave"))


@pytest.mark.parametrize("version", KNOCK)
def test_self_leave_rescinds_knock_from_v7(version: str) -> None:
    room = standard_room(version, join_rule="knock")
    room.send(room.member_event(ALICE, "knock"))
    room.check(room.member_event(ALICE, "leave"))


@pytest.mark.parametrize("version", ALL_VERSIONS)
@pytest.mark.parametrize("current", [None, "leave", "ban"])
def test_self_leave_rejected_when_not_in_room(version: str, current: str | None) -> None:
    room = standard_room(version)
    if current:
        room.set_member(ALICE, current, sender=MOD if current == "ban" else None)
    with pytest.raises(AuthError, match="cannot leave"):
        room.check(room.member_event(ALICE, "leave"))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_kick_by_higher_power_allowed(version: str) -> None:
    room = standard_room(version, members=(MOD, HALF, ALICE))
    room.check(room.member_event(ALICE, "leave", sender=MOD))
    room.check(room.member_event(HALF, "leave", sender=MOD))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_kick_needs_kick_level(version: str) -> None:
    room = standard_room(version, members=(MOD, HALF, ALICE), kick=60)
    with pytest.raises(AuthError, match="may not kick"):
        room.check(room.member_event(ALICE, "leave", sender=HALF))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_kick_of_equal_or_higher_power_rejected(version: str) -> None:
    room = standard_room(version, members=(MOD, HALF))
    room.set_member("@half2:b.test", "join")
    room.force(
        room.make(
            "m.room.power_levels",
            MOD,
            room.power_levels_content(users={MOD: 100, HALF: 50, "@half2:b.test": 50}),
            "",
        )
    )
    with pytest.raises(AuthError, match="not below"):
        room.check(room.member_event("@half2:b.test", "leave", sender=HALF))
    with pytest.raises(AuthError, match="not below"):
        room.check(room.member_event(MOD, "leave", sender=HALF))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_kick_by_non_member_rejected(version: str) -> None:
    room = standard_room(version, members=(HALF, ALICE))
    room.set_member(MOD, "leave")
    with pytest.raises(AuthError, match="not joined"):
        room.check(room.member_event(ALICE, "leave", sender=MOD))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_unban_needs_ban_and_kick_level(version: str) -> None:
    room = standard_room(version, members=(MOD, HALF), ban=75)
    room.set_member(ALICE, "ban", sender=MOD)
    # HALF has the kick level (50) but not the ban level (75).
    with pytest.raises(AuthError, match="unban"):
        room.check(room.member_event(ALICE, "leave", sender=HALF))
    room.check(room.member_event(ALICE, "leave", sender=MOD))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_unban_also_needs_kick_level(version: str) -> None:
    room = standard_room(version, members=(MOD, HALF), ban=50, kick=75)
    room.set_member(ALICE, "ban", sender=MOD)
    with pytest.raises(AuthError, match="may not kick"):
        room.check(room.member_event(ALICE, "leave", sender=HALF))


# -- bans ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_ban_by_higher_power_allowed(version: str) -> None:
    room = standard_room(version, members=(MOD, HALF))
    room.check(room.member_event(ALICE, "ban", sender=HALF))  # non-member target is fine
    room.check(room.member_event(HALF, "ban", sender=MOD))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_ban_needs_ban_level(version: str) -> None:
    room = standard_room(version, members=(MOD, HALF, ALICE))
    with pytest.raises(AuthError, match="may not ban"):
        room.check(room.member_event(BOB, "ban", sender=ALICE))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_ban_of_higher_power_rejected(version: str) -> None:
    room = standard_room(version, members=(MOD, HALF))
    with pytest.raises(AuthError, match="not below"):
        room.check(room.member_event(MOD, "ban", sender=HALF))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_ban_by_non_member_rejected(version: str) -> None:
    room = standard_room(version, members=(HALF,))
    room.set_member(MOD, "invite", sender=HALF)
    with pytest.raises(AuthError, match="not joined"):
        room.check(room.member_event(ALICE, "ban", sender=MOD))


# -- knocks --------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KNOCK)
def test_knock_allowed_on_knock_room(version: str) -> None:
    room = standard_room(version, join_rule="knock")
    room.check(room.member_event(ALICE, "knock"))
    room.set_member(ALICE, "leave")
    room.check(room.member_event(ALICE, "knock"))


@pytest.mark.parametrize("version", KNOCK)
@pytest.mark.parametrize("rule", ["public", "invite", "restricted"])
def test_knock_needs_knock_rule(version: str, rule: str) -> None:
    room = standard_room(version, join_rule=rule)
    with pytest.raises(AuthError, match="cannot knock"):
        room.check(room.member_event(ALICE, "knock"))


@pytest.mark.parametrize("version", KNOCK)
def test_knock_for_someone_else_rejected(version: str) -> None:
    room = standard_room(version, join_rule="knock")
    with pytest.raises(AuthError, match="behalf"):
        room.check(room.member_event(ALICE, "knock", sender=MOD))


@pytest.mark.parametrize("version", KNOCK)
@pytest.mark.parametrize("current", ["ban", "invite", "join"])
def test_knock_rejected_when_banned_invited_or_joined(version: str, current: str) -> None:
    room = standard_room(version, join_rule="knock")
    room.set_member(ALICE, current, sender=ALICE if current == "join" else MOD)
    with pytest.raises(AuthError, match="cannot knock"):
        room.check(room.member_event(ALICE, "knock"))


@pytest.mark.parametrize("version", NO_KNOCK)
def test_knock_membership_unknown_before_v7(version: str) -> None:
    room = standard_room(version, join_rule="knock")
    with pytest.raises(AuthError, match="unknown membership"):
        room.check(room.member_event(ALICE, "knock"))


@pytest.mark.parametrize("version", KNOCK_RESTRICTED)
def test_knock_on_knock_restricted_allowed_from_v10(version: str) -> None:
    room = standard_room(version, join_rule="knock_restricted")
    room.check(room.member_event(ALICE, "knock"))


@pytest.mark.parametrize("version", ["7", "8", "9"])
def test_knock_on_knock_restricted_rejected_before_v10(version: str) -> None:
    room = standard_room(version, join_rule="knock_restricted")
    with pytest.raises(AuthError, match="cannot knock"):
        room.check(room.member_event(ALICE, "knock"))


# -- v12 creators --------------------------------------------------------------------------------

V12 = versions(lambda rv: rv.creators_infinite_power)


@pytest.mark.parametrize("version", V12)
def test_v12_creator_can_kick_and_ban_anyone(version: str) -> None:
    room = standard_room(version, members=(MOD, HALF))
    room.check(room.member_event(MOD, "leave", sender=CREATOR))
    room.check(room.member_event(MOD, "ban", sender=CREATOR))


@pytest.mark.parametrize("version", V12)
def test_v12_creators_cannot_be_kicked_or_banned(version: str) -> None:
    room = standard_room(version, create_content={"additional_creators": [ALICE]})
    room.send(room.member_event(ALICE, "join"))
    with pytest.raises(AuthError, match="not below"):
        room.check(room.member_event(CREATOR, "ban", sender=MOD))
    # Not even by a fellow creator: infinity is not below infinity.
    with pytest.raises(AuthError, match="not below"):
        room.check(room.member_event(CREATOR, "leave", sender=ALICE))
    with pytest.raises(AuthError, match="not below"):
        room.check(room.member_event(ALICE, "ban", sender=CREATOR))


@pytest.mark.parametrize("version", V12)
def test_v12_additional_creator_has_creator_power(version: str) -> None:
    room = standard_room(version, create_content={"additional_creators": [ALICE]})
    room.send(room.member_event(ALICE, "join"))
    room.check(room.member_event(MOD, "ban", sender=ALICE))


@pytest.mark.parametrize("version", versions(lambda rv: not rv.creators_infinite_power))
def test_pre_v12_creator_is_just_power_100(version: str) -> None:
    room = standard_room(version, members=(MOD,))
    # MOD and the creator are both 100: neither can kick the other.
    with pytest.raises(AuthError, match="not below"):
        room.check(room.member_event(MOD, "leave", sender=CREATOR))
