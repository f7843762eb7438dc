"""What an operator's monitoring asks: can the server reach its database, and how is
federation doing (destinations we cannot reach, items waiting to be sent)?

``/health`` (every listener) stays a plain "OK" for load balancers: the process answers.
``check`` backs the detailed JSON report (``api/health.py``) and the metrics' federation
gauges; ``summarize_federation`` is the pure part."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer

from homeserver.storage.engine import Database, Txn
from homeserver.storage.federation_queue import Backoff, FederationQueueStore

# A health check that takes longer than this reports the database as unreachable.
CHECK_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class DestinationState:
    destination: str
    queued: int
    # Backing off after failures: the next attempt is not before ``retry_at_ts``.
    down: bool
    failing_since_ts: int | None
    retry_at_ts: int | None


def summarize_federation(
    depths: dict[str, int], backoffs: dict[str, Backoff], now_ms: int
) -> list[DestinationState]:
    """Every destination with queued items or a backoff, sorted by name. A destination is
    down while its backoff lasts (it failed and its next retry is still ahead)."""
    out = []
    for destination in sorted(set(depths) | set(backoffs)):
        b = backoffs.get(destination)
        retry_at = b.retry_last_ts + b.retry_interval_ms if b is not None else None
        out.append(DestinationState(
            destination=destination,
            queued=depths.get(destination, 0),
            down=retry_at is not None and retry_at > now_ms,
            failing_since_ts=b.failure_ts if b is not None else None,
            retry_at_ts=retry_at,
        ))
    return out


def _ping(txn: Txn) -> None:
    txn.execute("SELECT 1").fetchone()


async def with_timeout(reactor: Any, coro: Any, seconds: float) -> Any:
    d: defer.Deferred[Any] = defer.Deferred.fromCoroutine(coro)
    d.addTimeout(seconds, reactor)
    return await d


async def check(
    db: Database, queue: FederationQueueStore, reactor: Any, now_ms: int,
    timeout: float = CHECK_TIMEOUT_SECONDS,
) -> tuple[bool, dict[str, Any]]:
    """(healthy, report). Unhealthy means the database cannot be reached: nothing works
    without it. Federation trouble is reported, not counted as unhealthy, since a peer being
    down is not this server's fault."""
    start = time.monotonic()
    report: dict[str, Any] = {"database": {"engine": db.engine}}
    try:
        await with_timeout(reactor, db.run("health_ping", _ping), timeout)
    except Exception as e:
        report["database"].update(reachable=False, error=_describe(e))
        report["status"] = "unavailable"
        return False, report
    report["database"].update(
        reachable=True, latency_ms=round((time.monotonic() - start) * 1000, 1)
    )
    try:
        depths = await with_timeout(reactor, queue.queue_depths(), timeout)
        backoffs = await with_timeout(reactor, queue.all_backoffs(), timeout)
    except Exception as e:
        report["federation"] = {"error": _describe(e)}
    else:
        states = summarize_federation(depths, backoffs, now_ms)
        report["federation"] = {
            "destinations_down": sum(1 for s in states if s.down),
            "queued_total": sum(s.queued for s in states),
            "destinations": [
                {"destination": s.destination, "queued": s.queued, "down": s.down,
                 "failing_since_ts": s.failing_since_ts, "retry_at_ts": s.retry_at_ts}
                for s in states
            ],
        }
    report["status"] = "ok"
    return True, report


def _describe(e: Exception) -> str:
    if isinstance(e, defer.TimeoutError):
        return "timed out"
    return f"{type(e).__name__}: {e}"[:300]
