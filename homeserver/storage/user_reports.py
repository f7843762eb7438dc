"""Reports of users (user_reports): stored by POST /users/{userId}/report, listed for admins."""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.storage.engine import Database, Txn


@dataclass(frozen=True)
class UserReport:
    id: int
    received_ts: int
    target_user_id: str
    user_id: str
    reason: str


class UserReportStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add_report(self, *, now: int, target_user_id: str, user_id: str,
                         reason: str) -> int:
        def txn_fn(txn: Txn) -> int:
            row = txn.execute(
                "INSERT INTO user_reports (received_ts, target_user_id, user_id, reason)"
                " VALUES (?, ?, ?, ?) RETURNING id",
                (now, target_user_id, user_id, reason),
            ).fetchone()
            assert row is not None
            return int(row[0])

        return await self.db.run("add_user_report", txn_fn)

    async def reports(
        self, *, offset: int, limit: int, newest_first: bool, target_user_id: str | None,
        user_id: str | None,
    ) -> tuple[list[UserReport], int]:
        """A page of reports and the total matching."""

        def txn_fn(txn: Txn) -> tuple[list[UserReport], int]:
            where, args = [], []
            if target_user_id is not None:
                where.append("target_user_id = ?")
                args.append(target_user_id)
            if user_id is not None:
                where.append("user_id = ?")
                args.append(user_id)
            clause = (" WHERE " + " AND ".join(where)) if where else ""
            total = txn.execute("SELECT COUNT(*) FROM user_reports" + clause, args).fetchone()
            order = "DESC" if newest_first else "ASC"
            rows = txn.execute(
                "SELECT id, received_ts, target_user_id, user_id, reason FROM user_reports"
                f"{clause} ORDER BY received_ts {order}, id {order} LIMIT ? OFFSET ?",
                [*args, limit, offset],
            ).fetchall()
            found = [UserReport(int(r[0]), int(r[1]), r[2], r[3], r[4]) for r in rows]
            return found, int(total[0]) if total else 0

        return await self.db.run("user_reports", txn_fn)

    async def get_report(self, report_id: int) -> UserReport | None:
        def txn_fn(txn: Txn) -> UserReport | None:
            r = txn.execute(
                "SELECT id, received_ts, target_user_id, user_id, reason FROM user_reports"
                " WHERE id = ?", (report_id,)).fetchone()
            return UserReport(int(r[0]), int(r[1]), r[2], r[3], r[4]) if r else None

        return await self.db.run("get_user_report", txn_fn)

    async def delete_report(self, report_id: int) -> bool:
        def txn_fn(txn: Txn) -> bool:
            return txn.execute("DELETE FROM user_reports WHERE id = ? RETURNING id",
                               (report_id,)).fetchone() is not None

        return await self.db.run("delete_user_report", txn_fn)
