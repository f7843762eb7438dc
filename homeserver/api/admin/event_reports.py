"""Admin API: the content reports users made (GET /_synapse/admin/v1/event_reports), one
report with the reported event (the original, if it was redacted since), deleting one."""

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

    def _report_id(raw: str) -> int:
        if not raw.isdigit() or len(raw) > 18:
            raise MatrixError(400, Codes.INVALID_PARAM, "The report ID must be a number")
        return int(raw)

    async def get_report(request: HomeserverRequest, reportId: str) -> JsonResponse:
        await require_admin(s, request)
        report = await s.admin.store.get_report(_report_id(reportId))
        if report is None:
            raise MatrixError(404, Codes.NOT_FOUND, "No such report")
        body: dict[str, Any] = {
            "id": report.id, "received_ts": report.received_ts, "room_id": report.room_id,
            "event_id": report.event_id, "user_id": report.user_id, "reason": report.reason,
            "score": report.score, "name": None, "canonical_alias": None,
        }
        if await s.pipeline.room_exists(report.room_id):
            details = await s.admin.rooms.details(report.room_id)
            body["name"], body["canonical_alias"] = details["name"], details["canonical_alias"]
        if report.event_id is not None:
            stored = await s.events.get_event(report.event_id)
            if stored is not None:
                body["sender"] = stored.event.sender
                original = await s.events.original_json(report.event_id)
                body["event_json"] = original or stored.event.pdu_json()
        return 200, body

    async def delete_report(request: HomeserverRequest, reportId: str) -> JsonResponse:
        await require_admin(s, request)
        if not await s.admin.store.delete_report(_report_id(reportId)):
            raise MatrixError(404, Codes.NOT_FOUND, "No such report")
        return 200, {}

    router.add("GET", "/_synapse/admin/v1/event_reports", list_reports, resource="admin")
    router.add("GET", "/_synapse/admin/v1/event_reports/{reportId}", get_report,
               resource="admin")
    router.add("DELETE", "/_synapse/admin/v1/event_reports/{reportId}", delete_report,
               resource="admin")
