"""OpenID tokens: a digest, its user and its expiry (schema ``0012_openid.sql``)."""

from __future__ import annotations

from homeserver.storage.engine import Database, Txn


class OpenIdStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, token_hash: str, user_id: str, expires_ts: int, now_ms: int) -> None:
        def txn_fn(txn: Txn) -> None:
            # Expired tokens are swept as new ones are made.
            txn.execute("DELETE FROM openid_tokens WHERE expires_ts <= ?", (now_ms,))
            txn.execute(
                "INSERT INTO openid_tokens (token_hash, user_id, expires_ts) VALUES (?, ?, ?)",
                (token_hash, user_id, expires_ts),
            )

        await self.db.run("add_openid_token", txn_fn)

    async def user_for(self, token_hash: str, now_ms: int) -> str | None:
        def txn_fn(txn: Txn) -> str | None:
            row = txn.execute(
                "SELECT user_id FROM openid_tokens WHERE token_hash = ? AND expires_ts > ?",
                (token_hash, now_ms),
            ).fetchone()
            return str(row[0]) if row else None

        return await self.db.run("get_openid_token", txn_fn)
