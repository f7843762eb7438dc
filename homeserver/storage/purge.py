"""Deleting history: a room's message events before a point (admin purge, retention), and a
whole room (admin room deletion with ``purge``).

A history purge keeps the room's DAG and state intact: state events are never deleted (the
state groups, the auth chain index and current state refer to them), nor are the forward
extremities (the next event's prev_events), nor the event ID table and the DAG edges, so
every reference that remains still resolves to an ID and a redacted event keeps pointing at
its (possibly purged) redaction. What goes is the event rows with their content and what
was derived from it: the search index, relations, notifications and the original JSON of
redacted events.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from homeserver.storage.engine import Txn
from homeserver.storage.sql import chunks, marks

# Tables with a room_id column that a room purge keeps: the block outlives the room, task
# status is what the operator polls, key backups belong to the users, reports are the
# operator's record. state_groups rows (no content; their entries go) stay as tombstones:
# SQLite hands out the largest deleted INTEGER PRIMARY KEY again, and a reused group ID
# would meet the state cache's entry for the old group. event_nids (IDs only) stay for the
# same reason.
KEEP_ON_ROOM_PURGE = frozenset({"room_blocks", "admin_tasks", "e2e_room_keys", "event_reports",
                                "state_groups"})


@dataclass(frozen=True)
class PurgePoint:
    """Purge message events before an event (by topological order) or older than a
    timestamp (origin_server_ts)."""

    before_event: tuple[int, int] | None = None  # (depth, stream_ordering)
    before_ts: int | None = None


def event_position_txn(txn: Txn, room_id: str, event_id: str) -> tuple[int, int] | None:
    row = txn.execute(
        "SELECT e.depth, e.stream_ordering FROM events e JOIN event_nids n"
        " ON n.event_nid = e.event_nid WHERE n.event_id = ? AND e.room_id = ?",
        (event_id, room_id),
    ).fetchone()
    return (int(row[0]), int(row[1])) if row else None


def purge_history_txn(
    txn: Txn, room_id: str, point: PurgePoint, server_name: str, delete_local: bool,
    limit: int,
) -> list[str]:
    """Delete up to ``limit`` of the room's message events before ``point``, oldest first
    (local users' ones only with ``delete_local``). Returns the purged event IDs (for cache
    invalidation); fewer than ``limit`` means nothing is left to purge."""
    head = txn.execute("SELECT extremities FROM rooms WHERE room_id = ?", (room_id,)).fetchone()
    if head is None:
        return []
    extremities = list(json.loads(head[0]))
    clauses = ["e.room_id = ?", "e.state_key IS NULL"]
    params: list[object] = [room_id]
    if extremities:
        clauses.append(f"n.event_id NOT IN ({marks(len(extremities))})")
        params += extremities
    if point.before_event is not None:
        clauses.append("(e.depth < ? OR (e.depth = ? AND e.stream_ordering < ?))")
        depth, stream = point.before_event
        params += [depth, depth, stream]
    if point.before_ts is not None:
        clauses.append("e.origin_server_ts < ?")
        params.append(point.before_ts)
    if not delete_local:
        clauses.append("e.sender NOT LIKE ? ESCAPE '\\'")
        params.append("%:" + _like_literal(server_name))
    rows = txn.execute(
        "SELECT e.event_nid, n.event_id FROM events e JOIN event_nids n"
        f" ON n.event_nid = e.event_nid WHERE {' AND '.join(clauses)}"
        " ORDER BY e.stream_ordering LIMIT ?",
        [*params, limit],
    ).fetchall()
    doomed = [(int(nid), eid) for nid, eid in rows]
    delete_event_rows_txn(txn, doomed)
    return [eid for _, eid in doomed]


def _like_literal(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def delete_event_rows_txn(txn: Txn, events: Sequence[tuple[int, str]]) -> None:
    """Delete events' rows and everything derived from their content; the IDs and DAG
    edges stay."""
    search_key = "rowid" if txn.engine == "sqlite" else "event_nid"
    for chunk in chunks(list(events)):
        nids = [nid for nid, _ in chunk]
        ids = [eid for _, eid in chunk]
        m = marks(len(chunk))
        for table, column in (("events", "event_nid"), ("event_relations", "event_nid"),
                              ("redacted_originals", "event_nid"),
                              ("event_redactions", "redaction_nid"),
                              ("event_search", search_key)):
            txn.execute(f"DELETE FROM {table} WHERE {column} IN ({m})", nids)
        txn.execute(f"DELETE FROM event_push_actions WHERE event_id IN ({m})", ids)


def tables_with_room_id_txn(txn: Txn) -> list[str]:
    """Every table with a room_id column (including those added by later migrations)."""
    if txn.engine == "sqlite":
        names = [r[0] for r in txn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND sql NOT LIKE"
            " 'CREATE VIRTUAL%'"
        ).fetchall()]
        out = []
        for name in names:
            columns = txn.execute(f"PRAGMA table_info('{name}')").fetchall()
            if any(c[1] == "room_id" for c in columns):
                out.append(name)
        # The FTS table keeps room_id as an unindexed column.
        out.append("event_search")
        return sorted(out)
    rows = txn.execute(
        "SELECT table_name FROM information_schema.columns WHERE table_schema ="
        " current_schema() AND column_name = 'room_id'"
    ).fetchall()
    return sorted({r[0] for r in rows})


def purge_room_txn(txn: Txn, room_id: str) -> list[str]:
    """Delete everything this server holds about a room but its block, task status, the
    users' key backups, reports, and ID tombstones. Returns the deleted event IDs."""
    rows = txn.execute(
        "SELECT e.event_nid, n.event_id FROM events e JOIN event_nids n"
        " ON n.event_nid = e.event_nid WHERE e.room_id = ?", (room_id,),
    ).fetchall()
    events = [(int(nid), eid) for nid, eid in rows]
    nids = [nid for nid, _ in events]
    chains: set[int] = set()
    for chunk in chunks(nids):
        chains.update(int(r[0]) for r in txn.execute(
            f"SELECT chain_id FROM event_auth_chains WHERE event_nid IN ({marks(len(chunk))})",
            chunk,
        ).fetchall())
    for chunk in chunks(sorted(chains)):
        m = marks(len(chunk))
        txn.execute(f"DELETE FROM event_auth_chain_links WHERE origin_chain IN ({m})"
                    f" OR target_chain IN ({m})", [*chunk, *chunk])
    delete_event_rows_txn(txn, events)
    for chunk in chunks(nids):
        m = marks(len(chunk))
        for table in ("event_edges", "event_auth_chains"):
            txn.execute(f"DELETE FROM {table} WHERE event_nid IN ({m})", chunk)
    txn.execute(
        "DELETE FROM state_group_entries WHERE state_group IN"
        " (SELECT state_group FROM state_groups WHERE room_id = ?)", (room_id,),
    )
    for table in tables_with_room_id_txn(txn):
        if table not in KEEP_ON_ROOM_PURGE:
            txn.execute(f"DELETE FROM {table} WHERE room_id = ?", (room_id,))
    return [eid for _, eid in events]
