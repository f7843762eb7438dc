"""matrix-nio against a real server process: a long-polling sync loop sees messages, typing
notifications, read receipts and read markers as they happen."""

from __future__ import annotations

import asyncio
import signal
import time
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


async def _user(base_url: str, name: str) -> Any:
    client = nio.AsyncClient(base_url, name)
    resp = await client.register(name, f"{name}-password")
    assert isinstance(resp, nio.RegisterResponse), resp
    return client


class Watcher:
    """Bob's sync loop: what it has seen, and how long each thing took to arrive."""

    def __init__(self, client: Any, room_id: str) -> None:
        self.client = client
        self.room_id = room_id
        self.messages: list[tuple[str, float]] = []
        self.typing: list[list[str]] = []
        self.receipts: list[tuple[str, str, str]] = []
        self.fully_read: list[str] = []
        self.stop = False
        self.syncs = 0

    async def run(self, since: str) -> None:
        while not self.stop:
            resp = await self.client.sync(timeout=2000, since=since)
            assert isinstance(resp, nio.SyncResponse), resp
            self.syncs += 1
            since = resp.next_batch
            room = resp.rooms.join.get(self.room_id)
            if room is None:
                continue
            now = time.monotonic()
            for event in room.timeline.events:
                if isinstance(event, nio.RoomMessageText):
                    self.messages.append((event.body, now))
            for event in room.ephemeral:
                if isinstance(event, nio.TypingNoticeEvent):
                    self.typing.append(list(event.users))
                elif isinstance(event, nio.ReceiptEvent):
                    for r in event.receipts:
                        self.receipts.append((r.event_id, r.receipt_type, r.user_id))
            for event in room.account_data:
                if isinstance(event, nio.FullyReadEvent):
                    self.fully_read.append(event.event_id)


async def _eventually(check: Any, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("timed out waiting")


async def _flow(base_url: str) -> None:
    alice = await _user(base_url, "alice")
    bob = await _user(base_url, "bob")
    try:
        created = await alice.room_create(name="Live", invite=[bob.user_id])
        assert isinstance(created, nio.RoomCreateResponse), created
        room_id = created.room_id
        assert isinstance(await bob.join(room_id), nio.JoinResponse)
        first = await bob.sync(timeout=0, full_state=True)
        assert isinstance(first, nio.SyncResponse), first
        assert room_id in first.rooms.join

        watcher = Watcher(bob, room_id)
        loop = asyncio.ensure_future(watcher.run(first.next_batch))
        await asyncio.sleep(0.3)  # bob's request is now waiting

        latencies = []
        event_ids = []
        for i in range(5):
            sent_at = time.monotonic()
            resp = await alice.room_send(room_id, "m.room.message",
                                         {"msgtype": "m.text", "body": f"live {i}"})
            assert isinstance(resp, nio.RoomSendResponse), resp
            event_ids.append(resp.event_id)
            await _eventually(lambda i=i: len(watcher.messages) > i)
            latencies.append(watcher.messages[i][1] - sent_at)
        assert [m for m, _ in watcher.messages] == [f"live {i}" for i in range(5)]
        assert max(latencies) < 2.0, latencies

        typing = await alice.room_typing(room_id, True, timeout=30000)
        assert isinstance(typing, nio.RoomTypingResponse), typing
        await _eventually(lambda: [alice.user_id] in watcher.typing)
        typing = await alice.room_typing(room_id, False)
        await _eventually(lambda: watcher.typing and watcher.typing[-1] == [])

        receipt = await alice.update_receipt_marker(room_id, event_ids[-1])
        assert isinstance(receipt, nio.UpdateReceiptMarkerResponse), receipt
        await _eventually(
            lambda: (event_ids[-1], "m.read", alice.user_id) in watcher.receipts
        )
        markers = await bob.room_read_markers(room_id, event_ids[-1], event_ids[-1])
        assert isinstance(markers, nio.RoomReadMarkersResponse), markers
        await _eventually(lambda: event_ids[-1] in watcher.fully_read)
        await _eventually(
            lambda: (event_ids[-1], "m.read", bob.user_id) in watcher.receipts
        )
        # Long-polling, not busy-looping: a handful of requests for all of that.
        assert watcher.syncs < 40, watcher.syncs
        watcher.stop = True
        await asyncio.wait_for(loop, 10)
    finally:
        await alice.close()
        await bob.close()


def test_nio_sync_loop_sees_messages_typing_and_receipts(server: ServerProcess) -> None:
    asyncio.run(_flow(server.client_url))
