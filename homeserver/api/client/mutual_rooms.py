"""``GET /_matrix/client/v1/mutual_rooms?user_id=…[&from=…]`` (spec v1.16): the rooms the
requester shares with another user, e.g. for a profile's "rooms in common"."""

from __future__ import annotations

from typing import Any

from homeserver.http.errors import Codes, MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router
from homeserver.services.mutual_rooms import MutualRoomsService
from homeserver.services.registry import Services


def register(router: Router, s: Services) -> None:
    service = MutualRoomsService(s.state_store)

    async def mutual_rooms(request: HomeserverRequest) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        other = request.query_param("user_id")
        if other is None:
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: user_id")
        found = await service.mutual_rooms(requester.user_id, other,
                                           request.query_param("from"))
        body: dict[str, Any] = {"joined": found.joined, "count": found.count}
        if found.next_batch is not None:
            body["next_batch"] = found.next_batch
        return 200, body

    router.add("GET", "/_matrix/client/v1/mutual_rooms", mutual_rooms, resource="client")
