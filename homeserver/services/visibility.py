"""History visibility: may this user see this event? A pure function, applied on every read.

The inputs are the room's ``m.room.history_visibility`` and the user's membership in the state
*after* the event, and whether the user is joined now. As in Synapse (and the spec's
"History visibility" rules):

- ``world_readable``: anyone may see the event;
- a user joined at the event sees it;
- ``shared``: a user joined *now* sees every event;
- ``invited``: a user invited at the event sees it;
- ``joined`` (or anything else): nobody else.

Boundaries: for the history visibility event itself the less restrictive of the old and new
value applies; for the user's own membership event the "more joined" of the old and new
membership applies, and a user always sees their own leave from a join or an invite.
"""

from __future__ import annotations

from federation.events import Event

DEFAULT_VISIBILITY = "shared"
# Least restrictive first.
_VISIBILITY_ORDER = ("world_readable", "shared", "invited", "joined")
# Most joined first.
_MEMBERSHIP_ORDER = ("join", "invite", "knock", "leave", "ban")


def effective_visibility(value: object) -> str:
    return value if isinstance(value, str) and value in _VISIBILITY_ORDER else "joined"


def _rank_membership(m: str | None) -> int:
    return _MEMBERSHIP_ORDER.index(m if m in _MEMBERSHIP_ORDER else "leave")


def is_event_visible(
    event: Event,
    user_id: str,
    *,
    visibility: str | None,
    membership: str | None,
    currently_joined: bool,
    prev_visibility: str | None = None,
    prev_membership: str | None = None,
) -> bool:
    """``visibility``/``membership``: history visibility and the user's membership in the state
    after ``event`` (None when absent); ``prev_*``: the values the event replaced, for the
    history visibility event itself and the user's own membership event."""
    vis = effective_visibility(visibility if visibility is not None else DEFAULT_VISIBILITY)
    if event.type == "m.room.history_visibility" and event.state_key == "":
        prev = effective_visibility(
            prev_visibility if prev_visibility is not None else DEFAULT_VISIBILITY
        )
        vis = min(vis, prev, key=_VISIBILITY_ORDER.index)
    if vis == "world_readable":
        return True

    if event.type == "m.room.member" and event.state_key == user_id:
        new = membership if membership in _MEMBERSHIP_ORDER else "leave"
        old = prev_membership if prev_membership in _MEMBERSHIP_ORDER else "leave"
        if new == "leave" and old in ("join", "invite"):
            return True
        membership = min(new, old, key=_rank_membership)

    if membership == "join":
        return True
    if vis == "shared":
        return currently_joined
    if vis == "invited":
        return membership == "invite"
    return False
