"""Health for load balancers and monitoring, config checking, and log files that survive
log rotation."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
import yaml
from twisted.internet import reactor, task

from homeserver.config import DatabaseConfig
from homeserver.health import summarize_federation
from homeserver.storage.federation_queue import Backoff
from tests.support.client import Client
from tests.support.http import request
from tests.support.metrics import metrics_url, separate_metrics_listener
from tests.support.process import cli, http_json, write_config
from tests.support.server import RunningServer, start_server


@pytest_twisted.async_yield_fixture
async def server(db_config: DatabaseConfig, tmp_path: Any) -> AsyncIterator[RunningServer]:
    s = await start_server(str(tmp_path), db_config, **separate_metrics_listener())
    try:
        yield s
    finally:
        await s.stop()


async def detail(url: str) -> tuple[int, dict[str, Any]]:
    r = await request("GET", f"{url}/health/detail")
    return r.status, r.json()


@pytest_twisted.ensureDeferred
async def test_health_report(server: RunningServer, engine: str) -> None:
    url = metrics_url(server)
    for base in (server.client_url, server.federation_url, url):
        r = await request("GET", f"{base}/health")
        assert (r.status, r.body) == (200, b"OK")
    # The detailed report is for the operator's listener only.
    assert (await request("GET", f"{server.client_url}/health/detail")).status == 404

    status, body = await detail(url)
    assert status == 200 and body["status"] == "ok"
    assert body["database"]["engine"] == engine and body["database"]["reachable"] is True
    assert body["federation"] == {"destinations_down": 0, "queued_total": 0, "destinations": []}

    # A to-device message for a server that is down: queued, then the destination backs off.
    c = Client(server.client_url)
    alice = await c.register("alice")
    r = await c.call("PUT", "/sendToDevice/m.test/t1",
                     {"messages": {"@bob:down.test": {"DEV": {"x": 1}}}}, alice.access_token)
    assert r.status == 200, r.body
    for _ in range(100):
        status, body = await detail(url)
        if body["federation"]["destinations_down"]:
            break
        await task.deferLater(reactor, 0.1)
    assert status == 200 and body["status"] == "ok"  # a peer being down is not our outage
    assert body["federation"]["queued_total"] == 1
    (dest,) = body["federation"]["destinations"]
    assert dest["destination"] == "down.test" and dest["down"] is True and dest["queued"] == 1
    assert dest["retry_at_ts"] > time.time() * 1000 and isinstance(dest["failing_since_ts"], int)

    # The database gone: 503 with the reason, and /health itself still answers.
    assert server.hs.db is not None
    await server.hs.db.close()
    status, body = await detail(url)
    assert status == 503 and body["status"] == "unavailable"
    assert body["database"]["reachable"] is False and body["database"]["error"]
    assert (await request("GET", f"{server.client_url}/health")).status == 200


def test_summarize_federation() -> None:
    now = 1_000_000
    states = summarize_federation(
        {"a.test": 3, "b.test": 1},
        {"b.test": Backoff(900_000, 990_000, 20_000), "c.test": Backoff(1, 900_000, 10_000)},
        now,
    )
    assert [(s.destination, s.queued, s.down) for s in states] == [
        ("a.test", 3, False), ("b.test", 1, True), ("c.test", 0, False),
    ]
    assert states[1].retry_at_ts == 1_010_000 and states[1].failing_since_ts == 900_000


# --- check-config -----------------------------------------------------------------------

def _config(tmp_path: Any, **changes: Any) -> str:
    path = str(tmp_path / "homeserver.yaml")
    cli("generate-config", "--server-name", "check.test", "--data-dir", str(tmp_path / "data"),
        "-o", path)
    if changes:
        with open(path) as f:
            data = yaml.safe_load(f)
        for dotted, value in changes.items():
            node = data
            *parents, last = dotted.split("__")
            for p in parents:
                node = node[p]
            node[last] = value
        with open(path, "w") as f:
            yaml.safe_dump(data, f)
    return path


def test_check_config_accepts_a_good_config(tmp_path: Any) -> None:
    path = _config(tmp_path)
    for args in (("check-config", path), ("run", "--check-config", "--config", path)):
        result = cli(*args, check=False)
        assert result.returncode == 0, result.stderr
        assert "OK" in result.stdout and "check.test" in result.stdout
    # It started nothing: no database, no key was made.
    assert not os.path.exists(tmp_path / "data" / "homeserver.db")


@pytest.mark.parametrize(("changes", "named"), [
    ({"database__pool_max": "many"}, "database.pool_max"),
    ({"listeners": [{"bind": "127.0.0.1", "port": 8008, "colour": "red",
                     "resources": ["client"]}]}, "listeners[0].colour"),
    ({"logging__format": "xml"}, "logging.format"),
    ({"federation__surprise": 1}, "federation.surprise"),
])
def test_check_config_names_the_key_at_fault(
    tmp_path: Any, changes: dict[str, Any], named: str,
) -> None:
    result = cli("check-config", _config(tmp_path, **changes), check=False)
    assert result.returncode == 1
    assert f"config error: {named}" in result.stderr, result.stderr


def test_check_config_looks_at_the_files(tmp_path: Any) -> None:
    path = _config(tmp_path)
    os.makedirs(tmp_path / "data")
    with open(tmp_path / "data" / "signing.key", "w") as f:
        f.write("not a key\n")
    result = cli("check-config", path, check=False)
    assert result.returncode == 1 and "signing_key_path:" in result.stderr
    os.remove(tmp_path / "data" / "signing.key")
    with open(tmp_path / "data" / "tls.crt", "w") as f:
        f.write("certificate without its key")
    result = cli("check-config", path, check=False)
    assert result.returncode == 1 and "tls.private_key_path:" in result.stderr
    os.remove(tmp_path / "data" / "tls.crt")
    with open(path) as f:
        data = yaml.safe_load(f)
    data["app_service_config_files"] = [str(tmp_path / "bridge.yaml")]
    with open(path, "w") as f:
        yaml.safe_dump(data, f)
    result = cli("check-config", path, check=False)
    assert result.returncode == 1 and "bridge.yaml" in result.stderr
    assert cli("check-config", str(tmp_path / "missing.yaml"), check=False).returncode == 1


# --- logging ------------------------------------------------------------------------------

def _json_lines(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_log_file_survives_rotation(tmp_path: Any) -> None:
    proc = write_config(str(tmp_path), f"sqlite://{tmp_path}/hs.db")
    with open(proc.config_path) as f:
        data = yaml.safe_load(f)
    data["logging"] = {"level": "INFO", "format": "json", "file": "logs/homeserver.log"}
    with open(proc.config_path, "w") as f:
        yaml.safe_dump(data, f)
    log = os.path.join(str(tmp_path), "data", "logs", "homeserver.log")
    proc.start()
    try:
        assert any("is up" in e["message"] for e in _json_lines(log))
        # logrotate (without copytruncate) renames the file; the server writes a new one.
        os.rename(log, log + ".1")
        assert http_json("GET", f"{proc.client_url}/_matrix/client/versions")[0] == 200
        deadline = time.monotonic() + 10
        while not os.path.exists(log) and time.monotonic() < deadline:
            time.sleep(0.05)
        entries = _json_lines(log)
        access = [e for e in entries if e["logger"] == "homeserver.access"]
        assert access and "/_matrix/client/versions" in access[0]["message"]
        assert access[0]["request_id"] != "-" and access[0]["time"].endswith("Z")
        # SIGHUP (logrotate's postrotate habit) reopens the file and stops nothing.
        os.rename(log, log + ".2")
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not os.path.exists(log) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any("log file reopened" in e["message"] for e in _json_lines(log))
        assert http_json("GET", f"{proc.client_url}/_matrix/client/versions")[0] == 200
    finally:
        assert proc.stop(signal.SIGTERM) == 0
    assert any(e["message"] == "stopped" for e in _json_lines(log))
    # Nothing went to stderr but what Python itself might print.
    assert "homeserver.access" not in proc.log()
