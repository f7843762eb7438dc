"""Outbound federation: one ordered queue per destination, sent as transactions of at most
50 PDUs and 100 EDUs, retried with exponential backoff.

Items wait in the database (storage/federation_queue.py) until the destination acknowledges
them, so a restart or a long peer outage loses nothing; at start every destination with
pending items is woken. A peer that contacts us is evidently back: its backoff is reset and
its queue flushed at once. One slow or dead peer never holds up another: each destination
has its own loop.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import quote

from prometheus_client import Counter
from twisted.internet import defer
from twisted.python.failure import Failure

from federation.transport.client import (
    FederationClient,
    FederationClientError,
    HttpResponseError,
)
from homeserver.clock import Clock
from homeserver.storage.federation_queue import Backoff, FederationQueueStore

logger = logging.getLogger(__name__)

MAX_PDUS_PER_TXN = 50
MAX_EDUS_PER_TXN = 100
MIN_RETRY_MS = 10_000
MAX_RETRY_MS = 3600_000

# Per destination: the set of peers is what operators watch, and it is bounded by the servers
# we share rooms with.
SENT_TXNS = Counter(
    "homeserver_federation_transactions_sent", "Transactions a peer accepted", ["destination"]
)
SENT_ITEMS = Counter(
    "homeserver_federation_items_sent", "PDUs and EDUs a peer accepted", ["destination", "kind"]
)
SEND_FAILURES = Counter(
    "homeserver_federation_send_failures", "Failed attempts to send a transaction",
    ["destination"],
)


def next_backoff(previous: Backoff | None, now: int) -> Backoff:
    interval = MIN_RETRY_MS if previous is None else min(
        previous.retry_interval_ms * 2, MAX_RETRY_MS
    )
    failure_ts = previous.failure_ts if previous and previous.failure_ts else now
    return Backoff(failure_ts, now, interval)


class FederationSender:
    def __init__(
        self,
        server_name: str,
        store: FederationQueueStore,
        client: FederationClient,
        clock: Clock,
        reactor: Any,
    ) -> None:
        self.server_name = server_name
        self.store = store
        self.client = client
        self.clock = clock
        self.reactor = reactor
        self._running: dict[str, defer.Deferred[None]] = {}
        self._again: set[str] = set()
        self._timers: dict[str, Any] = {}
        self._stopped = False
        # Peers that contacted us while a send to them was under way: if that send fails,
        # retry at once instead of backing off.
        self._peer_back: set[str] = set()

    async def start(self) -> None:
        for destination in await self.store.destinations_with_pending():
            self.wake(destination)

    async def stop(self) -> None:
        self._stopped = True
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        for d in list(self._running.values()):
            d.cancel()

    async def send_pdu(self, destinations: set[str], pdu: dict[str, Any]) -> None:
        targets = sorted(d for d in destinations if d != self.server_name)
        await self.store.enqueue([(d, "pdu", pdu) for d in targets], self.clock.time_ms())
        for d in targets:
            self.wake(d)

    async def send_edu(self, destination: str, edu_type: str, content: dict[str, Any]) -> None:
        if destination == self.server_name:
            return
        edu = {"edu_type": edu_type, "content": content}
        await self.store.enqueue([(destination, "edu", edu)], self.clock.time_ms())
        self.wake(destination)

    def wake(self, destination: str) -> None:
        """Send what is queued for ``destination`` now, unless it is backing off."""
        if self._stopped or destination == self.server_name:
            return
        if destination in self._running:
            self._again.add(destination)
            return
        d = defer.Deferred.fromCoroutine(self._run(destination))
        self._running[destination] = d

        def done(result: Any) -> None:
            self._running.pop(destination, None)
            if destination in self._again:
                self._again.discard(destination)
                self.wake(destination)
            if isinstance(result, Failure) and not result.check(
                defer.CancelledError
            ):
                logger.error("federation sender for %s failed: %s", destination,
                             result.getTraceback())

        d.addBoth(done)

    async def peer_is_back(self, destination: str) -> None:
        """The peer contacted us: forget its backoff and flush its queue."""
        if destination in self._running:
            self._peer_back.add(destination)
        if destination in self._timers or await self.store.get_backoff(destination):
            timer = self._timers.pop(destination, None)
            if timer is not None and timer.active():
                timer.cancel()
            await self.store.set_backoff(destination, None)
            self.wake(destination)

    async def reset_backoff(self, destination: str) -> None:
        """Operator action (admin API): forget the backoff and send what is queued now."""
        timer = self._timers.pop(destination, None)
        if timer is not None and timer.active():
            timer.cancel()
        await self.store.set_backoff(destination, None)
        self.wake(destination)

    async def _run(self, destination: str) -> None:
        backoff = await self.store.get_backoff(destination)
        now = self.clock.time_ms()
        if backoff is not None and now < backoff.retry_last_ts + backoff.retry_interval_ms:
            self._schedule(destination, backoff.retry_last_ts + backoff.retry_interval_ms - now)
            return
        while not self._stopped:
            items = await self.store.pending(destination, MAX_PDUS_PER_TXN, MAX_EDUS_PER_TXN)
            if not items:
                return
            now = self.clock.time_ms()
            body = {
                "origin": self.server_name,
                "origin_server_ts": now,
                "pdus": [i.payload for i in items if i.kind == "pdu"],
                "edus": [i.payload for i in items if i.kind == "edu"],
            }
            txn_id = f"{int(time.time() * 1000)}.{items[0].position}"
            try:
                response = await self.client.put_json(
                    destination, f"/_matrix/federation/v1/send/{quote(txn_id, safe='')}", body
                )
            except HttpResponseError as e:
                if e.status == 400:
                    # The peer refuses this transaction as malformed: retrying would block
                    # the queue forever.
                    logger.error("%s refused a transaction (%s): dropping %d items",
                                 destination, e, len(items))
                    await self.store.acknowledge(destination, [i.position for i in items])
                    continue
                await self._failed(destination, backoff, e)
                return
            except FederationClientError as e:
                await self._failed(destination, backoff, e)
                return
            for event_id, result in (response or {}).get("pdus", {}).items():
                if isinstance(result, dict) and result.get("error"):
                    logger.info("%s rejected %s: %s", destination, event_id, result["error"])
            await self.store.acknowledge(destination, [i.position for i in items],
                                         success_ts=self.clock.time_ms())
            SENT_TXNS.labels(destination).inc()
            for kind in ("pdu", "edu"):
                n = sum(1 for i in items if i.kind == kind)
                if n:
                    SENT_ITEMS.labels(destination, kind).inc(n)
            self._peer_back.discard(destination)
            if backoff is not None:
                await self.store.set_backoff(destination, None)
                backoff = None

    async def _failed(
        self, destination: str, previous: Backoff | None, error: Exception
    ) -> None:
        SEND_FAILURES.labels(destination).inc()
        if destination in self._peer_back:
            # It came back while this attempt was failing: try again straight away.
            self._peer_back.discard(destination)
            self._again.add(destination)
            return
        backoff = next_backoff(previous, self.clock.time_ms())
        await self.store.set_backoff(destination, backoff)
        logger.info("cannot reach %s (%s): retrying in %ds", destination, error,
                    backoff.retry_interval_ms // 1000)
        self._schedule(destination, backoff.retry_interval_ms)

    def _schedule(self, destination: str, delay_ms: int) -> None:
        old = self._timers.pop(destination, None)
        if old is not None and old.active():
            old.cancel()

        def fire() -> None:
            self._timers.pop(destination, None)
            self.wake(destination)

        self._timers[destination] = self.reactor.callLater(delay_ms / 1000, fire)
