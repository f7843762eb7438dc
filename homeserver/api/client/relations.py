"""Relations over the client API: /relations and /threads (v1 endpoints)."""

from __future__ import annotations

from typing import Any

from homeserver.http.errors import Codes, MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router
from homeserver.http.validation import query_int
from homeserver.services.registry import Services
from homeserver.services.relations import MAX_LIMIT

V1 = "/_matrix/client/v1"


def register(router: Router, s: Services) -> None:
    relations = s.relations

    async def get_relations(request: HomeserverRequest, roomId: str, eventId: str,
                            relType: str | None = None,
                            eventType: str | None = None) -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        recurse_raw = request.query_param("recurse")
        if recurse_raw not in (None, "true", "false"):
            raise MatrixError(400, Codes.INVALID_PARAM, "recurse must be true or false")
        page = await relations.relations(
            roomId, requester.user_id, eventId, rel_type=relType, event_type=eventType,
            from_token=request.query_param("from"), to_token=request.query_param("to"),
            direction=request.query_param("dir") or "b",
            limit=query_int(request.query_param("limit"), "limit", 5, min=1, max=MAX_LIMIT),
            recurse=recurse_raw == "true", device_id=requester.device_id,
        )
        body: dict[str, Any] = {"chunk": page.chunk}
        if page.next_batch is not None:
            body["next_batch"] = page.next_batch
        if page.prev_batch is not None:
            body["prev_batch"] = page.prev_batch
        if page.recursion_depth is not None:
            body["recursion_depth"] = page.recursion_depth
        return 200, body

    async def get_threads(request: HomeserverRequest, roomId: str) -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        page = await relations.threads(
            roomId, requester.user_id, include=request.query_param("include") or "all",
            from_token=request.query_param("from"),
            limit=query_int(request.query_param("limit"), "limit", 50, min=1, max=MAX_LIMIT),
            device_id=requester.device_id,
        )
        body: dict[str, Any] = {"chunk": page.chunk}
        if page.next_batch is not None:
            body["next_batch"] = page.next_batch
        return 200, body

    base = V1 + "/rooms/{roomId}/relations/{eventId}"
    for path in (base, base + "/{relType}", base + "/{relType}/{eventType}"):
        router.add("GET", path, get_relations, resource="client")
    router.add("GET", V1 + "/rooms/{roomId}/threads", get_threads, resource="client")
