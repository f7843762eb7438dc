"""The public room directory over the client API: /publicRooms and /directory/list/room."""

from __future__ import annotations

from typing import Any

from homeserver.http.errors import Codes, MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router
from homeserver.http.validation import optional_int, optional_object, optional_str, query_int
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

    def check_server(server: str | None) -> None:
        if server is not None and server != s.config.server_name:
            raise MatrixError(400, Codes.INVALID_PARAM,
                              "Listing the directories of other servers is not supported")

    async def get_public_rooms(request: HomeserverRequest) -> JsonResponse:
        check_server(request.query_param("server"))
        raw_limit = request.query_param("limit")
        limit = query_int(raw_limit, "limit", 0, min=0, max=MAX_LIMIT) if raw_limit else None
        page = await directory.public_rooms(limit=limit or None,
                                            since=request.query_param("since"))
        return 200, _page_json(page)

    async def post_public_rooms(request: HomeserverRequest) -> JsonResponse:
        await s.auth.authenticate(request, allow_guest=True)
        check_server(request.query_param("server"))
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
        page = await directory.public_rooms(limit=limit or None, since=since,
                                            search_term=term, room_types=room_types)
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
