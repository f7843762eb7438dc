"""Servers with a listener of their own for metrics (and /health/detail), next to a peer that
is down, and scraping helpers for metrics and health tests."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.support.http import request
from tests.support.server import RunningServer, free_port

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def separate_metrics_listener() -> dict[str, Any]:
    """Config overrides: client, federation and metrics listeners, and a peer ``down.test``
    at a port nothing listens on."""
    return {
        "listeners": [
            {"bind": "127.0.0.1", "port": 0, "tls": False,
             "resources": ["client", "media", "admin"]},
            {"bind": "127.0.0.2", "port": 0, "tls": True,
             "resources": ["federation", "keys", "media"]},
            {"bind": "127.0.0.1", "port": 0, "tls": False, "resources": ["metrics"]},
        ],
        "federation": {"static_servers": {"down.test": f"127.0.0.1:{free_port('127.0.0.1')}"}},
    }


def metrics_url(server: RunningServer) -> str:
    for listener, port in zip(server.hs.config.listeners, server.hs.ports, strict=True):
        if listener.resources == ("metrics",):
            return f"http://{listener.bind}:{port.getHost().port}"
    raise AssertionError("no metrics listener")


async def scrape(url: str) -> Samples:
    r = await request("GET", f"{url}/metrics")
    assert r.status == 200
    assert (r.header("Content-Type") or "").startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(r.body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of a series' samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))
