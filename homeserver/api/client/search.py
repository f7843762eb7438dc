"""POST /search over the client API (room_events)."""

from __future__ import annotations

from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router
from homeserver.services.registry import Services
from homeserver.services.search import parse_request


def register(router: Router, s: Services) -> None:
    async def search(request: HomeserverRequest) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        req = parse_request(request.json_object())
        return 200, await s.search.search(
            requester.user_id, req, request.query_param("next_batch"),
            device_id=requester.device_id,
        )

    router.client("POST", "/search", search)
