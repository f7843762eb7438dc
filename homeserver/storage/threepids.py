"""Third-party identifiers bound to accounts (``user_threepids``) and the sessions that
validate them (``threepid_sessions``, tokens stored as SHA-256 digests). Schema:
``0016_threepids.sql``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from homeserver.storage.engine import Database, Txn


class ThreepidInUse(Exception):
    """The address is bound to another account."""


@dataclass(frozen=True)
class Threepid:
    medium: str
    address: str
    user_id: str
    validated_at: int
    added_at: int


@dataclass(frozen=True)
class ThreepidSession:
    session_id: str
    medium: str
    address: str
    client_secret: str
    purpose: str
    token_hash: str
    send_attempt: int
    failed_attempts: int
    created_ts: int
    expires_ts: int
    validated_ts: int | None
    next_link: str | None = None


_SESSION_COLS = ("session_id, medium, address, client_secret, purpose, token_hash, send_attempt,"
                 " failed_attempts, created_ts, expires_ts, validated_ts, next_link")


def _session(row: Any) -> ThreepidSession | None:
    if row is None:
        return None
    return ThreepidSession(
        str(row[0]), str(row[1]), str(row[2]), str(row[3]), str(row[4]), str(row[5]),
        int(row[6]), int(row[7]), int(row[8]), int(row[9]),
        None if row[10] is None else int(row[10]), row[11],
    )


class ThreepidStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- validation sessions -------------------------------------------------------------------
    async def session(self, session_id: str) -> ThreepidSession | None:
        def txn_fn(txn: Txn) -> ThreepidSession | None:
            return _session(txn.execute(
                f"SELECT {_SESSION_COLS} FROM threepid_sessions WHERE session_id = ?",
                (session_id,)).fetchone())

        return await self.db.run("threepid_session", txn_fn)

    async def start_session(
        self, new: ThreepidSession
    ) -> tuple[ThreepidSession, bool]:
        """The session of (client_secret, medium, address, purpose): ``new`` when there was
        none, the existing one with ``new``'s token when ``new.send_attempt`` is higher, else
        the existing one untouched. The flag says whether a token should be sent."""

        def txn_fn(txn: Txn) -> tuple[ThreepidSession, bool]:
            key = (new.client_secret, new.medium, new.address, new.purpose)
            where = " WHERE client_secret = ? AND medium = ? AND address = ? AND purpose = ?"
            old = _session(txn.execute(
                f"SELECT {_SESSION_COLS} FROM threepid_sessions" + where, key).fetchone())
            if old is not None and old.expires_ts <= new.created_ts:
                txn.execute("DELETE FROM threepid_sessions WHERE session_id = ?",
                            (old.session_id,))
                old = None
            if old is None:
                txn.execute(
                    f"INSERT INTO threepid_sessions ({_SESSION_COLS})"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (new.session_id, new.medium, new.address, new.client_secret, new.purpose,
                     new.token_hash, new.send_attempt, 0, new.created_ts, new.expires_ts,
                     None, new.next_link))
                return new, True
            if new.send_attempt <= old.send_attempt:
                return old, False
            # A new attempt: a new token, the old one no longer works.
            txn.execute(
                "UPDATE threepid_sessions SET token_hash = ?, send_attempt = ?,"
                " failed_attempts = 0, expires_ts = ?, next_link = ? WHERE session_id = ?",
                (new.token_hash, new.send_attempt, new.expires_ts, new.next_link,
                 old.session_id))
            return ThreepidSession(
                old.session_id, old.medium, old.address, old.client_secret, old.purpose,
                new.token_hash, new.send_attempt, 0, old.created_ts, new.expires_ts,
                old.validated_ts, new.next_link,
            ), True

        return await self.db.run("threepid_start_session", txn_fn)

    async def record_failure(self, session_id: str) -> None:
        await self.db.run("threepid_session_failure", lambda t: t.execute(
            "UPDATE threepid_sessions SET failed_attempts = failed_attempts + 1"
            " WHERE session_id = ?", (session_id,)))

    async def mark_validated(self, session_id: str, ts: int) -> None:
        await self.db.run("threepid_session_validated", lambda t: t.execute(
            "UPDATE threepid_sessions SET validated_ts = COALESCE(validated_ts, ?)"
            " WHERE session_id = ?", (ts, session_id)))

    async def delete_session(self, session_id: str) -> None:
        await self.db.run("threepid_session_delete", lambda t: t.execute(
            "DELETE FROM threepid_sessions WHERE session_id = ?", (session_id,)))

    async def delete_expired(self, now: int) -> None:
        await self.db.run("threepid_sessions_expire", lambda t: t.execute(
            "DELETE FROM threepid_sessions WHERE expires_ts <= ?", (now,)))

    # -- bound addresses -----------------------------------------------------------------------
    async def user_for(self, medium: str, address: str) -> str | None:
        def txn_fn(txn: Txn) -> str | None:
            row = txn.execute(
                "SELECT user_id FROM user_threepids WHERE medium = ? AND address = ?",
                (medium, address)).fetchone()
            return str(row[0]) if row else None

        return await self.db.run("threepid_user_for", txn_fn)

    async def for_user(self, user_id: str) -> list[Threepid]:
        def txn_fn(txn: Txn) -> list[Threepid]:
            rows = txn.execute(
                "SELECT medium, address, user_id, validated_at, added_at FROM user_threepids"
                " WHERE user_id = ? ORDER BY added_at, address", (user_id,)).fetchall()
            return [Threepid(r[0], r[1], r[2], int(r[3]), int(r[4])) for r in rows]

        return await self.db.run("threepids_for_user", txn_fn)

    async def add(self, t: Threepid, consume_session: str | None = None) -> None:
        """Bind ``t`` (again, for its owner: a no-op), consuming the validation session in
        the same transaction; ThreepidInUse if another account has it."""

        def txn_fn(txn: Txn) -> None:
            row = txn.execute(
                "SELECT user_id FROM user_threepids WHERE medium = ? AND address = ?",
                (t.medium, t.address)).fetchone()
            if row is not None and row[0] != t.user_id:
                raise ThreepidInUse(t.address)
            if row is None:
                txn.execute(
                    "INSERT INTO user_threepids (medium, address, user_id, validated_at,"
                    " added_at) VALUES (?, ?, ?, ?, ?)",
                    (t.medium, t.address, t.user_id, t.validated_at, t.added_at))
            if consume_session is not None:
                txn.execute("DELETE FROM threepid_sessions WHERE session_id = ?",
                            (consume_session,))

        await self.db.run("threepid_add", txn_fn)

    async def remove(self, user_id: str, medium: str, address: str) -> bool:
        def txn_fn(txn: Txn) -> bool:
            txn.execute(
                "DELETE FROM user_threepids WHERE user_id = ? AND medium = ? AND address = ?",
                (user_id, medium, address))
            return txn.rowcount > 0

        return await self.db.run("threepid_remove", txn_fn)

    async def remove_user(self, user_id: str) -> None:
        await self.db.run("threepids_remove_user", lambda t: t.execute(
            "DELETE FROM user_threepids WHERE user_id = ?", (user_id,)))
