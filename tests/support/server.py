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
    data_dir: str, db: DatabaseConfig, server_name: str = "test.local", **overrides: Any
) -> dict[str, Any]:
    text = render_config(
        TemplateArgs(
            server_name=server_name,
            data_dir=data_dir,
            client_listen=("127.0.0.1", 0),
            federation_listen=("127.0.0.2", 0),
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


async def start_server(data_dir: str, db: DatabaseConfig, **overrides: Any) -> RunningServer:
    config = parse_config(make_config_dict(data_dir, db, **overrides))
    hs = HomeServer(config, reactor)
    await hs.start()
    urls = {}
    for listener, port in zip(config.listeners, hs.ports, strict=True):
        scheme = "https" if listener.tls else "http"
        url = f"{scheme}://{listener.bind}:{port.getHost().port}"
        for resource in listener.resources:
            urls.setdefault(resource, url)
    return RunningServer(hs, urls["client"], urls["federation"])
