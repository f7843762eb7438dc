"""Three of our homeservers (a.test, b.test, c.test) over TLS on loopback, as three brands
talking to each other: a DM between two of them, a group room spanning all three through
invites across servers, messages, edits, redactions, name/topic and power-level changes,
typing, receipts, profiles, device keys and to-device messages; then c.test stops while the
others keep talking and, restarted on the same database, catches up with nothing lost."""

from __future__ import annotations

import os
from typing import Any

import pytest_twisted

from tests.homeserver.test_federation_rooms import (
    eventually,
    messages,
    send_text,
    services,
    state_of,
)
from tests.support.client import Client, User, q
from tests.support.databases import fresh_database
from tests.support.e2ee import Device
from tests.support.server import RunningServer, start_many, start_server
from tests.support.sync import sync

NAMES = ("a.test", "b.test", "c.test")


async def join_invited(c: Client, user: User, room_id: str) -> None:
    """Wait for the invite in /sync, then accept it."""

    async def invited() -> bool:
        return room_id in (await sync(c, user))["rooms"]["invite"]

    await eventually(invited)
    r = await c.call("POST", f"/rooms/{q(room_id)}/join", {}, user.access_token)
    assert r.status == 200, r.body


async def everywhere(clients: list[tuple[Client, User]], room_id: str,
                     expected: list[str | None]) -> None:
    """Every server shows exactly these messages, in this order."""

    async def done() -> bool:
        for c, u in clients:
            if await messages(c, u, room_id) != expected:
                return False
        return True

    await eventually(done, timeout=20)


@pytest_twisted.ensureDeferred
async def test_three_servers(engine: str, tmp_path: Any) -> None:
    with fresh_database(engine, str(tmp_path / "da")) as db_a, \
            fresh_database(engine, str(tmp_path / "db")) as db_b, \
            fresh_database(engine, str(tmp_path / "dc")) as db_c:
        dbs = dict(zip(NAMES, (db_a, db_b, db_c), strict=True))
        servers = await start_many(str(tmp_path), dbs)
        try:
            await _scenario(servers, dbs, str(tmp_path))
        finally:
            for server in servers.values():
                await server.stop()


