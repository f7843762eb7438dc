"""Test databases: a fresh SQLite file, or a fresh PostgreSQL schema, per test.

PostgreSQL is found at $HS_TEST_POSTGRES (a DSN), else the local default. When it cannot be
reached the PostgreSQL variants are skipped with the reason, unless $HS_TEST_REQUIRE_POSTGRES
(set by default when CI=true) makes that an error.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from urllib.parse import quote

from homeserver.config import DatabaseConfig

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def postgres_dsn() -> str:
    return os.environ.get("HS_TEST_POSTGRES") or DEFAULT_DSN


def postgres_required() -> bool:
    flag = os.environ.get("HS_TEST_REQUIRE_POSTGRES")
    if flag is not None:
        return flag not in ("", "0", "false")
    return os.environ.get("CI") == "true"


@cache
def postgres_unavailable_reason() -> str | None:
    """None when PostgreSQL answers; otherwise why not, for the skip message."""
    import psycopg

    try:
        with psycopg.connect(postgres_dsn(), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"PostgreSQL not reachable at {postgres_dsn()}: {first_line}"
    return None


def _with_search_path(dsn: str, schema: str) -> str:
    sep = "&" if "?" in dsn else "?"
    return f"{dsn}{sep}options={quote(f'-csearch_path={schema}')}"


@contextmanager
def fresh_database(engine: str, tmp_dir: str) -> Iterator[DatabaseConfig]:
    if engine == "sqlite":
        path = os.path.join(tmp_dir, "homeserver.db")
        yield DatabaseConfig(url=f"sqlite://{path}", engine="sqlite", target=path)
        return
    import psycopg

    schema = f"hs_test_{secrets.token_hex(6)}"
    with psycopg.connect(postgres_dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    dsn = _with_search_path(postgres_dsn(), schema)
    try:
        yield DatabaseConfig(url=dsn, engine="postgres", target=dsn, pool_min=1, pool_max=4)
    finally:
        with psycopg.connect(postgres_dsn(), autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
