"""Presence of local users on the 'presence' stream: one row per user, rewritten (with a new
stream position) on every change that clients should hear about."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from homeserver.storage import streams
from homeserver.storage.engine import Database, Txn
from homeserver.storage.sql import chunks, marks
from homeserver.storage.state import joined_rooms_txn

PRESENCE_STREAM = "presence"

@dataclass(frozen=True)
class PresenceRow:
    user_id: str
    state: str  # online, unavailable, offline
    status_msg: str | None
    last_active_ts: int
    last_user_sync_ts: int
    currently_active: bool
    stream_id: int = 0


_COLUMNS = (
    "user_id, state, status_msg, last_active_ts, last_user_sync_ts, currently_active, stream_id"
)


def _row(r: Sequence[Any]) -> PresenceRow:
    return PresenceRow(r[0], r[1], r[2], int(r[3]), int(r[4]), bool(r[5]), int(r[6]))


class PresenceStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def put(self, row: PresenceRow) -> int:
        """Store the user's presence at a new stream position; everyone sharing a room with
        them is woken once it commits."""

        def txn_fn(txn: Txn) -> int:
            position = streams.advance(txn, PRESENCE_STREAM)
            txn.execute(
                f"INSERT INTO presence ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (user_id) DO UPDATE SET state = excluded.state,"
                " status_msg = excluded.status_msg, last_active_ts = excluded.last_active_ts,"
                " last_user_sync_ts = excluded.last_user_sync_ts,"
                " currently_active = excluded.currently_active, stream_id = excluded.stream_id",
                (row.user_id, row.state, row.status_msg, row.last_active_ts,
                 row.last_user_sync_ts, row.currently_active, position),
            )
            txn.note(PRESENCE_STREAM, position, users=[row.user_id],
                     rooms=joined_rooms_txn(txn, [row.user_id]))
            return position

        return await self.db.run("put_presence", txn_fn)

    async def get(self, user_ids: Sequence[str]) -> dict[str, PresenceRow]:
        def txn_fn(txn: Txn) -> dict[str, PresenceRow]:
            out: dict[str, PresenceRow] = {}
            for chunk in chunks(user_ids):
                rows = txn.execute(
                    f"SELECT {_COLUMNS} FROM presence"
                    f" WHERE user_id IN ({marks(len(chunk))})",
                    chunk,
                ).fetchall()
                out.update({r[0]: _row(r) for r in rows})
            return out

        if not user_ids:
            return {}
        return await self.db.run("get_presence", txn_fn)

    async def changed(self, since: int, to: int) -> list[PresenceRow]:
        """Rows written after ``since`` up to ``to``, oldest first."""

        def txn_fn(txn: Txn) -> list[PresenceRow]:
            rows = txn.execute(
                f"SELECT {_COLUMNS} FROM presence WHERE stream_id > ? AND stream_id <= ?"
                " ORDER BY stream_id",
                (since, to),
            ).fetchall()
            return [_row(r) for r in rows]

        return await self.db.run("presence_changed", txn_fn)

    async def not_offline(self) -> list[PresenceRow]:
        """Users stored as online or unavailable (their timers restart with the server)."""

        def txn_fn(txn: Txn) -> list[PresenceRow]:
            rows = txn.execute(
                f"SELECT {_COLUMNS} FROM presence WHERE state <> ?", ("offline",)
            ).fetchall()
            return [_row(r) for r in rows]

        return await self.db.run("presence_not_offline", txn_fn)
