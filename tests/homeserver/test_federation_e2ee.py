"""End-to-end encryption across two real servers: device keys queried and one-time keys
claimed through the remote user's server, device lists served to peers, and to-device
messages delivered through the federation outbox."""

from __future__ import annotations

from typing import Any

import pytest_twisted

from tests.homeserver.test_federation_rooms import eventually, services
from tests.support.client import Client, q
from tests.support.e2ee import Device
from tests.support.server import RunningServer


@pytest_twisted.ensureDeferred
async def test_keys_query_claim_and_to_device_across_servers(
    pair: tuple[RunningServer, RunningServer],
) -> None:
    a, b = pair
    ca, cb = Client(a.client_url), Client(b.client_url)
    alice = Device(await ca.register("alice"))
    bob = Device(await cb.register("bob"))
    otks = alice.one_time_keys(2)
    await alice.upload(ca, {"device_keys": alice.device_keys(), "one_time_keys": otks})

    # bob asks his own server, which asks a.test.
    r = await cb.call("POST", "/keys/query",
                      {"device_keys": {alice.user_id: []}}, bob.token)
    assert r.status == 200, r.body
    assert r.json()["failures"] == {}
    keys = r.json()["device_keys"][alice.user_id][alice.device_id]
    keys.pop("unsigned", None)
    assert keys == alice.device_keys()

    r = await cb.call("POST", "/keys/claim",
                      {"one_time_keys": {alice.user_id: {alice.device_id: "signed_curve25519"}}},
                      bob.token)
    assert r.status == 200, r.body
    claimed = r.json()["one_time_keys"][alice.user_id][alice.device_id]
    assert len(claimed) == 1 and set(claimed) <= set(otks)
    # Claimed once: a.test has one key left.
    counts = await services(a).e2ee.keys.one_time_key_counts(alice.user_id, alice.device_id)
    assert counts == {"signed_curve25519": 1}

    # a.test answers for its own users only.
    sb = services(b)
    devices = await sb.federation_client.get_json(
        "a.test", f"/_matrix/federation/v1/user/devices/{q(alice.user_id)}")
    assert devices["user_id"] == alice.user_id
    assert [d["device_id"] for d in devices["devices"]] == [alice.device_id]
    answer = await sb.federation_client.post_json(
        "a.test", "/_matrix/federation/v1/user/keys/query",
        {"device_keys": {bob.user_id: []}})
    assert answer["device_keys"] == {}

    # A to-device message from bob reaches alice's device through the federation outbox.
    r = await cb.call("PUT", "/sendToDevice/m.room.encrypted/td1",
                      {"messages": {alice.user_id: {alice.device_id: {"ciphertext": "x1"}}}},
                      bob.token)
    assert r.status == 200, r.body
    # A retried request is not delivered twice.
    r = await cb.call("PUT", "/sendToDevice/m.room.encrypted/td1",
                      {"messages": {alice.user_id: {alice.device_id: {"ciphertext": "x1"}}}},
                      bob.token)
    assert r.status == 200
    td = services(a).e2ee.to_device

    async def delivered() -> bool:
        got = await td.get_to_device(alice.user_id, alice.device_id, 0)
        return len(got.events) >= 1

    await eventually(delivered)
    got: Any = await td.get_to_device(alice.user_id, alice.device_id, 0)
    assert [e["content"] for e in got.events] == [{"ciphertext": "x1"}]
    assert got.events[0]["sender"] == bob.user_id
    assert got.events[0]["type"] == "m.room.encrypted"

    # The outbox row goes once a.test acknowledged the transaction (just after delivery).
    async def outbox_empty() -> bool:
        return await sb.federation_sender.store.pending("a.test", 50, 100) == []

    await eventually(outbox_empty)


@pytest_twisted.ensureDeferred
async def test_device_list_updates_reach_servers_sharing_a_room(
    pair: tuple[RunningServer, RunningServer],
) -> None:
    from tests.homeserver.test_federation_rooms import joined_room
    from tests.support.rooms import count

    a, b = pair
    ca, _cb, alice, _bob, room_id = await joined_room(a, b)
    sa, sb = services(a), services(b)

    async def joined_on_a() -> bool:
        return "b.test" in await sa.federation.joined_servers(room_id)

    await eventually(joined_on_a)
    before = await count(sb, "device_list_changes", "user_id = ?", (alice.user_id,))
    device = Device(alice)
    await device.upload(ca, {"device_keys": device.device_keys()})

    async def noted_on_b() -> bool:
        return await count(sb, "device_list_changes", "user_id = ?",
                           (alice.user_id,)) > before

    await eventually(noted_on_b)
