"""mautrix-python — the library the mautrix bridges are built on — as a real application
service against a real server process: its AppService receives our transactions, its
IntentAPI registers a puppet, sets its profile, joins it to a portal room and sends as it
with timestamp massaging; a Matrix user (matrix-nio) answers and the bridge sees it, typing
included; the ping round-trips."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
from typing import Any

import pytest
import yaml

from homeserver.config import DatabaseConfig
from tests.support.process import free_port, write_config

appservice = pytest.importorskip("mautrix.appservice")
nio = pytest.importorskip("nio")

SERVER = "proc.test"
# mautrix 0.21 still hands aiohttp the loop argument aiohttp deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:loop argument is deprecated:DeprecationWarning")


async def _until(check: Any, what: str, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def _flow(hs_url: str, as_port: int, tokens: dict[str, str]) -> None:
    from mautrix.types import EventType, UserID

    bridge = appservice.AppService(
        server=hs_url, domain=SERVER, as_token=tokens["as"], hs_token=tokens["hs"],
        bot_localpart="instagrambot", id="instagram", ephemeral_events=True,
    )
    received: list[Any] = []

    @bridge.matrix_event_handler
    async def on_event(evt: Any) -> None:
        received.append(evt)

    await bridge.start("127.0.0.1", as_port)
    alice = nio.AsyncClient(hs_url, "alice")
    try:
        bot = bridge.intent
        await bot.ensure_registered()
        assert await bridge.ping_self("meow") >= 0

        puppet = bot.user(UserID(f"@instagram_bob:{SERVER}"))
        await puppet.ensure_registered()
        await puppet.set_displayname("Bob (Instagram)")
        portal = await bot.create_room(name="Bob (Instagram)", is_direct=True)
        await puppet.ensure_joined(portal)
        sent = [await puppet.send_text(portal, f"from instagram {i}",
                                       timestamp=1_700_000_000_000 + i) for i in range(3)]

        assert isinstance(await alice.register("alice", "alice-password"),
                          nio.RegisterResponse)
        await bot.invite_user(portal, UserID(alice.user_id))
        assert isinstance(await alice.join(portal), nio.JoinResponse)
        answer = await alice.room_send(portal, "m.room.message",
                                       {"msgtype": "m.text", "body": "hi bob"})
        assert isinstance(answer, nio.RoomSendResponse), answer
        await alice.room_typing(portal, True, 30000)

        def messages() -> list[Any]:
            return [e for e in received if e.type == EventType.ROOM_MESSAGE]

        await _until(lambda: len(messages()) >= 4, "the messages")
        assert [e.event_id for e in messages()] == [*sent, answer.event_id]
        assert [e.timestamp for e in messages()[:3]] == [1_700_000_000_000 + i for i in range(3)]
        assert messages()[3].sender == alice.user_id
        member = [e for e in received if e.type == EventType.ROOM_MEMBER
                  and e.state_key == puppet.mxid][-1]
        assert member.content.displayname == "Bob (Instagram)"
        await _until(lambda: any(e.type == EventType.TYPING and alice.user_id in e.content.user_ids
                                 for e in received), "typing")
    finally:
        await alice.close()
        await bridge.stop()


def test_mautrix_bridge_against_a_server_process(db_config: DatabaseConfig,
                                                 tmp_path: Any) -> None:
    as_port = free_port()
    tokens = {"as": secrets.token_hex(16), "hs": secrets.token_hex(16)}
    registration = os.path.join(str(tmp_path), "instagram.yaml")
    with open(registration, "w") as f:
        # As mautrix bridges generate it.
        yaml.safe_dump({
            "id": "instagram", "url": f"http://127.0.0.1:{as_port}",
            "as_token": tokens["as"], "hs_token": tokens["hs"],
            "sender_localpart": "instagrambot", "rate_limited": False,
            "de.sorunome.msc2409.push_ephemeral": True, "receive_ephemeral": True,
            "namespaces": {"users": [
                {"regex": rf"^@instagrambot:{SERVER.replace('.', chr(92) + '.')}$",
                 "exclusive": True},
                {"regex": rf"^@instagram_.*:{SERVER.replace('.', chr(92) + '.')}$",
                 "exclusive": True}]},
        }, f)
    server = write_config(str(tmp_path), db_config.url, "--enable-registration",
                          "--dev-federation", "--app-service", registration)
    server.start()
    try:
        asyncio.run(_flow(server.client_url, as_port, tokens))
    finally:
        assert server.stop(signal.SIGTERM) == 0
