"""GET /sync: parse the query (token, filter, timeout, flags) and hand it to the sync service."""

from __future__ import annotations

from homeserver.http.errors import Codes, MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router
from homeserver.http.validation import query_int
from homeserver.services.registry import Services
from homeserver.services.sync import (
    InvalidToken,
    SyncFilter,
    SyncRequest,
    SyncToken,
    parse_filter_json,
)

PRESENCE_VALUES = ("online", "offline", "unavailable")


def query_bool(request: HomeserverRequest, name: str) -> bool:
    raw = request.query_param(name)
    if raw is None:
        return False
    if raw in ("true", "false"):
        return raw == "true"
    raise MatrixError(400, Codes.INVALID_PARAM, f"{name} must be true or false")


async def load_filter(s: Services, user_id: str, raw: str | None) -> SyncFilter:
    """The ``filter`` parameter: inline JSON (starting with '{') or an uploaded filter's ID."""
    if raw is None or raw == "":
        return SyncFilter()
    if raw.startswith("{"):
        return parse_filter_json(raw)
    if not raw.isdigit() or len(raw) > 15:
        raise MatrixError(400, Codes.INVALID_PARAM, "filter must be a filter ID or JSON")
    found = await s.filters.get(user_id, int(raw))
    if found is None:
        raise MatrixError(400, Codes.INVALID_PARAM, f"No filter with ID {raw}")
    return SyncFilter.parse(found)


def register(router: Router, s: Services) -> None:
    async def sync(request: HomeserverRequest) -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        since = None
        raw_since = request.query_param("since")
        if raw_since:
            try:
                since = SyncToken.parse(raw_since)
            except InvalidToken:
                raise MatrixError(400, Codes.INVALID_PARAM, "Invalid since token") from None
        set_presence = request.query_param("set_presence")
        if set_presence is not None and set_presence not in PRESENCE_VALUES:
            raise MatrixError(400, Codes.INVALID_PARAM,
                              f"set_presence must be one of {', '.join(PRESENCE_VALUES)}")
        req = SyncRequest(
            user_id=requester.user_id,
            device_id=requester.device_id,
            since=since,
            timeout_ms=query_int(request.query_param("timeout"), "timeout", 0,
                                 min=0, max=2**31),
            full_state=query_bool(request, "full_state"),
            filter=await load_filter(s, requester.user_id, request.query_param("filter")),
            set_presence=set_presence,
            use_state_after=query_bool(request, "use_state_after"),
        )
        return 200, await s.sync.sync(req)

    router.client("GET", "/sync", sync)
