"""``GET /health/detail``: the JSON health report for monitoring (database reachable,
federation destinations down, queue depth). 200 when healthy, 503 when the database cannot
be reached. Served with the metrics (an operator's listener); plain ``/health`` is in
``versions``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver import health
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router

if TYPE_CHECKING:
    from homeserver.services.registry import Services


def register(router: Router, services: Services, reactor: Any) -> None:
    async def detail(request: HomeserverRequest) -> JsonResponse:
        healthy, report = await health.check(
            services.db, services.federation_sender.store, reactor, services.clock.time_ms()
        )
        report["server_name"] = services.config.server_name
        return (200 if healthy else 503), report

    router.add("GET", "/health/detail", detail, resource="metrics")
