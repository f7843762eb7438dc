"""Fixtures of the homeserver tests: federating servers on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted

from tests.support.databases import fresh_database
from tests.support.server import RunningServer, start_pair


@pytest.fixture
def pair_config() -> dict[str, Any]:
    """Config overrides for both servers of ``pair``; a test module overrides this fixture
    (e.g. a smaller body limit) rather than write its own pair."""
    return {}


@pytest_twisted.async_yield_fixture
async def pair(
    engine: str, tmp_path: Any, pair_config: dict[str, Any]
) -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    """a.test and b.test, federating over TLS on loopback, each on its own database."""
    with fresh_database(engine, str(tmp_path / "dba")) as db_a, \
            fresh_database(engine, str(tmp_path / "dbb")) as db_b:
        a, b = await start_pair(str(tmp_path), db_a, db_b, **pair_config)
        try:
            yield a, b
        finally:
            await a.stop()
            await b.stop()
