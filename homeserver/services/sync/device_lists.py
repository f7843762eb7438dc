"""``GET /keys/changes``: whose device lists changed between two /sync tokens, and with whom
the user stopped sharing every room (``left``), so that a client that missed syncs knows
which users' keys to re-query and which to stop tracking.

/sync computes the same two sets from the rooms it has already loaded; this answers the
question from the tokens alone, without building a sync response.
"""

from __future__ import annotations

from homeserver.services.e2ee.keys import KeyService
from homeserver.services.sync.token import SyncToken
from homeserver.storage.state import StateStore
from homeserver.storage.sync import SyncStore

_LEAVING = ("leave", "ban")


async def device_list_delta(
    store: SyncStore, state_store: StateStore, keys: KeyService, user: str,
    since: SyncToken, to: SyncToken,
) -> tuple[set[str], set[str]]:
    """(changed, left) between the two tokens."""
    changed: set[str] = set()
    left_candidates: set[str] = set()
    own = await store.membership_changes(user, since.events, to.events)
    newly_joined = {c.room_id for c in own if c.membership == "join"
                    and c.prev_membership != "join"}
    newly_left = {c.room_id for c in own if c.membership in _LEAVING}
    current = {m.room_id for m in await state_store.rooms_for_user(user, ("join",))}
    newly_joined &= current
    newly_left -= current

    if since.device_lists < to.device_lists:
        rows = await store.device_list_candidates(since.device_lists, to.device_lists)
        plain = {u for u, only_for in rows if only_for is None}
        shared = await store.sharing_a_room(user, plain)
        changed |= await keys.changed_users(user, since.device_lists, shared,
                                            to=to.device_lists)
    if newly_joined:
        # Everyone in a room the user joined (not the user: their own keys count only when
        # they changed, which changed_users reports).
        changed |= await store.joined_members(sorted(newly_joined)) - {user}
    old = sorted(current - newly_joined)
    for _room, member, membership in await store.member_changes_in_rooms(
        old, since.events, to.events
    ):
        if membership == "join":
            changed.add(member)
        elif membership in _LEAVING:
            left_candidates.add(member)
    if newly_left:
        left_candidates |= await store.joined_members(sorted(newly_left))
    left_candidates.discard(user)
    left: set[str] = set()
    if left_candidates:
        left = left_candidates - await store.sharing_a_room(user, left_candidates)
        changed -= left
    return changed, left
