"""Operator endpoints for media, on Synapse's paths so existing admin tools work: quarantine
and release, deletion, a user's uploads with their total, and purging cached remote media."""

from __future__ import annotations

from typing import Any

from federation.identifiers import get_domain, is_valid_user_id
from homeserver.api.admin.registration import require_admin
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router
from homeserver.http.validation import query_int
from homeserver.services.registry import Services
from homeserver.storage.media import USER_MEDIA_ORDER, Media


def _media_json(m: Media) -> dict[str, Any]:
    return {
        "media_id": m.media_id,
        "media_type": m.media_type,
        "media_length": m.media_length,
        "upload_name": m.upload_name,
        "created_ts": m.created_ts,
        "last_access_ts": m.last_access_ts,
        "quarantined_by": m.quarantined_by,
        "safe_from_quarantine": False,
    }


def register(router: Router, s: Services) -> None:
    async def _local_user(user_id: str) -> None:
        if not is_valid_user_id(user_id) or get_domain(user_id) != s.config.server_name:
            raise MatrixError(400, Codes.INVALID_PARAM, "Can only look up local users")
        if await s.users.get(user_id) is None:
            raise MatrixError(404, Codes.NOT_FOUND, "Unknown user")

    async def quarantine(request: HomeserverRequest, serverName: str, mediaId: str) -> JsonResponse:
        admin = await require_admin(s, request)
        await s.media.quarantine(serverName, mediaId, admin.user_id)
        return 200, {}

    async def unquarantine(request: HomeserverRequest, serverName: str,
                           mediaId: str) -> JsonResponse:
        await require_admin(s, request)
        await s.media.quarantine(serverName, mediaId, None)
        return 200, {}

    async def quarantine_user(request: HomeserverRequest, userId: str) -> JsonResponse:
        admin = await require_admin(s, request)
        await _local_user(userId)
        count = await s.media.quarantine_user_media(userId, admin.user_id)
        return 200, {"num_quarantined": count}

    async def delete(request: HomeserverRequest, serverName: str, mediaId: str) -> JsonResponse:
        await require_admin(s, request)
        if not await s.media.delete(serverName, mediaId):
            raise MatrixError(404, Codes.NOT_FOUND, "Media not found")
        return 200, {"deleted_media": [mediaId], "total": 1}

    async def user_media(request: HomeserverRequest, userId: str) -> JsonResponse:
        await require_admin(s, request)
        await _local_user(userId)
        start = query_int(request.query_param("from"), "from", 0, min=0, max=2**31)
        limit = query_int(request.query_param("limit"), "limit", 100, min=1, max=1000)
        order_by = request.query_param("order_by") or "created_ts"
        if order_by not in USER_MEDIA_ORDER:
            raise MatrixError(400, Codes.INVALID_PARAM,
                              f"order_by must be one of {', '.join(USER_MEDIA_ORDER)}")
        direction = request.query_param("dir") or "f"
        if direction not in ("f", "b"):
            raise MatrixError(400, Codes.INVALID_PARAM, "dir must be f or b")
        media, total = await s.media.store.user_media(userId, start, limit, order_by,
                                                      direction == "b")
        body: dict[str, Any] = {"media": [_media_json(m) for m in media], "total": total}
        if start + len(media) < total:
            body["next_token"] = start + len(media)
        return 200, body

    async def delete_user_media(request: HomeserverRequest, userId: str) -> JsonResponse:
        await require_admin(s, request)
        await _local_user(userId)
        deleted = await s.media.delete_user_media(userId)
        return 200, {"deleted_media": deleted, "total": len(deleted)}

    async def purge_remote(request: HomeserverRequest) -> JsonResponse:
        await require_admin(s, request)
        raw = request.query_param("before_ts")
        if raw is None:
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: before_ts")
        before = query_int(raw, "before_ts", 0, min=0, max=2**62)
        return 200, {"deleted": await s.media.purge_remote_cache(before)}

    base = "/_synapse/admin/v1"
    media = "{serverName}/{mediaId}"
    router.add("POST", f"{base}/media/quarantine/{media}", quarantine, resource="admin")
    router.add("POST", f"{base}/media/unquarantine/{media}", unquarantine, resource="admin")
    router.add("POST", f"{base}/user/{{userId}}/media/quarantine", quarantine_user,
               resource="admin")
    router.add("DELETE", f"{base}/media/{media}", delete, resource="admin")
    router.add("GET", f"{base}/users/{{userId}}/media", user_media, resource="admin")
    router.add("DELETE", f"{base}/users/{{userId}}/media", delete_user_media, resource="admin")
    router.add("POST", f"{base}/purge_media_cache", purge_remote, resource="admin")
