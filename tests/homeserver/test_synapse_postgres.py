"""Synapse on PostgreSQL (its own database with C collation, made and dropped by the
launcher): a room on our server joined from it, and messages both ways."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted

from tests.support.client import Client
from tests.support.databases import postgres_dsn, postgres_unavailable_reason
from tests.support.interop import (
    SQLITE_ONLY,
    call_ok,
    exchange_and_check,
    fresh,
    join,
    name_of,
    ours,
)
from tests.support.server import RunningServer
from tests.support.synapse import SynapseProcess, require_synapse

__all__ = ["ours"]


@pytest.fixture(scope="module")
def synapse_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SynapseProcess]:
    require_synapse()
    reason = postgres_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    s = SynapseProcess(str(tmp_path_factory.mktemp("synapse-pg")), postgres_dsn=postgres_dsn())
    s.start()
    try:
        yield s
    finally:
        s.stop()


def synapse_databases() -> list[Any]:
    import psycopg

    with psycopg.connect(postgres_dsn(), autocommit=True) as conn:
        return [r[0] for r in conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'synapse\\_%'").fetchall()]


@SQLITE_ONLY
@pytest_twisted.ensureDeferred
async def test_synapse_on_postgres_joins_our_room(
    ours: RunningServer, synapse_pg: SynapseProcess,
) -> None:
    assert synapse_pg._pg_database in synapse_databases()
    co, cs = Client(ours.client_url), Client(synapse_pg.client_url)
    alice = await co.register(fresh("alice"))
    bob = synapse_pg.register_user(fresh("bob"))
    room_id = (await call_ok(co, "POST", "/createRoom", alice, {"preset": "public_chat"}))[
        "room_id"]
    await join(cs, bob, room_id, name_of(ours))
    await exchange_and_check([(co, alice), (cs, bob)], room_id, [1, 0, 1])
