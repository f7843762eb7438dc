"""Account data (global and per room) and sync filters: a user's own settings, nobody else's."""

from __future__ import annotations

from homeserver.http.errors import Codes, MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router
from homeserver.services.auth import Requester
from homeserver.services.filters import validate_filter
from homeserver.services.registry import Services

# Set through their own endpoints (read markers, push rules), never as raw account data.
_RESERVED_TYPES = {"m.fully_read", "m.push_rules"}


def _own(requester: Requester, user_id: str) -> None:
    if requester.user_id != user_id:
        raise MatrixError(403, Codes.FORBIDDEN, "You cannot access another user's data")


def _check_type(data_type: str) -> None:
    if not data_type or len(data_type.encode("utf-8")) > 255:
        raise MatrixError(400, Codes.INVALID_PARAM, "Invalid account data type")


def _check_room(room_id: str) -> None:
    if not room_id.startswith("!") or len(room_id.encode("utf-8")) > 255:
        raise MatrixError(400, Codes.INVALID_PARAM, "Invalid room ID")


def register(router: Router, s: Services) -> None:
    async def put(request: HomeserverRequest, userId: str, type: str,
                  roomId: str = "") -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        _own(requester, userId)
        _check_type(type)
        if roomId:
            _check_room(roomId)
        if type in _RESERVED_TYPES:
            raise MatrixError(405, Codes.BAD_JSON, f"Cannot set {type} through this API.")
        content = request.json_object()
        await s.account_data.put(userId, roomId, type, content)
        return 200, {}

    async def get(request: HomeserverRequest, userId: str, type: str,
                  roomId: str = "") -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        _own(requester, userId)
        _check_type(type)
        if roomId:
            _check_room(roomId)
        content = await s.account_data.get(userId, roomId, type)
        if content is None and not roomId and type == "m.push_rules":
            # Written only once a rule changes; before that it is the default ruleset.
            content = {"global": await s.push.rules.ruleset(userId)}
        if content is None:
            raise MatrixError(404, Codes.NOT_FOUND, "Account data not found")
        return 200, content

    async def post_filter(request: HomeserverRequest, userId: str) -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        _own(requester, userId)
        body = request.json_object()
        validate_filter(body)
        filter_id = await s.filters.add(userId, body)
        return 200, {"filter_id": str(filter_id)}

    async def get_filter(request: HomeserverRequest, userId: str, filterId: str) -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        _own(requester, userId)
        if not filterId.isdigit() or len(filterId) > 15:
            raise MatrixError(404, Codes.NOT_FOUND, "No such filter")
        found = await s.filters.get(userId, int(filterId))
        if found is None:
            raise MatrixError(404, Codes.NOT_FOUND, "No such filter")
        return 200, found

    router.client("PUT", "/user/{userId}/account_data/{type}", put)
    router.client("GET", "/user/{userId}/account_data/{type}", get)
    router.client("PUT", "/user/{userId}/rooms/{roomId}/account_data/{type}", put)
    router.client("GET", "/user/{userId}/rooms/{roomId}/account_data/{type}", get)
    router.client("POST", "/user/{userId}/filter", post_filter)
    router.client("GET", "/user/{userId}/filter/{filterId}", get_filter)
