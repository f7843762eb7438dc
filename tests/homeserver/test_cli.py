"""The command line as operators use it: real processes, real ports, real signals."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from homeserver.config import DatabaseConfig, parse_config
from tests.support.process import ServerProcess, cli, free_port, http_json, write_config


@pytest.fixture
def server(db_config: DatabaseConfig, tmp_path: Any) -> Iterator[ServerProcess]:
    proc = write_config(str(tmp_path), db_config.url)
    try:
        yield proc
    finally:
        proc.stop(signal.SIGKILL)


def test_generate_config_to_stdout_is_valid_and_complete() -> None:
    out = cli("generate-config", "--server-name", "brand.example", "--data-dir", "/srv/hs").stdout
    config = parse_config(yaml.safe_load(out))
    assert config.server_name == "brand.example"
    assert config.data_dir == "/srv/hs"
    assert out.startswith("# Homeserver configuration.")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--server-name", "bad name", "--data-dir", "/x"], "server_name: expected a DNS name"),
        (["--server-name", "a.b", "--data-dir", "/x", "--database", "mongo://x"],
         "--database: expected a sqlite:/// URL"),
    ],
)
def test_generate_config_rejects_bad_flags(args: list[str], message: str) -> None:
    result = cli("generate-config", *args, check=False)
    assert result.returncode == 2
    assert message in result.stderr


def test_generate_config_rejects_bad_listen_address() -> None:
    result = cli("generate-config", "--server-name", "a.b", "--data-dir", "/x",
                 "--client-listen", "nope", check=False)
    assert result.returncode == 2
    assert "expected HOST:PORT" in result.stderr


def test_run_with_a_bad_config_names_the_key(tmp_path: Any) -> None:
    path = tmp_path / "hs.yaml"
    path.write_text("server_name: ex.org\ndata_dir: /tmp/x\nlisteners:\n  - port: eighty\n")
    result = cli("run", "--config", str(path), check=False)
    assert result.returncode == 2
    assert "listeners[0].port: expected an integer, got 'eighty'" in result.stderr


def test_run_serves_then_shuts_down_gracefully(server: ServerProcess) -> None:
    server.start()
    status, body = http_json("GET", f"{server.client_url}/_matrix/client/versions")
    assert status == 200 and "v1.1" in body["versions"]
    data_dir = parse_config(yaml.safe_load(open(server.config_path))).data_dir
    # First start made the signing key (spec format) and the self-signed certificate.
    with open(os.path.join(data_dir, "signing.key")) as f:
        alg, version, seed = f.read().split()
    assert alg == "ed25519" and version.startswith("a_") and len(seed) == 43
    assert os.path.exists(os.path.join(data_dir, "tls.crt"))

    # A request in flight when SIGTERM arrives still gets its answer.
    sock = socket.create_connection(("127.0.0.1", server.client_port), timeout=10)
    body_bytes = b'{"x": 1}'
    sock.sendall(b"POST /_matrix/client/versions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                 b"Content-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body_bytes))
    time.sleep(0.3)
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    # New connections are refused while the old one is still being served.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.client_port), timeout=2).close()
    sock.sendall(body_bytes)
    reply = b""
    while chunk := sock.recv(65536):
        reply += chunk
    sock.close()
    assert reply.startswith(b"HTTP/1.1 405"), reply[:100]
    assert server.proc.wait(20) == 0
    log = server.log()
    assert "no longer accepting connections" in log
    assert "database closed" in log
    # Every request's log line carries its request id.
    assert re.search(r"\[req-\d+\] 127\.0\.0\.1 GET /_matrix/client/versions 200 ", log)


def test_sigint_also_stops_cleanly(server: ServerProcess) -> None:
    server.start()
    assert server.stop(signal.SIGINT) == 0
    assert "database closed" in server.log()


def test_register_user_offline_and_while_running(server: ServerProcess) -> None:
    result = cli("register-user", "--config", server.config_path, "--user", "alice",
                 "--password", "correct horse", "--admin")
    assert "registered @alice:proc.test (admin)" in result.stdout
    again = cli("register-user", "--config", server.config_path, "--user", "alice",
                "--password", "x", check=False)
    assert again.returncode == 1 and "already taken" in again.stderr
    server.start()
    result = cli("register-user", "--config", server.config_path, "--user", "@bob:proc.test",
                 "--password", "pw")
    assert "registered @bob:proc.test" in result.stdout
    bad = cli("register-user", "--config", server.config_path, "--user", "@eve:other.test",
              "--password", "pw", check=False)
    assert bad.returncode == 2 and "not a valid user ID on proc.test" in bad.stderr
    # The password is stored as a bcrypt hash, never in clear.
    config = parse_config(yaml.safe_load(open(server.config_path)))
    if config.database.engine == "sqlite":
        import sqlite3

        conn = sqlite3.connect(config.database.target)
        rows = conn.execute("SELECT user_id, password_hash FROM users").fetchall()
        conn.close()
        assert {r[0] for r in rows} == {"@alice:proc.test", "@bob:proc.test"}
        assert all(r[1].startswith("$2b$") and "correct" not in r[1] for r in rows)


def test_port_in_use_fails_start_with_a_clear_message(tmp_path: Any) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        path = str(tmp_path / "hs.yaml")
        cli("generate-config", "--server-name", "a.test", "--data-dir", str(tmp_path / "d"),
            "--client-listen", f"127.0.0.1:{port}",
            "--federation-listen", f"127.0.0.1:{free_port()}", "-o", path)
        result = cli("run", "--config", path, check=False, timeout=30)
        assert result.returncode == 1
        assert "start-up failed" in result.stderr and str(port) in result.stderr
    finally:
        busy.close()


def test_one_tls_listener_serves_every_api(tmp_path: Any) -> None:
    import ssl
    import urllib.request

    port = free_port()
    path = str(tmp_path / "hs.yaml")
    cli("generate-config", "--server-name", "one.test", "--data-dir", str(tmp_path / "d"),
        "--client-listen", f"127.0.0.1:{port}", "--federation-listen", f"127.0.0.1:{port}",
        "--database", f"sqlite://{tmp_path}/hs.db", "-o", path)
    proc = ServerProcess(path, port)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    # ServerProcess probes over plain HTTP; start it by hand and probe over TLS.
    import subprocess
    import sys

    from tests.support.process import ROOT

    proc.proc = subprocess.Popen([sys.executable, "-m", "homeserver", "run", "--config", path],
                                 cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"https://127.0.0.1:{port}/health", context=ctx,
                                       timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        for path_ in ("/_matrix/client/versions", "/_matrix/key/v2/server",
                      "/_matrix/federation/v1/version"):
            with urllib.request.urlopen(f"https://127.0.0.1:{port}{path_}", context=ctx,
                                        timeout=5) as r:
                assert r.status == 200, path_
    finally:
        assert proc.stop(signal.SIGTERM) == 0
