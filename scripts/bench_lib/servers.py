"""The servers under test, as real processes on loopback: ours (``homeserver run`` with a
``--testing`` config) and Synapse (through ``tests.support.synapse``, the launcher the interop
tests use). Both log at WARNING and run on the same storage engine. Every server started is
registered on an ``ExitStack`` that stops it and drops its database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import yaml

from tests.support.databases import fresh_database, postgres_dsn, postgres_unavailable_reason
from tests.support.process import ServerProcess, cli, free_port


@dataclass
class Target:
    """A running server as the scenarios see it."""

    kind: str  # "ours" or "synapse"
    server_name: str
    client_url: str
    pid: int
    log: Callable[[], str]  # the tail of the server's log, for errors

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log().splitlines()[-lines:])
        except OSError as e:
            return f"(no log: {e})"

    def rss_mb(self) -> tuple[float, float]:
        """(current, peak) resident set size of the server process, in MB."""
        values = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0]) / 1024  # kB
        return values["VmRSS"], values["VmHWM"]


def engines_available(wanted: list[str]) -> tuple[list[str], list[str]]:
    """The engines to run, and notes on any dropped (PostgreSQL unreachable)."""
    run, notes = [], []
    for engine in wanted:
        reason = postgres_unavailable_reason() if engine == "postgres" else None
        if reason:
            notes.append(f"postgres skipped: {reason}")
        else:
            run.append(engine)
    return run, notes


def _database_url(stack: ExitStack, engine: str, data_dir: str) -> str:
    os.makedirs(data_dir, exist_ok=True)
    return stack.enter_context(fresh_database(engine, data_dir)).url


def start_ours(stack: ExitStack, work: str, engine: str, server_name: str = "ours.bench",
               peers: dict[str, str] | None = None, federation_port: int | None = None,
               ) -> Target:
    """Our server; ``peers`` (server name → host:port) are other servers it federates with."""
    base = os.path.join(work, server_name)
    os.makedirs(base, exist_ok=True)
    client_port = free_port()
    fed_port = federation_port or free_port()
    path = os.path.join(base, "homeserver.yaml")
    cli("generate-config", "--server-name", server_name, "--data-dir",
        os.path.join(base, "data"), "--client-listen", f"127.0.0.1:{client_port}",
        "--federation-listen", f"127.0.0.1:{fed_port}",
        "--database", _database_url(stack, engine, os.path.join(base, "db")),
        "--testing", "--enable-registration", "--dev-federation", "-o", path)
    with open(path) as f:
        config: dict[str, Any] = yaml.safe_load(f)
    config["logging"] = {"level": "WARNING"}
    # Synapse's default: no room is encrypted unless the client asks.
    config["encryption"]["by_default"] = "off"
    config["federation"]["static_servers"] = dict(peers or {})
    # The pool tests/support/synapse.py gives Synapse (cp_max 5), for the same concurrency.
    config["database"]["pool_max"] = 5
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    proc = ServerProcess(path, client_port)
    proc.start(timeout=60)
    stack.callback(proc.stop)
    assert proc.proc is not None
    return Target("ours", server_name, proc.client_url, proc.proc.pid, proc.log)


def start_ours_pair(stack: ExitStack, work: str, engine: str) -> tuple[Target, Target]:
    """Two of our servers federating over TLS (self-signed, found through static_servers)."""
    ports = {"a.ours.bench": free_port(), "b.ours.bench": free_port()}
    peers = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    a, b = (start_ours(stack, work, engine, name, peers, port) for name, port in ports.items())
    return a, b


def _synapse(stack: ExitStack, work: str, engine: str, name: str) -> Target:
    from tests.support.synapse import SynapseProcess

    s = SynapseProcess(
        data_dir=os.path.join(work, name),
        postgres_dsn=postgres_dsn() if engine == "postgres" else None,
        # Open registration as on ours, so both register through the same request.
        config_overrides={"enable_registration": True,
                          "enable_registration_without_verification": True},
    )
    stack.callback(s.stop)  # also drops its PostgreSQL database if the start fails
    s.start(timeout=180)
    assert s.proc is not None
    return Target("synapse", s.server_name, s.client_url, s.proc.pid, s.log)


def start_synapse(stack: ExitStack, work: str, engine: str) -> Target:
    return _synapse(stack, work, engine, "synapse")


def start_synapse_pair(stack: ExitStack, work: str, engine: str) -> tuple[Target, Target]:
    """Two Synapses; each is named by its federation listener's address, so they find each
    other without any discovery set-up."""
    return _synapse(stack, work, engine, "synapse-a"), _synapse(stack, work, engine, "synapse-b")


def synapse_version() -> str | None:
    from tests.support.synapse import synapse_unavailable_reason, synapse_venv

    if synapse_unavailable_reason():
        return None
    code = "from importlib.metadata import version; print(version('matrix-synapse'))"
    out = subprocess.run([os.path.join(synapse_venv(), "bin", "python"), "-c", code],
                         capture_output=True, text=True, timeout=60)
    return out.stdout.strip() or None


def synapse_missing() -> str | None:
    from tests.support.synapse import synapse_unavailable_reason

    return synapse_unavailable_reason()


def profile(stack: ExitStack, target: Target, path: str) -> None:
    """Sample ``target`` with py-spy until the run ends, into ``path`` as collapsed stacks
    (one line per stack and its sample count: speedscope, flamegraph.pl, inferno read it)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    spy = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "py-spy"), "record", "--pid",
         str(target.pid), "--rate", "250", "--format", "raw", "--output", path],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def finish() -> None:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            spy.wait(60)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()

    stack.callback(finish)
