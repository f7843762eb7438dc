"""Versioned schema migrations, applied at start in one transaction.

Files in ``migrations/`` are named ``NNNN_description.sql``; an engine that needs different SQL
ships ``NNNN_description.sqlite.sql`` or ``NNNN_description.postgres.sql`` beside it, which then
replaces the common file for that engine. A database whose version is newer than the newest
file was written by newer code: the server refuses to start rather than corrupt it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

from homeserver.storage.engine import Database, Txn

logger = logging.getLogger(__name__)
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+?)(?:\.(sqlite|postgres))?\.sql$")


class SchemaTooNew(Exception):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(engine: str) -> list[Migration]:
    chosen: dict[int, tuple[bool, str, str]] = {}
    for entry in resources.files("homeserver.storage.migrations").iterdir():
        m = _NAME.match(entry.name)
        if not m:
            continue
        version, name, only = int(m.group(1)), m.group(2), m.group(3)
        if only is not None and only != engine:
            continue
        specific = only is not None
        current = chosen.get(version)
        if current is not None and current[1] != name:
            raise RuntimeError(f"two migrations numbered {version}: {current[1]} and {name}")
        if current is None or specific:
            chosen[version] = (specific, name, entry.read_text(encoding="utf-8"))
    versions = sorted(chosen)
    if versions != list(range(1, len(versions) + 1)):
        raise RuntimeError(f"migration numbers must run 1..N without gaps, got {versions}")
    return [Migration(v, chosen[v][1], chosen[v][2]) for v in versions]


def split_statements(sql: str) -> list[str]:
    """Split a migration file on statement-ending semicolons (our DDL has none inside)."""
    lines = [ln for ln in sql.splitlines() if not ln.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def latest_version(engine: str) -> int:
    return len(load_migrations(engine))


async def migrate(db: Database) -> int:
    """Bring the schema up to date; returns the version now in force."""
    migrations = load_migrations(db.engine)
    return await db.run("migrate", _migrate_txn, migrations)


def _migrate_txn(txn: Txn, migrations: list[Migration]) -> int:
    if txn.engine == "postgres":
        # Several processes may start at once against one database: one migrates, others wait.
        txn.execute("SELECT pg_advisory_xact_lock(74737273)")
    txn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        " lock CHAR(1) NOT NULL DEFAULT 'X' UNIQUE CHECK (lock = 'X'),"
        " version INTEGER NOT NULL)"
    )
    row = txn.execute("SELECT version FROM schema_version").fetchone()
    current = int(row[0]) if row else 0
    latest = len(migrations)
    if current > latest:
        raise SchemaTooNew(
            f"the database schema is version {current} but this server knows only up to "
            f"{latest}: it was used by a newer version; upgrade the server instead"
        )
    for m in migrations[current:]:
        logger.info("applying schema migration %04d_%s", m.version, m.name)
        for statement in split_statements(m.sql):
            txn.execute(statement)
    if row is None:
        txn.execute("INSERT INTO schema_version (version) VALUES (?)", (latest,))
    elif current != latest:
        txn.execute("UPDATE schema_version SET version = ?", (latest,))
    return latest
