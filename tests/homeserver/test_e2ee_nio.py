"""A real E2EE client (matrix-nio with vodozemac) against a real server process.

Alice's device uploads its identity and one-time keys; Bob's device queries them, claims a
one-time key (nio checks every signature and opens an Olm session with it), and shares a
Megolm room key with Alice over an Olm-encrypted to-device message. The server stores that
message in Alice's device inbox, where Alice's own Olm account decrypts it.

Not covered yet: the full encrypted-room exchange (messages in a DM decrypted by both, a new
device decrypting history, cross-signing bootstrap and backup through a client) needs rooms and
/sync, which this server does not have yet. Sync would deliver the inbox; here the test reads
it from the database.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest

from homeserver.config import DatabaseConfig
from tests.support.process import ServerProcess, write_config

nio = pytest.importorskip("nio")
pytest.importorskip("vodozemac")
from nio.crypto import ENCRYPTION_ENABLED  # noqa: E402

ROOM = "!dm:proc.test"


@pytest.fixture
def server(db_config: DatabaseConfig, tmp_path: Any) -> Iterator[ServerProcess]:
    proc = write_config(str(tmp_path), db_config.url, "--enable-registration")
    proc.start()
    try:
        yield proc
    finally:
        assert proc.stop(signal.SIGTERM) == 0


def _inbox(db: DatabaseConfig, user_id: str, device_id: str) -> list[dict[str, Any]]:
    sql = ("SELECT sender, event_type, content FROM to_device_inbox"
           " WHERE user_id = {p} AND device_id = {p} ORDER BY stream_id")
    if db.engine == "sqlite":
        with sqlite3.connect(db.target) as conn:
            rows = conn.execute(sql.format(p="?"), (user_id, device_id)).fetchall()
    else:
        import psycopg

        with psycopg.connect(db.target) as pconn:
            rows = pconn.execute(sql.format(p="%s"), (user_id, device_id)).fetchall()
    return [{"sender": r[0], "type": r[1], "content": json.loads(r[2])} for r in rows]


async def _client(base_url: str, name: str, store: str) -> Any:
    config = nio.AsyncClientConfig(encryption_enabled=True, store_sync_tokens=False)
    client = nio.AsyncClient(base_url, name, store_path=store, config=config)
    resp = await client.register(name, f"{name}-password", device_name=f"{name}'s laptop")
    assert isinstance(resp, nio.RegisterResponse), resp
    assert client.olm is not None, "nio did not load its Olm account"
    return client


async def _flow(base_url: str, db: DatabaseConfig, store: str) -> None:
    alice = await _client(base_url, "alice", store)
    bob = await _client(base_url, "bob", store)
    try:
        # 1. Both devices publish identity keys and one-time keys.
        for client in (alice, bob):
            assert client.should_upload_keys
            resp = await client.keys_upload()
            assert isinstance(resp, nio.KeysUploadResponse), resp
            assert resp.signed_curve25519_count == client.olm.account.max_one_time_keys
            assert client.olm_account_shared
            assert not client.should_upload_keys

        # 2. Bob's device downloads Alice's device keys (nio verifies their signature).
        bob.olm.add_changed_users({alice.user_id})
        resp = await bob.keys_query()
        assert isinstance(resp, nio.KeysQueryResponse), resp
        device = bob.device_store[alice.user_id][alice.device_id]
        assert device.ed25519 == alice.olm.account.identity_keys["ed25519"]
        assert device.curve25519 == alice.olm.account.identity_keys["curve25519"]
        assert device.display_name == "alice's laptop"

        # 3. Bob claims one of Alice's one-time keys; nio opens an Olm session with it.
        resp = await bob.keys_claim({alice.user_id: [alice.device_id]})
        assert isinstance(resp, nio.KeysClaimResponse), resp
        (key,) = resp.one_time_keys[alice.user_id][alice.device_id].values()
        assert bob.olm.session_store.get(device.curve25519) is not None
        # Claimed once: the next claim gets another key.
        again = await bob.keys_claim({alice.user_id: [alice.device_id]})
        assert isinstance(again, nio.KeysClaimResponse)
        (other,) = again.one_time_keys[alice.user_id][alice.device_id].values()
        assert other["key"] != key["key"]

        # 4. Bob shares a Megolm room key with Alice: an Olm-encrypted to-device message.
        room = nio.MatrixRoom(ROOM, bob.user_id, encrypted=True)
        room.add_member(alice.user_id, "Alice", None)
        room.add_member(bob.user_id, "Bob", None)
        bob.rooms[ROOM] = room
        resp = await bob.share_group_session(ROOM, ignore_unverified_devices=True)
        assert isinstance(resp, nio.ShareGroupSessionResponse), resp

        # 5. The server stored it for Alice's device only, as ciphertext.
        inbox = _inbox(db, alice.user_id, alice.device_id)
        assert len(inbox) == 1
        message = inbox[0]
        assert message["sender"] == bob.user_id
        assert message["type"] == "m.room.encrypted"
        content = message["content"]
        assert content["algorithm"] == "m.olm.v1.curve25519-aes-sha2"
        assert set(content["ciphertext"]) == {device.curve25519}
        assert "room_key" not in json.dumps(content)  # no plaintext reached the server
        assert _inbox(db, bob.user_id, bob.device_id) == []

        # 6. Alice's device decrypts what the server delivered and holds the room key.
        event = nio.EncryptedToDeviceEvent.parse_event(message)
        decrypted = alice.olm.decrypt_event(event)
        assert isinstance(decrypted, nio.RoomKeyEvent), decrypted
        assert decrypted.room_id == ROOM
        assert alice.olm.inbound_group_store.get(
            ROOM, bob.olm.account.identity_keys["curve25519"], decrypted.session_id
        ) is not None
    finally:
        await alice.close()
        await bob.close()


@pytest.mark.skipif(not ENCRYPTION_ENABLED, reason="matrix-nio was installed without [e2e]")
def test_nio_keys_and_to_device(server: ServerProcess, db_config: DatabaseConfig,
                                tmp_path: Any) -> None:
    store = tmp_path / "nio-store"
    store.mkdir()
    asyncio.run(_flow(server.client_url, db_config, str(store)))
