"""Commands that work on the database directly, with or without the server running."""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import defer, task

from homeserver.config import Config
from homeserver.services.passwords import hash_password
from homeserver.storage import open_database
from homeserver.storage.schema import migrate
from homeserver.storage.users import UserExists, UserStore


def register_user_offline(
    config: Config, user_id: str, password: str, admin: bool, now: float
) -> int:
    result = [0]

    async def main(reactor: Any) -> None:
        db = open_database(config.database, reactor)
        try:
            await migrate(db)
            password_hash = await hash_password(password, config.bcrypt_rounds)
            await UserStore(db).create(user_id, password_hash, admin=admin,
                                       created_ts=int(now * 1000))
            print(f"registered {user_id}{' (admin)' if admin else ''}")
        except UserExists:
            print(f"homeserver: {user_id} is already taken", file=sys.stderr)
            result[0] = 1
        finally:
            await db.close()

    def run(reactor: Any) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(main(reactor))

    try:
        task.react(run)
    except SystemExit as e:
        if e.code not in (0, None):
            return int(e.code) if isinstance(e.code, int) else 1
    return result[0]
