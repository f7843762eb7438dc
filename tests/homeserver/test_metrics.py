"""Prometheus metrics on a listener of their own: scraped and parsed with prometheus-client's
parser, then traffic (requests, messages, a woken and a timed-out /sync, to-device messages
for a server that is down), then scraped again: the series moved as they should."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest_twisted
from twisted.internet import defer, reactor, task

from homeserver.config import DatabaseConfig
from tests.support.client import Client
from tests.support.http import request
from tests.support.metrics import Samples, metrics_url, scrape, separate_metrics_listener, total
from tests.support.server import RunningServer, start_server
from tests.support.sync import create_room, send, sync


@pytest_twisted.async_yield_fixture
async def server(db_config: DatabaseConfig, tmp_path: Any) -> AsyncIterator[RunningServer]:
    s = await start_server(str(tmp_path), db_config, **separate_metrics_listener())
    try:
        yield s
    finally:
        await s.stop()


async def wait_until(check: Any, url: str, tries: int = 100) -> Samples:
    for _ in range(tries):
        samples = await scrape(url)
        if check(samples):
            return samples
        await task.deferLater(reactor, 0.1)
    raise AssertionError("the metrics never got there")


@pytest_twisted.ensureDeferred
async def test_metrics_move_with_traffic(server: RunningServer, engine: str) -> None:
    url = metrics_url(server)
    # Only on its own listener: the client listener does not serve it.
    r = await request("GET", f"{server.client_url}/metrics")
    assert r.status == 404
    before = await scrape(url)
    assert total(before, "homeserver_db_pool_size", engine=engine) >= 1

    c = Client(server.client_url)
    alice = await c.register("alice")
    room = await create_room(c, alice)
    first = await sync(c, alice)
    # A long-poll woken by a message, and one that times out.
    woken = defer.ensureDeferred(sync(c, alice, first["next_batch"], timeout=10_000))
    during = await wait_until(lambda s: total(s, "homeserver_sync_long_polls") >= 1, url)
    for i in range(3):
        await send(c, alice, room, f"message {i}")
    token = (await woken)["next_batch"]
    for _ in range(4):  # catch up with the other messages, then time out
        token = (await sync(c, alice, token, timeout=100))["next_batch"]
    # A to-device message for a server that is down: queued, and a failed send.
    r = await c.call("PUT", "/sendToDevice/m.test/t1",
                     {"messages": {"@bob:down.test": {"DEV": {"x": 1}}}}, alice.access_token)
    assert r.status == 200, r.body
    # The failure is counted, then the backoff stored: wait for both.
    after = await wait_until(
        lambda s: total(s, "homeserver_federation_send_failures_total",
                        destination="down.test") >= 1
        and total(s, "homeserver_federation_destination_down", destination="down.test") == 1,
        url)

    def moved(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    send_route = "/_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}"
    assert moved("homeserver_http_requests_total", method="PUT", route=send_route,
                 status="200") == 3
    assert moved("homeserver_http_request_duration_seconds_count", route=send_route) == 3
    # No raw paths as labels: the room ID appears in no series.
    assert not [k for k in after if room in str(k)]
    # createRoom's events and the three messages, all local and accepted.
    assert moved("homeserver_events_persisted_total", origin="local", outcome="accepted") >= 8
    assert moved("homeserver_db_transaction_duration_seconds_count") > 10
    assert total(during, "homeserver_sync_long_polls") >= 1
    assert moved("homeserver_sync_wakeups_total", reason="notified") >= 1
    assert moved("homeserver_sync_wakeups_total", reason="timeout") >= 1
    assert total(after, "homeserver_federation_queue_depth", destination="down.test") == 1
    assert total(after, "homeserver_federation_destination_down", destination="down.test") == 1
    assert total(after, "homeserver_federation_destinations_down") >= 1
    lookups = moved("homeserver_cache_hits_total") + moved("homeserver_cache_misses_total")
    assert lookups > 0 and moved("homeserver_cache_hits_total", cache="room_heads") > 0
    assert total(after, "homeserver_db_pool_in_use", engine=engine) >= 0
    assert ("homeserver_db_pool_waiting", (("engine", engine),)) in after


def test_cache_counters_survive_their_caches() -> None:
    import gc

    from prometheus_client import REGISTRY

    from homeserver.storage.cache import LruCache

    def hits() -> float:
        return REGISTRY.get_sample_value("homeserver_cache_hits_total",
                                         {"cache": "test_gc"}) or 0.0

    start = hits()
    cache: LruCache[str, int] | None = LruCache(4, "test_gc")
    assert cache is not None
    cache.set("a", 1)
    assert cache.get("a") == 1 and cache.get("b") is None
    assert hits() == start + 1
    cache = None
    gc.collect()
    # A counter must never go down (Prometheus would read a reset).
    assert hits() == start + 1
