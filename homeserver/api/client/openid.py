"""``POST /_matrix/client/v3/user/{userId}/openid/request_token``: a token the user can hand
to a third party, which learns the user's ID from ``/_matrix/federation/v1/openid/userinfo``."""

from __future__ import annotations

from homeserver.http.errors import Codes, MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router
from homeserver.services.registry import Services


def register(router: Router, s: Services) -> None:
    async def request_token(request: HomeserverRequest, userId: str) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        request.json_object()  # the body is an empty object; anything else is refused
        if requester.user_id != userId:
            raise MatrixError(403, Codes.FORBIDDEN, "Cannot request OpenID tokens for other users")
        return 200, await s.openid.request_token(userId)

    router.client("POST", "/user/{userId}/openid/request_token", request_token)
