"""Real end-to-end encryption through this server: two matrix-nio clients (Olm/Megolm via
vodozemac) in a new DM, each decrypting the other's messages; a new device of one user gets
the room key and decrypts what follows; the server stores ciphertext only."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from homeserver.config import DatabaseConfig, load_config
from tests.support.e2ee import stored_events_json
from tests.support.process import ServerProcess, write_config

nio = pytest.importorskip("nio")
if not getattr(nio.crypto, "ENCRYPTION_ENABLED", False):  # pragma: no cover
    pytest.skip("matrix-nio was installed without its e2e extra", allow_module_level=True)


@pytest.fixture
def server(db_config: DatabaseConfig, tmp_path: Any) -> Iterator[ServerProcess]:
    proc = write_config(str(tmp_path), db_config.url, "--enable-registration")
    proc.start()
    try:
        yield proc
    finally:
        assert proc.stop(signal.SIGTERM) == 0


async def _client(base_url: str, name: str, store: str, *, register: bool) -> Any:
    config = nio.AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True)
    client = nio.AsyncClient(base_url, name, store_path=store, config=config)
    if register:
        resp = await client.register(name, f"{name}-password")
        assert isinstance(resp, nio.RegisterResponse), resp
        # nio loads its crypto store on login; re-login on the registered account.
        await client.logout()
    resp = await client.login(f"{name}-password", device_name=f"{name} device")
    assert isinstance(resp, nio.LoginResponse), resp
    return client


async def _sync(*clients: Any) -> None:
    for c in clients:
        resp = await c.sync(timeout=500, full_state=True)
        assert isinstance(resp, nio.SyncResponse), resp
        if c.should_upload_keys:
            assert isinstance(await c.keys_upload(), nio.KeysUploadResponse)
        if c.should_query_keys:
            await c.keys_query()


async def _decrypted_texts(client: Any, room_id: str) -> list[str]:
    """Sync until nothing new arrives, returning the decrypted texts seen in the room."""
    texts: list[str] = []
    for _ in range(6):
        resp = await client.sync(timeout=500)
        assert isinstance(resp, nio.SyncResponse), resp
        room = resp.rooms.join.get(room_id)
        if room is not None:
            texts += [e.body for e in room.timeline.events if isinstance(e, nio.RoomMessageText)]
    return texts


async def _flow(base_url: str, tmp: str) -> None:
    alice = await _client(base_url, "alice", f"{tmp}/alice", register=True)
    bob = await _client(base_url, "bob", f"{tmp}/bob", register=True)
    clients = [alice, bob]
    try:
        await _sync(alice, bob)
        created = await alice.room_create(is_direct=True, invite=[bob.user_id],
                                          preset=nio.RoomPreset.trusted_private_chat)
        assert isinstance(created, nio.RoomCreateResponse), created
        room_id = created.room_id
        await _sync(bob)
        assert isinstance(await bob.join(room_id), nio.JoinResponse)
        await _sync(alice, bob, alice, bob)
        assert alice.rooms[room_id].encrypted and bob.rooms[room_id].encrypted

        sent = await alice.room_send(room_id, "m.room.message",
                                     {"msgtype": "m.text", "body": "secret from alice"},
                                     ignore_unverified_devices=True)
        assert isinstance(sent, nio.RoomSendResponse), sent
        assert "secret from alice" in await _decrypted_texts(bob, room_id)

        await _sync(bob)
        sent = await bob.room_send(room_id, "m.room.message",
                                   {"msgtype": "m.text", "body": "secret from bob"},
                                   ignore_unverified_devices=True)
        assert isinstance(sent, nio.RoomSendResponse), sent
        assert "secret from bob" in await _decrypted_texts(alice, room_id)

        # Bob signs in on a second device; Alice's next message reaches it too.
        bob2 = await _client(base_url, "bob", f"{tmp}/bob2", register=False)
        clients.append(bob2)
        await _sync(bob2, alice, alice)
        sent = await alice.room_send(room_id, "m.room.message",
                                     {"msgtype": "m.text", "body": "for every device"},
                                     ignore_unverified_devices=True)
        assert isinstance(sent, nio.RoomSendResponse), sent
        assert "for every device" in await _decrypted_texts(bob2, room_id)
    finally:
        for c in clients:
            await c.close()


def test_encrypted_dm_between_two_users(server: ServerProcess, tmp_path: Any) -> None:
    import os

    for name in ("alice", "bob", "bob2"):
        os.makedirs(tmp_path / name, exist_ok=True)
    asyncio.run(_flow(server.client_url, str(tmp_path)))
    # The server holds ciphertext only: no plaintext body anywhere in stored events.
    config = load_config(server.config_path)
    stored = stored_events_json(config.database.engine, config.database.target)
    assert sum(1 for t, _ in stored if t == "m.room.encrypted") >= 3
    blob = "\n".join(j for _, j in stored)
    for secret in ("secret from alice", "secret from bob", "for every device"):
        assert secret not in blob
