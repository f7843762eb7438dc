"""The services of a homeserver without its HTTP layer, on a fresh database: for tests of the
event pipeline, state storage and the room service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from twisted.internet import reactor

from federation.keys import generate_signing_key
from homeserver.config import DatabaseConfig, parse_config
from homeserver.services.registry import Services, build_services
from homeserver.storage import Txn, open_database
from homeserver.storage.schema import migrate
from tests.support.server import make_config_dict

SERVER = "test.local"


def user(name: str) -> str:
    return f"@{name}:{SERVER}"


@asynccontextmanager
async def services(
    db_config: DatabaseConfig, data_dir: str, **overrides: Any
) -> AsyncIterator[Services]:
    config = parse_config(make_config_dict(data_dir, db_config, server_name=SERVER, **overrides))
    db = open_database(db_config, reactor)
    try:
        await migrate(db)
        yield build_services(config, db, reactor=reactor, signing_key=generate_signing_key())
    finally:
        await db.close()


async def count(s: Services, table: str, where: str = "", params: tuple[Any, ...] = ()) -> int:
    def txn_fn(txn: Txn) -> int:
        row = txn.execute(
            f"SELECT COUNT(*) FROM {table}" + (f" WHERE {where}" if where else ""), params
        ).fetchone()
        return int(row[0]) if row else 0

    return await s.db.run("count", txn_fn)
