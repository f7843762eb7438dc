"""Admin API for federation: destinations with their queue and backoff (Synapse's paths),
resetting a destination's backoff, and this server's federation policy (our own path)."""

from __future__ import annotations

from federation.identifiers import is_valid_server_name
from homeserver.api.admin.params import page, paging
from homeserver.api.admin.registration import require_admin
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router
from homeserver.services.admin.federation import destination_json
from homeserver.services.registry import Services

_ORDER = ("destination", "retry_last_ts", "retry_interval", "failure_ts",
          "last_successful_ts", "queued_pdus", "queued_edus")


def _server(name: str) -> str:
    if not is_valid_server_name(name):
        raise MatrixError(400, Codes.INVALID_PARAM, f"{name!r} is not a valid server name")
    return name


def register(router: Router, s: Services) -> None:
    fed = s.admin.federation

    async def destinations(request: HomeserverRequest) -> JsonResponse:
        await require_admin(s, request)
        offset, limit, backwards = paging(request)
        order_by = request.query_param("order_by") or "destination"
        if order_by not in _ORDER:
            raise MatrixError(400, Codes.INVALID_PARAM,
                              f"order_by must be one of {', '.join(_ORDER)}")
        rows = [destination_json(d) for d in await fed.destinations()]
        needle = (request.query_param("destination") or "").lower()
        rows = [r for r in rows if needle in r["destination"].lower()]
        rows.sort(key=lambda r: (r[order_by] is None, r[order_by] or 0, r["destination"]),
                  reverse=backwards)
        return 200, page("destinations", rows[offset:offset + limit], offset, len(rows))

    async def destination(request: HomeserverRequest, destination: str) -> JsonResponse:
        await require_admin(s, request)
        return 200, destination_json(await fed.destination(_server(destination)))

    async def reset(request: HomeserverRequest, destination: str) -> JsonResponse:
        await require_admin(s, request)
        await fed.reset_connection(_server(destination))
        return 200, {}

    async def destination_rooms(request: HomeserverRequest, destination: str) -> JsonResponse:
        await require_admin(s, request)
        await fed.destination(_server(destination))
        offset, limit, backwards = paging(request)
        rooms = await s.admin.store.rooms_with_server(destination)
        if backwards:
            rooms.reverse()
        chunk = [{"room_id": r, "stream_ordering": None} for r in rooms[offset:offset + limit]]
        return 200, page("rooms", chunk, offset, len(rooms))

    async def policy(request: HomeserverRequest) -> JsonResponse:
        await require_admin(s, request)
        server = request.query_param("server")
        return 200, fed.policy(_server(server) if server is not None else None)

    base = "/_synapse/admin/v1/federation"
    router.add("GET", f"{base}/destinations", destinations, resource="admin")
    router.add("GET", f"{base}/destinations/{{destination}}", destination, resource="admin")
    router.add("POST", f"{base}/destinations/{{destination}}/reset_connection", reset,
               resource="admin")
    router.add("GET", f"{base}/destinations/{{destination}}/rooms", destination_rooms,
               resource="admin")
    router.add("GET", f"{base}/policy", policy, resource="admin")
