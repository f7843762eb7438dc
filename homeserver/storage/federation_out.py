"""The federation outbox's cursor on the events stream (``federation_out_position``) and the
events committed past it: what a restart must still hand to the outbox."""

from __future__ import annotations

from homeserver.storage.engine import Database, Txn
from homeserver.storage.events import _EVENT_COLUMNS, _EVENT_FROM, StoredEvent, _row_to_event


class FederationOutStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def position(self) -> int:
        """The cursor; the first call on a new database puts it at the stream's head (no
        history is sent to anyone at first start)."""

        def txn_fn(txn: Txn) -> int:
            row = txn.execute(
                "SELECT stream_ordering FROM federation_out_position WHERE lock = 0"
            ).fetchone()
            if row is not None:
                return int(row[0])
            head = txn.execute("SELECT COALESCE(MAX(stream_ordering), 0) FROM events"
                               ).fetchone()
            position = int(head[0]) if head else 0
            txn.execute("INSERT INTO federation_out_position (lock, stream_ordering)"
                        " VALUES (0, ?)", (position,))
            return position

        return await self.db.run("federation_out_position", txn_fn)

    async def advance(self, position: int) -> None:
        """Move the cursor forward (never back)."""

        def txn_fn(txn: Txn) -> None:
            txn.execute(
                "UPDATE federation_out_position SET stream_ordering = ?"
                " WHERE lock = 0 AND stream_ordering < ?",
                (position, position),
            )

        await self.db.run("federation_out_advance", txn_fn)

    async def events_after(self, position: int, limit: int) -> list[StoredEvent]:
        """Accepted events past ``position`` on the stream, in stream order (at most
        ``limit``); the caller keeps its own server's."""

        def txn_fn(txn: Txn) -> list[StoredEvent]:
            rows = txn.execute(
                f"SELECT {_EVENT_COLUMNS}{_EVENT_FROM}"
                " WHERE e.stream_ordering > ? AND e.rejected IS NULL AND NOT e.soft_failed"
                " ORDER BY e.stream_ordering LIMIT ?",
                (position, limit),
            ).fetchall()
            return [_row_to_event(r) for r in rows]

        return await self.db.run("federation_out_events_after", txn_fn)
