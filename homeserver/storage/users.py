"""The users table: local accounts."""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.storage.engine import Database, Txn


class UserExists(Exception):
    pass


@dataclass(frozen=True)
class User:
    user_id: str
    password_hash: str | None
    is_admin: bool
    is_guest: bool
    deactivated: bool
    created_ts: int


class UserStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(
        self, user_id: str, password_hash: str | None, *, admin: bool, created_ts: int
    ) -> None:
        await self.db.run("create_user", _create, user_id, password_hash, admin, created_ts)

    async def get(self, user_id: str) -> User | None:
        return await self.db.run("get_user", _get, user_id)


def _create(txn: Txn, user_id: str, password_hash: str | None, admin: bool, ts: int) -> None:
    if txn.execute("SELECT 1 FROM users WHERE user_id = ?", (user_id,)).fetchone():
        raise UserExists(user_id)
    txn.execute(
        "INSERT INTO users (user_id, password_hash, is_admin, created_ts) VALUES (?, ?, ?, ?)",
        (user_id, password_hash, admin, ts),
    )


def _get(txn: Txn, user_id: str) -> User | None:
    row = txn.execute(
        "SELECT user_id, password_hash, is_admin, is_guest, deactivated, created_ts"
        " FROM users WHERE user_id = ?",
        (user_id,),
    ).fetchone()
    if row is None:
        return None
    return User(row[0], row[1], bool(row[2]), bool(row[3]), bool(row[4]), int(row[5]))
