"""matrix-nio against a real server process: create a room, invite, join, exchange messages,
paginate back."""

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


async def _user(base_url: str, name: str) -> Any:
    client = nio.AsyncClient(base_url, name)
    resp = await client.register(name, f"{name}-password")
    assert isinstance(resp, nio.RegisterResponse), resp
    return client


async def _flow(base_url: str) -> None:
    alice = await _user(base_url, "alice")
    bob = await _user(base_url, "bob")
    try:
        created = await alice.room_create(name="Tea", invite=[bob.user_id])
        assert isinstance(created, nio.RoomCreateResponse), created
        room_id = created.room_id
        joined = await bob.join(room_id)
        assert isinstance(joined, nio.JoinResponse), joined

        sent = []
        for i in range(6):
            sender = alice if i % 2 == 0 else bob
            resp = await sender.room_send(room_id, "m.room.message",
                                          {"msgtype": "m.text", "body": f"msg {i}"})
            assert isinstance(resp, nio.RoomSendResponse), resp
            sent.append(resp.event_id)

        # Paginate back from the newest event, three at a time.
        members = await bob.joined_members(room_id)
        assert isinstance(members, nio.JoinedMembersResponse), members
        assert {m.user_id for m in members.members} == {alice.user_id, bob.user_id}

        seen: list[str] = []
        start = ""
        for _ in range(10):
            page = await bob.room_messages(room_id, start=start, limit=3)
            assert isinstance(page, nio.RoomMessagesResponse), page
            seen += [e.event_id for e in page.chunk if isinstance(e, nio.RoomMessageText)]
            if not page.end or not page.chunk:
                break
            start = page.end
        assert seen == sent[::-1]
    finally:
        await alice.close()
        await bob.close()


def test_nio_room_flow(server: ServerProcess) -> None:
    asyncio.run(_flow(server.client_url))
