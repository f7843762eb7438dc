"""Admin API: server notices (POST /_synapse/admin/v1/send_server_notice[/{txnId}]) and the
server version."""

from __future__ import annotations

from homeserver import __version__
from homeserver.api.admin.registration import require_admin
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router
from homeserver.http.validation import optional_str, require_str
from homeserver.services.registry import Services
from homeserver.storage.cache import LruCache


def register(router: Router, s: Services) -> None:
    # Retried requests with one transaction ID send one notice (per admin).
    sent: LruCache[tuple[str, str], str] = LruCache(10_000)

    async def send_notice(request: HomeserverRequest, txnId: str | None = None) -> JsonResponse:
        requester = await require_admin(s, request)
        done = sent.get((requester.user_id, txnId)) if txnId is not None else None
        if done is not None:
            return 200, {"event_id": done}
        body = request.json_object()
        user_id = require_str(body, "user_id", max_len=255)
        content = body.get("content")
        if not isinstance(content, dict):
            raise MatrixError(400, Codes.MISSING_PARAM if content is None else Codes.BAD_JSON,
                              "'content' must be an object")
        event_type = optional_str(body, "type", max_len=255) or "m.room.message"
        state_key = optional_str(body, "state_key", max_len=255)
        event_id = await s.admin.notices.send(user_id, event_type, content, state_key)
        if txnId is not None:
            sent.set((requester.user_id, txnId), event_id)
        return 200, {"event_id": event_id}

    async def send_notice_txn(request: HomeserverRequest, txnId: str) -> JsonResponse:
        return await send_notice(request, txnId)

    async def server_version(request: HomeserverRequest) -> JsonResponse:
        await require_admin(s, request)
        return 200, {"server_version": __version__}

    base = "/_synapse/admin/v1"
    router.add("POST", f"{base}/send_server_notice", send_notice, resource="admin")
    router.add("PUT", f"{base}/send_server_notice/{{txnId}}", send_notice_txn, resource="admin")
    router.add("GET", f"{base}/server_version", server_version, resource="admin")
