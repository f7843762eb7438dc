"""Operator actions on rooms: listing and details, blocking, deleting a room (everyone local
leaves, optionally moved to a notice room, aliases removed, optionally all data purged) and
purging history before a point."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from federation.identifiers import get_domain
from homeserver.http.errors import Codes, MatrixError
from homeserver.services.admin.tasks import TaskRunner
from homeserver.services.events import EventsService
from homeserver.services.rooms import RoomService
from homeserver.storage.admin import AdminStore
from homeserver.storage.engine import Database
from homeserver.storage.purge import (
    PurgePoint,
    event_position_txn,
    purge_history_txn,
    purge_room_txn,
)
from homeserver.storage.state import StateFilter
from homeserver.storage.users import UserStore

logger = logging.getLogger(__name__)

ROOM_ORDER = ("name", "canonical_alias", "joined_members", "joined_local_members", "version",
              "creator", "encryption", "federatable", "public", "join_rules", "guest_access",
              "history_visibility", "state_events")

# Events deleted per transaction: a large purge never holds the database (SQLite's single
# writer) or the room's queue for long.
PURGE_BATCH = 1000

DEFAULT_NOTICE_NAME = "Content Violation Notification"
DEFAULT_NOTICE_MESSAGE = (
    "Sharing illegal content on this server is not permitted and rooms in violation will be "
    "blocked."
)


def room_json(room_id: str, facts: dict[str, Any]) -> dict[str, Any]:
    """A room as Synapse's admin API lists one."""
    state = facts["state"]

    def field(event_type: str, key: str) -> Any:
        return state.get(event_type, {}).get(key)

    return {
        "room_id": room_id,
        "name": field("m.room.name", "name"),
        "topic": field("m.room.topic", "topic"),
        "avatar": field("m.room.avatar", "url"),
        "canonical_alias": field("m.room.canonical_alias", "alias"),
        "joined_members": facts["joined_members"],
        "joined_local_members": facts["joined_local_members"],
        "version": facts["version"],
        "creator": facts["creator"],
        "encryption": field("m.room.encryption", "algorithm"),
        "federatable": field("m.room.create", "m.federate") is not False,
        "public": facts["public"],
        "join_rules": field("m.room.join_rules", "join_rule"),
        "guest_access": field("m.room.guest_access", "guest_access"),
        "history_visibility": field("m.room.history_visibility", "history_visibility"),
        "state_events": facts["state_events"],
        "room_type": field("m.room.create", "type"),
    }


@dataclass
class DeleteOptions:
    requester: str
    block: bool = False
    purge: bool = True
    force_purge: bool = False
    new_room_user_id: str | None = None
    room_name: str | None = None
    message: str | None = None


