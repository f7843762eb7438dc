"""homeserver backup: back up a running server while it takes messages, stop it, lose its data
(a new data dir; for PostgreSQL its schema dropped), restore by the steps of docs/backup.md,
start the restored server and find the user, the messages and the media; the same signing
key."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import pytest_twisted
import yaml
from twisted.internet import reactor, threads

from homeserver.app import HomeServer
from homeserver.backup import pg_dump_command, search_path_schemas
from homeserver.config import DatabaseConfig, load_config
from tests.support.client import Client
from tests.support.databases import postgres_dsn
from tests.support.http import request
from tests.support.media import MediaClient, png
from tests.support.process import cli
from tests.support.server import make_config_dict
from tests.support.sync import create_room, send

pytestmark = pytest.mark.slow


def write_config(path: str, data_dir: str, db: DatabaseConfig) -> str:
    with open(path, "w") as f:
        yaml.safe_dump(make_config_dict(data_dir, db), f)
    return path


async def start(config_path: str) -> tuple[HomeServer, str, str]:
    hs = HomeServer(load_config(config_path), reactor)
    try:
        await hs.start()
    except BaseException:
        await hs.shutdown()
        raise
    urls = [f"{'https' if lst.tls else 'http'}://{lst.bind}:{p.getHost().port}"
            for lst, p in zip(hs.config.listeners, hs.ports, strict=True)]
    return hs, urls[0], urls[1]


async def server_key(federation_url: str) -> dict[str, Any]:
    r = await request("GET", f"{federation_url}/_matrix/key/v2/server")
    assert r.status == 200
    keys: dict[str, Any] = r.json()["verify_keys"]
    return keys


def restore(backup_dir: str, data_dir: str, db: DatabaseConfig, config_path: str) -> str:
    """docs/backup.md's restore steps."""
    os.makedirs(data_dir)
    if db.engine == "sqlite":
        shutil.copy(os.path.join(backup_dir, "homeserver.db"),
                    os.path.join(data_dir, "homeserver.db"))
        db = DatabaseConfig(f"sqlite://{data_dir}/homeserver.db", "sqlite",
                            f"{data_dir}/homeserver.db")
    else:
        # The server's schema is lost; the dump of that schema brings it back, and the
        # restored server uses the same DSN.
        import psycopg

        schema = search_path_schemas(parse_qs(urlsplit(db.url).query)["options"][0])[0]
        with psycopg.connect(postgres_dsn(), autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
        subprocess.run(["pg_restore", "--no-owner", "--exit-on-error", "--dbname",
                        postgres_dsn(), os.path.join(backup_dir, "homeserver.pgdump")],
                       check=True, capture_output=True, timeout=120)
    shutil.copy(os.path.join(backup_dir, "signing.key"), os.path.join(data_dir, "signing.key"))
    shutil.copytree(os.path.join(backup_dir, "media"), os.path.join(data_dir, "media"))
    return write_config(config_path, data_dir, db)


@pytest_twisted.ensureDeferred
async def test_backup_of_a_running_server_restores(
    db_config: DatabaseConfig, tmp_path: Any,
) -> None:
    tmp = str(tmp_path)
    config_path = write_config(f"{tmp}/hs.yaml", f"{tmp}/data", db_config)
    hs, client_url, federation_url = await start(config_path)
    try:
        c = Client(client_url)
        alice = await c.register("alice", "alice-password")
        room = await create_room(c, alice, name="kept")
        for i in range(5):
            await send(c, alice, room, f"before {i}")
        up = await MediaClient(client_url).upload(png(8, 8), alice.access_token, "image/png")
        assert up.status == 200, up.body
        mxc = up.json()["content_uri"]
        key = await server_key(federation_url)

        # The backup runs in another process while this server takes more messages.
        backup_dir = f"{tmp}/backup"
        done = threads.deferToThread(cli, "backup", "--config", config_path,
                                     "--output", backup_dir, check=False, timeout=120)
        during = 0
        while not done.called:
            await send(c, alice, room, f"during {during}")
            during += 1
        result = await done
        assert result.returncode == 0, result.stderr
        assert during > 0
        await send(c, alice, room, "after")
    finally:
        await hs.shutdown()
    expected = {"backup.json", "signing.key", "homeserver.yaml", "media",
                "homeserver.db" if db_config.engine == "sqlite" else "homeserver.pgdump"}
    assert expected <= set(os.listdir(backup_dir))
    assert os.stat(backup_dir).st_mode & 0o077 == 0

    restored_path = restore(backup_dir, f"{tmp}/restored", db_config, f"{tmp}/restored.yaml")
    hs2, client_url2, federation_url2 = await start(restored_path)
    try:
        c2 = Client(client_url2)
        r = await c2.login("alice", "alice-password")
        assert r.status == 200, r.body
        token = r.json()["access_token"]
        r = await c2.call("GET", f"/rooms/{quote(room, safe='')}/messages?dir=b&limit=200",
                          token=token)
        assert r.status == 200, r.body
        bodies = [e["content"]["body"] for e in r.json()["chunk"]
                  if e["type"] == "m.room.message"]
        assert {f"before {i}" for i in range(5)} <= set(bodies)
        assert "after" not in bodies
        # One instant: the messages sent during the backup that made it are a prefix.
        got = sorted(int(b.split()[1]) for b in bodies if b.startswith("during "))
        assert got == list(range(len(got)))
        media = await MediaClient(client_url2).download(mxc, token)
        assert media.status == 200 and media.body == png(8, 8)
        assert await server_key(federation_url2) == key
    finally:
        await hs2.shutdown()


def test_backup_refuses_and_explains(tmp_path: Any, engine: str,
                                     db_config: DatabaseConfig) -> None:
    config_path = write_config(str(tmp_path / "hs.yaml"), str(tmp_path / "data"), db_config)
    os.makedirs(tmp_path / "full")
    (tmp_path / "full" / "x").write_text("x")
    result = cli("backup", "--config", config_path, "--output", str(tmp_path / "full"),
                 check=False)
    assert result.returncode == 1 and "not an empty directory" in result.stderr
    if engine == "postgres":
        result = cli("backup", "--config", config_path, "--output", str(tmp_path / "b"),
                     check=False, env={"PATH": "/nonexistent"})
        assert result.returncode == 1 and "pg_dump is not on PATH" in result.stderr


def test_pg_dump_gets_the_connection_through_its_environment() -> None:
    cmd, env = pg_dump_command(
        "postgresql://hs:s3cret@db.internal:5433/matrix?options=-csearch_path%3Dbrand_a",
        "/b/homeserver.pgdump")
    assert cmd == ["pg_dump", "--format=custom", "--file", "/b/homeserver.pgdump",
                   "--schema", "brand_a"]
    assert "s3cret" not in " ".join(cmd)
    assert env == {"PGUSER": "hs", "PGPASSWORD": "s3cret", "PGHOST": "db.internal",
                   "PGPORT": "5433", "PGDATABASE": "matrix", "PGOPTIONS": "-csearch_path=brand_a"}
    assert search_path_schemas('-c search_path="$user",app') == ["app"]
