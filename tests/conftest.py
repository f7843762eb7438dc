"""Shared fixtures. Every test that touches storage takes ``engine`` (directly or through
``db_config``/``hs``) and so runs once on SQLite and once on PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_twisted

from homeserver.config import DatabaseConfig
from tests.support.databases import (
    fresh_database,
    postgres_dsn,
    postgres_required,
    postgres_unavailable_reason,
)
from tests.support.server import RunningServer, start_server

ENGINES = ["sqlite", "postgres"]


def pytest_report_header(config: pytest.Config) -> list[str]:
    reason = postgres_unavailable_reason()
    if reason is None:
        return [f"storage engines: sqlite, postgres ({postgres_dsn()})"]
    return [f"storage engines: sqlite only -- {reason}"]


def pytest_sessionstart(session: pytest.Session) -> None:
    reason = postgres_unavailable_reason()
    if reason is not None and postgres_required():
        raise pytest.UsageError(
            f"{reason}; HS_TEST_REQUIRE_POSTGRES (or CI=true) requires it. "
            "Start PostgreSQL or set HS_TEST_REQUIRE_POSTGRES=0."
        )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    reason = postgres_unavailable_reason()
    if reason is not None:
        terminalreporter.write_line(
            f"NOTE: storage tests ran on SQLite only; the PostgreSQL runs were skipped. {reason}. "
            "Set HS_TEST_POSTGRES to a DSN to run them.",
            yellow=True,
        )


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    request.node.add_marker(pytest.mark.storage)
    if name == "postgres":
        reason = postgres_unavailable_reason()
        if reason is not None:
            pytest.skip(reason)
    return name


@pytest.fixture
def db_config(engine: str, tmp_path: object) -> Iterator[DatabaseConfig]:
    with fresh_database(engine, str(tmp_path)) as config:
        yield config



@pytest_twisted.async_yield_fixture
async def hs(db_config: DatabaseConfig, tmp_path: object) -> AsyncIterator[RunningServer]:
    """A running homeserver (in this process, real HTTP on loopback) on each engine."""
    server = await start_server(str(tmp_path), db_config)
    try:
        yield server
    finally:
        await server.stop()
