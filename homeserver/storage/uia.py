"""User-interactive auth sessions and registration tokens."""

from __future__ import annotations

import json
from dataclasses import dataclass

from homeserver.storage.engine import Database, Txn


@dataclass(frozen=True)
class UiaSession:
    session_id: str
    action: str
    user_id: str | None
    completed: list[str]
    created_ts: int


class UiaStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, session_id: str, action: str, user_id: str | None, now: int) -> None:
        await self.db.run(
            "uia_create",
            lambda txn: txn.execute(
                "INSERT INTO ui_auth_sessions (session_id, action, user_id, completed,"
                " created_ts) VALUES (?, ?, ?, ?, ?)",
                (session_id, action, user_id, "[]", now),
            ),
        )

    async def get(self, session_id: str) -> UiaSession | None:
        def txn_fn(txn: Txn) -> UiaSession | None:
            row = txn.execute(
                "SELECT session_id, action, user_id, completed, created_ts"
                " FROM ui_auth_sessions WHERE session_id = ?",
                (session_id,),
            ).fetchone()
            if row is None:
                return None
            return UiaSession(row[0], row[1], row[2], json.loads(row[3]), int(row[4]))

        return await self.db.run("uia_get", txn_fn)

    async def mark_completed(self, session_id: str, stage: str) -> list[str]:
        def txn_fn(txn: Txn) -> list[str]:
            row = txn.execute(
                "SELECT completed FROM ui_auth_sessions WHERE session_id = ?", (session_id,)
            ).fetchone()
            done: list[str] = json.loads(row[0]) if row else []
            if stage not in done:
                done.append(stage)
            txn.execute(
                "UPDATE ui_auth_sessions SET completed = ? WHERE session_id = ?",
                (json.dumps(done), session_id),
            )
            return done

        return await self.db.run("uia_complete", txn_fn)

    async def delete(self, session_id: str) -> None:
        await self.db.run(
            "uia_delete",
            lambda txn: txn.execute(
                "DELETE FROM ui_auth_sessions WHERE session_id = ?", (session_id,)
            ),
        )

    async def delete_older_than(self, ts: int) -> None:
        await self.db.run(
            "uia_expire",
            lambda txn: txn.execute("DELETE FROM ui_auth_sessions WHERE created_ts < ?", (ts,)),
        )


@dataclass(frozen=True)
class RegistrationToken:
    token: str
    uses_allowed: int | None
    pending: int
    completed: int
    expiry_time: int | None

    def usable(self, now: int) -> bool:
        if self.expiry_time is not None and self.expiry_time <= now:
            return False
        return self.uses_allowed is None or self.pending + self.completed < self.uses_allowed


class RegistrationTokenStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, token: str, uses_allowed: int | None, expiry_time: int | None) -> bool:
        def txn_fn(txn: Txn) -> bool:
            if txn.execute(
                "SELECT 1 FROM registration_tokens WHERE token = ?", (token,)
            ).fetchone():
                return False
            txn.execute(
                "INSERT INTO registration_tokens (token, uses_allowed, expiry_time)"
                " VALUES (?, ?, ?)",
                (token, uses_allowed, expiry_time),
            )
            return True

        return await self.db.run("regtoken_create", txn_fn)

    async def get(self, token: str) -> RegistrationToken | None:
        return await self.db.run("regtoken_get", _get_token, token)

    async def list(self) -> list[RegistrationToken]:
        def txn_fn(txn: Txn) -> list[RegistrationToken]:
            rows = txn.execute(
                "SELECT token, uses_allowed, pending, completed, expiry_time"
                " FROM registration_tokens ORDER BY token"
            ).fetchall()
            return [RegistrationToken(*r) for r in rows]

        return await self.db.run("regtoken_list", txn_fn)

    async def reserve(self, token: str, now: int) -> bool:
        """Hold one use of the token for a registration in progress, if one is left."""

        def txn_fn(txn: Txn) -> bool:
            found = _get_token(txn, token)
            if found is None or not found.usable(now):
                return False
            txn.execute(
                "UPDATE registration_tokens SET pending = pending + 1 WHERE token = ?", (token,)
            )
            return True

        return await self.db.run("regtoken_reserve", txn_fn)

    async def delete(self, token: str) -> bool:
        def txn_fn(txn: Txn) -> bool:
            txn.execute("DELETE FROM registration_tokens WHERE token = ?", (token,))
            return txn.rowcount > 0

        return await self.db.run("regtoken_delete", txn_fn)


def _get_token(txn: Txn, token: str) -> RegistrationToken | None:
    row = txn.execute(
        "SELECT token, uses_allowed, pending, completed, expiry_time"
        " FROM registration_tokens WHERE token = ?",
        (token,),
    ).fetchone()
    return RegistrationToken(*row) if row else None


async def release_registration_token(db: Database, token: str) -> None:
    """Give back a use held for a registration that did not complete."""
    await db.run(
        "regtoken_release",
        lambda txn: txn.execute(
            "UPDATE registration_tokens SET pending = pending - 1 WHERE token = ? AND pending > 0",
            (token,),
        ),
    )
