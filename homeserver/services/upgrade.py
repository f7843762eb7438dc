"""Room upgrades: POST /rooms/{roomId}/upgrade.

The requester needs the power to send ``m.room.tombstone`` in the old room. The new room is
created (in one transaction, as any room) with ``predecessor`` in its create event and the
old room's name, topic, avatar, join rules, history visibility, guest access, encryption,
server ACL, space children and power levels; for v12 (creators with unlimited power) the new
room's creators are left out of the power levels, and from v12 to an older version the
requester gets the creator's 100. Bans are carried over. Then local aliases move to the new
room (with the canonical alias), the old room gets its tombstone and its power levels are
raised so that only moderators can speak or invite, and a published room is re-published.
"""

from __future__ import annotations

import logging

from federation.events import Event, JsonDict, StateKey
from federation.power_levels import get_creators, get_send_level, get_user_power_level
from federation.room_versions import KNOWN_ROOM_VERSIONS, get_room_version
from homeserver.http.errors import Codes, MatrixError, forbidden, not_found
from homeserver.services.rooms import RoomService
from homeserver.storage.state import StateFilter

logger = logging.getLogger(__name__)

CREATE: StateKey = ("m.room.create", "")
POWER_LEVELS: StateKey = ("m.room.power_levels", "")
CANONICAL_ALIAS: StateKey = ("m.room.canonical_alias", "")
TOMBSTONE = "m.room.tombstone"
COPIED_TYPES = (
    "m.room.join_rules", "m.room.name", "m.room.topic", "m.room.avatar",
    "m.room.history_visibility", "m.room.guest_access", "m.room.encryption",
    "m.room.server_acl", "m.space.child",
)


