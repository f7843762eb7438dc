"""Read receipts on the 'receipts' stream: the newest receipt per (room, type, user, thread).

A receipt only moves forward: one pointing at an event older (by stream ordering) than the one
already stored for the same key is ignored, as Synapse does. ``thread_id`` is '' for an
unthreaded receipt, else 'main' or the thread root's event ID.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from homeserver.storage import streams
from homeserver.storage.engine import Database, Txn
from homeserver.storage.sql import chunks, marks

RECEIPTS_STREAM = "receipts"
READ = "m.read"
READ_PRIVATE = "m.read.private"
READ_TYPES = (READ, READ_PRIVATE)
UNTHREADED = ""

@dataclass(frozen=True)
class Receipt:
    room_id: str
    receipt_type: str
    user_id: str
    thread_id: str  # '' when unthreaded
    event_id: str
    data: dict[str, Any]
    stream_id: int


def _rows(rows: Sequence[Sequence[Any]]) -> list[Receipt]:
    return [
        Receipt(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), int(r[6])) for r in rows
    ]


_COLUMNS = "room_id, receipt_type, user_id, thread_id, event_id, data, stream_id"


def read_up_to_txn(txn: Txn, user_id: str, room_id: str, thread_id: str | None) -> int | None:
    threads = [UNTHREADED] if thread_id is None else [UNTHREADED, thread_id]
    row = txn.execute(
        "SELECT MAX(event_stream) FROM receipts WHERE user_id = ? AND room_id = ?"
        f" AND receipt_type IN (?, ?) AND thread_id IN ({','.join('?' * len(threads))})",
        (user_id, room_id, *READ_TYPES, *threads),
    ).fetchone()
    return int(row[0]) if row is not None and row[0] is not None else None


async def read_up_to(
    db: Database, user_id: str, room_id: str, thread_id: str | None = None
) -> int | None:
    """The stream_ordering of the event the user's furthest m.read / m.read.private receipt
    in the room points at; None without one.

    ``thread_id`` None: unthreaded receipts only (what counts for the whole room). A thread ID
    ('main' or a thread root): the furthest of the unthreaded receipts and those for that
    thread (an unthreaded receipt marks every thread read up to its event)."""
    return await db.run("receipts_read_up_to", read_up_to_txn, user_id, room_id, thread_id)


class ReceiptStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def read_up_to(
        self, user_id: str, room_id: str, thread_id: str | None = None
    ) -> int | None:
        """See the module-level ``read_up_to``."""
        return await read_up_to(self.db, user_id, room_id, thread_id)

    async def insert(
        self,
        room_id: str,
        receipt_type: str,
        user_id: str,
        thread_id: str,
        event_id: str,
        event_stream: int,
        data: dict[str, Any],
    ) -> int | None:
        """Store a receipt; its stream position, or None when it was ignored (it does not move
        past the stored one)."""
        encoded = json.dumps(data, ensure_ascii=False)

        def txn_fn(txn: Txn) -> int | None:
            row = txn.execute(
                "SELECT event_stream, event_id FROM receipts WHERE room_id = ?"
                " AND receipt_type = ? AND user_id = ? AND thread_id = ?",
                (room_id, receipt_type, user_id, thread_id),
            ).fetchone()
            if row is not None and int(row[0]) >= event_stream:
                return None
            position = streams.advance(txn, RECEIPTS_STREAM)
            txn.execute(
                "INSERT INTO receipts (room_id, receipt_type, user_id, thread_id, event_id,"
                " event_stream, data, stream_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (room_id, receipt_type, user_id, thread_id) DO UPDATE SET"
                " event_id = excluded.event_id, event_stream = excluded.event_stream,"
                " data = excluded.data, stream_id = excluded.stream_id"
                " WHERE receipts.event_stream < excluded.event_stream",
                (room_id, receipt_type, user_id, thread_id, event_id, event_stream, encoded,
                 position),
            )
            # A concurrent writer may have moved it further meanwhile (the position then
            # goes unused, which readers do not mind).
            if txn.rowcount == 0:
                return None
            if receipt_type == READ_PRIVATE:
                txn.note(RECEIPTS_STREAM, position, users=[user_id])
            else:
                txn.note(RECEIPTS_STREAM, position, rooms=[room_id])
            return position

        return await self.db.run("insert_receipt", txn_fn)

    async def for_rooms(
        self, room_ids: Sequence[str], since: int, to: int
    ) -> list[Receipt]:
        """Receipts in these rooms stored after ``since`` up to ``to`` (since 0: all of them),
        oldest first. With an index on stream_id the cost follows what changed."""

        def txn_fn(txn: Txn) -> list[Receipt]:
            out: list[Receipt] = []
            for chunk in chunks(room_ids):
                out.extend(_rows(txn.execute(
                    f"SELECT {_COLUMNS} FROM receipts WHERE stream_id > ? AND stream_id <= ?"
                    f" AND room_id IN ({marks(len(chunk))})",
                    (since, to, *chunk),
                ).fetchall()))
            out.sort(key=lambda r: r.stream_id)
            return out

        if not room_ids:
            return []
        return await self.db.run("receipts_for_rooms", txn_fn)

    async def changed_since(self, since: int, to: int) -> list[Receipt]:
        """Every receipt stored after ``since`` up to ``to`` (for incremental sync: few rows
        once ``since`` is recent)."""

        def txn_fn(txn: Txn) -> list[Receipt]:
            return _rows(txn.execute(
                f"SELECT {_COLUMNS} FROM receipts WHERE stream_id > ? AND stream_id <= ?"
                " ORDER BY stream_id",
                (since, to),
            ).fetchall())

        return await self.db.run("receipts_changed_since", txn_fn)

    async def for_user(self, user_id: str, room_id: str) -> list[Receipt]:
        def txn_fn(txn: Txn) -> list[Receipt]:
            return _rows(txn.execute(
                f"SELECT {_COLUMNS} FROM receipts WHERE user_id = ? AND room_id = ?",
                (user_id, room_id),
            ).fetchall())

        return await self.db.run("receipts_for_user", txn_fn)

    async def current_position(self) -> int:
        return await streams.current_position(self.db, RECEIPTS_STREAM)
