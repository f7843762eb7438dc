"""The federation outbox and destinations' backoff state."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from homeserver.storage import streams
from homeserver.storage.engine import Database, Txn


@dataclass(frozen=True)
class Queued:
    position: int
    kind: str  # "pdu" or "edu"
    payload: dict[str, Any]


@dataclass(frozen=True)
class Backoff:
    failure_ts: int | None
    retry_last_ts: int
    retry_interval_ms: int


def enqueue_txn(
    txn: Txn, items: Iterable[tuple[str, str, dict[str, Any]]], now: int
) -> list[int]:
    """Queue (destination, kind, payload) items inside the caller's transaction, so a PDU is
    queued in the same commit that persists it."""
    positions = []
    for destination, kind, payload in items:
        position = streams.advance(txn, "federation_outbox")
        txn.execute(
            "INSERT INTO federation_outbox (position, destination, kind, payload, created_ts)"
            " VALUES (?, ?, ?, ?, ?)",
            (position, destination, kind, json.dumps(payload, ensure_ascii=False), now),
        )
        positions.append(position)
    return positions


class FederationQueueStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def enqueue(self, items: list[tuple[str, str, dict[str, Any]]], now: int) -> None:
        if items:
            await self.db.run("federation_enqueue", enqueue_txn, items, now)

    async def pending(self, destination: str, max_pdus: int, max_edus: int) -> list[Queued]:
        """The oldest queued items for one destination, at most so many of each kind."""

        def txn_fn(txn: Txn) -> list[Queued]:
            out = []
            for kind, limit in (("pdu", max_pdus), ("edu", max_edus)):
                rows = txn.execute(
                    "SELECT position, payload FROM federation_outbox"
                    " WHERE destination = ? AND kind = ? ORDER BY position LIMIT ?",
                    (destination, kind, limit),
                ).fetchall()
                out += [Queued(int(p), kind, json.loads(body)) for p, body in rows]
            return sorted(out, key=lambda q: q.position)

        return await self.db.run("federation_pending", txn_fn)

    async def acknowledge(self, destination: str, positions: list[int],
                          success_ts: int | None = None) -> None:
        """Delete sent items; ``success_ts``: the destination accepted them then."""

        def txn_fn(txn: Txn) -> None:
            txn.executemany(
                "DELETE FROM federation_outbox WHERE destination = ? AND position = ?",
                [(destination, p) for p in positions],
            )
            if success_ts is not None:
                txn.execute(
                    "INSERT INTO federation_destination_activity (destination,"
                    " last_successful_ts) VALUES (?, ?) ON CONFLICT (destination)"
                    " DO UPDATE SET last_successful_ts = ?",
                    (destination, success_ts, success_ts),
                )

        await self.db.run("federation_ack", txn_fn)

    async def destinations_with_pending(self) -> list[str]:
        def txn_fn(txn: Txn) -> list[str]:
            rows = txn.execute(
                "SELECT DISTINCT destination FROM federation_outbox ORDER BY destination"
            ).fetchall()
            return [r[0] for r in rows]

        return await self.db.run("federation_destinations_pending", txn_fn)

    async def queue_depths(self) -> dict[str, int]:
        """How many items wait for each destination (metrics and the health report)."""

        def txn_fn(txn: Txn) -> dict[str, int]:
            rows = txn.execute(
                "SELECT destination, count(*) FROM federation_outbox GROUP BY destination"
            ).fetchall()
            return {r[0]: int(r[1]) for r in rows}

        return await self.db.run("federation_queue_depths", txn_fn)

    async def get_backoff(self, destination: str) -> Backoff | None:
        def txn_fn(txn: Txn) -> Backoff | None:
            row = txn.execute(
                "SELECT failure_ts, retry_last_ts, retry_interval_ms"
                " FROM federation_destinations WHERE destination = ?",
                (destination,),
            ).fetchone()
            return Backoff(row[0], int(row[1]), int(row[2])) if row else None

        return await self.db.run("federation_get_backoff", txn_fn)

    async def set_backoff(self, destination: str, backoff: Backoff | None) -> None:
        def txn_fn(txn: Txn) -> None:
            txn.execute(
                "DELETE FROM federation_destinations WHERE destination = ?", (destination,)
            )
            if backoff is not None:
                txn.execute(
                    "INSERT INTO federation_destinations (destination, failure_ts,"
                    " retry_last_ts, retry_interval_ms) VALUES (?, ?, ?, ?)",
                    (destination, backoff.failure_ts, backoff.retry_last_ts,
                     backoff.retry_interval_ms),
                )

        await self.db.run("federation_set_backoff", txn_fn)

    async def all_backoffs(self) -> dict[str, Backoff]:
        def txn_fn(txn: Txn) -> dict[str, Backoff]:
            rows = txn.execute(
                "SELECT destination, failure_ts, retry_last_ts, retry_interval_ms"
                " FROM federation_destinations"
            ).fetchall()
            return {r[0]: Backoff(r[1], int(r[2]), int(r[3])) for r in rows}

        return await self.db.run("federation_all_backoffs", txn_fn)
