"""Rooms over federation: transactions (/send), joins (make_join, send_join), single events,
missing events and room directory queries."""

from __future__ import annotations

from homeserver.api.federation.auth import authenticate_origin
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router
from homeserver.services.registry import Services

MAX_MISSING = 100
# Event IDs named in a get_missing_events request (Synapse's checks are no looser).
MAX_MISSING_IDS = 20


def required(request: HomeserverRequest, name: str) -> str:
    value = request.query_param(name)
    if not value:
        raise MatrixError(400, Codes.MISSING_PARAM, f"Missing parameter: {name}")
    return value


def register(router: Router, s: Services) -> None:
    fed = s.federation

    async def origin_of(request: HomeserverRequest, content: object = None) -> str:
        origin = await authenticate_origin(s.keyring, request, content)
        await s.federation_sender.peer_is_back(origin)
        return origin

    async def send(request: HomeserverRequest, txnId: str) -> JsonResponse:
        body = request.json_object()
        origin = await origin_of(request, body)
        if body.get("origin") not in (None, origin):
            raise MatrixError(400, Codes.BAD_JSON, "origin does not match the signing server")
        return 200, await fed.on_transaction(origin, txnId, body)

    async def make_join(request: HomeserverRequest, roomId: str, userId: str) -> JsonResponse:
        origin = await origin_of(request)
        versions = [v.decode("utf-8", "replace") for v in request.args.get(b"ver", [])]
        return 200, await fed.make_join(origin, roomId, userId, versions or ["1"])

    async def send_join(request: HomeserverRequest, roomId: str, eventId: str) -> JsonResponse:
        body = request.json_object()
        origin = await origin_of(request, body)
        return 200, await fed.send_join(origin, roomId, eventId, body)

    async def make_leave(request: HomeserverRequest, roomId: str, userId: str) -> JsonResponse:
        origin = await origin_of(request)
        return 200, await fed.make_leave(origin, roomId, userId)

    async def send_leave(request: HomeserverRequest, roomId: str, eventId: str) -> JsonResponse:
        body = request.json_object()
        origin = await origin_of(request, body)
        return 200, await fed.send_leave(origin, roomId, eventId, body)

    async def invite_v2(request: HomeserverRequest, roomId: str, eventId: str) -> JsonResponse:
        body = request.json_object()
        origin = await origin_of(request, body)
        version = body.get("room_version")
        if not isinstance(version, str):
            raise MatrixError(400, Codes.BAD_JSON, "room_version must be a string")
        signed = await fed.invites.on_invite(origin, roomId, eventId, body.get("event"),
                                             version, body.get("invite_room_state"))
        return 200, {"event": signed}

    async def invite_v1(request: HomeserverRequest, roomId: str, eventId: str) -> JsonResponse:
        # v1: the body is the event, its stripped state in unsigned; room versions 1 and 2.
        body = request.json_object()
        origin = await origin_of(request, body)
        unsigned = body.get("unsigned")
        state = unsigned.get("invite_room_state") if isinstance(unsigned, dict) else None
        known = await fed.room_version(roomId)
        signed = await fed.invites.on_invite(origin, roomId, eventId, body,
                                             known.identifier if known else "1", state)
        return 200, [200, {"event": signed}]

    async def get_event(request: HomeserverRequest, eventId: str) -> JsonResponse:
        origin = await origin_of(request)
        stored = await s.events.get_event(eventId)
        if (stored is None or not await fed.acl_allows(stored.room_id, origin)
                or not await fed.may_see(origin, stored)):
            raise MatrixError(404, Codes.NOT_FOUND, "Event not found")
        return 200, {"origin": s.config.server_name,
                     "origin_server_ts": s.clock.time_ms(),
                     "pdus": [stored.event.pdu_json()]}

    async def get_missing_events(request: HomeserverRequest, roomId: str) -> JsonResponse:
        body = request.json_object()
        origin = await origin_of(request, body)
        earliest = body.get("earliest_events", [])
        latest = body.get("latest_events", [])
        limit = body.get("limit", 10)
        if (not isinstance(earliest, list) or not isinstance(latest, list)
                or not isinstance(limit, int) or isinstance(limit, bool)):
            raise MatrixError(400, Codes.BAD_JSON, "Invalid get_missing_events request")
        if len(earliest) > MAX_MISSING_IDS or len(latest) > MAX_MISSING_IDS:
            raise MatrixError(400, Codes.BAD_JSON,
                              f"At most {MAX_MISSING_IDS} earliest_events and latest_events")
        return 200, {"events": await fed.missing_events(
            origin, roomId, [e for e in earliest if isinstance(e, str)],
            [e for e in latest if isinstance(e, str)], max(0, min(limit, MAX_MISSING)))}

    async def query_directory(request: HomeserverRequest) -> JsonResponse:
        await origin_of(request)
        alias = request.query_param("room_alias")
        if not alias:
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: room_alias")
        found = await s.events.get_alias(alias)
        if found is None or not alias.endswith(":" + s.config.server_name):
            raise MatrixError(404, Codes.NOT_FOUND, f"Room alias {alias} not found")
        servers = sorted(await fed.joined_servers(found.room_id) | {s.config.server_name})
        return 200, {"room_id": found.room_id, "servers": servers}

    async def state(request: HomeserverRequest, roomId: str) -> JsonResponse:
        origin = await origin_of(request)
        return 200, await fed.room_state(origin, roomId, required(request, "event_id"), False)

    async def state_ids(request: HomeserverRequest, roomId: str) -> JsonResponse:
        origin = await origin_of(request)
        return 200, await fed.room_state(origin, roomId, required(request, "event_id"), True)

    async def event_auth(request: HomeserverRequest, roomId: str, eventId: str) -> JsonResponse:
        origin = await origin_of(request)
        return 200, await fed.event_auth(origin, roomId, eventId)

    async def backfill(request: HomeserverRequest, roomId: str) -> JsonResponse:
        origin = await origin_of(request)
        starts = [v.decode("utf-8", "replace") for v in request.args.get(b"v", [])]
        if not starts:
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: v")
        limit = required(request, "limit")
        if not limit.isdigit():
            raise MatrixError(400, Codes.INVALID_PARAM, "limit must be an integer")
        return 200, await fed.backfill(origin, roomId, starts, min(int(limit), MAX_MISSING))

    r = "federation"
    router.add("GET", "/_matrix/federation/v1/state/{roomId}", state, resource=r)
    router.add("GET", "/_matrix/federation/v1/state_ids/{roomId}", state_ids, resource=r)
    router.add("GET", "/_matrix/federation/v1/event_auth/{roomId}/{eventId}", event_auth,
               resource=r)
    router.add("GET", "/_matrix/federation/v1/backfill/{roomId}", backfill, resource=r)
    router.add("PUT", "/_matrix/federation/v1/send/{txnId}", send, resource=r)
    router.add("GET", "/_matrix/federation/v1/make_join/{roomId}/{userId}", make_join,
               resource=r)
    router.add("PUT", "/_matrix/federation/v2/send_join/{roomId}/{eventId}", send_join,
               resource=r)
    router.add("GET", "/_matrix/federation/v1/make_leave/{roomId}/{userId}", make_leave,
               resource=r)
    router.add("PUT", "/_matrix/federation/v2/send_leave/{roomId}/{eventId}", send_leave,
               resource=r)
    router.add("PUT", "/_matrix/federation/v2/invite/{roomId}/{eventId}", invite_v2,
               resource=r)
    router.add("PUT", "/_matrix/federation/v1/invite/{roomId}/{eventId}", invite_v1,
               resource=r)
    router.add("GET", "/_matrix/federation/v1/event/{eventId}", get_event, resource=r)
    router.add("POST", "/_matrix/federation/v1/get_missing_events/{roomId}",
               get_missing_events, resource=r)
    router.add("GET", "/_matrix/federation/v1/query/directory", query_directory, resource=r)
