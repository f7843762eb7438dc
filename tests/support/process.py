"""Real server processes for end-to-end tests: started on free loopback ports, always stopped."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def cli(*args: str, check: bool = True, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "homeserver", *args],
        cwd=ROOT, capture_output=True, text=True, check=check, timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def http_json(method: str, url: str, body: Any = None, timeout: float = 10) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


@dataclass
class ServerProcess:
    config_path: str
    client_port: int
    proc: subprocess.Popen[str] | None = None
    log_path: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def start(self, timeout: float = 30) -> None:
        self.log_path = self.config_path + ".log"
        log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "homeserver", "run", "--config", self.config_path],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited at start:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.client_url}/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not answer within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


def write_config(tmp_dir: str, db_url: str, *extra_args: str) -> ServerProcess:
    client_port, fed_port = free_port(), free_port()
    path = os.path.join(tmp_dir, "homeserver.yaml")
    cli("generate-config", "--server-name", "proc.test", "--data-dir",
        os.path.join(tmp_dir, "data"), "--client-listen", f"127.0.0.1:{client_port}",
        "--federation-listen", f"127.0.0.1:{fed_port}", "--database", db_url,
        "--testing", *extra_args, "-o", path)
    return ServerProcess(path, client_port, extra={"federation_port": fed_port})
