"""Restricted rooms (v8+), resident side of a remote join.

A user who is neither invited nor joined may join a ``restricted`` / ``knock_restricted`` room
when they are in one of the rooms its join rules allow; a member of the resident server who
may invite vouches for the join (``join_authorised_via_users_server`` in the template from
``make_join``), and the resident server signs the join at ``send_join`` (the auth rules want
that server's signature).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from federation.events import Event, JsonDict
from federation.identifiers import InvalidIdentifier, get_domain
from federation.power_levels import get_named_level, get_user_power_level
from federation.room_versions import RoomVersion
from federation.signing import sign_event
from homeserver.http.errors import Codes, MatrixError

if TYPE_CHECKING:
    from homeserver.services.registry import Services

JOIN_RULES = ("m.room.join_rules", "")
RESTRICTED = ("restricted", "knock_restricted")


def _allowed_rooms(join_rules: Event) -> list[str]:
    allow = join_rules.content.get("allow")
    if not isinstance(allow, list):
        return []
    return [a["room_id"] for a in allow if isinstance(a, dict)
            and a.get("type") == "m.room_membership" and isinstance(a.get("room_id"), str)]


async def join_authoriser(s: Services, rv: RoomVersion, room_id: str, user_id: str) -> str | None:
    """The local user to vouch for ``user_id`` joining, or None when the join needs no
    voucher. 400 ``M_UNABLE_TO_AUTHORISE_JOIN`` when we are in none of the allowed rooms (the
    joining server may try another), 403 when the user is in none of them."""
    if not rv.restricted_join_rule:
        return None
    rules = await s.pipeline.current_state_event(room_id, JOIN_RULES)
    if rules is None or rules.event.content.get("join_rule") not in RESTRICTED:
        return None
    current = await s.state_store.membership(room_id, user_id)
    if current is not None and current.membership in ("join", "invite"):
        return None
    server_name = s.config.server_name
    known = False
    for allowed in _allowed_rooms(rules.event):
        members = await s.state_store.members(allowed, ["join"])
        if any(get_domain(m.user_id) == server_name for m in members):
            known = True
            if any(m.user_id == user_id for m in members):
                break
    else:
        if not known:
            raise MatrixError(400, "M_UNABLE_TO_AUTHORISE_JOIN",
                              f"{server_name} is in none of the rooms that allow joining")
        raise MatrixError(403, Codes.FORBIDDEN,
                          f"{user_id} is not invited and in no room that allows joining")
    state: dict[tuple[str, str], Event] = {}
    for key in (("m.room.create", ""), ("m.room.power_levels", "")):
        found = await s.pipeline.current_state_event(room_id, key)
        if found is not None:
            state[key] = found.event
    invite_level = get_named_level(state, "invite")
    candidates = [
        (get_user_power_level(m.user_id, state), m.user_id)
        for m in await s.state_store.members(room_id, ["join"])
        if get_domain(m.user_id) == server_name
    ]
    able = [c for c in candidates if c[0] >= invite_level]
    if not able:
        raise MatrixError(400, "M_UNABLE_TO_AUTHORISE_JOIN",
                          f"No user on {server_name} may authorise the join")
    return max(able)[1]


async def countersign_join(s: Services, rv: RoomVersion, room_id: str, pdu: Any) -> Any:
    """At send_join: a join vouched for by one of our users, still allowed, signed by us too
    (before its signatures are checked). Anything else is returned as it came."""
    content = pdu.get("content") if isinstance(pdu, dict) else None
    authoriser = content.get("join_authorised_via_users_server") if isinstance(
        content, dict) else None
    sender = pdu.get("sender") if isinstance(pdu, dict) else None
    if not isinstance(authoriser, str) or not isinstance(sender, str):
        return pdu
    try:
        if get_domain(authoriser) != s.config.server_name:
            return pdu
    except InvalidIdentifier:
        return pdu
    # The conditions the voucher was given on must still hold.
    if await join_authoriser(s, rv, room_id, sender) is None:
        return pdu
    signed: JsonDict = sign_event(pdu, rv, s.pipeline.signing_key, s.config.server_name)
    return signed
