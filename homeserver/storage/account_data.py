"""Per-user account data, global (room_id '') and per room, on the account_data stream."""

from __future__ import annotations

import json
from typing import Any

from homeserver.storage import streams
from homeserver.storage.engine import Database, Txn


class AccountDataStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def put(self, user_id: str, room_id: str, data_type: str, content: Any) -> int:
        encoded = json.dumps(content, ensure_ascii=False)

        def txn_fn(txn: Txn) -> int:
            position = streams.advance(txn, "account_data")
            txn.execute(
                "DELETE FROM account_data WHERE user_id = ? AND room_id = ? AND data_type = ?",
                (user_id, room_id, data_type),
            )
            txn.execute(
                "INSERT INTO account_data (user_id, room_id, data_type, content, stream_id)"
                " VALUES (?, ?, ?, ?, ?)",
                (user_id, room_id, data_type, encoded, position),
            )
            txn.note("account_data", position, users=[user_id])
            return position

        return await self.db.run("put_account_data", txn_fn)

    async def get(self, user_id: str, room_id: str, data_type: str) -> Any | None:
        def txn_fn(txn: Txn) -> Any | None:
            row = txn.execute(
                "SELECT content FROM account_data"
                " WHERE user_id = ? AND room_id = ? AND data_type = ?",
                (user_id, room_id, data_type),
            ).fetchone()
            return json.loads(row[0]) if row else None

        return await self.db.run("get_account_data", txn_fn)

    async def changed_since(
        self, user_id: str, since: int
    ) -> list[tuple[str, str, Any]]:
        """(room_id, type, content) changed after stream position ``since``, oldest first."""

        def txn_fn(txn: Txn) -> list[tuple[str, str, Any]]:
            rows = txn.execute(
                "SELECT room_id, data_type, content FROM account_data"
                " WHERE user_id = ? AND stream_id > ? ORDER BY stream_id",
                (user_id, since),
            ).fetchall()
            return [(r[0], r[1], json.loads(r[2])) for r in rows]

        return await self.db.run("account_data_since", txn_fn)
