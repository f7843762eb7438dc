"""Send-to-device messages on both engines: one device or all, idempotent per sending device
and transaction ID, in order, fetched and acknowledged the way /sync will, queued for
remote servers."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer

from homeserver.services.e2ee.to_device import ToDeviceService
from tests.support.client import Client, User
from tests.support.server import RunningServer


def to_device(hs: RunningServer) -> ToDeviceService:
    assert hs.hs.services is not None
    return hs.hs.services.e2ee.to_device


async def _send(c: Client, sender: User, txn: str, messages: Any,
                event_type: str = "m.test") -> None:
    r = await c.call("PUT", f"/sendToDevice/{event_type}/{txn}", {"messages": messages},
                     sender.access_token)
    assert r.status == 200, r.body
    assert r.json() == {}


@pytest_twisted.ensureDeferred
async def test_to_one_device_and_to_all(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice = await c.register("alice")
    bob1 = await c.register("bob")
    r = await c.login("bob", bob1.password)
    bob2 = User(bob1.user_id, r.json()["access_token"], r.json()["device_id"], bob1.password)
    td = to_device(hs)

    await _send(c, alice, "t1", {bob1.user_id: {bob1.device_id: {"n": 1}}})
    await _send(c, alice, "t2", {bob1.user_id: {"*": {"n": 2}}}, "m.room_key_request")
    # "*" and a named device together: the named one gets its own message.
    await _send(c, alice, "t3", {bob1.user_id: {"*": {"n": 3}, bob2.device_id: {"n": 33}}})

    b1 = await td.get_to_device(bob1.user_id, bob1.device_id, 0)
    assert b1.events == [
        {"sender": alice.user_id, "type": "m.test", "content": {"n": 1}},
        {"sender": alice.user_id, "type": "m.room_key_request", "content": {"n": 2}},
        {"sender": alice.user_id, "type": "m.test", "content": {"n": 3}},
    ]
    b2 = await td.get_to_device(bob2.user_id, bob2.device_id, 0)
    assert [e["content"] for e in b2.events] == [{"n": 2}, {"n": 33}]
    # Nothing for the sender.
    assert (await td.get_to_device(alice.user_id, alice.device_id, 0)).events == []


@pytest_twisted.ensureDeferred
async def test_idempotent_per_sending_device(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice = await c.register("alice")
    r = await c.login("alice", alice.password)
    alice2 = User(alice.user_id, r.json()["access_token"], r.json()["device_id"], "")
    bob = await c.register("bob")
    td = to_device(hs)
    msg = {bob.user_id: {bob.device_id: {"x": 1}}}
    await _send(c, alice, "same", msg)
    await _send(c, alice, "same", {bob.user_id: {bob.device_id: {"x": "changed"}}})
    # Retries racing each other store it once too.
    await defer.gatherResults([defer.ensureDeferred(_send(c, alice, "race", msg))
                               for _ in range(8)])
    # The same transaction ID from another device is another message.
    await _send(c, alice2, "same", msg)
    batch = await td.get_to_device(bob.user_id, bob.device_id, 0)
    assert [e["content"] for e in batch.events] == [{"x": 1}, {"x": 1}, {"x": 1}]


@pytest_twisted.ensureDeferred
async def test_order_limit_and_acknowledgement(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice = await c.register("alice")
    bob = await c.register("bob")
    td = to_device(hs)
    for i in range(7):
        await _send(c, alice, f"t{i}", {bob.user_id: {bob.device_id: {"i": i}}})

    first = await td.get_to_device(bob.user_id, bob.device_id, 0, limit=3)
    assert [e["content"]["i"] for e in first.events] == [0, 1, 2]
    # Not acknowledged yet: the same batch again (a sync retried with the old token).
    again = await td.get_to_device(bob.user_id, bob.device_id, 0, limit=3)
    assert again == first
    # The next sync acknowledges up to the position the first one returned.
    assert await td.delete_to_device_up_to(bob.user_id, bob.device_id, first.position) == 3
    rest = await td.get_to_device(bob.user_id, bob.device_id, first.position, limit=100)
    assert [e["content"]["i"] for e in rest.events] == [3, 4, 5, 6]
    assert rest.position == await td.current_position()
    await td.delete_to_device_up_to(bob.user_id, bob.device_id, rest.position)
    empty = await td.get_to_device(bob.user_id, bob.device_id, 0)
    assert empty.events == [] and empty.position == 0
    later = await td.get_to_device(bob.user_id, bob.device_id, rest.position)
    assert later.position == rest.position


@pytest_twisted.ensureDeferred
async def test_unknown_devices_dropped_remote_users_queued(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice = await c.register("alice")
    td = to_device(hs)
    await _send(c, alice, "t1", {
        "@nobody:test.local": {"*": {"a": 1}, "DEV": {"a": 2}},
        alice.user_id: {"NOSUCHDEVICE": {"a": 3}},
        "@carol:remote.example": {"CDEV": {"secret": "ciphertext"}},
        "@dave:remote.example": {"*": {"secret": "ciphertext2"}},
        "@erin:other.example": {"E": {"b": 1}},
    }, "m.room.encrypted")
    assert (await td.get_to_device(alice.user_id, "NOSUCHDEVICE", 0)).events == []
    # Remote users' messages wait in the federation outbox, one EDU per destination.
    assert hs.hs.services is not None
    queue = hs.hs.services.federation_sender.store
    assert sorted(await queue.destinations_with_pending()) == ["other.example", "remote.example"]
    (entry,) = await queue.pending("remote.example", 50, 100)
    assert entry.kind == "edu"
    assert entry.payload["edu_type"] == "m.direct_to_device"
    edu = entry.payload["content"]
    assert edu["sender"] == alice.user_id
    assert edu["type"] == "m.room.encrypted"
    assert edu["message_id"]
    assert edu["messages"] == {
        "@carol:remote.example": {"CDEV": {"secret": "ciphertext"}},
        "@dave:remote.example": {"*": {"secret": "ciphertext2"}},
    }
    assert len(await queue.pending("other.example", 50, 100)) == 1


@pytest.mark.parametrize("body", [
    {}, {"messages": []}, {"messages": {"@a:test.local": []}},
    {"messages": {"@a:test.local": {"DEV": "not an object"}}},
    {"messages": {"not-a-user-id": {"DEV": {}}}},
])
@pytest_twisted.ensureDeferred
async def test_malformed_requests(hs: RunningServer, body: Any) -> None:
    c = Client(hs.client_url)
    alice = await c.register("alice")
    r = await c.call("PUT", "/sendToDevice/m.test/t1", body, alice.access_token)
    assert r.status == 400, r.body
    assert r.json()["errcode"] in ("M_BAD_JSON", "M_INVALID_PARAM")
    # A refused request does not burn its transaction ID.
    r = await c.call("PUT", "/sendToDevice/m.test/t1",
                     {"messages": {alice.user_id: {alice.device_id: {"ok": True}}}},
                     alice.access_token)
    assert r.status == 200
    batch = await to_device(hs).get_to_device(alice.user_id, alice.device_id, 0)
    assert [e["content"] for e in batch.events] == [{"ok": True}]


@pytest_twisted.ensureDeferred
async def test_logout_drops_the_inbox(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice = await c.register("alice")
    bob = await c.register("bob")
    await _send(c, alice, "t1", {bob.user_id: {bob.device_id: {"a": 1}}})
    r = await c.call("POST", "/logout", {}, bob.access_token)
    assert r.status == 200
    assert (await to_device(hs).get_to_device(bob.user_id, bob.device_id, 0)).events == []