class RoomAdmin:
    def __init__(self, *, server_name: str, db: Database, store: AdminStore, users: UserStore,
                 rooms: RoomService, pipeline: EventsService, tasks: TaskRunner) -> None:
        self.server_name = server_name
        self.db = db
        self.store = store
        self.users = users
        self.rooms = rooms
        self.pipeline = pipeline
        self.tasks = tasks

    # -- reading ----------------------------------------------------------------------------
    async def list_rooms(self, *, search_term: str | None, order_by: str,
                         descending: bool) -> list[dict[str, Any]]:
        facts = await self.store.room_facts(await self.store.room_ids(), self.server_name)
        rooms = [room_json(r, f) for r, f in facts.items()]
        if search_term:
            needle = search_term.lower()
            rooms = [r for r in rooms if needle in r["room_id"].lower()
                     or needle in (r["name"] or "").lower()
                     or needle in (r["canonical_alias"] or "").lower()]

        def key(r: dict[str, Any]) -> tuple[bool, Any, str]:
            v = r[order_by]
            # Rooms without the value sort last either way.
            return (v is None) != descending, v if v is not None else 0, r["room_id"]

        return sorted(rooms, key=key, reverse=descending)

    async def details(self, room_id: str) -> dict[str, Any]:
        facts = (await self.store.room_facts([room_id], self.server_name)).get(room_id)
        if facts is None:
            raise MatrixError(404, Codes.NOT_FOUND, "Room not found")
        return room_json(room_id, facts)

    async def members(self, room_id: str) -> list[str]:
        await self._known(room_id)
        rows = await self.pipeline.state_store.members(room_id, ["join"])
        return sorted(m.user_id for m in rows)

    async def state(self, room_id: str) -> list[dict[str, Any]]:
        await self._known(room_id)
        ids = await self.pipeline.current_state_ids(room_id, StateFilter.all())
        events = await self.pipeline.store.get_events(ids.values())
        ordered = sorted(events.values(), key=lambda e: e.stream_ordering)
        return await self.rooms.serialize(ordered)

    async def _known(self, room_id: str) -> None:
        if not await self.pipeline.room_exists(room_id):
            raise MatrixError(404, Codes.NOT_FOUND, "Room not found")

    # -- blocking ---------------------------------------------------------------------------
    async def set_blocked(self, room_id: str, blocked: bool, by: str, now: int) -> None:
        if blocked:
            await self.store.block_room(room_id, by, now)
        else:
            await self.store.unblock_room(room_id)

    async def is_blocked(self, room_id: str) -> bool:
        return await self.store.room_block(room_id) is not None

    # -- deleting ---------------------------------------------------------------------------
    async def start_delete(self, room_id: str, options: DeleteOptions, now: int) -> str:
        exists = await self.pipeline.room_exists(room_id)
        if not exists and not options.block:
            raise MatrixError(404, Codes.NOT_FOUND, "Room not found")
        if options.new_room_user_id is not None:
            uid = options.new_room_user_id
            if get_domain(uid) != self.server_name or await self.users.get(uid) is None:
                raise MatrixError(400, Codes.INVALID_PARAM,
                                  "new_room_user_id must be an existing local user")
        for task in await self.store.room_tasks(room_id, "delete_room"):
            if task.status in ("scheduled", "active"):
                raise MatrixError(400, Codes.INVALID_PARAM,
                                  f"The room is already being deleted ({task.task_id})")
        if options.block:
            # Before anything else, so nobody can rejoin while members are being removed.
            await self.store.block_room(room_id, options.requester, now)

        async def body() -> dict[str, Any]:
            return await self._delete(room_id, options, exists)

        return await self.tasks.submit("delete_room", room_id, body)

    async def _delete(self, room_id: str, options: DeleteOptions,
                      exists: bool) -> dict[str, Any]:
        result: dict[str, Any] = {"kicked_users": [], "failed_to_kick_users": [],
                                  "local_aliases": [], "new_room_id": None}
        if not exists:
            return result
        new_room = None
        if options.new_room_user_id is not None:
            owner = options.new_room_user_id
            created = await self.rooms.create_room(
                owner, preset="public_chat", name=options.room_name or DEFAULT_NOTICE_NAME,
                power_level_content_override={"users_default": -10},
            )
            new_room = created.room_id
            await self.rooms.send_event(new_room, owner, "m.room.message", {
                "msgtype": "m.text", "body": options.message or DEFAULT_NOTICE_MESSAGE,
            })
            result["new_room_id"] = new_room
        facts = (await self.store.room_facts([room_id], self.server_name)).get(room_id, {})
        for user_id in facts.get("local_users", []):
            try:
                await self.rooms.leave(room_id, user_id)
                await self.rooms.forget(room_id, user_id)
                if new_room is not None:
                    await self.rooms.join(new_room, user_id)
                result["kicked_users"].append(user_id)
            except MatrixError as e:
                logger.warning("could not remove %s from %s: %s", user_id, room_id, e)
                result["failed_to_kick_users"].append(user_id)
        for alias in await self.pipeline.store.aliases_for_room(room_id):
            await self.pipeline.store.delete_alias(alias)
            result["local_aliases"].append(alias)
            if new_room is not None:
                await self.pipeline.store.create_alias(alias, new_room,
                                                       options.new_room_user_id or "",
                                                       self.pipeline.clock.time_ms())
        await self.pipeline.store.set_public(room_id, False)
        if options.purge:
            still = [m.user_id for m in await self.pipeline.state_store.members(room_id, ["join"])
                     if get_domain(m.user_id) == self.server_name]
            if still and not options.force_purge:
                raise MatrixError(400, Codes.UNKNOWN,
                                  f"Local users are still in the room: {', '.join(still)}")
            await self.purge_room(room_id)
        return result

    async def purge_room(self, room_id: str) -> int:
        async def run() -> list[str]:
            purged = await self.db.run("purge_room", purge_room_txn, room_id)
            # Still in the room's queue: the next job must not find the cached head.
            self.pipeline.forget_room(room_id, purged)
            return purged

        purged = await self.pipeline.exclusive(room_id, run)
        logger.info("purged room %s (%d events)", room_id, len(purged))
        return len(purged)

    # -- purging history --------------------------------------------------------------------
    async def start_purge_history(self, room_id: str, *, event_id: str | None,
                                  before_ts: int | None, delete_local: bool) -> str:
        await self._known(room_id)
        point = PurgePoint(before_ts=before_ts)
        if event_id is not None:
            position = await self.db.run("event_position", event_position_txn, room_id,
                                         event_id)
            if position is None:
                raise MatrixError(404, Codes.NOT_FOUND, "Event not found in this room")
            point = PurgePoint(before_event=position)

        async def body() -> dict[str, Any]:
            return {"purged_events": await self.purge_history(room_id, point, delete_local)}

        return await self.tasks.submit("purge_history", room_id, body)

    async def purge_history(self, room_id: str, point: PurgePoint, delete_local: bool) -> int:
        """Purge now, in batches; each batch is one transaction in the room's queue (so the
        forward extremities cannot move during it, and sends interleave between batches)."""

        async def run() -> list[str]:
            purged = await self.db.run("purge_history", purge_history_txn, room_id, point,
                                       self.server_name, delete_local, PURGE_BATCH)
            for event_id in purged:
                self.pipeline.store.invalidate(event_id)
            return purged

        total = 0
        while True:
            n = len(await self.pipeline.exclusive(room_id, run))
            total += n
            if n < PURGE_BATCH:
                return total
