"""What clients discover about the server beyond /versions: its support contacts
(``/.well-known/matrix/support``), its OAuth 2.0 metadata (``/auth_metadata``: none, the
server does its own logins) and its TURN servers (``/voip/turnServer``)."""

from __future__ import annotations

from typing import Any

from homeserver.http.errors import Codes, MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router
from homeserver.services.registry import Services
from homeserver.services.turn import turn_server


def register(router: Router, s: Services) -> None:
    support = s.config.support
    voip = s.config.voip

    async def well_known_support(request: HomeserverRequest) -> JsonResponse:
        if not support.configured:
            raise MatrixError(404, Codes.NOT_FOUND, "No support information is configured")
        body: dict[str, Any] = {}
        if support.contacts:
            body["contacts"] = [
                {k: v for k, v in (("role", c.role), ("matrix_id", c.matrix_id),
                                   ("email_address", c.email_address)) if v is not None}
                for c in support.contacts
            ]
        if support.support_page is not None:
            body["support_page"] = support.support_page
        return 200, body

    async def auth_metadata(request: HomeserverRequest) -> JsonResponse:
        # The spec's answer of a server without OAuth 2.0 (next-generation auth) support;
        # clients then use the legacy /login and /register APIs.
        raise MatrixError(404, Codes.UNRECOGNIZED,
                          "OAuth 2.0 authentication is not supported on this homeserver")

    async def turn(request: HomeserverRequest) -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=voip.turn_allow_guests)
        return 200, turn_server(voip, requester.user_id, s.clock.time_ms())

    router.add("GET", "/.well-known/matrix/support", well_known_support, resource="client")
    router.add("GET", "/_matrix/client/v1/auth_metadata", auth_metadata, resource="client")
    router.client("GET", "/voip/turnServer", turn)
