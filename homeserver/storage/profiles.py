"""Profile fields (displayname, avatar_url, m.tz and custom fields), stored as JSON values."""

from __future__ import annotations

import json
from typing import Any

from homeserver.storage.engine import Database, Txn


class ProfileStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get_profile(self, user_id: str) -> dict[str, Any]:
        def txn_fn(txn: Txn) -> dict[str, Any]:
            rows = txn.execute(
                "SELECT field, value FROM profiles WHERE user_id = ?", (user_id,)
            ).fetchall()
            return {r[0]: json.loads(r[1]) for r in rows}

        return await self.db.run("get_profile", txn_fn)

    async def set_field(self, user_id: str, field: str, value: Any, max_total: int) -> bool:
        """Set one field unless the whole profile would then exceed ``max_total`` bytes."""
        encoded = json.dumps(value, ensure_ascii=False)

        def txn_fn(txn: Txn) -> bool:
            rows = txn.execute(
                "SELECT field, value FROM profiles WHERE user_id = ?", (user_id,)
            ).fetchall()
            profile = {r[0]: json.loads(r[1]) for r in rows}
            profile[field] = value
            size = len(json.dumps(profile, ensure_ascii=False).encode("utf-8"))
            if size > max_total:
                return False
            txn.execute(
                "DELETE FROM profiles WHERE user_id = ? AND field = ?", (user_id, field)
            )
            txn.execute(
                "INSERT INTO profiles (user_id, field, value) VALUES (?, ?, ?)",
                (user_id, field, encoded),
            )
            return True

        return await self.db.run("set_profile_field", txn_fn)

    async def delete_field(self, user_id: str, field: str) -> None:
        await self.db.run(
            "delete_profile_field",
            lambda txn: txn.execute(
                "DELETE FROM profiles WHERE user_id = ? AND field = ?", (user_id, field)
            ),
        )
