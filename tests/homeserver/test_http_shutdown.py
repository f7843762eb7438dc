"""A stopped server leaves no kept-alive connection behind: a peer that reuses one (as
Synapse does for federation) finds it closed at once, instead of being answered by the
stopped server (whose database is closed) or left waiting."""

from __future__ import annotations

import http.client
import ssl
import time
from typing import Any

import pytest_twisted
from twisted.internet import threads

from homeserver.config import DatabaseConfig
from tests.support.server import free_port, start_server


@pytest_twisted.ensureDeferred
async def test_kept_alive_tls_connection_is_closed_at_shutdown(
    db_config: DatabaseConfig, tmp_path: Any,
) -> None:
    port = free_port("127.0.0.2")
    server = await start_server(str(tmp_path), db_config, f"127.0.0.2:{port}", port)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.2", port, context=context, timeout=30)

    def get() -> int:
        conn.request("GET", "/_matrix/federation/v1/version")
        response = conn.getresponse()
        response.read()
        return response.status

    try:
        assert await threads.deferToThread(get) == 200
    finally:
        await server.stop()
    start = time.monotonic()
    try:
        status: int | None = await threads.deferToThread(get)
    except (OSError, http.client.HTTPException):
        status = None
    finally:
        conn.close()
    assert status is None
    assert time.monotonic() - start < 5
