"""The Prometheus scrape endpoint (prometheus-client). Most metrics live beside what they
measure (http/site.py: requests; storage/engine.py: transactions and the pool;
storage/cache.py: cache hits; services/notifier.py: /sync long-polls and wake-ups;
services/federation_sender.py: transactions and failures per destination). This module adds
the ones read from the outside: events persisted (a pipeline hook) and the federation queue
per destination (read from the database at scrape time, off the reactor thread). Labels are
route templates, transaction names and server names, never raw paths or user IDs, so the
number of series stays bounded."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest

from homeserver.health import summarize_federation, with_timeout
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import Router
from homeserver.http.site import RawResponse

if TYPE_CHECKING:
    from homeserver.services.registry import Services
    from homeserver.storage.events import StoredEvent

logger = logging.getLogger(__name__)

EVENTS_PERSISTED = Counter(
    "homeserver_events_persisted",
    "Events stored, by whose server sent them and whether the auth rules accepted them",
    ["origin", "outcome"],
)
FEDERATION_QUEUE_DEPTH = Gauge(
    "homeserver_federation_queue_depth", "PDUs and EDUs waiting for a destination",
    ["destination"],
)
FEDERATION_DESTINATION_DOWN = Gauge(
    "homeserver_federation_destination_down",
    "1 while a destination is backing off after failed sends", ["destination"],
)
FEDERATION_DESTINATIONS_DOWN = Gauge(
    "homeserver_federation_destinations_down", "Destinations backing off after failed sends"
)

# How long a scrape waits for the database before answering with the last values read.
SCRAPE_DB_TIMEOUT_SECONDS = 3.0


def count_persisted(server_name: str, stored: list[StoredEvent]) -> None:
    suffix = ":" + server_name
    for s in stored:
        origin = "local" if s.event.sender.endswith(suffix) else "remote"
        outcome = "rejected" if s.rejected else "soft_failed" if s.soft_failed else "accepted"
        EVENTS_PERSISTED.labels(origin, outcome).inc()


async def refresh_federation(services: Services, reactor: Any) -> None:
    """Set the federation gauges from the outbox and the backoff table."""
    store = services.federation_sender.store
    depths = await with_timeout(reactor, store.queue_depths(), SCRAPE_DB_TIMEOUT_SECONDS)
    backoffs = await with_timeout(reactor, store.all_backoffs(), SCRAPE_DB_TIMEOUT_SECONDS)
    states = summarize_federation(depths, backoffs, services.clock.time_ms())
    FEDERATION_QUEUE_DEPTH.clear()
    FEDERATION_DESTINATION_DOWN.clear()
    for s in states:
        FEDERATION_QUEUE_DEPTH.labels(s.destination).set(s.queued)
        FEDERATION_DESTINATION_DOWN.labels(s.destination).set(1 if s.down else 0)
    FEDERATION_DESTINATIONS_DOWN.set(sum(1 for s in states if s.down))


def register(router: Router, services: Services, reactor: Any) -> None:
    server_name = services.config.server_name
    services.pipeline.on_persisted.append(
        lambda room_id, stored: count_persisted(server_name, stored)
    )

    async def metrics(request: HomeserverRequest) -> RawResponse:
        try:
            await refresh_federation(services, reactor)
        except Exception as e:
            # The rest of the metrics still help most when the database is in trouble.
            logger.warning("metrics: federation queue not read: %s", e)
        return RawResponse(200, generate_latest(), CONTENT_TYPE_LATEST)

    # Synapse's path, so existing dashboards and scrape configs keep working.
    router.add("GET", "/_synapse/metrics", metrics, resource="metrics")
    router.add("GET", "/metrics", metrics, resource="metrics")
