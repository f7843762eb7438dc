"""Looking at rooms before joining them, over the client API: space hierarchies
(GET /_matrix/client/v1/rooms/{roomId}/hierarchy) and room summaries
(GET /_matrix/client/v1/room_summary/{roomIdOrAlias}, where an access token is optional)."""

from __future__ import annotations

from typing import Any

from homeserver.http.errors import Codes, MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router
from homeserver.http.validation import query_int
from homeserver.services.auth import token_from_request
from homeserver.services.hierarchy import DEFAULT_LIMIT, MAX_LIMIT
from homeserver.services.registry import Services
from homeserver.services.room_refs import resolve_with_servers


def register(router: Router, s: Services) -> None:
    async def hierarchy(request: HomeserverRequest, roomId: str) -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        suggested = request.query_param("suggested_only")
        if suggested not in (None, "true", "false"):
            raise MatrixError(400, Codes.INVALID_PARAM, "suggested_only must be true or false")
        raw_depth = request.query_param("max_depth")
        max_depth = query_int(raw_depth, "max_depth", 0, min=0, max=1000) if raw_depth else None
        limit = query_int(request.query_param("limit"), "limit", DEFAULT_LIMIT, min=1,
                          max=MAX_LIMIT)
        # Servers to ask about a root this server does not have (MSC4235).
        via = [v.decode("utf-8", "replace") for v in request.args.get(b"via", [])]
        page = await s.hierarchy.hierarchy(
            roomId, requester.user_id, suggested_only=suggested == "true",
            max_depth=max_depth, limit=limit, from_token=request.query_param("from"), via=via,
        )
        body: dict[str, Any] = {"rooms": page.rooms}
        if page.next_batch is not None:
            body["next_batch"] = page.next_batch
        return 200, body

    async def room_summary(request: HomeserverRequest, roomIdOrAlias: str) -> JsonResponse:
        user_id = None
        if token_from_request(request) is not None:
            user_id = (await s.auth.authenticate(request, allow_guest=True)).user_id
        room_id, servers = await resolve_with_servers(s, roomIdOrAlias)
        via = [v.decode("utf-8", "replace") for v in request.args.get(b"via", [])]
        return 200, await s.room_summary.summary(room_id, user_id, [*servers, *via])

    router.add("GET", "/_matrix/client/v1/rooms/{roomId}/hierarchy", hierarchy,
               resource="client")
    router.add("GET", "/_matrix/client/v1/room_summary/{roomIdOrAlias}", room_summary,
               resource="client")
