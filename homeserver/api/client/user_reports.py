"""``POST /_matrix/client/v3/users/{userId}/report`` (users report users to the operators)
and Synapse's admin API over the reports: ``GET /_synapse/admin/v1/user_reports`` (paged,
newest first by default, filtered by reporter ``user_id`` or ``target_user_id``), and
``GET`` / ``DELETE …/user_reports/{reportId}``."""

from __future__ import annotations

from homeserver.api.admin.params import page
from homeserver.api.admin.registration import require_admin
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router
from homeserver.http.validation import query_int
from homeserver.services.registry import Services
from homeserver.services.user_reports import UserReportService
from homeserver.storage.user_reports import UserReportStore


def register(router: Router, s: Services) -> None:
    reports = UserReportService(
        users=s.users, store=UserReportStore(s.db), clock=s.clock,
        server_name=s.config.server_name, ratelimit=s.config.rate_limiting.enabled)

    async def report_user(request: HomeserverRequest, userId: str) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        body = request.json_object()
        await reports.report(requester.user_id, userId, body.get("reason"))
        return 200, {}

    async def list_reports(request: HomeserverRequest) -> JsonResponse:
        await require_admin(s, request)
        offset = query_int(request.query_param("from"), "from", 0, min=0, max=2**31)
        limit = query_int(request.query_param("limit"), "limit", 100, min=0, max=10_000)
        direction = request.query_param("dir") or "b"
        if direction not in ("f", "b"):
            raise MatrixError(400, Codes.INVALID_PARAM, "dir must be 'f' or 'b'")
        found, total = await reports.list_reports(
            offset=offset, limit=limit, newest_first=direction == "b",
            target_user_id=request.query_param("target_user_id"),
            user_id=request.query_param("user_id"))
        return 200, page("user_reports", found, offset, total)

    def _report_id(raw: str) -> int:
        if not raw.isdigit() or len(raw) > 18:
            raise MatrixError(400, Codes.INVALID_PARAM, "The report ID must be a number")
        return int(raw)

    async def get_report(request: HomeserverRequest, reportId: str) -> JsonResponse:
        await require_admin(s, request)
        return 200, await reports.get(_report_id(reportId))

    async def delete_report(request: HomeserverRequest, reportId: str) -> JsonResponse:
        await require_admin(s, request)
        await reports.delete(_report_id(reportId))
        return 200, {}

    router.client("POST", "/users/{userId}/report", report_user)
    admin = "/_synapse/admin/v1/user_reports"
    router.add("GET", admin, list_reports, resource="admin")
    router.add("GET", admin + "/{reportId}", get_report, resource="admin")
    router.add("DELETE", admin + "/{reportId}", delete_report, resource="admin")
