"""The Prometheus scrape endpoint (prometheus-client). The metrics themselves live beside what
they measure (http/site.py, storage/engine.py); their labels are route templates and
transaction names, never raw paths or user IDs, so the number of series stays bounded."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from homeserver.http.request import HomeserverRequest
from homeserver.http.router import Router
from homeserver.http.site import RawResponse


def register(router: Router) -> None:
    async def metrics(request: HomeserverRequest) -> RawResponse:
        return RawResponse(200, generate_latest(), CONTENT_TYPE_LATEST)

    # Synapse's path, so existing dashboards and scrape configs keep working.
    router.add("GET", "/_synapse/metrics", metrics, resource="metrics")
    router.add("GET", "/metrics", metrics, resource="metrics")
