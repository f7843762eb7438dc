"""Federation endpoints beside the room core: ``/timestamp_to_event`` for peers, knocking
(``make_knock`` / ``send_knock``, resident side) and the generic ``/query/{queryType}``: the
query types we answer (directory, profile) have their own routes, registered first; any other
type is 404 ``M_NOT_FOUND``, as in Synapse."""

from __future__ import annotations

from homeserver.api.federation.auth import authenticate_origin
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router
from homeserver.services.federation_knocks import FederationKnocks
from homeserver.services.federation_timestamp import closest_event_for_server
from homeserver.services.registry import Services


def register(router: Router, s: Services) -> None:
    knocks = FederationKnocks(s.federation)

    async def origin_of(request: HomeserverRequest, content: object = None) -> str:
        origin = await authenticate_origin(s.keyring, request, content)
        await s.federation_sender.peer_is_back(origin)
        return origin

    async def timestamp_to_event(request: HomeserverRequest, roomId: str) -> JsonResponse:
        origin = await origin_of(request)
        raw_ts = request.query_param("ts")
        direction = request.query_param("dir")
        if raw_ts is None or direction is None:
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: ts and dir")
        if not raw_ts.isdigit() or len(raw_ts) > 19 or int(raw_ts) > 2**63 - 1:
            raise MatrixError(400, Codes.INVALID_PARAM, "ts must be a non-negative integer")
        event_id, ts = await closest_event_for_server(
            s.federation, s.events, s.room_reports.store, origin, roomId, int(raw_ts),
            direction)
        return 200, {"event_id": event_id, "origin_server_ts": ts}

    async def make_knock(request: HomeserverRequest, roomId: str, userId: str) -> JsonResponse:
        origin = await origin_of(request)
        versions = [v.decode("utf-8", "replace") for v in request.args.get(b"ver", [])]
        if not versions:
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: ver")
        return 200, await knocks.make_knock(origin, roomId, userId, versions)

    async def send_knock(request: HomeserverRequest, roomId: str, eventId: str) -> JsonResponse:
        body = request.json_object()
        origin = await origin_of(request, body)
        return 200, await knocks.send_knock(origin, roomId, eventId, body)

    async def query(request: HomeserverRequest, queryType: str) -> JsonResponse:
        await origin_of(request)
        raise MatrixError(404, Codes.NOT_FOUND, f"No handler for query type {queryType!r}")

    r = "federation"
    router.add("GET", "/_matrix/federation/v1/timestamp_to_event/{roomId}", timestamp_to_event,
               resource=r)
    router.add("GET", "/_matrix/federation/v1/make_knock/{roomId}/{userId}", make_knock,
               resource=r)
    router.add("PUT", "/_matrix/federation/v1/send_knock/{roomId}/{eventId}", send_knock,
               resource=r)
    router.add("GET", "/_matrix/federation/v1/query/{queryType}", query, resource=r)
