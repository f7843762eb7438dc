"""The legacy endpoints clients use to peek into rooms: ``GET /rooms/{roomId}/initialSync``,
``GET /events`` (with ``room_id``: peeking; without: the deprecated event stream) and the
deprecated ``GET /events/{eventId}``."""

from __future__ import annotations

from homeserver.http.errors import Codes, MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router
from homeserver.http.validation import query_int
from homeserver.services.peeking import PeekingService
from homeserver.services.registry import Services

# Long-polls answer within this, whatever the client asks (as /sync's proxies expect).
MAX_TIMEOUT_MS = 60_000


def register(router: Router, s: Services) -> None:
    peeking = PeekingService(s.rooms, s.notifier)

    async def room_initial_sync(request: HomeserverRequest, roomId: str) -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        limit = query_int(request.query_param("limit"), "limit", 10, min=0, max=100)
        return 200, await peeking.room_initial_sync(roomId, requester.user_id, limit)

    async def events(request: HomeserverRequest) -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        room_id = request.query_param("room_id")
        if room_id is None and requester.is_guest:
            raise MatrixError(400, Codes.MISSING_PARAM, "Guest users must specify room_id")
        # No timeout: answer at once, as /sync does (clients send one; Synapse's default
        # is 30 s).
        timeout = query_int(request.query_param("timeout"), "timeout", 0, min=0, max=2**31)
        return 200, await peeking.stream(requester.user_id, room_id,
                                         request.query_param("from"),
                                         min(timeout, MAX_TIMEOUT_MS))

    async def event(request: HomeserverRequest, eventId: str) -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        return 200, await peeking.event(requester.user_id, eventId)

    router.client("GET", "/rooms/{roomId}/initialSync", room_initial_sync)
    router.client("GET", "/events", events)
    router.client("GET", "/events/{eventId}", event)
