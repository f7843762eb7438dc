"""Small federation queries: the server version and profile lookups."""

from __future__ import annotations

from homeserver import __version__
from homeserver.api.federation.auth import authenticate_origin
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router
from homeserver.services.registry import Services


def register(router: Router, s: Services) -> None:
    async def version(request: HomeserverRequest) -> JsonResponse:
        return 200, {"server": {"name": "homeserver", "version": __version__}}

    async def query_profile(request: HomeserverRequest) -> JsonResponse:
        await authenticate_origin(s.keyring, request)
        user_id = request.query_param("user_id")
        field = request.query_param("field")
        if not user_id:
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: user_id")
        if not user_id.endswith(":" + s.config.server_name):
            raise MatrixError(400, Codes.INVALID_PARAM, "User is not local to this server")
        user = await s.users.get(user_id)
        if user is None or user.deactivated:
            raise MatrixError(404, Codes.NOT_FOUND, "Profile not found")
        profile = await s.profiles.get(user_id)
        if field is not None:
            return 200, {field: profile[field]} if field in profile else {}
        return 200, profile

    router.add("GET", "/_matrix/federation/v1/version", version, resource="federation")
    router.add("GET", "/_matrix/federation/v1/query/profile", query_profile,
               resource="federation")
