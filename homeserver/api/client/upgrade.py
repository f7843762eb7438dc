"""Room upgrades over the client API: POST /rooms/{roomId}/upgrade."""

from __future__ import annotations

from federation.identifiers import is_valid_user_id
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router
from homeserver.http.validation import optional_str_list, require_str
from homeserver.services.registry import Services


def register(router: Router, s: Services) -> None:
    async def upgrade(request: HomeserverRequest, roomId: str) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        body = request.json_object()
        new_version = require_str(body, "new_version", max_len=64)
        extra = optional_str_list(body, "additional_creators", max_items=100)
        for user_id in extra or ():
            if not is_valid_user_id(user_id):
                raise MatrixError(400, Codes.INVALID_PARAM, f"Invalid user ID {user_id!r}")
        new_room = await s.upgrades.upgrade(roomId, requester.user_id, new_version, extra)
        return 200, {"replacement_room": new_room}

    router.client("POST", "/rooms/{roomId}/upgrade", upgrade)
