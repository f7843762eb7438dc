"""Content reports (event_reports) and the timestamp lookup of /timestamp_to_event."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from homeserver.storage.engine import Database, Txn


@dataclass(frozen=True)
class EventReport:
    id: int
    received_ts: int
    room_id: str
    event_id: str | None
    user_id: str
    reason: str | None
    score: int | None


class RoomReportStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add_report(
        self, *, now: int, room_id: str, event_id: str | None, user_id: str,
        reason: str | None, score: int | None,
    ) -> int:
        def txn_fn(txn: Txn) -> int:
            row = txn.execute(
                "INSERT INTO event_reports (received_ts, room_id, event_id, user_id, reason,"
                " score) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                (now, room_id, event_id, user_id, reason, score),
            ).fetchone()
            assert row is not None
            return int(row[0])

        return await self.db.run("add_event_report", txn_fn)

    async def reports(
        self, *, offset: int, limit: int, newest_first: bool, room_id: str | None,
        user_id: str | None,
    ) -> tuple[list[EventReport], int]:
        """A page of reports and the total matching."""

        def txn_fn(txn: Txn) -> tuple[list[EventReport], int]:
            where, args = [], []
            if room_id is not None:
                where.append("room_id = ?")
                args.append(room_id)
            if user_id is not None:
                where.append("user_id = ?")
                args.append(user_id)
            clause = (" WHERE " + " AND ".join(where)) if where else ""
            total_row = txn.execute("SELECT COUNT(*) FROM event_reports" + clause,
                                    args).fetchone()
            order = "DESC" if newest_first else "ASC"
            rows = txn.execute(
                "SELECT id, received_ts, room_id, event_id, user_id, reason, score"
                f" FROM event_reports{clause} ORDER BY received_ts {order}, id {order}"
                " LIMIT ? OFFSET ?",
                [*args, limit, offset],
            ).fetchall()
            reports = [
                EventReport(int(r[0]), int(r[1]), r[2], r[3], r[4], r[5],
                            int(r[6]) if r[6] is not None else None)
                for r in rows
            ]
            return reports, int(total_row[0]) if total_row else 0

        return await self.db.run("event_reports", txn_fn)

    async def events_near(
        self, room_id: str, ts: int, forwards: bool, after: tuple[int, int] | None, limit: int
    ) -> list[tuple[str, int, int]]:
        """Accepted events of the room at or after (``forwards``) / at or before ``ts``,
        closest first, as (event_id, origin_server_ts, stream_ordering); ``after`` continues
        past the (origin_server_ts, stream_ordering) of the last one seen."""

        def txn_fn(txn: Txn) -> list[tuple[str, int, int]]:
            op, order = (">=", "ASC") if forwards else ("<=", "DESC")
            sql = (
                "SELECT n.event_id, e.origin_server_ts, e.stream_ordering FROM events e"
                " JOIN event_nids n ON n.event_nid = e.event_nid"
                f" WHERE e.room_id = ? AND e.origin_server_ts {op} ?"
                " AND e.rejected IS NULL AND e.soft_failed = ?"
            )
            args: list[Any] = [room_id, ts, False]
            if after is not None:
                strict = ">" if forwards else "<"
                sql += f" AND (e.origin_server_ts, e.stream_ordering) {strict} (?, ?)"
                args += [after[0], after[1]]
            sql += f" ORDER BY e.origin_server_ts {order}, e.stream_ordering {order} LIMIT ?"
            args.append(limit)
            return [(r[0], int(r[1]), int(r[2])) for r in txn.execute(sql, args).fetchall()]

        return await self.db.run("events_near_ts", txn_fn)
