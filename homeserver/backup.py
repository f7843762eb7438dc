"""``homeserver backup``: a consistent copy of a server that may be running.

- SQLite: sqlite3's online backup API, the whole file in one step, so the copy is the database
  as of one instant even while the server writes (WAL lets the server go on meanwhile).
- PostgreSQL: ``pg_dump`` (custom format; one snapshot), the schema(s) named by the DSN's
  ``search_path`` option if it sets one, else the whole database. The password goes to
  pg_dump through the environment, never its command line.
- Then the signing key (and old ones), the TLS certificate and key, the config file, and the
  media store. Media files are copied after the database, so every file the database copy
  refers to is there (a file stored since is an extra, harmless).

docs/backup.md describes the restore for both engines."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import time
from typing import Any

from homeserver.config import Config


class BackupError(Exception):
    """The backup could not be made; the message says why and what to do."""


SQLITE_FILE = "homeserver.db"
PG_DUMP_FILE = "homeserver.pgdump"
MANIFEST = "backup.json"


def backup(config: Config, output: str, *, media: bool = True) -> dict[str, Any]:
    """Write the backup into ``output`` (new or empty; made private to this user) and return
    its manifest (also written as backup.json)."""
    _prepare(output)
    started = time.time()
    contents: list[str] = []
    if config.database.engine == "sqlite":
        _sqlite(config.database.target, os.path.join(output, SQLITE_FILE))
        contents.append(SQLITE_FILE)
    else:
        _pg_dump(config.database.target, os.path.join(output, PG_DUMP_FILE))
        contents.append(PG_DUMP_FILE)
    for name, path in (("signing.key", config.signing_key_path),
                       ("tls.crt", config.tls.certificate_path),
                       ("tls.key", config.tls.private_key_path),
                       ("homeserver.yaml", config.source_path)):
        if path and os.path.isfile(path):
            shutil.copy2(path, os.path.join(output, name))
            contents.append(name)
    if "signing.key" not in contents:
        raise BackupError(f"no signing key at {config.signing_key_path}: without it other "
                          "servers cannot trust the restored server's old events")
    if media and os.path.isdir(config.media.store_path):
        shutil.copytree(config.media.store_path, os.path.join(output, "media"))
        contents.append("media/")
    manifest = {
        "server_name": config.server_name,
        "engine": config.database.engine,
        "started_ts": int(started * 1000),
        "finished_ts": int(time.time() * 1000),
        "contents": contents,
        # Where each part came from, for the restore.
        "sources": {
            "database": config.database.target if config.database.engine == "sqlite"
            else _redacted_dsn(config.database.target),
            "signing_key_path": config.signing_key_path,
            "media_store_path": config.media.store_path,
        },
    }
    with open(os.path.join(output, MANIFEST), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
    return manifest


def _prepare(output: str) -> None:
    if os.path.exists(output):
        if not os.path.isdir(output) or os.listdir(output):
            raise BackupError(f"{output} exists and is not an empty directory")
    else:
        try:
            os.makedirs(output)
        except OSError as e:
            raise BackupError(f"cannot create {output}: {e.strerror}") from None
    # The backup holds the signing key and every message: this user's eyes only.
    os.chmod(output, 0o700)


def _sqlite(source: str, dest: str) -> None:
    if not os.path.isfile(source):
        raise BackupError(f"no SQLite database at {source}")
    src = sqlite3.connect(source, timeout=30)
    try:
        dst = sqlite3.connect(dest)
        try:
            # pages=-1: everything in one step, under one read transaction: one instant.
            src.backup(dst, pages=-1)
            (result,) = dst.execute("PRAGMA quick_check").fetchone()
            if result != "ok":
                raise BackupError(f"the copy failed its integrity check: {result}")
        finally:
            dst.close()
    except sqlite3.Error as e:
        raise BackupError(f"SQLite backup of {source} failed: {e}") from None
    finally:
        src.close()


# libpq connection parameters and the environment variables pg_dump reads them from.
_PG_ENV = {"host": "PGHOST", "hostaddr": "PGHOSTADDR", "port": "PGPORT", "user": "PGUSER",
           "password": "PGPASSWORD", "dbname": "PGDATABASE", "sslmode": "PGSSLMODE",
           "sslrootcert": "PGSSLROOTCERT", "sslcert": "PGSSLCERT", "sslkey": "PGSSLKEY",
           "connect_timeout": "PGCONNECT_TIMEOUT", "options": "PGOPTIONS",
           "passfile": "PGPASSFILE", "service": "PGSERVICE", "target_session_attrs":
           "PGTARGETSESSIONATTRS", "application_name": "PGAPPNAME"}


def search_path_schemas(options: str) -> list[str]:
    """The schemas a libpq ``options`` string's ``-c search_path=…`` names ($user left out)."""
    tokens = options.replace("-c ", "-c").split()
    for token in tokens:
        if token.startswith("-csearch_path="):
            names = token.split("=", 1)[1].split(",")
            return [n.strip().strip('"') for n in names
                    if n.strip() and n.strip() != '"$user"' and n.strip() != "$user"]
    return []


def pg_dump_command(dsn: str, dest: str) -> tuple[list[str], dict[str, str]]:
    """The pg_dump command line and the environment carrying the connection."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    except Exception as e:
        raise BackupError(f"database.url is not a DSN pg_dump can use: {e}") from None
    unknown = sorted(set(params) - set(_PG_ENV))
    if unknown:
        raise BackupError(f"database.url has parameters pg_dump cannot be given: {unknown}")
    env = {_PG_ENV[k]: v for k, v in params.items()}
    cmd = ["pg_dump", "--format=custom", "--file", dest]
    for schema in search_path_schemas(params.get("options", "")):
        cmd += ["--schema", schema]
    return cmd, env


def _pg_dump(dsn: str, dest: str) -> None:
    if shutil.which("pg_dump") is None:
        raise BackupError(
            "pg_dump is not on PATH: install PostgreSQL's client programs (the server's major "
            "version or newer), or back up with your own PostgreSQL tooling and copy the "
            "signing key and media as docs/backup.md describes"
        )
    cmd, env = pg_dump_command(dsn, dest)
    # PG* variables of our own environment must not redirect the dump elsewhere.
    base = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    result = subprocess.run(cmd, env={**base, **env}, capture_output=True, text=True)
    if result.returncode != 0:
        raise BackupError(f"pg_dump failed: {result.stderr.strip() or result.returncode}")


def _redacted_dsn(dsn: str) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        params = conninfo_to_dict(dsn)
    except Exception:
        return "(unparseable)"
    if "password" in params:
        params["password"] = "***"
    return make_conninfo("", **params)
