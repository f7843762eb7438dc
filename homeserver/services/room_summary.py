"""Room summaries (GET /_matrix/client/v1/room_summary/{roomIdOrAlias}, spec v1.15): what a
client shows before joining — name, topic, avatar, members, join rule, encryption, version.

Who may see a room's summary is who may see it in a space hierarchy (services/hierarchy):
members and invitees, anyone for world-readable, public or knockable rooms, and users joined
to a room a restricted join rule allows. Without an access token only world-readable, public
and knockable rooms are summarised, as the spec allows. A room the asker may not see is
"not found", so that a summary does not reveal that a private room exists. Rooms this server
is not in are described by the ``via`` servers (or the room ID's server), through their
federation /hierarchy answer.
"""

from __future__ import annotations

from collections.abc import Sequence

from federation.events import JsonDict
from homeserver.http.errors import Codes, MatrixError
from homeserver.services.directory import DirectoryService
from homeserver.services.events import EventsService
from homeserver.services.hierarchy import HierarchyService
from homeserver.storage.state import StateFilter

_OPEN_RULES = ("public", "knock", "knock_restricted")
_EXTRA = [("m.room.encryption", ""), ("m.room.create", ""), ("m.room.join_rules", "")]


def _not_found() -> MatrixError:
    return MatrixError(404, Codes.NOT_FOUND, "Room not found, or you may not see it")


class RoomSummaryService:
    def __init__(self, *, pipeline: EventsService, directory: DirectoryService,
                 hierarchy: HierarchyService) -> None:
        self.pipeline = pipeline
        self.directory = directory
        self.hierarchy = hierarchy

    async def summary(self, room_id: str, user_id: str | None, via: Sequence[str] = ()
                      ) -> JsonDict:
        if await self.pipeline.room_exists(room_id):
            entry = await self._local(room_id, user_id)
        else:
            entry = await self._remote(room_id, user_id, via)
        if entry is None:
            raise _not_found()
        if user_id is not None:
            member = await self.pipeline.state_store.membership(room_id, user_id)
            if member is not None:
                entry["membership"] = member.membership
        return entry

    async def _local(self, room_id: str, user_id: str | None) -> JsonDict | None:
        entry = await self.directory.summary(room_id)
        if entry is None:
            return None
        if user_id is not None:
            if not await self.hierarchy.accessible(room_id, user_id):
                return None
        elif not (entry["world_readable"] or entry["join_rule"] in _OPEN_RULES):
            return None
        ids = await self.pipeline.current_state_ids(room_id, StateFilter.from_keys(_EXTRA))
        found = await self.pipeline.store.get_events(ids.values())
        content = {k: found[i].event.content for k, i in ids.items() if i in found}
        algorithm = content.get(("m.room.encryption", ""), {}).get("algorithm")
        if isinstance(algorithm, str):
            entry["encryption"] = algorithm
        version = content.get(("m.room.create", ""), {}).get("room_version", "1")
        entry["room_version"] = version if isinstance(version, str) else "1"
        if entry["join_rule"] in ("restricted", "knock_restricted"):
            allow = content.get(("m.room.join_rules", ""), {}).get("allow")
            entry["allowed_room_ids"] = [
                a["room_id"] for a in (allow if isinstance(allow, list) else [])
                if isinstance(a, dict) and isinstance(a.get("room_id"), str)
            ]
        return entry

    async def _remote(self, room_id: str, user_id: str | None, via: Sequence[str]
                      ) -> JsonDict | None:
        if self.hierarchy.remote_lookup is None:
            return None
        domain = room_id.split(":", 1)[1] if ":" in room_id else None
        servers = list(dict.fromkeys([*via, *([domain] if domain else [])]))
        found = await self.hierarchy.remote_lookup(False)(room_id, servers)
        if found is None:
            return None
        if user_id is not None:
            if not await self.hierarchy.remote_visible(found, user_id):
                return None
        elif not (found.get("world_readable") is True or found.get("join_rule") in _OPEN_RULES):
            return None
        entry = {k: v for k, v in found.items() if k != "children_state"}
        entry["room_id"] = room_id
        return entry
