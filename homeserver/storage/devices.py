"""Devices and the tokens that belong to them: access, refresh and login tokens."""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.storage.e2ee import delete_device_keys_txn, note_device_list_change
from homeserver.storage.engine import Database, Txn


@dataclass(frozen=True)
class Device:
    user_id: str
    device_id: str
    display_name: str | None
    last_seen_ts: int | None
    last_seen_ip: str | None


@dataclass(frozen=True)
class TokenOwner:
    user_id: str
    device_id: str
    expires_ts: int | None
    is_guest: bool
    deactivated: bool


class DeviceStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def ensure_device(
        self, user_id: str, device_id: str, display_name: str | None, now: int
    ) -> None:
        await self.db.run("ensure_device", _ensure_device, user_id, device_id, display_name, now)

    async def add_login(
        self,
        user_id: str,
        device_id: str,
        display_name: str | None,
        access_hash: str,
        access_expires: int | None,
        refresh_hash: str | None,
        refresh_expires: int | None,
        now: int,
    ) -> None:
        """The device (made if new) and its new tokens, in one transaction."""

        def txn_fn(txn: Txn) -> None:
            _ensure_device(txn, user_id, device_id, display_name, now)
            txn.execute(
                "INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts,"
                " expires_ts) VALUES (?, ?, ?, ?, ?)",
                (access_hash, user_id, device_id, now, access_expires),
            )
            if refresh_hash is not None:
                txn.execute(
                    "INSERT INTO refresh_tokens (token_hash, user_id, device_id, created_ts,"
                    " expires_ts) VALUES (?, ?, ?, ?, ?)",
                    (refresh_hash, user_id, device_id, now, refresh_expires),
                )

        await self.db.run("add_login", txn_fn)

    async def token_owner(self, token_hash: str) -> TokenOwner | None:
        def txn_fn(txn: Txn) -> TokenOwner | None:
            row = txn.execute(
                "SELECT t.user_id, t.device_id, t.expires_ts, u.is_guest, u.deactivated"
                " FROM access_tokens t JOIN users u ON u.user_id = t.user_id"
                " WHERE t.token_hash = ?",
                (token_hash,),
            ).fetchone()
            if row is None:
                return None
            return TokenOwner(row[0], row[1], row[2], bool(row[3]), bool(row[4]))

        return await self.db.run("token_owner", txn_fn)

    async def rotate_refresh_token(
        self,
        old_refresh_hash: str,
        now: int,
        access_hash: str,
        access_expires: int | None,
        refresh_hash: str,
        refresh_expires: int | None,
    ) -> tuple[str, str] | None:
        """Swap a refresh token for a new access+refresh pair; None if unknown or expired."""

        def txn_fn(txn: Txn) -> tuple[str, str] | None:
            row = txn.execute(
                "SELECT user_id, device_id, expires_ts FROM refresh_tokens WHERE token_hash = ?",
                (old_refresh_hash,),
            ).fetchone()
            if row is None:
                return None
            user_id, device_id, expires = row
            txn.execute("DELETE FROM refresh_tokens WHERE token_hash = ?", (old_refresh_hash,))
            if expires is not None and expires <= now:
                return None
            txn.execute(
                "INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts,"
                " expires_ts) VALUES (?, ?, ?, ?, ?)",
                (access_hash, user_id, device_id, now, access_expires),
            )
            txn.execute(
                "INSERT INTO refresh_tokens (token_hash, user_id, device_id, created_ts,"
                " expires_ts) VALUES (?, ?, ?, ?, ?)",
                (refresh_hash, user_id, device_id, now, refresh_expires),
            )
            return user_id, device_id

        return await self.db.run("rotate_refresh_token", txn_fn)

    async def get_devices(self, user_id: str) -> list[Device]:
        def txn_fn(txn: Txn) -> list[Device]:
            rows = txn.execute(
                "SELECT user_id, device_id, display_name, last_seen_ts, last_seen_ip"
                " FROM devices WHERE user_id = ? ORDER BY device_id",
                (user_id,),
            ).fetchall()
            return [Device(*r) for r in rows]

        return await self.db.run("get_devices", txn_fn)

    async def get_device(self, user_id: str, device_id: str) -> Device | None:
        def txn_fn(txn: Txn) -> Device | None:
            row = txn.execute(
                "SELECT user_id, device_id, display_name, last_seen_ts, last_seen_ip"
                " FROM devices WHERE user_id = ? AND device_id = ?",
                (user_id, device_id),
            ).fetchone()
            return Device(*row) if row else None

        return await self.db.run("get_device", txn_fn)

    async def set_display_name(self, user_id: str, device_id: str, name: str | None) -> bool:
        """Rename a device; False when there is no such device. A device with published keys
        goes on the device_lists stream: /keys/query shows its name to others
        (``unsigned.device_display_name``), so their clients and servers re-query."""

        def txn_fn(txn: Txn) -> bool:
            row = txn.execute(
                "SELECT display_name FROM devices WHERE user_id = ? AND device_id = ?",
                (user_id, device_id),
            ).fetchone()
            if row is None:
                return False
            if row[0] == name:
                return True
            txn.execute(
                "UPDATE devices SET display_name = ? WHERE user_id = ? AND device_id = ?",
                (name, user_id, device_id),
            )
            if txn.execute(
                "SELECT 1 FROM e2e_device_keys WHERE user_id = ? AND device_id = ?",
                (user_id, device_id),
            ).fetchone():
                note_device_list_change(txn, [user_id])
            return True

        return await self.db.run("set_device_name", txn_fn)

    async def record_seen(self, user_id: str, device_id: str, ip: str, now: int) -> None:
        def txn_fn(txn: Txn) -> None:
            txn.execute(
                "UPDATE devices SET last_seen_ts = ?, last_seen_ip = ?"
                " WHERE user_id = ? AND device_id = ?",
                (now, ip, user_id, device_id),
            )

        await self.db.run("record_seen", txn_fn)

    async def delete_devices(self, user_id: str, device_ids: list[str] | None) -> None:
        """Delete devices with all their tokens; ``None`` deletes every device of the user."""
        await self.db.run("delete_devices", delete_devices_txn, user_id, device_ids)

    async def delete_access_token(self, token_hash: str) -> None:
        await self.db.run(
            "delete_access_token",
            lambda txn: txn.execute("DELETE FROM access_tokens WHERE token_hash = ?",
                                    (token_hash,)),
        )

    async def add_login_token(self, token_hash: str, user_id: str, expires_ts: int) -> None:
        await self.db.run(
            "add_login_token",
            lambda txn: txn.execute(
                "INSERT INTO login_tokens (token_hash, user_id, expires_ts) VALUES (?, ?, ?)",
                (token_hash, user_id, expires_ts),
            ),
        )

    async def consume_login_token(self, token_hash: str, now: int) -> str | None:
        """The user of a valid login token, which is then gone: each works once."""

        def txn_fn(txn: Txn) -> str | None:
            row = txn.execute(
                "SELECT user_id, expires_ts FROM login_tokens WHERE token_hash = ?",
                (token_hash,),
            ).fetchone()
            if row is None:
                return None
            txn.execute("DELETE FROM login_tokens WHERE token_hash = ?", (token_hash,))
            return str(row[0]) if int(row[1]) > now else None

        return await self.db.run("consume_login_token", txn_fn)


def _ensure_device(
    txn: Txn, user_id: str, device_id: str, display_name: str | None, now: int
) -> None:
    exists = txn.execute(
        "SELECT 1 FROM devices WHERE user_id = ? AND device_id = ?", (user_id, device_id)
    ).fetchone()
    if exists:
        if display_name is not None:
            txn.execute(
                "UPDATE devices SET display_name = ? WHERE user_id = ? AND device_id = ?",
                (display_name, user_id, device_id),
            )
        return
    txn.execute(
        "INSERT INTO devices (user_id, device_id, display_name, created_ts) VALUES (?, ?, ?, ?)",
        (user_id, device_id, display_name, now),
    )


def delete_devices_txn(txn: Txn, user_id: str, device_ids: list[str] | None) -> None:
    delete_device_keys_txn(txn, user_id, device_ids)
    for table in ("access_tokens", "refresh_tokens", "devices"):
        if device_ids is None:
            txn.execute(f"DELETE FROM {table} WHERE user_id = ?", (user_id,))
        else:
            txn.executemany(
                f"DELETE FROM {table} WHERE user_id = ? AND device_id = ?",
                [(user_id, d) for d in device_ids],
            )
