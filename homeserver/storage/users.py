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

    async def exists(self, user_id: str) -> bool:
        return await self.db.run("user_exists", _exists, user_id)

    async def create_with_device(
        self,
        user_id: str,
        password_hash: str | None,
        *,
        is_guest: bool,
        created_ts: int,
        registration_token: str | None = None,
    ) -> None:
        """Create the account; a registration token it used is counted in the same commit."""

        def txn_fn(txn: Txn) -> None:
            _create(txn, user_id, password_hash, False, created_ts)
            if is_guest:
                txn.execute("UPDATE users SET is_guest = ? WHERE user_id = ?", (True, user_id))
            if registration_token is not None:
                txn.execute(
                    "UPDATE registration_tokens SET pending = pending - 1,"
                    " completed = completed + 1 WHERE token = ?",
                    (registration_token,),
                )

        await self.db.run("create_user", txn_fn)

    async def set_password_hash(self, user_id: str, password_hash: str) -> None:
        await self.db.run(
            "set_password",
            lambda txn: txn.execute(
                "UPDATE users SET password_hash = ? WHERE user_id = ?", (password_hash, user_id)
            ),
        )

    async def set_admin(self, user_id: str, admin: bool) -> None:
        await self.db.run(
            "set_admin",
            lambda txn: txn.execute(
                "UPDATE users SET is_admin = ? WHERE user_id = ?", (admin, user_id)
            ),
        )

    async def deactivate(self, user_id: str) -> None:
        """Lock the account: no password, no devices, no tokens, an empty profile."""
        from homeserver.storage.devices import delete_devices_txn

        def txn_fn(txn: Txn) -> None:
            txn.execute(
                "UPDATE users SET deactivated = ?, password_hash = NULL WHERE user_id = ?",
                (True, user_id),
            )
            delete_devices_txn(txn, user_id, None)
            txn.execute("DELETE FROM profiles WHERE user_id = ?", (user_id,))

        await self.db.run("deactivate_user", txn_fn)

    async def count_guests(self) -> int:
        def txn_fn(txn: Txn) -> int:
            row = txn.execute("SELECT COUNT(*) FROM users WHERE is_guest = ?", (True,)).fetchone()
            return int(row[0]) if row else 0

        return await self.db.run("count_guests", txn_fn)


def _create(txn: Txn, user_id: str, password_hash: str | None, admin: bool, ts: int) -> None:
    if txn.execute("SELECT 1 FROM users WHERE user_id = ?", (user_id,)).fetchone():
        raise UserExists(user_id)
    txn.execute(
        "INSERT INTO users (user_id, password_hash, is_admin, created_ts) VALUES (?, ?, ?, ?)",
        (user_id, password_hash, admin, ts),
    )


def _exists(txn: Txn, user_id: str) -> bool:
    return txn.execute("SELECT 1 FROM users WHERE user_id = ?", (user_id,)).fetchone() is not None


def _get(txn: Txn, user_id: str) -> User | None:
    row = txn.execute(
        "SELECT user_id, password_hash, is_admin, is_guest, deactivated, created_ts"
        " FROM users WHERE user_id = ?",
        (user_id,),
    ).fetchone()
    if row is None:
        return None
    return User(row[0], row[1], bool(row[2]), bool(row[3]), bool(row[4]), int(row[5]))

