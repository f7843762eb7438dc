"""Room discovery for other servers: ``/publicRooms`` (GET, and POST with a filter),
``/hierarchy/{roomId}`` (X-Matrix authenticated), and ``/openid/userinfo`` (no server
signature: the caller is whatever service the user gave an OpenID token to)."""

from __future__ import annotations

from typing import Any

from homeserver.api.federation.auth import authenticate_origin
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router
from homeserver.http.validation import optional_int, optional_object, optional_str, query_int
from homeserver.services.directory import MAX_LIMIT, DirectoryPage
from homeserver.services.registry import Services

PREFIX = "/_matrix/federation/v1"


def register(router: Router, s: Services) -> None:
    async def get_public_rooms(request: HomeserverRequest) -> JsonResponse:
        origin = await authenticate_origin(s.keyring, request)
        await s.federation_sender.peer_is_back(origin)
        raw_limit = request.query_param("limit")
        limit = query_int(raw_limit, "limit", 0, min=0, max=MAX_LIMIT) if raw_limit else None
        page = await s.federation_directory.public_rooms_for(
            origin, limit=limit or None, since=request.query_param("since"))
        return 200, page_json(page)

    async def post_public_rooms(request: HomeserverRequest) -> JsonResponse:
        body = request.json_object()
        origin = await authenticate_origin(s.keyring, request, body)
        await s.federation_sender.peer_is_back(origin)
        limit = optional_int(body, "limit", None, min=0, max=MAX_LIMIT)
        since = optional_str(body, "since", max_len=1024)
        flt = optional_object(body, "filter") or {}
        term = optional_str(flt, "generic_search_term", max_len=1024)
        page = await s.federation_directory.public_rooms_for(
            origin, limit=limit or None, since=since, search_term=term,
            room_types=_room_types(flt))
        return 200, page_json(page)

    async def hierarchy(request: HomeserverRequest, roomId: str) -> JsonResponse:
        origin = await authenticate_origin(s.keyring, request)
        await s.federation_sender.peer_is_back(origin)
        suggested = request.query_param("suggested_only")
        if suggested not in (None, "true", "false"):
            raise MatrixError(400, Codes.INVALID_PARAM, "suggested_only must be true or false")
        answer: dict[str, Any] = await s.federation_directory.hierarchy_for(
            origin, roomId, suggested == "true")
        return 200, answer

    async def userinfo(request: HomeserverRequest) -> JsonResponse:
        token = request.query_param("access_token")
        if not token:
            # Also accepted as a bearer token, as Synapse does.
            auth = request.getHeader("Authorization") or ""
            token = auth[7:].strip() if auth.startswith("Bearer ") else None
        if not token:
            raise MatrixError(401, Codes.MISSING_TOKEN, "Missing access_token")
        return 200, {"sub": await s.openid.userinfo(token)}

    router.add("GET", f"{PREFIX}/publicRooms", get_public_rooms, resource="federation")
    router.add("POST", f"{PREFIX}/publicRooms", post_public_rooms, resource="federation")
    router.add("GET", f"{PREFIX}/hierarchy/{{roomId}}", hierarchy, resource="federation")
    router.add("GET", f"{PREFIX}/openid/userinfo", userinfo, resource="federation")


def _room_types(flt: dict[str, Any]) -> list[str | None] | None:
    room_types = flt.get("room_types")
    if room_types is not None and (
        not isinstance(room_types, list)
        or not all(t is None or isinstance(t, str) for t in room_types)
    ):
        raise MatrixError(400, Codes.BAD_JSON, "'room_types' must be a list of strings or nulls")
    return room_types


def page_json(page: DirectoryPage) -> dict[str, Any]:
    body: dict[str, Any] = {
        "chunk": page.chunk,
        "total_room_count_estimate": page.total_room_count_estimate,
    }
    if page.next_batch is not None:
        body["next_batch"] = page.next_batch
    if page.prev_batch is not None:
        body["prev_batch"] = page.prev_batch
    return body
