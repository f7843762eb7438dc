"""Room discovery across servers: our public room directory and space hierarchies served to
other servers, and the same asked of other servers for our clients.

Served: ``/publicRooms`` only when ``room_directory.allow_public_rooms_over_federation`` is
on (as in Synapse, a directory is not for every server to crawl by default).
``/hierarchy/{roomId}`` gives the space and its direct children that the asking server may
see: a room is visible to a server if it is world readable, public or knockable, restricted
with an allowed room the server has a member in, or the server has a user joined or invited
in it; the room's server ACL must admit the server. The root must be visible (else 404).

Asked: a client's ``/publicRooms?server=`` is passed on as a signed request; rooms of a
client's ``/hierarchy`` walk that this server does not have (``HierarchyService``) are
described by the ``/hierarchy`` answers of their ``via`` servers (for the root: the
client's ``via``, MSC4235, and the room ID's server in versions before 12).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from federation.events import JsonDict
from federation.identifiers import InvalidIdentifier, get_domain, is_valid_server_name
from federation.transport.client import FederationClientError, HttpResponseError
from homeserver.http.errors import Codes, MatrixError
from homeserver.services.directory import DirectoryPage
from homeserver.services.federation_policy import DestinationBlocked
from homeserver.services.hierarchy import RemoteLookup

if TYPE_CHECKING:
    from homeserver.services.registry import Services

logger = logging.getLogger(__name__)

# A client's walk of a remote space asks at most this many servers' /hierarchy answers.
MAX_REMOTE_REQUESTS = 10
REMOTE_TIMEOUT_S = 15.0


def _domain(identifier: str) -> str | None:
    try:
        return get_domain(identifier)
    except InvalidIdentifier:
        return None


class FederationDirectory:
    def __init__(self, s: Services) -> None:
        self.s = s
        self.server_name = s.config.server_name
        s.hierarchy.remote_lookup = self.remote_lookup

    # -- served to other servers ---------------------------------------------------------------

    async def public_rooms_for(
        self, origin: str, *, limit: int | None, since: str | None,
        search_term: str | None = None, room_types: Sequence[str | None] | None = None,
    ) -> DirectoryPage:
        if not self.s.config.public_rooms_over_federation:
            raise MatrixError(403, Codes.FORBIDDEN,
                              "This server does not share its room directory over federation")
        return await self.s.directory.public_rooms(
            limit=limit, since=since, search_term=search_term, room_types=room_types
        )

    async def server_may_see(self, origin: str, room_id: str) -> bool:
        if not await self.s.pipeline.room_exists(room_id):
            return False
        if not await self.s.federation.acl_allows(room_id, origin):
            return False
        state = await self.s.hierarchy.room_state(
            room_id, ["m.room.history_visibility", "m.room.join_rules"]
        )
        hv = state.get(("m.room.history_visibility", ""))
        if hv is not None and hv.content.get("history_visibility") == "world_readable":
            return True
        jr = state.get(("m.room.join_rules", ""))
        rule = jr.content.get("join_rule") if jr is not None else None
        if rule in ("public", "knock"):
            return True
        if await self._server_in(room_id, origin, ("join", "invite")):
            return True
        if rule in ("restricted", "knock_restricted") and jr is not None:
            allow = jr.content.get("allow")
            for entry in allow if isinstance(allow, list) else []:
                other = entry.get("room_id") if isinstance(entry, dict) else None
                if isinstance(other, str) and other != room_id and \
                        await self._server_in(other, origin, ("join",)):
                    return True
        return False

    async def _server_in(self, room_id: str, server: str, memberships: Sequence[str]) -> bool:
        members = await self.s.state_store.members(room_id, memberships)
        return any(_domain(m.user_id) == server for m in members)

    async def hierarchy_for(self, origin: str, room_id: str, suggested_only: bool) -> JsonDict:
        if not await self.server_may_see(origin, room_id):
            raise MatrixError(404, Codes.NOT_FOUND, "Unknown room, or not visible to you")
        root = await self._summary_with_children(room_id, suggested_only)
        if root is None:
            raise MatrixError(404, Codes.NOT_FOUND, "Unknown room")
        children: list[JsonDict] = []
        inaccessible: list[str] = []
        for child in root["children_state"]:
            child_id = child["state_key"]
            if not await self.s.pipeline.room_exists(child_id):
                continue  # nothing to say about it: the asking server asks elsewhere
            if not await self.server_may_see(origin, child_id):
                inaccessible.append(child_id)
                continue
            summary = await self._summary_with_children(child_id, suggested_only)
            if summary is not None:
                children.append(summary)
        return {"room": root, "children": children, "inaccessible_children": inaccessible}

    async def _summary_with_children(self, room_id: str, suggested_only: bool) -> JsonDict | None:
        entry = await self.s.directory.summary(room_id)
        if entry is None:
            return None
        entry["children_state"] = [
            {"type": ev.type, "state_key": ev.state_key, "content": ev.content,
             "sender": ev.sender, "origin_server_ts": ev.origin_server_ts}
            for ev in await self.s.hierarchy.children(room_id, suggested_only)
        ]
        return entry

    # -- asked of other servers ----------------------------------------------------------------

    async def remote_public_rooms(
        self, server: str, *, limit: int | None, since: str | None,
        search_term: str | None = None, room_types: Sequence[str | None] | None = None,
        filtered: bool = False,
    ) -> JsonDict:
        """Another server's directory: GET without a filter, POST with one."""
        client = self.s.federation_client
        path = "/_matrix/federation/v1/publicRooms"
        try:
            if not filtered:
                args = {k: v for k, v in (("limit", str(limit) if limit else None),
                                          ("since", since)) if v is not None}
                answer = await client.get_json(server, path, args, timeout_s=REMOTE_TIMEOUT_S)
            else:
                body: JsonDict = {}
                if limit:
                    body["limit"] = limit
                if since is not None:
                    body["since"] = since
                flt: JsonDict = {}
                if search_term:
                    flt["generic_search_term"] = search_term
                if room_types is not None:
                    flt["room_types"] = list(room_types)
                if flt:
                    body["filter"] = flt
                answer = await client.post_json(server, path, body, timeout_s=REMOTE_TIMEOUT_S)
        except HttpResponseError as e:
            if e.status in (400, 403, 404) and e.errcode:
                raise MatrixError(e.status, e.errcode, e.error or f"{server} refused") from None
            raise MatrixError(502, Codes.UNKNOWN, f"{server} answered {e.status}") from None
        except DestinationBlocked:
            raise MatrixError(403, Codes.FORBIDDEN,
                              f"Federation with {server} is not allowed") from None
        except FederationClientError as e:
            logger.info("publicRooms of %s failed: %s", server, e)
            raise MatrixError(502, Codes.UNKNOWN, f"Could not reach {server}") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("chunk"), list):
            raise MatrixError(502, Codes.UNKNOWN, f"{server} sent a malformed directory")
        out: JsonDict = {
            "chunk": [r for r in answer["chunk"]
                      if isinstance(r, dict) and isinstance(r.get("room_id"), str)],
        }
        for key in ("next_batch", "prev_batch"):
            if isinstance(answer.get(key), str):
                out[key] = answer[key]
        total = answer.get("total_room_count_estimate")
        if isinstance(total, int) and not isinstance(total, bool):
            out["total_room_count_estimate"] = total
        return out

    async def _ask_hierarchy(
        self, room_id: str, servers: Sequence[str], suggested_only: bool, budget: list[int]
    ) -> JsonDict | None:
        """The first good ``/hierarchy`` answer among ``servers`` (None if none)."""
        path = f"/_matrix/federation/v1/hierarchy/{quote(room_id, safe='')}"
        args = {"suggested_only": "true" if suggested_only else "false"}
        for server in dict.fromkeys(servers):
            if server == self.server_name or budget[0] <= 0:
                continue
            budget[0] -= 1
            try:
                answer = await self.s.federation_client.get_json(
                    server, path, args, timeout_s=REMOTE_TIMEOUT_S)
            except FederationClientError as e:
                logger.info("hierarchy of %s from %s failed: %s", room_id, server, e)
                continue
            room = answer.get("room") if isinstance(answer, dict) else None
            if isinstance(room, dict) and room.get("room_id") == room_id:
                return answer
        return None

    def remote_lookup(self, suggested_only: bool) -> RemoteLookup:
        """One hierarchy walk's view of rooms this server does not have: a room's summary
        (with its ``children_state``) from the ``/hierarchy`` answer of the first of its
        ``via`` servers that has one. A space's answer also describes its children, so
        those cost no request of their own; a walk asks at most ``MAX_REMOTE_REQUESTS``."""
        known: dict[str, JsonDict] = {}
        budget = [MAX_REMOTE_REQUESTS]

        async def lookup(room_id: str, via: Sequence[str]) -> JsonDict | None:
            entry = known.get(room_id)
            if entry is not None and (entry.get("room_type") != "m.space"
                                      or isinstance(entry.get("children_state"), list)):
                return entry
            servers = [v for v in via if is_valid_server_name(v)][:MAX_REMOTE_REQUESTS]
            found = await self._ask_hierarchy(room_id, servers, suggested_only, budget)
            if found is None:
                return entry
            self._learn(found, known)
            known[room_id] = found["room"]
            return known[room_id]

        return lookup

    @staticmethod
    def _learn(answer: JsonDict, known: dict[str, Any]) -> None:
        children = answer.get("children")
        for child in children if isinstance(children, list) else []:
            if isinstance(child, dict) and isinstance(child.get("room_id"), str):
                known.setdefault(child["room_id"], child)
