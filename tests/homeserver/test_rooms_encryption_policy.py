"""The encryption policy: rooms encrypted by default, and plaintext refused where required."""

from __future__ import annotations

import pytest_twisted

from homeserver.config import DatabaseConfig
from tests.support.client import Client, q
from tests.support.server import RunningServer, start_server


async def _encrypted(c: Client, token: str, room: str) -> bool:
    r = await c.call("GET", f"/rooms/{q(room)}/state/m.room.encryption", token=token)
    return r.status == 200 and r.json().get("algorithm") == "m.megolm.v1.aes-sha2"


@pytest_twisted.ensureDeferred
async def test_private_rooms_and_dms_are_encrypted_by_default(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice = await c.register("alice")
    t = alice.access_token
    private = (await c.call("POST", "/createRoom", {}, token=t)).json()["room_id"]
    dm = (await c.call("POST", "/createRoom", {"preset": "public_chat", "is_direct": True},
                       token=t)).json()["room_id"]
    public = (await c.call("POST", "/createRoom", {"preset": "public_chat"},
                           token=t)).json()["room_id"]
    assert await _encrypted(c, t, private)
    assert await _encrypted(c, t, dm)
    assert not await _encrypted(c, t, public)


@pytest_twisted.ensureDeferred
async def test_policy_off_and_required(db_config: DatabaseConfig, tmp_path: object) -> None:
    server = await start_server(str(tmp_path), db_config,
                                encryption={"by_default": "all", "require": True})
    try:
        c = Client(server.client_url)
        alice = await c.register("alice")
        t = alice.access_token
        room = (await c.call("POST", "/createRoom", {"preset": "public_chat"},
                             token=t)).json()["room_id"]
        assert await _encrypted(c, t, room)
        r = await c.call("PUT", f"/rooms/{q(room)}/send/m.room.message/1",
                         {"msgtype": "m.text", "body": "plaintext"}, token=t)
        assert (r.status, r.json()["errcode"]) == (403, "M_FORBIDDEN")
        assert "encrypt" in r.json()["error"]
        r = await c.call("PUT", f"/rooms/{q(room)}/send/m.room.encrypted/2",
                         {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AwgA",
                          "sender_key": "k", "session_id": "s", "device_id": "D"}, token=t)
        assert r.status == 200
    finally:
        await server.stop()
    server = await start_server(str(tmp_path / "off"), db_config,
                                encryption={"by_default": "off"})
    try:
        c = Client(server.client_url)
        bob = await c.register("bob")
        room = (await c.call("POST", "/createRoom", {}, token=bob.access_token)).json()["room_id"]
        assert not await _encrypted(c, bob.access_token, room)
    finally:
        await server.stop()
