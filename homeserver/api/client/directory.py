"""The public room directory over the client API: /publicRooms and /directory/list/room."""

from __future__ import annotations

from typing import Any

from federation.identifiers import is_valid_server_name
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router
from homeserver.http.validation import (
    optional_bool,
    optional_int,
    optional_object,
    optional_str,
    query_int,
)
from homeserver.services.directory import MAX_LIMIT, DirectoryPage
from homeserver.services.registry import Services


def _page_json(page: DirectoryPage) -> dict[str, Any]:
    body: dict[str, Any] = {
        "chunk": page.chunk,
        "total_room_count_estimate": page.total_room_count_estimate,
    }
    if page.next_batch is not None:
        body["next_batch"] = page.next_batch
    if page.prev_batch is not None:
        body["prev_batch"] = page.prev_batch
    return body


def register(router: Router, s: Services) -> None:
    directory = s.directory

    def remote_server(server: str | None) -> str | None:
        """Another server whose directory the client asks for (passed on over federation)."""
        if server is None or server == s.config.server_name:
            return None
        if not is_valid_server_name(server):
            raise MatrixError(400, Codes.INVALID_PARAM, "Invalid server name")
        return server

    async def get_public_rooms(request: HomeserverRequest) -> JsonResponse:
        server = remote_server(request.query_param("server"))
        raw_limit = request.query_param("limit")
        limit = query_int(raw_limit, "limit", 0, min=0, max=MAX_LIMIT) if raw_limit else None
        if server is not None:
            # Other servers' directories cost federation requests: for users only.
            await s.auth.authenticate(request, allow_guest=True)
            return 200, await s.federation_directory.remote_public_rooms(
                server, limit=limit or None, since=request.query_param("since"))
        page = await directory.public_rooms(limit=limit or None,
                                            since=request.query_param("since"))
        return 200, _page_json(page)

    async def post_public_rooms(request: HomeserverRequest) -> JsonResponse:
        await s.auth.authenticate(request, allow_guest=True)
        server = remote_server(request.query_param("server"))
        body = request.json_object()
        limit = optional_int(body, "limit", None, min=0, max=MAX_LIMIT)
        since = optional_str(body, "since", max_len=1024)
        flt = optional_object(body, "filter") or {}
        term = optional_str(flt, "generic_search_term", max_len=1024)
        room_types = flt.get("room_types")
        if room_types is not None and (
            not isinstance(room_types, list)
            or not all(t is None or isinstance(t, str) for t in room_types)
        ):
            raise MatrixError(400, Codes.BAD_JSON,
                              "'room_types' must be a list of strings or nulls")
        if server is not None:
            return 200, await s.federation_directory.remote_public_rooms(
                server, limit=limit or None, since=since, search_term=term,
                room_types=room_types, filtered=True)
        network = optional_str(body, "third_party_instance_id", max_len=1024)
        all_networks = optional_bool(body, "include_all_networks", False)
        if network is not None and all_networks:
            raise MatrixError(400, Codes.INVALID_PARAM, "Give third_party_instance_id or "
                              "include_all_networks, not both")
        network_rooms: list[str] = []
        if all_networks:
            network_rooms = await s.appservices.store.listed_rooms(None)
        elif network is not None:
            as_id, sep, network_id = network.partition("|")
            if sep and s.appservices.by_id(as_id) is not None:
                network_rooms = await s.appservices.store.listed_rooms((as_id, network_id))
        page = await directory.public_rooms(limit=limit or None, since=since,
                                            search_term=term, room_types=room_types,
                                            network_rooms=network_rooms,
                                            include_main=network is None)
        return 200, _page_json(page)

    async def get_visibility(request: HomeserverRequest, roomId: str) -> JsonResponse:
        return 200, {"visibility": await directory.get_visibility(roomId)}

    async def put_visibility(request: HomeserverRequest, roomId: str) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        body = request.json_object()
        visibility = optional_str(body, "visibility") or "public"
        if visibility not in ("public", "private"):
            raise MatrixError(400, Codes.INVALID_PARAM, "visibility must be public or private")
        await directory.set_visibility(requester.user_id, roomId, visibility)
        return 200, {}

    router.client("GET", "/publicRooms", get_public_rooms)
    router.client("POST", "/publicRooms", post_public_rooms)
    router.client("GET", "/directory/list/room/{roomId}", get_visibility)
    router.client("PUT", "/directory/list/room/{roomId}", put_visibility)
