"""Full-text search of room events: PostgreSQL full-text search (tsvector, GIN index) and
SQLite FTS5 (a virtual table whose rowid is the event NID).

``index_search_txn`` runs inside the persist transaction (as the relations index does), so an
acknowledged event is searchable, and a redaction applied in a batch removes the redacted
event from the index in the same transaction. Search terms become a conjunction of prefix
matches of their words on both engines (words only: no query syntax reaches the engines).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from homeserver.storage.engine import Database, Txn

if TYPE_CHECKING:
    from homeserver.storage.events import PersistRequest

# Which content key of which event type is searchable.
SEARCH_KEYS = {
    "m.room.message": "content.body",
    "m.room.name": "content.name",
    "m.room.topic": "content.topic",
}
_WORD = re.compile(r"\w+", re.UNICODE)
MAX_WORDS = 20


def search_words(term: str) -> list[str]:
    return _WORD.findall(term.lower())[:MAX_WORDS]


def _text_of(event_type: str, content: Mapping[str, Any]) -> tuple[str, str] | None:
    key = SEARCH_KEYS.get(event_type)
    if key is None:
        return None
    value = content.get(key.split(".", 1)[1])
    if not isinstance(value, str) or not value.strip():
        return None
    # PostgreSQL text cannot hold NUL; a remote event may carry one (only the index drops it).
    return key, value.replace("\x00", " ")


def index_search_txn(
    txn: Txn, batches: Sequence[tuple[PersistRequest, Mapping[str, int]]]
) -> None:
    rows: list[tuple[int, str, str, str]] = []
    redacted: list[tuple[int]] = []
    for req, nids in batches:
        for it in req.items:
            if it.redacts is not None and it.redacts in nids:
                redacted.append((nids[it.redacts],))
            if it.rejected is not None or it.soft_failed:
                continue
            found = _text_of(it.event.type, it.event.content)
            if found is not None:
                rows.append((nids[it.event.event_id], req.room_id, found[0], found[1]))
    if txn.engine == "postgres":
        if rows:
            txn.executemany(
                "INSERT INTO event_search (event_nid, room_id, key, vector)"
                " VALUES (?, ?, ?, to_tsvector('english', ?))"
                " ON CONFLICT (event_nid) DO NOTHING",
                rows,
            )
        if redacted:
            txn.executemany("DELETE FROM event_search WHERE event_nid = ?", redacted)
    else:
        if rows:
            txn.executemany(
                "INSERT INTO event_search (rowid, room_id, key, value) VALUES (?, ?, ?, ?)",
                rows,
            )
        if redacted:
            txn.executemany("DELETE FROM event_search WHERE rowid = ?", redacted)


@dataclass(frozen=True)
class SearchHit:
    event_id: str
    room_id: str
    rank: float
    stream: int


class SearchStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def search(
        self,
        words: Sequence[str],
        room_ids: Sequence[str],
        keys: Sequence[str],
        *,
        by_rank: bool,
        offset: int,
        before_stream: int | None,
        limit: int,
    ) -> list[SearchHit]:
        """Matches of all ``words`` (as prefixes) in ``room_ids``: by rank (then newest) with
        ``offset``, or newest first below ``before_stream``."""
        if not words or not room_ids or not keys:
            return []

        def txn_fn(txn: Txn) -> list[SearchHit]:
            rooms_in = ",".join("?" * len(room_ids))
            keys_in = ",".join("?" * len(keys))
            if txn.engine == "postgres":
                query = " & ".join(f"{w}:*" for w in words)
                sql = (
                    "SELECT n.event_id, s.room_id,"
                    " ts_rank_cd(s.vector, to_tsquery('english', ?)) AS rank, e.stream_ordering"
                    " FROM event_search s JOIN events e ON e.event_nid = s.event_nid"
                    " JOIN event_nids n ON n.event_nid = s.event_nid"
                    " WHERE s.vector @@ to_tsquery('english', ?)"
                )
                args: list[Any] = [query, query]
            else:
                query = " ".join(f'"{w}"*' for w in words)
                sql = (
                    "SELECT n.event_id, s.room_id, -bm25(event_search) AS rank,"
                    " e.stream_ordering"
                    " FROM event_search s JOIN events e ON e.event_nid = s.rowid"
                    " JOIN event_nids n ON n.event_nid = s.rowid"
                    " WHERE event_search MATCH ?"
                )
                args = [query]
            sql += (f" AND s.room_id IN ({rooms_in}) AND s.key IN ({keys_in})"
                    " AND e.rejected IS NULL AND e.soft_failed = ?")
            args += [*room_ids, *keys, False]
            if by_rank:
                sql += " ORDER BY rank DESC, e.stream_ordering DESC LIMIT ? OFFSET ?"
                args += [limit, offset]
            else:
                if before_stream is not None:
                    sql += " AND e.stream_ordering < ?"
                    args.append(before_stream)
                sql += " ORDER BY e.stream_ordering DESC LIMIT ?"
                args.append(limit)
            return [
                SearchHit(r[0], r[1], float(r[2]), int(r[3]))
                for r in txn.execute(sql, args).fetchall()
            ]

        return await self.db.run("search_events", txn_fn)

    async def count(self, words: Sequence[str], room_ids: Sequence[str],
                    keys: Sequence[str]) -> int:
        """How many indexed events match (before visibility and filters: the spec's count is
        approximate, and Synapse's is this one)."""
        if not words or not room_ids or not keys:
            return 0

        def txn_fn(txn: Txn) -> int:
            rooms_in = ",".join("?" * len(room_ids))
            keys_in = ",".join("?" * len(keys))
            if txn.engine == "postgres":
                sql = ("SELECT COUNT(*) FROM event_search s"
                       " WHERE s.vector @@ to_tsquery('english', ?)")
                args: list[Any] = [" & ".join(f"{w}:*" for w in words)]
            else:
                sql = "SELECT COUNT(*) FROM event_search s WHERE event_search MATCH ?"
                args = [" ".join(f'"{w}"*' for w in words)]
            sql += f" AND s.room_id IN ({rooms_in}) AND s.key IN ({keys_in})"
            row = txn.execute(sql, [*args, *room_ids, *keys]).fetchone()
            return int(row[0]) if row else 0

        return await self.db.run("search_count", txn_fn)
