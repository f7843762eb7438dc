"""Typing notifications, read receipts, read markers and presence over the client API."""

from __future__ import annotations

from homeserver.http.errors import Codes, MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router
from homeserver.services.registry import Services


def register(router: Router, s: Services) -> None:
    async def typing(request: HomeserverRequest, roomId: str, userId: str) -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        if requester.user_id != userId:
            raise MatrixError(403, Codes.FORBIDDEN, "You cannot set another user's typing state")
        body = request.json_object()
        is_typing = body.get("typing")
        if not isinstance(is_typing, bool):
            raise MatrixError(400, Codes.BAD_JSON, "typing must be true or false")
        timeout = body.get("timeout")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int)):
            raise MatrixError(400, Codes.BAD_JSON, "timeout must be an integer")
        await s.typing.set_typing(roomId, userId, is_typing, timeout)
        return 200, {}

    async def receipt(request: HomeserverRequest, roomId: str, receiptType: str,
                      eventId: str) -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        # Some clients send no body at all; the spec's body is optional extras.
        body = request.json_object() if request.read_body().strip() else {}
        await s.receipts.post_receipt(roomId, requester.user_id, receiptType, eventId,
                                      body.get("thread_id"))
        return 200, {}

    async def read_markers(request: HomeserverRequest, roomId: str) -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        await s.receipts.set_read_markers(roomId, requester.user_id, request.json_object())
        return 200, {}

    async def get_presence(request: HomeserverRequest, userId: str) -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        return 200, await s.presence.get_presence(requester.user_id, userId)

    async def put_presence(request: HomeserverRequest, userId: str) -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        if requester.user_id != userId:
            raise MatrixError(403, Codes.FORBIDDEN, "You cannot set another user's presence")
        body = request.json_object()
        await s.presence.set_presence(userId, body.get("presence"), body.get("status_msg"))
        return 200, {}

    router.client("PUT", "/rooms/{roomId}/typing/{userId}", typing)
    router.client("POST", "/rooms/{roomId}/receipt/{receiptType}/{eventId}", receipt)
    router.client("POST", "/rooms/{roomId}/read_markers", read_markers)
    router.client("GET", "/presence/{userId}/status", get_presence)
    router.client("PUT", "/presence/{userId}/status", put_presence)
