"""A real client library (matrix-nio) against a real server process: register, log in, list
devices, set a display name, log out."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from homeserver.config import DatabaseConfig
from tests.support.process import ServerProcess, write_config

nio = pytest.importorskip("nio")


@pytest.fixture
def server(db_config: DatabaseConfig, tmp_path: Any) -> Iterator[ServerProcess]:
    proc = write_config(str(tmp_path), db_config.url, "--enable-registration")
    proc.start()
    try:
        yield proc
    finally:
        assert proc.stop(signal.SIGTERM) == 0


async def _flow(base_url: str) -> None:
    client = nio.AsyncClient(base_url, "alice")
    try:
        resp = await client.register("alice", "wonderland-pw", device_name="nio test")
        assert isinstance(resp, nio.RegisterResponse), resp
        assert resp.user_id == "@alice:proc.test"
        await client.logout()

        resp = await client.login("wonderland-pw", device_name="second device")
        assert isinstance(resp, nio.LoginResponse), resp
        assert client.access_token and client.user_id == "@alice:proc.test"

        devices = await client.devices()
        assert isinstance(devices, nio.DevicesResponse), devices
        names = sorted(d.display_name for d in devices.devices)
        assert names == ["second device"]  # logging out removed the first device

        resp = await client.set_displayname("Alice W.")
        assert isinstance(resp, nio.ProfileSetDisplayNameResponse), resp
        profile = await client.get_displayname("@alice:proc.test")
        assert isinstance(profile, nio.ProfileGetDisplayNameResponse), profile
        assert profile.displayname == "Alice W."

        stranger = nio.AsyncClient(base_url, "alice")
        bad = await stranger.login("wrong password")
        await stranger.close()
        assert isinstance(bad, nio.LoginError) and bad.status_code == "M_FORBIDDEN"

        resp = await client.logout()
        assert isinstance(resp, nio.LogoutResponse), resp
        whoami = await client.whoami()
        assert isinstance(whoami, nio.WhoamiError)
    finally:
        await client.close()


def test_nio_account_flow(server: ServerProcess) -> None:
    asyncio.run(_flow(server.client_url))
