"""Endpoints every listener or client needs first: versions, health, .well-known."""

from __future__ import annotations

from typing import Any

from homeserver.config import Config
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router
from homeserver.http.site import RawResponse

# The spec versions whose client-server API this server speaks.
SUPPORTED_VERSIONS = ["r0.6.1", *(f"v1.{n}" for n in range(1, 17))]


def register(router: Router, config: Config) -> None:
    async def versions(request: HomeserverRequest) -> JsonResponse:
        return 200, {"versions": SUPPORTED_VERSIONS, "unstable_features": {}}

    async def health(request: HomeserverRequest) -> RawResponse:
        return RawResponse(200, b"OK", "text/plain; charset=utf-8")

    async def well_known_client(request: HomeserverRequest) -> JsonResponse:
        body: dict[str, Any] = {"m.homeserver": {"base_url": config.public_baseurl}}
        return 200, body

    async def well_known_server(request: HomeserverRequest) -> JsonResponse:
        if config.federation.well_known_server is None:
            raise MatrixError(404, Codes.NOT_FOUND, "No .well-known/matrix/server delegation")
        return 200, {"m.server": config.federation.well_known_server}

    router.add("GET", "/_matrix/client/versions", versions, resource="client")
    router.add("GET", "/.well-known/matrix/client", well_known_client, resource="client")
    router.add("GET", "/.well-known/matrix/server", well_known_server, resource="federation")
    # Health is served on every listener, so load balancers can probe any of them.
    for resource in ("client", "federation", "keys", "media", "metrics", "admin"):
        router.add("GET", "/health", health, resource=resource)
