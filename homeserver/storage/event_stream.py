"""The legacy event stream (``GET /events``): accepted events of some rooms after a stream
position, oldest first (``room_events_by_stream`` gives the newest, for /sync)."""

from __future__ import annotations

from collections.abc import Sequence

from homeserver.storage.engine import Database, Txn
from homeserver.storage.events import (
    _EVENT_COLUMNS,
    _EVENT_FROM,
    EventStore,
    StoredEvent,
    _row_to_event,
)
from homeserver.storage.sql import chunks, marks


def events_after_txn(
    txn: Txn, room_ids: Sequence[str], after: int, upto: int, limit: int
) -> list[StoredEvent]:
    out: list[StoredEvent] = []
    for chunk in chunks(list(room_ids)):
        rows = txn.execute(
            f"SELECT {_EVENT_COLUMNS}{_EVENT_FROM} WHERE e.room_id IN ({marks(len(chunk))})"
            " AND e.stream_ordering > ? AND e.stream_ordering <= ? AND e.rejected IS NULL"
            " AND NOT e.soft_failed ORDER BY e.stream_ordering LIMIT ?",
            (*chunk, after, upto, limit),
        ).fetchall()
        out.extend(_row_to_event(r) for r in rows)
    out.sort(key=lambda e: e.stream_ordering)
    return out[:limit]


async def events_after(
    db: Database, store: EventStore, room_ids: Sequence[str], after: int, upto: int, limit: int
) -> list[StoredEvent]:
    """Up to ``limit`` events of the rooms with ``after`` < stream <= ``upto``, oldest first."""
    if not room_ids:
        return []
    events = await db.run("events_after", events_after_txn, room_ids, after, upto, limit)
    store.cache(events)
    return events
