"""Append-only stream positions.

``advance`` bumps the stream's row inside the caller's transaction. The row stays locked until
that transaction commits, so positions become visible in order: a reader that sees position N
has seen everything below N (no gaps for sync to skip over).
"""

from __future__ import annotations

from homeserver.storage.engine import Database, Txn


def advance(txn: Txn, stream: str) -> int:
    row = txn.execute(
        "UPDATE stream_positions SET position = position + 1 WHERE stream = ? RETURNING position",
        (stream,),
    ).fetchone()
    if row is None:
        raise KeyError(f"unknown stream {stream}")
    return int(row[0])


def current(txn: Txn, stream: str) -> int:
    row = txn.execute(
        "SELECT position FROM stream_positions WHERE stream = ?", (stream,)
    ).fetchone()
    return int(row[0]) if row else 0


async def current_position(db: Database, stream: str) -> int:
    return await db.run("stream_position", current, stream)
