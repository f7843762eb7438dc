"""The README's two commands, run as written, in a fresh clone of this repository."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from typing import Any

import pytest

from tests.support.process import ROOT

pytestmark = pytest.mark.slow


def _readme_commands() -> list[str]:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    block = re.search(r"## Two commands\s+```sh\n(.*?)```", text, re.S)
    assert block, "README.md must open with the two commands"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def clone(tmp_path_factory: Any) -> str:
    if shutil.which("git") is None or not os.path.isdir(os.path.join(ROOT, ".git")):
        pytest.skip("needs git and a git checkout to clone")
    dest = str(tmp_path_factory.mktemp("fresh") / "clone")
    subprocess.run(["git", "clone", "--quiet", ROOT, dest], check=True)
    return dest


def _env() -> dict[str, str]:
    # The clone makes its own virtual environment; ours must not leak into it.
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "HS_VENV")}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(ROOT)
    )
    return env


def test_readme_names_the_two_commands() -> None:
    assert _readme_commands() == ["scripts/run", "scripts/test"]


def test_test_command_in_a_fresh_clone(clone: str) -> None:
    # The whole suite is what CI runs; here one module proves the command installs and runs.
    result = subprocess.run(
        ["scripts/test", "tests/homeserver/test_config.py", "-q", "-p", "no:cacheprovider"],
        cwd=clone, env=_env(), capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"\d+ passed", result.stdout)


def test_run_command_in_a_fresh_clone(clone: str) -> None:
    for port in (8008, 8448):
        if not _port_free(port):
            pytest.skip(f"port {port} is in use here, and scripts/run serves on it as written")
    proc = subprocess.Popen(
        ["scripts/run"], cwd=clone, env=_env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 600
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(
                    "http://127.0.0.1:8008/_matrix/client/versions", timeout=2
                ) as r:
                    status = r.status
                    break
            except OSError:
                time.sleep(0.5)
        assert status == 200, proc.stdout.read() if proc.poll() is not None else "no answer"
        assert os.path.exists(os.path.join(clone, "data", "homeserver.yaml"))
        assert os.path.exists(os.path.join(clone, "data", "homeserver.db"))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0
