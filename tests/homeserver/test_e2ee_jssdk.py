"""Element's encryption stack against this server: matrix-js-sdk with its Rust crypto (from npm,
installed by scripts/test into tests/js/node_modules) runs tests/js/e2ee_flow.mjs — a DM where
each user decrypts the other, cross-signing bootstrap, secret storage with a key backup, and a
new device restoring the backup and decrypting history — on one server and across two
federating servers. The servers must store ciphertext only."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import utils

from homeserver.config import DatabaseConfig, load_config
from tests.support.e2ee import stored_events_json
from tests.support.process import ROOT, ServerProcess, write_config
from tests.support.server import RunningServer

JS_DIR = os.path.join(ROOT, "tests", "js")
FLOW = os.path.join(JS_DIR, "e2ee_flow.mjs")
SECRETS = ("secret from alice", "secret from bob", "secret after the backup")


def _node() -> str:
    node = shutil.which("node")
    missing = None
    if node is None:
        missing = "Node.js is not installed"
    elif not os.path.isdir(os.path.join(JS_DIR, "node_modules", "matrix-js-sdk")):
        missing = "matrix-js-sdk is not installed in tests/js (scripts/test installs it)"
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{missing}; CI must run the matrix-js-sdk tests")
        pytest.skip(missing)
    assert node is not None
    return node


def _check(result: dict[str, Any]) -> None:
    assert result["exchanged"] is True
    assert result["crossSigningReady"] is True
    assert result["secretStorageReady"] is True
    assert result["backupVersion"]
    assert result["backedUp"] is True
    # Two megolm sessions (alice's and bob's), both restored on the new device.
    assert result["restoredKeys"] >= 2
    assert set(SECRETS) <= set(result["bob2History"])
    assert result["bob2CrossSigned"] is True


def _parse(stdout: str, stderr: str, code: int) -> dict[str, Any]:
    assert code == 0, f"js flow failed ({code}):\n{stderr[-4000:]}\n{stdout[-4000:]}"
    return dict(json.loads(stdout.strip().splitlines()[-1]))


def _assert_ciphertext_only(engine: str, target: str, room_id: str) -> None:
    stored = stored_events_json(engine, target)
    in_room = [j for _, j in stored if room_id in j]
    assert sum(1 for t, j in stored if t == "m.room.encrypted" and room_id in j) >= 3
    blob = "\n".join(in_room)
    for secret in SECRETS:
        assert secret not in blob


@pytest.fixture
def server(db_config: DatabaseConfig, tmp_path: Any) -> Iterator[ServerProcess]:
    proc = write_config(str(tmp_path), db_config.url, "--enable-registration")
    proc.start()
    try:
        yield proc
    finally:
        assert proc.stop(signal.SIGTERM) == 0


def test_jssdk_encrypted_dm_backup_and_new_device(server: ServerProcess) -> None:
    node = _node()
    out = subprocess.run([node, FLOW, server.client_url], cwd=JS_DIR, capture_output=True,
                         text=True, timeout=180)
    result = _parse(out.stdout, out.stderr, out.returncode)
    _check(result)
    config = load_config(server.config_path)
    _assert_ciphertext_only(config.database.engine, config.database.target, result["roomId"])


@pytest_twisted.ensureDeferred
async def test_jssdk_encrypted_dm_across_two_servers(
    pair: tuple[RunningServer, RunningServer],
) -> None:
    node = _node()
    a, b = pair
    # alice on a.test invites bob on b.test; bob's devices and backup live on b.test.
    stdout, stderr, code = await utils.getProcessOutputAndValue(
        node, [FLOW, a.client_url, b.client_url], env=dict(os.environ), path=JS_DIR)
    result = _parse(stdout.decode(), stderr.decode(), code)
    _check(result)
    for server in (a, b):
        db = server.hs.config.database
        _assert_ciphertext_only(db.engine, db.target, result["roomId"])