class UpgradeService:
    def __init__(self, *, rooms: RoomService) -> None:
        self.rooms = rooms
        self.pipeline = rooms.pipeline
        self.store = rooms.store

    async def _state(self, room_id: str, state_filter: StateFilter | None) -> dict[StateKey, Event]:
        ids = await self.pipeline.current_state_ids(room_id, state_filter)
        found = await self.store.get_events(ids.values())
        return {k: found[i].event for k, i in ids.items() if i in found}

    async def upgrade(
        self, room_id: str, user_id: str, new_version: str,
        additional_creators: list[str] | None = None,
    ) -> str:
        if new_version not in KNOWN_ROOM_VERSIONS:
            raise MatrixError(400, "M_UNSUPPORTED_ROOM_VERSION",
                              f"Room version {new_version!r} is not supported")
        new_rv = get_room_version(new_version)
        if additional_creators and not new_rv.creators_infinite_power:
            raise MatrixError(400, Codes.INVALID_PARAM,
                              f"Room version {new_version} has no additional creators")
        if not await self.pipeline.room_exists(room_id):
            raise not_found(f"Unknown room {room_id}")
        state = await self._state(room_id, None)
        member = state.get(("m.room.member", user_id))
        if member is None or member.membership != "join":
            raise forbidden(f"{user_id} is not in room {room_id}")
        if state.get((TOMBSTONE, "")) is not None and isinstance(
            state[(TOMBSTONE, "")].content.get("replacement_room"), str
        ):
            raise MatrixError(400, Codes.INVALID_PARAM, "This room has already been replaced")
        own_level = get_user_power_level(user_id, state)
        if own_level < get_send_level(TOMBSTONE, "", state):
            raise forbidden("You don't have permission to upgrade this room")

        old_create = state[CREATE]
        creation_content: JsonDict = {"predecessor": {"room_id": room_id}}
        room_type = old_create.content.get("type")
        if isinstance(room_type, str):
            creation_content["type"] = room_type
        if additional_creators:
            creation_content["additional_creators"] = additional_creators
        if old_create.content.get("m.federate") is False:
            creation_content["m.federate"] = False

        copied = [(t, sk) for (t, sk), ev in state.items() if t in COPIED_TYPES and ev.content]
        initial_state: list[JsonDict] = [
            {"type": t, "state_key": sk, "content": state[(t, sk)].content} for t, sk in copied
        ]
        pl = self._new_power_levels(state, user_id, new_rv.creators_infinite_power,
                                    set(additional_creators or []))
        # The requester must be able to send the copied state; if the copied power levels do
        # not allow that, a temporary raise is replaced by the real levels afterwards.
        needed = max(
            [get_send_level(t, sk, state) for t, sk in copied] + [0]
        )
        final_pl = None
        if not new_rv.creators_infinite_power:
            users = pl.setdefault("users", {})
            current = users.get(user_id, pl.get("users_default", 0))
            if isinstance(current, int) and current < needed:
                final_pl = {**pl, "users": dict(users)}
                users[user_id] = needed
        created = await self.rooms.create_room(
            user_id, preset="public_chat", initial_state=[
                *initial_state, {"type": POWER_LEVELS[0], "state_key": "", "content": pl}
            ],
            creation_content=creation_content, room_version=new_version,
        )
        new_room = created.room_id
        if final_pl is not None:
            await self.rooms.send_event(new_room, user_id, POWER_LEVELS[0], final_pl, "")

        for (t, target), ev in state.items():
            if t == "m.room.member" and ev.membership == "ban":
                try:
                    await self.rooms.ban(new_room, user_id, target,
                                         reason=ev.content.get("reason")
                                         if isinstance(ev.content.get("reason"), str) else None)
                except MatrixError as e:
                    logger.info("upgrade of %s: ban of %s not carried over: %s",
                                room_id, target, e)

        await self._move_aliases(room_id, new_room, user_id, state.get(CANONICAL_ALIAS))
        await self.rooms.send_event(
            room_id, user_id, TOMBSTONE,
            {"body": "This room has been replaced", "replacement_room": new_room}, "",
        )
        await self._restrict_old_room(room_id, user_id)
        old_row = await self.store.get_room(room_id)
        if old_row is not None and old_row.is_public:
            await self.store.set_public(new_room, True)
            await self.store.set_public(room_id, False)
        logger.info("%s upgraded %s to %s (version %s)", user_id, room_id, new_room, new_version)
        return new_room

    @staticmethod
    def _new_power_levels(
        state: dict[StateKey, Event], user_id: str, infinite: bool, extra_creators: set[str],
    ) -> JsonDict:
        old = state.get(POWER_LEVELS)
        pl: JsonDict = dict(old.content) if old is not None else {}
        users = dict(pl.get("users") or {}) if isinstance(pl.get("users"), dict) else {}
        if infinite:
            # v12: the creators have unlimited power and may not be listed.
            for creator in {user_id, *extra_creators}:
                users.pop(creator, None)
        else:
            old_creators = get_creators(state[CREATE])
            if user_id in old_creators and user_id not in users:
                # From v12 (creators unlisted) to an older version: the upgrader gets 100.
                users[user_id] = 100
        pl["users"] = users
        return pl

    async def _move_aliases(
        self, old_room: str, new_room: str, user_id: str, canonical: Event | None
    ) -> None:
        moved = []
        now = self.rooms.clock.time_ms()
        for alias in await self.store.aliases_for_room(old_room):
            row = await self.store.get_alias(alias)
            if row is None:
                continue
            await self.store.delete_alias(alias)
            await self.store.create_alias(alias, new_room, row.creator, now)
            moved.append(alias)
        if canonical is None or not canonical.content:
            return
        content = dict(canonical.content)
        try:
            await self.rooms.send_event(new_room, user_id, CANONICAL_ALIAS[0], content, "")
        except MatrixError as e:
            # An alias of another server that does not check out stays behind.
            logger.info("upgrade of %s: canonical alias not copied: %s", old_room, e)
        try:
            await self.rooms.send_event(old_room, user_id, CANONICAL_ALIAS[0], {}, "")
        except MatrixError as e:
            logger.info("upgrade of %s: canonical alias not removed: %s", old_room, e)
        logger.debug("upgrade of %s moved aliases %s", old_room, moved)

    async def _restrict_old_room(self, room_id: str, user_id: str) -> None:
        state = await self._state(room_id, StateFilter.from_keys([POWER_LEVELS]))
        old = state.get(POWER_LEVELS)
        pl: JsonDict = dict(old.content) if old is not None else {}
        users_default = pl.get("users_default", 0)
        restricted = max(50, (users_default if isinstance(users_default, int) else 0) + 1)
        changed = False
        for key in ("events_default", "invite"):
            value = pl.get(key, 0)
            if not isinstance(value, int) or value < restricted:
                pl[key] = restricted
                changed = True
        if changed:
            try:
                await self.rooms.send_event(room_id, user_id, POWER_LEVELS[0], pl, "")
            except MatrixError as e:
                logger.warning("upgrade of %s: could not restrict the old room: %s", room_id, e)
