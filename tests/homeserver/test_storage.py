"""The storage engines behind one interface, and the schema migrations, on both engines."""

from __future__ import annotations

import time

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from homeserver.config import DatabaseConfig
from homeserver.storage import Database, Txn, open_database
from homeserver.storage.schema import SchemaTooNew, latest_version, load_migrations, migrate
from homeserver.storage.users import UserExists, UserStore


async def _open(db_config: DatabaseConfig) -> Database:
    return open_database(db_config, reactor)


def _tables(txn: Txn) -> set[str]:
    if txn.engine == "sqlite":
        rows = txn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    else:
        rows = txn.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = current_schema()"
        ).fetchall()
    return {r[0] for r in rows}


@pytest_twisted.ensureDeferred
async def test_migrations_from_empty_then_rerun_is_a_noop(db_config: DatabaseConfig) -> None:
    db = await _open(db_config)
    try:
        assert await db.run("tables", _tables) == set()
        version = await migrate(db)
        assert version == latest_version(db.engine) >= 1
        tables = await db.run("tables", _tables)
        assert {"schema_version", "users"} <= tables
        await UserStore(db).create("@a:ex.org", None, admin=False, created_ts=1)
        # Running again changes nothing and keeps the data.
        assert await migrate(db) == version
        assert await db.run("tables", _tables) == tables
        user = await UserStore(db).get("@a:ex.org")
        assert user is not None and user.created_ts == 1
    finally:
        await db.close()


@pytest_twisted.ensureDeferred
async def test_refuses_a_database_newer_than_the_code(db_config: DatabaseConfig) -> None:
    db = await _open(db_config)
    try:
        await migrate(db)
        await db.run("bump", lambda txn: txn.execute("UPDATE schema_version SET version = 9999"))
        with pytest.raises(SchemaTooNew, match="version 9999"):
            await migrate(db)
    finally:
        await db.close()


@pytest_twisted.ensureDeferred
async def test_transaction_rolls_back_on_error(db_config: DatabaseConfig) -> None:
    db = await _open(db_config)
    try:
        await migrate(db)

        def insert_then_fail(txn: Txn) -> None:
            txn.execute(
                "INSERT INTO users (user_id, created_ts) VALUES (?, ?)", ("@x:ex.org", 1)
            )
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            await db.run("fail", insert_then_fail)
        assert await UserStore(db).get("@x:ex.org") is None
        store = UserStore(db)
        await store.create("@y:ex.org", "hash", admin=True, created_ts=5)
        with pytest.raises(UserExists):
            await store.create("@y:ex.org", "hash", admin=False, created_ts=6)
        user = await store.get("@y:ex.org")
        assert user is not None and user.is_admin and user.password_hash == "hash"
    finally:
        await db.close()


@pytest_twisted.ensureDeferred
async def test_queries_do_not_block_the_reactor(db_config: DatabaseConfig) -> None:
    db = await _open(db_config)
    try:
        ticks: list[float] = []
        loop = task.LoopingCall(lambda: ticks.append(time.monotonic()))
        loop.start(0.01)

        def slow(txn: Txn) -> int:
            time.sleep(0.3)  # stands in for a slow query
            row = txn.execute("SELECT 1").fetchone()
            assert row is not None
            return int(row[0])

        assert await db.run("slow", slow) == 1
        loop.stop()
        # The reactor kept ticking while the query ran in a worker thread.
        assert len(ticks) >= 10
    finally:
        await db.close()


@pytest_twisted.ensureDeferred
async def test_closed_database_refuses_work(db_config: DatabaseConfig) -> None:
    from homeserver.storage import DatabaseUnavailable

    db = await _open(db_config)
    await db.close()
    with pytest.raises(DatabaseUnavailable):
        await db.run("after close", lambda txn: None)


def test_migration_files_are_numbered_without_gaps() -> None:
    for engine in ("sqlite", "postgres"):
        migrations = load_migrations(engine)
        assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
        assert all(m.sql.strip() for m in migrations)
