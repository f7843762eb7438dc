"""What this server lets clients do: capabilities and the user directory."""

from __future__ import annotations

from federation.room_versions import KNOWN_ROOM_VERSIONS
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router
from homeserver.http.validation import optional_int, require_str
from homeserver.services.registry import Services


def register(router: Router, s: Services) -> None:
    async def get_capabilities(request: HomeserverRequest) -> JsonResponse:
        await s.auth.authenticate(request, allow_guest=True)
        return 200, {
            "capabilities": {
                "m.change_password": {"enabled": True},
                "m.room_versions": {
                    "default": s.config.default_room_version,
                    "available": {v: "stable" for v in KNOWN_ROOM_VERSIONS},
                },
                "m.set_displayname": {"enabled": True},
                "m.set_avatar_url": {"enabled": True},
                "m.3pid_changes": {"enabled": s.threepids.enabled},
                "m.get_login_token": {"enabled": True},
                "m.profile_fields": {"enabled": True},
            }
        }

    async def search_users(request: HomeserverRequest) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        body = request.json_object()
        term = require_str(body, "search_term", max_len=255).strip()
        limit = optional_int(body, "limit", 10, min=1, max=100)
        assert limit is not None
        if not term:
            raise MatrixError(400, Codes.INVALID_PARAM, "search_term must not be empty")
        rows = await s.user_directory.search(requester.user_id, term, limit)
        results = []
        for row in rows[:limit]:
            entry: dict[str, object] = {"user_id": row.user_id}
            if row.display_name is not None:
                entry["display_name"] = row.display_name
            if row.avatar_url is not None:
                entry["avatar_url"] = row.avatar_url
            results.append(entry)
        return 200, {"limited": len(rows) > limit, "results": results}

    router.client("GET", "/capabilities", get_capabilities)
    router.client("POST", "/user_directory/search", search_users)
