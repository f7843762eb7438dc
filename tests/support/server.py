"""An in-process homeserver on loopback ports chosen by the OS, on a fresh database."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml
from twisted.internet import reactor

from homeserver.app import HomeServer
from homeserver.config import DatabaseConfig, parse_config
from homeserver.config.template import TemplateArgs, render_config


def make_config_dict(
    data_dir: str,
    db: DatabaseConfig,
    server_name: str = "test.local",
    federation_port: int = 0,
    **overrides: Any,
) -> dict[str, Any]:
    text = render_config(
        TemplateArgs(
            server_name=server_name,
            data_dir=data_dir,
            client_listen=("127.0.0.1", 0),
            federation_listen=("127.0.0.2", federation_port),
            database=db.url,
            enable_registration=True,
            testing=True,
            dev_federation=True,
        )
    )
    data: dict[str, Any] = yaml.safe_load(text)
    data["logging"] = {"level": "WARNING"}
    for key, value in overrides.items():
        data[key] = value
    return data


@dataclass
class RunningServer:
    hs: HomeServer
    client_url: str
    federation_url: str

    async def stop(self) -> None:
        await self.hs.shutdown()


async def start_server(
    data_dir: str,
    db: DatabaseConfig,
    server_name: str = "test.local",
    federation_port: int = 0,
    **overrides: Any,
) -> RunningServer:
    config = parse_config(
        make_config_dict(data_dir, db, server_name, federation_port, **overrides)
    )
    hs = HomeServer(config, reactor)
    try:
        await hs.start()
    except BaseException:
        # Close what did start (the database's worker thread would keep the process alive).
        await hs.shutdown()
        raise
    urls = {}
    for listener, port in zip(config.listeners, hs.ports, strict=True):
        scheme = "https" if listener.tls else "http"
        url = f"{scheme}://{listener.bind}:{port.getHost().port}"
        for resource in listener.resources:
            urls.setdefault(resource, url)
    return RunningServer(hs, urls["client"], urls["federation"])


def free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def start_pair(
    tmp_dir: str, db_a: DatabaseConfig, db_b: DatabaseConfig,
    federation_a: dict[str, Any] | None = None, federation_b: dict[str, Any] | None = None,
    **overrides: Any,
) -> tuple[RunningServer, RunningServer]:
    """Two federating servers, a.test and b.test, each finding the other through the
    static map (TLS with self-signed certificates, dev-mode outbound requests).
    ``federation_a`` / ``federation_b``: more of each one's ``federation`` config section."""
    import os

    port_a, port_b = free_port("127.0.0.2"), free_port("127.0.0.2")
    static = {"a.test": f"127.0.0.2:{port_a}", "b.test": f"127.0.0.2:{port_b}"}
    fed = {"static_servers": static}
    a = await start_server(os.path.join(tmp_dir, "a"), db_a, "a.test", port_a,
                           federation={**fed, **(federation_a or {})}, **overrides)
    try:
        b = await start_server(os.path.join(tmp_dir, "b"), db_b, "b.test", port_b,
                               federation={**fed, **(federation_b or {})}, **overrides)
    except BaseException:
        await a.stop()
        raise
    return a, b


async def start_many(
    tmp_dir: str, dbs: dict[str, DatabaseConfig],
    federation: dict[str, dict[str, Any]] | None = None, **overrides: Any,
) -> dict[str, RunningServer]:
    """Servers federating with each other, one per name in ``dbs`` (e.g. a.test, b.test,
    c.test), found through the static map (TLS with self-signed certificates).
    ``federation``: more of a server's ``federation`` config section, by name."""
    import os

    ports = {name: free_port("127.0.0.2") for name in dbs}
    static = {name: f"127.0.0.2:{port}" for name, port in ports.items()}
    started: dict[str, RunningServer] = {}
    try:
        for name, db in dbs.items():
            fed = {"static_servers": static, **(federation or {}).get(name, {})}
            started[name] = await start_server(os.path.join(tmp_dir, name), db, name,
                                               ports[name], federation=fed, **overrides)
    except BaseException:
        for server in started.values():
            await server.stop()
        raise
    return started
