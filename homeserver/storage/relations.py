"""Event relations (``content."m.relates_to"``): the index and its reads.

``index_relations_txn`` runs inside the transaction that persists a batch of events
(``storage.events.persist_many_txn``), so a relation is indexed exactly when its event is
committed: there is no window in which an acknowledged event lacks its relation, and no
repair job. Redactions applied in the batch drop the redacted event's relation (its
``m.relates_to`` is gone from the served form too).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from homeserver.storage.engine import Database, Txn
from homeserver.storage.sql import chunks, marks

if TYPE_CHECKING:
    from homeserver.storage.events import PersistRequest, Position

# How deep ``recurse`` follows relations of relations (as Synapse).
MAX_RECURSION = 3
BUNDLED_TYPES = ("m.replace", "m.thread", "m.reference")

def relation_of(content: Mapping[str, Any]) -> tuple[str, str] | None:
    """(rel_type, event_id) of an event's ``m.relates_to``, if well formed."""
    rel = content.get("m.relates_to")
    if not isinstance(rel, dict):
        return None
    rel_type, target = rel.get("rel_type"), rel.get("event_id")
    if not isinstance(rel_type, str) or not isinstance(target, str) or not rel_type or not target:
        return None
    return rel_type, target


def index_relations_txn(
    txn: Txn, batches: Sequence[tuple[PersistRequest, Mapping[str, int]]]
) -> None:
    """Index the relations of a persisted batch (``nids`` maps its event IDs to NIDs)."""
    rows: list[tuple[int, str, str, str]] = []
    redacted: list[tuple[int]] = []
    for req, nids in batches:
        for it in req.items:
            if it.redacts is not None and it.redacts in nids:
                redacted.append((nids[it.redacts],))
            if it.rejected is not None or it.soft_failed:
                continue
            rel = relation_of(it.event.content)
            if rel is not None:
                rows.append((nids[it.event.event_id], req.room_id, rel[1], rel[0]))
    if rows:
        txn.executemany(
            "INSERT INTO event_relations (event_nid, room_id, relates_to, rel_type)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (event_nid) DO NOTHING",
            rows,
        )
    if redacted:
        txn.executemany("DELETE FROM event_relations WHERE event_nid = ?", redacted)


@dataclass(frozen=True)
class RelatedEvent:
    event_id: str
    relates_to: str
    rel_type: str
    depth: int
    stream: int


def _position_clause(pos: Position, op: str) -> tuple[str, list[Any]]:
    if pos.depth is None:
        return f" AND e.stream_ordering {op} ?", [pos.stream]
    return f" AND (e.depth, e.stream_ordering) {op} (?, ?)", [pos.depth, pos.stream]


_SHOWN = " AND e.rejected IS NULL AND e.soft_failed = ?"


class RelationStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def relations(
        self,
        room_id: str,
        target: str,
        *,
        rel_type: str | None,
        event_type: str | None,
        recurse: bool,
        start: Position | None,
        end: Position | None,
        backwards: bool,
        limit: int,
    ) -> list[RelatedEvent]:
        """A page of the events relating to ``target`` in topological order (newest first
        when ``backwards``); ``start``/``end`` are exclusive/inclusive bounds as in
        /messages."""
        max_depth = MAX_RECURSION if recurse else 1

        def txn_fn(txn: Txn) -> list[RelatedEvent]:
            sql = (
                "WITH RECURSIVE rel (event_nid, lvl) AS ("
                " SELECT event_nid, 1 FROM event_relations WHERE relates_to = ?"
                " UNION ALL"
                " SELECT r2.event_nid, rel.lvl + 1 FROM rel"
                " JOIN event_nids n2 ON n2.event_nid = rel.event_nid"
                " JOIN event_relations r2 ON r2.relates_to = n2.event_id"
                " WHERE rel.lvl < ?)"
                " SELECT DISTINCT n.event_id, r.relates_to, r.rel_type, e.depth,"
                " e.stream_ordering FROM rel"
                " JOIN event_relations r ON r.event_nid = rel.event_nid"
                " JOIN events e ON e.event_nid = rel.event_nid"
                " JOIN event_nids n ON n.event_nid = rel.event_nid"
                " WHERE e.room_id = ?" + _SHOWN
            )
            args: list[Any] = [target, max_depth, room_id, False]
            if rel_type is not None:
                sql += " AND r.rel_type = ?"
                args.append(rel_type)
            if event_type is not None:
                sql += " AND e.type = ?"
                args.append(event_type)
            if start is not None:
                clause, more = _position_clause(start, "<=" if backwards else ">")
                sql += clause
                args += more
            if end is not None:
                clause, more = _position_clause(end, ">" if backwards else "<=")
                sql += clause
                args += more
            order = "DESC" if backwards else "ASC"
            sql += f" ORDER BY e.depth {order}, e.stream_ordering {order} LIMIT ?"
            args.append(limit)
            return [
                RelatedEvent(r[0], r[1], r[2], int(r[3]), int(r[4]))
                for r in txn.execute(sql, args).fetchall()
            ]

        return await self.db.run("relations", txn_fn)

    async def bundled(self, targets: Iterable[str]) -> list[RelatedEvent]:
        """The edits, thread replies and references of ``targets``, oldest first."""
        wanted = list(dict.fromkeys(targets))

        def txn_fn(txn: Txn) -> list[RelatedEvent]:
            out: list[RelatedEvent] = []
            for chunk in chunks(wanted):
                rows = txn.execute(
                    "SELECT n.event_id, r.relates_to, r.rel_type, e.depth, e.stream_ordering"
                    " FROM event_relations r JOIN events e ON e.event_nid = r.event_nid"
                    " JOIN event_nids n ON n.event_nid = r.event_nid"
                    f" WHERE r.relates_to IN ({marks(len(chunk))})"
                    f" AND r.rel_type IN ({','.join('?' * len(BUNDLED_TYPES))})" + _SHOWN
                    + " ORDER BY e.depth, e.stream_ordering",
                    [*chunk, *BUNDLED_TYPES, False],
                ).fetchall()
                out += [RelatedEvent(r[0], r[1], r[2], int(r[3]), int(r[4])) for r in rows]
            return out

        return await self.db.run("bundled_relations", txn_fn)

    async def threads(
        self, room_id: str, *, before: int | None, limit: int
    ) -> list[tuple[str, int]]:
        """Thread roots of a room as (root event ID, stream position of its latest reply),
        most recently active first, below ``before``."""

        def txn_fn(txn: Txn) -> list[tuple[str, int]]:
            sql = (
                "SELECT r.relates_to, MAX(e.stream_ordering) AS latest"
                " FROM event_relations r JOIN events e ON e.event_nid = r.event_nid"
                " WHERE r.room_id = ? AND r.rel_type = ?" + _SHOWN
                + " GROUP BY r.relates_to"
            )
            args: list[Any] = [room_id, "m.thread", False]
            if before is not None:
                sql += " HAVING MAX(e.stream_ordering) < ?"
                args.append(before)
            sql += " ORDER BY latest DESC LIMIT ?"
            args.append(limit)
            return [(r[0], int(r[1])) for r in txn.execute(sql, args).fetchall()]

        return await self.db.run("threads", txn_fn)
