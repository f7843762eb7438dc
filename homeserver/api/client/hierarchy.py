"""Space hierarchies over the client API: GET /_matrix/client/v1/rooms/{roomId}/hierarchy."""

from __future__ import annotations

from typing import Any

from homeserver.http.errors import Codes, MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router
from homeserver.http.validation import query_int
from homeserver.services.hierarchy import DEFAULT_LIMIT, MAX_LIMIT
from homeserver.services.registry import Services


def register(router: Router, s: Services) -> None:
    async def hierarchy(request: HomeserverRequest, roomId: str) -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        suggested = request.query_param("suggested_only")
        if suggested not in (None, "true", "false"):
            raise MatrixError(400, Codes.INVALID_PARAM, "suggested_only must be true or false")
        raw_depth = request.query_param("max_depth")
        max_depth = query_int(raw_depth, "max_depth", 0, min=0, max=1000) if raw_depth else None
        page = await s.hierarchy.hierarchy(
            roomId, requester.user_id, suggested_only=suggested == "true", max_depth=max_depth,
            limit=query_int(request.query_param("limit"), "limit", DEFAULT_LIMIT, min=1,
                            max=MAX_LIMIT),
            from_token=request.query_param("from"),
        )
        body: dict[str, Any] = {"rooms": page.rooms}
        if page.next_batch is not None:
            body["next_batch"] = page.next_batch
        return 200, body

    router.add("GET", "/_matrix/client/v1/rooms/{roomId}/hierarchy", hierarchy,
               resource="client")
