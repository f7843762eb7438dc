"""Client-server endpoints for application services and third-party networks: the ping,
room lists per network, ``/thirdparty/...`` lookups forwarded to the services that declare
the protocol, and timestamp massaging (``ts=``) for the send endpoints."""

from __future__ import annotations

from typing import Any

from homeserver.http.errors import Codes, MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router
from homeserver.http.validation import optional_str
from homeserver.services.appservice.registration import AppService
from homeserver.services.auth import Requester
from homeserver.services.registry import Services

# origin_server_ts is a JSON integer: at most 2^53 - 1.
_MAX_TS = 2**53 - 1
# Fields of a third-party search, as many as a client could sensibly send.
_MAX_FIELDS = 50


def massaged_ts(request: HomeserverRequest, requester: Requester) -> int | None:
    """``ts=`` of an application service's send or state request; ignored for others."""
    raw = request.query_param("ts")
    if raw is None or requester.app_service is None:
        return None
    if not raw.isdigit() or int(raw) > _MAX_TS:
        raise MatrixError(400, Codes.INVALID_PARAM, "ts must be a timestamp in milliseconds")
    return int(raw)


def register(router: Router, s: Services) -> None:
    services = s.appservices

    async def calling_service(request: HomeserverRequest) -> AppService:
        requester = await s.auth.authenticate(request)
        if requester.app_service is None:
            raise MatrixError(403, Codes.FORBIDDEN, "Only application services may do this")
        return requester.app_service

    async def ping(request: HomeserverRequest, appserviceId: str) -> JsonResponse:
        svc = await calling_service(request)
        if svc.id != appserviceId:
            raise MatrixError(403, Codes.FORBIDDEN,
                              "The token is not that of this application service")
        body = request.json_object()
        txn_id = optional_str(body, "transaction_id", max_len=255)
        return 200, {"duration_ms": await services.ping(svc, txn_id)}

    async def list_in_network(
        request: HomeserverRequest, networkId: str, roomId: str
    ) -> JsonResponse:
        svc = await calling_service(request)
        body = request.json_object()
        visibility = optional_str(body, "visibility") or "public"
        if visibility not in ("public", "private"):
            raise MatrixError(400, Codes.INVALID_PARAM, "visibility must be public or private")
        if len(networkId) > 255:
            raise MatrixError(400, Codes.INVALID_PARAM, "networkId is too long")
        if not await s.pipeline.room_exists(roomId):
            raise MatrixError(404, Codes.NOT_FOUND, f"Unknown room {roomId}")
        await services.store.set_listed(svc.id, networkId, roomId, visibility == "public")
        return 200, {}

    # -- third-party lookups ----------------------------------------------------------------
    def search_fields(request: HomeserverRequest) -> list[tuple[str, str]]:
        fields = [(k.decode("utf-8", "replace"), v.decode("utf-8", "replace"))
                  for k, values in (request.args or {}).items() for v in values
                  if k not in (b"access_token", b"user_id")]
        if len(fields) > _MAX_FIELDS:
            raise MatrixError(400, Codes.INVALID_PARAM, "Too many search fields")
        return fields

    def known_protocol(protocol: str) -> None:
        if protocol not in services.protocol_names():
            raise MatrixError(404, Codes.NOT_FOUND, f"Unknown protocol {protocol}")

    async def protocols(request: HomeserverRequest) -> JsonResponse:
        await s.auth.authenticate(request)
        out: dict[str, Any] = {}
        for name in services.protocol_names():
            info = await services.protocol(name)
            if info is not None:
                out[name] = info
        return 200, out

    async def protocol(request: HomeserverRequest, protocol: str) -> JsonResponse:
        await s.auth.authenticate(request)
        known_protocol(protocol)
        info = await services.protocol(protocol)
        if info is None:
            raise MatrixError(404, Codes.NOT_FOUND, f"No answer for protocol {protocol}")
        return 200, info

    def lookup(kind: str) -> Any:
        async def by_protocol(request: HomeserverRequest, protocol: str) -> JsonResponse:
            await s.auth.authenticate(request)
            known_protocol(protocol)
            return 200, await services.thirdparty_lookup(kind, protocol, search_fields(request))

        async def reverse(request: HomeserverRequest) -> JsonResponse:
            await s.auth.authenticate(request)
            key = "alias" if kind == "location" else "userid"
            value = request.query_param(key)
            if not value:
                raise MatrixError(400, Codes.MISSING_PARAM, f"Missing parameter: {key}")
            return 200, await services.thirdparty_lookup(kind, None, [(key, value)])

        return by_protocol, reverse

    router.add("POST", "/_matrix/client/v1/appservice/{appserviceId}/ping", ping,
               resource="client")
    router.client("PUT", "/directory/list/appservice/{networkId}/{roomId}", list_in_network)
    router.client("GET", "/thirdparty/protocols", protocols)
    router.client("GET", "/thirdparty/protocol/{protocol}", protocol)
    for kind in ("location", "user"):
        by_protocol, reverse = lookup(kind)
        router.client("GET", f"/thirdparty/{kind}/{{protocol}}", by_protocol)
        router.client("GET", f"/thirdparty/{kind}", reverse)
