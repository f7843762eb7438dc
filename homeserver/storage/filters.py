"""Sync filters a user uploaded; IDs count up per user."""

from __future__ import annotations

import json
from typing import Any

from homeserver.storage.engine import Database, Txn


class FilterStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, user_id: str, filter_json: dict[str, Any]) -> int:
        encoded = json.dumps(filter_json, ensure_ascii=False, sort_keys=True)

        def txn_fn(txn: Txn) -> int:
            # The same filter uploaded twice gets the same ID (clients re-upload on start).
            row = txn.execute(
                "SELECT filter_id FROM filters WHERE user_id = ? AND filter_json = ?",
                (user_id, encoded),
            ).fetchone()
            if row:
                return int(row[0])
            row = txn.execute(
                "SELECT COALESCE(MAX(filter_id), -1) + 1 FROM filters WHERE user_id = ?",
                (user_id,),
            ).fetchone()
            filter_id = int(row[0]) if row else 0
            txn.execute(
                "INSERT INTO filters (user_id, filter_id, filter_json) VALUES (?, ?, ?)",
                (user_id, filter_id, encoded),
            )
            return filter_id

        return await self.db.run("add_filter", txn_fn)

    async def get(self, user_id: str, filter_id: int) -> dict[str, Any] | None:
        def txn_fn(txn: Txn) -> dict[str, Any] | None:
            row = txn.execute(
                "SELECT filter_json FROM filters WHERE user_id = ? AND filter_id = ?",
                (user_id, filter_id),
            ).fetchone()
            return json.loads(row[0]) if row else None

        return await self.db.run("get_filter", txn_fn)
