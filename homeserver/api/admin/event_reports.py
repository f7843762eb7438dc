"""Admin API: the content reports users made (GET /_synapse/admin/v1/event_reports)."""

from __future__ import annotations

from typing import Any

from homeserver.api.admin.registration import require_admin
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router
from homeserver.http.validation import query_int
from homeserver.services.registry import Services


def register(router: Router, s: Services) -> None:
    async def list_reports(request: HomeserverRequest) -> JsonResponse:
        await require_admin(s, request)
        offset = query_int(request.query_param("from"), "from", 0, min=0, max=2**31)
        limit = query_int(request.query_param("limit"), "limit", 100, min=1, max=1000)
        direction = request.query_param("dir") or "b"
        if direction not in ("b", "f"):
            raise MatrixError(400, Codes.INVALID_PARAM, "dir must be 'b' or 'f'")
        reports, total = await s.room_reports.list_reports(
            offset=offset, limit=limit, newest_first=direction == "b",
            room_id=request.query_param("room_id"), user_id=request.query_param("user_id"),
        )
        body: dict[str, Any] = {"event_reports": reports, "total": total}
        if offset + len(reports) < total:
            body["next_token"] = offset + len(reports)
        return 200, body

    router.add("GET", "/_synapse/admin/v1/event_reports", list_reports, resource="admin")
