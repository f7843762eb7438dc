"""Reporting events and rooms, and /timestamp_to_event (v1), over the client API."""

from __future__ import annotations

from homeserver.http.errors import Codes, MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router
from homeserver.http.validation import optional_int, optional_str, require_str
from homeserver.services.registry import Services

MAX_REASON = 16384


def register(router: Router, s: Services) -> None:
    reports = s.room_reports

    async def report_event(request: HomeserverRequest, roomId: str,
                           eventId: str) -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        body = request.json_object()
        reason = optional_str(body, "reason", max_len=MAX_REASON)
        score = optional_int(body, "score", None, min=-100, max=0) if "score" in body else None
        await reports.report_event(roomId, requester.user_id, eventId, reason, score)
        return 200, {}

    async def report_room(request: HomeserverRequest, roomId: str) -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        body = request.json_object()
        reason = require_str(body, "reason", max_len=MAX_REASON)
        await reports.report_room(roomId, requester.user_id, reason)
        return 200, {}

    async def timestamp_to_event(request: HomeserverRequest, roomId: str) -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        raw_ts = request.query_param("ts")
        if raw_ts is None:
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: ts")
        try:
            ts = int(raw_ts)
        except ValueError:
            raise MatrixError(400, Codes.INVALID_PARAM, "ts must be an integer") from None
        if not 0 <= ts <= 2**63 - 1:
            raise MatrixError(400, Codes.INVALID_PARAM, "ts is out of range")
        direction = request.query_param("dir")
        if direction is None:
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: dir")
        found = await reports.timestamp_to_event(roomId, requester.user_id, ts, direction)
        return 200, {"event_id": found.event_id, "origin_server_ts": found.origin_server_ts}

    router.client("POST", "/rooms/{roomId}/report/{eventId}", report_event)
    router.client("POST", "/rooms/{roomId}/report", report_room)
    router.add("GET", "/_matrix/client/v1/rooms/{roomId}/timestamp_to_event", timestamp_to_event,
               resource="client")
