"""Ephemeral events across two real servers, as the other server's client sees them in
/sync: typing (start and stop), read receipts, and presence — which goes only to servers
sharing a room with the user."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest_twisted

from tests.support.client import Client, User, q
from tests.support.server import RunningServer
from tests.support.sync import sync


async def _sync_until(c: Client, user: User, since: str,
                      found: Callable[[dict[str, Any]], bool]) -> str:
    """Long-poll /sync until a response satisfies ``found``; the next batch token."""
    for _ in range(20):
        body = await sync(c, user, since, timeout=2000)
        since = body["next_batch"]
        if found(body):
            return since
    raise AssertionError("not seen in /sync")


def _ephemeral(body: dict[str, Any], room_id: str, kind: str) -> list[dict[str, Any]]:
    room = body.get("rooms", {}).get("join", {}).get(room_id, {})
    return [e for e in room.get("ephemeral", {}).get("events", []) if e["type"] == kind]


def _presence(body: dict[str, Any], user_id: str) -> list[dict[str, Any]]:
    return [e for e in body.get("presence", {}).get("events", []) if e["sender"] == user_id]


@pytest_twisted.ensureDeferred
async def test_typing_receipts_and_presence_reach_the_other_servers_sync(
    pair: tuple[RunningServer, RunningServer],
) -> None:
    a, b = pair
    ca, cb = Client(a.client_url), Client(b.client_url)
    alice, bob = await ca.register("alice"), await cb.register("bob")
    # Every m.presence entry b.test receives, whether or not it keeps it.
    assert b.hs.services is not None
    presence_b = b.hs.services.presence
    received: list[str] = []
    keep = presence_b.receive_remote

    async def spy(user_id: str, update: dict[str, Any]) -> bool:
        received.append(user_id)
        return await keep(user_id, update)

    presence_b.receive_remote = spy  # type: ignore[method-assign]

    # No room shared yet: alice's presence is not sent to b.test.
    r = await ca.call("PUT", f"/presence/{q(alice.user_id)}/status",
                      {"presence": "online", "status_msg": "before"}, alice.access_token)
    assert r.status == 200, r.body

    r = await ca.call("POST", "/createRoom", {"preset": "public_chat"}, alice.access_token)
    room_id = r.json()["room_id"]
    r = await cb.call("POST", f"/join/{q(room_id)}?server_name=a.test", {}, bob.access_token)
    assert r.status == 200, r.body
    since = (await sync(cb, bob))["next_batch"]
    r = await ca.call("PUT", f"/rooms/{q(room_id)}/send/m.room.message/t1",
                      {"msgtype": "m.text", "body": "hi"}, alice.access_token)
    event_id = r.json()["event_id"]

    def has_message(body: dict[str, Any]) -> bool:
        timeline = body.get("rooms", {}).get("join", {}).get(room_id, {}).get("timeline", {})
        return any(e["event_id"] == event_id for e in timeline.get("events", []))

    since = await _sync_until(cb, bob, since, has_message)
    # Anything queued for b.test before the message has arrived by now: no presence came.
    assert alice.user_id not in received
    assert alice.user_id not in await presence_b.store.get([alice.user_id])

    # Typing starts and stops in bob's sync on b.test.
    r = await ca.call("PUT", f"/rooms/{q(room_id)}/typing/{q(alice.user_id)}",
                      {"typing": True, "timeout": 30000}, alice.access_token)
    assert r.status == 200, r.body
    since = await _sync_until(cb, bob, since, lambda body: any(
        e["content"]["user_ids"] == [alice.user_id]
        for e in _ephemeral(body, room_id, "m.typing")))
    r = await ca.call("PUT", f"/rooms/{q(room_id)}/typing/{q(alice.user_id)}",
                      {"typing": False}, alice.access_token)
    since = await _sync_until(cb, bob, since, lambda body: any(
        e["content"]["user_ids"] == [] for e in _ephemeral(body, room_id, "m.typing")))

    # alice's read receipt.
    r = await ca.call("POST", f"/rooms/{q(room_id)}/receipt/m.read/{q(event_id)}", {},
                      alice.access_token)
    assert r.status == 200, r.body
    since = await _sync_until(cb, bob, since, lambda body: any(
        alice.user_id in e["content"].get(event_id, {}).get("m.read", {})
        for e in _ephemeral(body, room_id, "m.receipt")))

    # Now that they share a room, alice's presence reaches bob.
    r = await ca.call("PUT", f"/presence/{q(alice.user_id)}/status",
                      {"presence": "unavailable", "status_msg": "after"}, alice.access_token)
    assert r.status == 200, r.body
    await _sync_until(cb, bob, since, lambda body: any(
        e["content"].get("status_msg") == "after" and e["content"]["presence"] == "unavailable"
        for e in _presence(body, alice.user_id)))
    assert alice.user_id in received
