"""Server-side key backups: /room_keys/version and /room_keys/keys."""

from __future__ import annotations

from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router
from homeserver.services.e2ee.backup import parse_room_key, parse_rooms
from homeserver.services.registry import Services


def register(router: Router, s: Services) -> None:
    backup = s.e2ee.backup

    async def create_version(request: HomeserverRequest) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        return 200, await backup.create_version(requester.user_id, request.json_object())

    async def current_version(request: HomeserverRequest) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        return 200, await backup.get_version(requester.user_id, None)

    async def get_version(request: HomeserverRequest, version: str) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        return 200, await backup.get_version(requester.user_id, version)

    async def put_version(request: HomeserverRequest, version: str) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        await backup.update_version(requester.user_id, version, request.json_object())
        return 200, {}

    async def delete_version(request: HomeserverRequest, version: str) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        await backup.delete_version(requester.user_id, version)
        return 200, {}

    async def put_keys(request: HomeserverRequest, roomId: str | None = None,
                       sessionId: str | None = None) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        body = request.json_object()
        if sessionId is not None:
            assert roomId is not None
            rooms = {roomId: {sessionId: parse_room_key(body, "body")}}
        elif roomId is not None:
            rooms = parse_rooms({roomId: body})
        else:
            rooms = parse_rooms(body.get("rooms"))
        return 200, await backup.put_keys(requester.user_id, request.query_param("version"),
                                          rooms)

    async def get_keys(request: HomeserverRequest, roomId: str | None = None,
                       sessionId: str | None = None) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        return 200, await backup.get_keys(requester.user_id, request.query_param("version"),
                                          roomId, sessionId)

    async def delete_keys(request: HomeserverRequest, roomId: str | None = None,
                          sessionId: str | None = None) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        return 200, await backup.delete_keys(requester.user_id, request.query_param("version"),
                                             roomId, sessionId)

    router.client("POST", "/room_keys/version", create_version)
    router.client("GET", "/room_keys/version", current_version)
    router.client("GET", "/room_keys/version/{version}", get_version)
    router.client("PUT", "/room_keys/version/{version}", put_version)
    router.client("DELETE", "/room_keys/version/{version}", delete_version)
    for path in ("/room_keys/keys", "/room_keys/keys/{roomId}",
                 "/room_keys/keys/{roomId}/{sessionId}"):
        router.client("PUT", path, put_keys)
        router.client("GET", path, get_keys)
        router.client("DELETE", path, delete_keys)
