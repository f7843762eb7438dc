"""Presence on both engines: set and read, shared with those who share a room (and nobody
else), online while syncing, idle and offline by timers, back online on activity, the
set_presence parameter, and presence switched off in the config."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest_twisted
from twisted.internet import defer, reactor, task

from homeserver.config import DatabaseConfig
from tests.support.client import Client, User, q
from tests.support.server import RunningServer, start_server
from tests.support.sync import create_room, join, send, sync

FAST = {"enabled": True, "idle_timeout_ms": 600, "offline_timeout_ms": 400}


def sleep(seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)


@pytest_twisted.async_yield_fixture
async def fast(db_config: DatabaseConfig, tmp_path: Any) -> AsyncIterator[RunningServer]:
    """A server whose presence timers run in fractions of a second."""
    server = await start_server(str(tmp_path), db_config, presence=FAST)
    try:
        yield server
    finally:
        await server.stop()


@pytest_twisted.async_yield_fixture
async def off(db_config: DatabaseConfig, tmp_path: Any) -> AsyncIterator[RunningServer]:
    server = await start_server(str(tmp_path), db_config, presence={"enabled": False})
    try:
        yield server
    finally:
        await server.stop()


async def _get(c: Client, viewer: User, user: User, expect: int = 200) -> dict[str, Any]:
    r = await c.call("GET", f"/presence/{q(user.user_id)}/status", token=viewer.access_token)
    assert r.status == expect, r.body
    body: dict[str, Any] = r.json()
    return body


async def _put(c: Client, user: User, body: Any, target: User | None = None,
               expect: int = 200) -> None:
    r = await c.call("PUT", f"/presence/{q((target or user).user_id)}/status", body,
                     token=user.access_token)
    assert r.status == expect, r.body


def _presence(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["sender"]: e["content"] for e in body["presence"]["events"]}


async def _until(c: Client, user: User, since: str, check: Any,
                 seconds: float = 5.0) -> tuple[dict[str, Any], str]:
    """Long-poll until a presence update satisfies ``check``."""
    deadline = reactor.seconds() + seconds  # type: ignore[attr-defined]
    while reactor.seconds() < deadline:  # type: ignore[attr-defined]
        body = await sync(c, user, since, timeout=1000, set_presence="offline")
        since = body["next_batch"]
        found = _presence(body)
        if check(found):
            return found, since
    raise AssertionError("no matching presence update")


@pytest_twisted.ensureDeferred
async def test_set_get_and_who_may_see(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, bob, carol = (await c.register("alice"), await c.register("bob"),
                         await c.register("carol"))
    room = await create_room(c, alice, preset="public_chat")
    await join(c, bob, room)
    since = (await sync(c, bob, set_presence="offline"))["next_batch"]
    await _put(c, alice, {"presence": "online", "status_msg": "Making tea"})
    own = await _get(c, alice, alice)
    assert own["presence"] == "online" and own["status_msg"] == "Making tea"
    assert own["currently_active"] is True and own["last_active_ago"] < 5000
    assert (await _get(c, bob, alice))["status_msg"] == "Making tea"
    await _get(c, carol, alice, expect=403)  # shares no room with alice
    await _put(c, bob, {"presence": "online"}, target=alice, expect=403)
    await _put(c, alice, {"presence": "away"}, expect=400)
    await _put(c, alice, {"presence": "online", "status_msg": 5}, expect=400)

    found, since = await _until(c, bob, since, lambda p: alice.user_id in p)
    assert found[alice.user_id]["presence"] == "online"
    assert found[alice.user_id]["status_msg"] == "Making tea"
    # Carol shares no room with alice: nothing about her.
    assert alice.user_id not in _presence(await sync(c, carol, set_presence="offline"))

    await _put(c, alice, {"presence": "unavailable"})
    found, since = await _until(c, bob, since, lambda p: alice.user_id in p)
    assert found[alice.user_id]["presence"] == "unavailable"
    # An initial sync includes room-mates' presence.
    assert _presence(await sync(c, bob, set_presence="offline"))[alice.user_id][
        "presence"] == "unavailable"


@pytest_twisted.ensureDeferred
async def test_timers_and_activity(fast: RunningServer) -> None:
    c = Client(fast.client_url)
    alice, bob = await c.register("alice"), await c.register("bob")
    room = await create_room(c, alice, preset="public_chat")
    await join(c, bob, room)
    watch = (await sync(c, bob, set_presence="offline"))["next_batch"]

    # Syncing brings alice online.
    await sync(c, alice)
    assert (await _get(c, bob, alice))["presence"] == "online"
    found, watch = await _until(c, bob, watch,
                                lambda p: p.get(alice.user_id, {}).get("presence") == "online")

    # Still syncing but doing nothing: idle after the idle timeout.
    poll = defer.ensureDeferred(sync(c, alice, timeout=2500, set_presence="online",
                                     since=(await sync(c, alice))["next_batch"]))
    found, watch = await _until(
        c, bob, watch, lambda p: p.get(alice.user_id, {}).get("presence") == "unavailable"
    )
    assert (await _get(c, bob, alice))["presence"] == "unavailable"
    await poll
    # Activity (sending a message) brings her back online.
    await send(c, alice, room, "back")
    found, watch = await _until(c, bob, watch,
                                lambda p: p.get(alice.user_id, {}).get("presence") == "online")
    assert found[alice.user_id]["currently_active"] is True

    # No sync for longer than the offline timeout: offline.
    found, watch = await _until(c, bob, watch,
                                lambda p: p.get(alice.user_id, {}).get("presence") == "offline")
    assert (await _get(c, bob, alice))["presence"] == "offline"

    # set_presence=offline does not bring her online; unavailable makes her idle.
    await sync(c, alice, set_presence="offline")
    assert (await _get(c, bob, alice))["presence"] == "offline"
    await sync(c, alice, set_presence="unavailable")
    assert (await _get(c, bob, alice))["presence"] == "unavailable"


@pytest_twisted.ensureDeferred
async def test_presence_switched_off(off: RunningServer) -> None:
    c = Client(off.client_url)
    alice, bob = await c.register("alice"), await c.register("bob")
    room = await create_room(c, alice, preset="public_chat")
    await join(c, bob, room)
    since = (await sync(c, bob))["next_batch"]
    await _put(c, alice, {"presence": "online", "status_msg": "hidden"})
    await sync(c, alice)
    assert await _get(c, bob, alice) == {"presence": "offline"}
    await _put(c, alice, {"presence": "nope"}, expect=400)  # still validated
    body = await sync(c, bob, since, timeout=300)
    assert body["presence"]["events"] == []
    assert _presence(await sync(c, bob)) == {}
