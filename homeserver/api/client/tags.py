"""Room tags: kept as the m.tag room account data event ({"tags": {tag: {order?}}})."""

from __future__ import annotations

from typing import Any

from homeserver.http.errors import Codes, MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router
from homeserver.services.auth import Requester
from homeserver.services.registry import Services

TAG_EVENT = "m.tag"
MAX_TAG_BYTES = 255


def _own(requester: Requester, user_id: str) -> None:
    if requester.user_id != user_id:
        raise MatrixError(403, Codes.FORBIDDEN, "You cannot access another user's tags")


def _check_room(room_id: str) -> None:
    if not room_id.startswith("!") or len(room_id.encode("utf-8")) > 255:
        raise MatrixError(400, Codes.INVALID_PARAM, "Invalid room ID")


def _tags(content: Any) -> dict[str, Any]:
    if isinstance(content, dict) and isinstance(content.get("tags"), dict):
        return dict(content["tags"])
    return {}


def register(router: Router, s: Services) -> None:
    async def get_tags(request: HomeserverRequest, userId: str, roomId: str) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        _own(requester, userId)
        _check_room(roomId)
        return 200, {"tags": _tags(await s.account_data.get(userId, roomId, TAG_EVENT))}

    async def put_tag(request: HomeserverRequest, userId: str, roomId: str,
                      tag: str) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        _own(requester, userId)
        _check_room(roomId)
        if not tag or len(tag.encode("utf-8")) > MAX_TAG_BYTES:
            raise MatrixError(400, Codes.INVALID_PARAM, "A tag is 1 to 255 bytes long")
        body = request.json_object()
        order = body.get("order")
        if order is not None and (isinstance(order, bool) or not isinstance(order, int | float)):
            raise MatrixError(400, Codes.INVALID_PARAM, "order must be a number")
        tags = _tags(await s.account_data.get(userId, roomId, TAG_EVENT))
        tags[tag] = body
        await s.account_data.put(userId, roomId, TAG_EVENT, {"tags": tags})
        return 200, {}

    async def delete_tag(request: HomeserverRequest, userId: str, roomId: str,
                         tag: str) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        _own(requester, userId)
        _check_room(roomId)
        tags = _tags(await s.account_data.get(userId, roomId, TAG_EVENT))
        if tag in tags:
            del tags[tag]
            await s.account_data.put(userId, roomId, TAG_EVENT, {"tags": tags})
        return 200, {}

    router.client("GET", "/user/{userId}/rooms/{roomId}/tags", get_tags)
    router.client("PUT", "/user/{userId}/rooms/{roomId}/tags/{tag}", put_tag)
    router.client("DELETE", "/user/{userId}/rooms/{roomId}/tags/{tag}", delete_tag)