async def _scenario(servers: dict[str, RunningServer], dbs: dict[str, Any],
                    tmp: str) -> None:
    a, b, c = (servers[n] for n in NAMES)
    ca, cb, cc = Client(a.client_url), Client(b.client_url), Client(c.client_url)
    alice = await ca.register("alice")
    bob = await cb.register("bob")
    carol = await cc.register("carol")
    for cl, u, name in ((ca, alice, "Alice A"), (cc, carol, "Carol of C")):
        r = await cl.call("PUT", f"/profile/{q(u.user_id)}/displayname",
                          {"displayname": name}, u.access_token)
        assert r.status == 200, r.body

    # -- a DM between a.test and b.test ------------------------------------------------------
    r = await ca.call("POST", "/createRoom",
                      {"preset": "trusted_private_chat", "is_direct": True,
                       "invite": [bob.user_id]}, alice.access_token)
    assert r.status == 200, r.body
    dm = r.json()["room_id"]
    await join_invited(cb, bob, dm)
    await send_text(ca, alice, dm, "hi bob", "dm1")
    await everywhere([(ca, alice), (cb, bob)], dm, ["hi bob"])
    await send_text(cb, bob, dm, "hi alice", "dm2")
    await everywhere([(ca, alice), (cb, bob)], dm, ["hi bob", "hi alice"])
    member = await state_of(cb, bob, dm, "m.room.member", bob.user_id)
    assert member["membership"] == "join"
    assert "c.test" not in await services(a).federation.joined_servers(dm)

    # -- a group room across all three ---------------------------------------------------------
    r = await ca.call("POST", "/createRoom",
                      {"preset": "private_chat", "name": "Brands",
                       "invite": [bob.user_id, carol.user_id]}, alice.access_token)
    assert r.status == 200, r.body
    room = r.json()["room_id"]
    await join_invited(cb, bob, room)
    await join_invited(cc, carol, room)
    everyone = [(ca, alice), (cb, bob), (cc, carol)]

    async def all_joined() -> bool:
        for s in (a, b, c):
            if await services(s).federation.joined_servers(room) != set(NAMES):
                return False
        return True

    await eventually(all_joined)
    said: list[str | None] = []
    for i, (cl, u) in enumerate([(ca, alice), (cb, bob), (cc, carol), (cb, bob)]):
        said.append(f"{u.user_id} says {i}")
        await send_text(cl, u, room, said[-1], f"g{i}")
        await everywhere(everyone, room, said)
    carol_said = await send_text(cc, carol, room, "a message to redact", "g-r")
    said.append("a message to redact")
    await everywhere(everyone, room, said)

    # An edit by bob, a redaction by alice (the room's admin) of carol's message.
    bob_msgs = await cb.call("GET", f"/rooms/{q(room)}/messages?dir=b&limit=20", None,
                             bob.access_token)
    original = next(e["event_id"] for e in bob_msgs.json()["chunk"]
                    if e["content"].get("body") == said[1])
    r = await cb.call("PUT", f"/rooms/{q(room)}/send/m.room.message/edit1",
                      {"msgtype": "m.text", "body": "* edited",
                       "m.new_content": {"msgtype": "m.text", "body": "edited"},
                       "m.relates_to": {"rel_type": "m.replace", "event_id": original}},
                      bob.access_token)
    assert r.status == 200, r.body
    edit_id = r.json()["event_id"]
    r = await ca.call("PUT", f"/rooms/{q(room)}/redact/{q(carol_said)}/red1",
                      {"reason": "tidy"}, alice.access_token)
    assert r.status == 200, r.body

    async def edit_and_redaction_everywhere() -> bool:
        for cl, u in everyone:
            r = await cl.call("GET", f"/rooms/{q(room)}/event/{q(carol_said)}", None,
                              u.access_token)
            if r.status != 200 or r.json()["content"] != {}:
                return False
            r = await cl.call("GET", f"/rooms/{q(room)}/event/{q(edit_id)}", None,
                              u.access_token)
            if r.status != 200:
                return False
        return True

    await eventually(edit_and_redaction_everywhere)
    # From here on the history shows the edit event and the redacted message's empty body.
    said[said.index("a message to redact")] = None
    said.append("* edited")
    await everywhere(everyone, room, said)
    r = await cc.call("GET", f"/_matrix/client/v1/rooms/{q(room)}/relations/{q(original)}"
                      "/m.replace", None, carol.access_token, raw_path=True)
    assert r.status == 200, r.body
    assert [e["event_id"] for e in r.json()["chunk"]] == [edit_id]

    # Name, topic and power levels.
    r = await ca.call("PUT", f"/rooms/{q(room)}/state/m.room.name", {"name": "Brands United"},
                      alice.access_token)
    assert r.status == 200, r.body
    r = await cc.call("PUT", f"/rooms/{q(room)}/state/m.room.topic", {"topic": "nope"},
                      carol.access_token)
    assert r.status == 403  # carol has no power for that yet
    pl = await state_of(ca, alice, room, "m.room.power_levels")
    pl["users"][carol.user_id] = 50
    r = await ca.call("PUT", f"/rooms/{q(room)}/state/m.room.power_levels", pl,
                      alice.access_token)
    assert r.status == 200, r.body

    async def carol_promoted_on_c() -> bool:
        levels = await state_of(cc, carol, room, "m.room.power_levels")
        return levels is not None and levels["users"].get(carol.user_id) == 50

    await eventually(carol_promoted_on_c)
    r = await cc.call("PUT", f"/rooms/{q(room)}/state/m.room.topic", {"topic": "three brands"},
                      carol.access_token)
    assert r.status == 200, r.body

    async def state_everywhere() -> bool:
        for cl, u in everyone:
            name = await state_of(cl, u, room, "m.room.name")
            topic = await state_of(cl, u, room, "m.room.topic")
            if (name or {}).get("name") != "Brands United" or (topic or {}).get(
                    "topic") != "three brands":
                return False
        return True

    await eventually(state_everywhere)

    # Typing on a.test shows on b.test and c.test; carol's read receipt reaches a.test.
    r = await ca.call("PUT", f"/rooms/{q(room)}/typing/{q(alice.user_id)}",
                      {"typing": True, "timeout": 20000}, alice.access_token)
    assert r.status == 200, r.body

    async def typing_seen() -> bool:
        return all(services(s).typing.typing_users(room) == [alice.user_id] for s in (b, c))

    await eventually(typing_seen)
    last = await send_text(ca, alice, room, "read this", "g-read")
    said.append("read this")
    await everywhere(everyone, room, said)
    r = await cc.call("POST", f"/rooms/{q(room)}/receipt/m.read/{q(last)}", {},
                      carol.access_token)
    assert r.status == 200, r.body

    async def receipt_on_a() -> bool:
        sa = services(a)
        found = await sa.receipts.for_rooms([room], 0, await sa.receipts.current_position())
        return any(x.user_id == carol.user_id and x.event_id == last for x in found)

    await eventually(receipt_on_a)

    # Profiles across servers.
    r = await cb.call("GET", f"/profile/{q(carol.user_id)}", None, bob.access_token)
    assert r.status == 200, r.body
    assert r.json()["displayname"] == "Carol of C"
    r = await cc.call("GET", f"/profile/{q(alice.user_id)}/displayname", None,
                      carol.access_token)
    assert r.status == 200 and r.json()["displayname"] == "Alice A"

    # Device keys queried and claimed across servers, and a to-device message.
    carol_dev = Device(carol)
    otks = carol_dev.one_time_keys(1)
    await carol_dev.upload(cc, {"device_keys": carol_dev.device_keys(), "one_time_keys": otks})
    r = await ca.call("POST", "/keys/query", {"device_keys": {carol.user_id: []}},
                      alice.access_token)
    assert r.status == 200, r.body
    assert carol.device_id in r.json()["device_keys"][carol.user_id]
    r = await cb.call("POST", "/keys/claim", {"one_time_keys": {
        carol.user_id: {carol.device_id: "signed_curve25519"}}}, bob.access_token)
    assert r.status == 200, r.body
    assert set(r.json()["one_time_keys"][carol.user_id][carol.device_id]) == set(otks)
    r = await ca.call("PUT", "/sendToDevice/m.room.encrypted/td1", {
        "messages": {carol.user_id: {carol.device_id: {"ciphertext": "for carol"}}}},
        alice.access_token)
    assert r.status == 200, r.body

    async def to_device_on_c() -> bool:
        body = await sync(cc, carol)
        return any(e["content"] == {"ciphertext": "for carol"}
                   for e in body.get("to_device", {}).get("events", []))

    await eventually(to_device_on_c)

    # -- c.test stops; a.test and b.test go on; c.test comes back and catches up ---------------
    port_c = int(c.federation_url.rsplit(":", 1)[1])
    static = dict(services(a).config.federation.static_servers)
    await c.stop()
    for s in (a, b):
        # As if c.test's process had gone: its kept-alive connections go too.
        await services(s).federation_client.close()
    two = [(ca, alice), (cb, bob)]
    for i, (cl, u) in enumerate([(ca, alice), (cb, bob), (ca, alice)]):
        said.append(f"while c is away {i}")
        await send_text(cl, u, room, said[-1], f"away{i}")
        await everywhere(two, room, said)
    r = await ca.call("PUT", f"/rooms/{q(room)}/state/m.room.name", {"name": "Renamed"},
                      alice.access_token)
    assert r.status == 200, r.body
    c = await start_server(os.path.join(tmp, "c.test"), dbs["c.test"], "c.test", port_c,
                           federation={"static_servers": static})
    servers["c.test"] = c
    cc = Client(c.client_url)
    everyone = [(ca, alice), (cb, bob), (cc, carol)]
    # c.test talking to the others tells them it is back: their outboxes flush.
    said.append("carol is back")
    await send_text(cc, carol, room, "carol is back", "back")

    async def caught_up() -> bool:
        # Sent on c.test's stale head, concurrently with what it missed: "carol is back"
        # has the depth of the first missed message and sorts by arrival among equals. The
        # rest is the same history, in the same order, everywhere.
        for cl, u in everyone:
            seen = await messages(cl, u, room)
            if sorted(map(str, seen)) != sorted(map(str, said)):
                return False
            if [m for m in seen if m != "carol is back"] != said[:-1]:
                return False
        return True

    await eventually(caught_up, timeout=20)

    async def renamed_on_c() -> bool:
        return (await state_of(cc, carol, room, "m.room.name") or {}).get("name") == "Renamed"

    await eventually(renamed_on_c)

    async def outboxes_empty() -> bool:
        for s in (a, b):
            if await services(s).federation_sender.store.pending("c.test", 50, 100):
                return False
        return True

    await eventually(outboxes_empty)
