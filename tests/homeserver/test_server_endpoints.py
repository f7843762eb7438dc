"""A full in-process homeserver on each engine: the endpoints every client probes first."""

from __future__ import annotations

import pytest_twisted

from tests.support.http import request
from tests.support.server import RunningServer


@pytest_twisted.ensureDeferred
async def test_versions(hs: RunningServer) -> None:
    r = await request("GET", f"{hs.client_url}/_matrix/client/versions")
    assert r.status == 200
    body = r.json()
    assert "v1.1" in body["versions"]
    assert isinstance(body["unstable_features"], dict)


@pytest_twisted.ensureDeferred
async def test_health_on_every_listener(hs: RunningServer) -> None:
    for url in (hs.client_url, hs.federation_url):
        r = await request("GET", f"{url}/health")
        assert (r.status, r.body) == (200, b"OK")


@pytest_twisted.ensureDeferred
async def test_federation_listener_speaks_tls_and_serves_only_its_resources(
    hs: RunningServer,
) -> None:
    assert hs.federation_url.startswith("https://")
    r = await request("GET", f"{hs.federation_url}/_matrix/client/versions")
    assert (r.status, r.json()["errcode"]) == (404, "M_UNRECOGNIZED")


@pytest_twisted.ensureDeferred
async def test_well_known(hs: RunningServer) -> None:
    r = await request("GET", f"{hs.client_url}/.well-known/matrix/client")
    assert r.status == 200
    assert r.json()["m.homeserver"]["base_url"].startswith("http://127.0.0.1:")
    # No delegation configured: the spec's 404.
    r = await request("GET", f"{hs.federation_url}/.well-known/matrix/server")
    assert r.status == 404


@pytest_twisted.ensureDeferred
async def test_unknown_and_wrong_method(hs: RunningServer) -> None:
    r = await request("PUT", f"{hs.client_url}/_matrix/client/versions", {})
    assert (r.status, r.json()["errcode"]) == (405, "M_UNRECOGNIZED")
    r = await request("GET", f"{hs.client_url}/_matrix/client/v3/not_a_thing")
    assert (r.status, r.json()["errcode"]) == (404, "M_UNRECOGNIZED")


@pytest_twisted.ensureDeferred
async def test_metrics(hs: RunningServer) -> None:
    await request("GET", f"{hs.client_url}/_matrix/client/versions")
    r = await request("GET", f"{hs.client_url}/_synapse/metrics")
    assert r.status == 200
    text = r.body.decode()
    assert 'homeserver_http_requests_total{method="GET",route="/_matrix/client/versions"' in text
    assert "homeserver_db_transaction_duration_seconds" in text
    assert "process_resident_memory_bytes" in text
