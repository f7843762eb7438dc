"""Where accounts meet rooms: profile changes reach member events, deactivation leaves every
room, and the user directory finds people who share a room."""

from __future__ import annotations

import pytest_twisted

from tests.support.client import Client, q
from tests.support.server import RunningServer


@pytest_twisted.ensureDeferred
async def test_profile_change_updates_member_events(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice = await c.register("alice")
    rooms = []
    for _ in range(2):
        r = await c.call("POST", "/createRoom", {}, token=alice.access_token)
        rooms.append(r.json()["room_id"])
    await c.call("PUT", f"/profile/{q(alice.user_id)}/displayname", {"displayname": "Alice A"},
                 token=alice.access_token)
    await c.call("PUT", f"/profile/{q(alice.user_id)}/avatar_url",
                 {"avatar_url": "mxc://test.local/pic"}, token=alice.access_token)
    for room in rooms:
        r = await c.call("GET", f"/rooms/{q(room)}/state/m.room.member/{q(alice.user_id)}",
                         token=alice.access_token)
        assert r.json()["displayname"] == "Alice A"
        assert r.json()["avatar_url"] == "mxc://test.local/pic"
        assert r.json()["membership"] == "join"


@pytest_twisted.ensureDeferred
async def test_deactivation_leaves_every_room(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice = await c.register("alice", "pw-a")
    bob = await c.register("bob", "pw-b")
    r = await c.call("POST", "/createRoom", {"preset": "public_chat"}, token=alice.access_token)
    room = r.json()["room_id"]
    await c.call("POST", f"/rooms/{q(room)}/join", {}, token=bob.access_token)
    r = await c.call("POST", "/account/deactivate", {"auth": {
        "type": "m.login.password", "user": "bob", "password": "pw-b"}}, token=bob.access_token)
    assert r.status == 200, r.body
    r = await c.call("GET", f"/rooms/{q(room)}/joined_members", token=alice.access_token)
    assert set(r.json()["joined"]) == {alice.user_id}
    r = await c.call("GET", f"/rooms/{q(room)}/state/m.room.member/{q(bob.user_id)}",
                     token=alice.access_token)
    assert r.json()["membership"] == "leave"


@pytest_twisted.ensureDeferred
async def test_user_directory_includes_room_members(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice = await c.register("alice")
    bob = await c.register("bob")
    r = await c.call("POST", "/createRoom", {"preset": "public_chat"}, token=alice.access_token)
    room = r.json()["room_id"]
    await c.call("POST", f"/rooms/{q(room)}/join", {}, token=bob.access_token)
    # Bob's name in this room only (a per-room display name on his member event).
    await c.call("PUT", f"/rooms/{q(room)}/state/m.room.member/{q(bob.user_id)}",
                 {"membership": "join", "displayname": "Captain Bob"}, token=bob.access_token)
    r = await c.call("POST", "/user_directory/search", {"search_term": "captain"},
                     token=alice.access_token)
    assert r.json()["results"] == [{"user_id": bob.user_id, "display_name": "Captain Bob"}]
    # Someone who shares no room with Carol does not show up under that room name.
    carol = await c.register("carol")
    r = await c.call("POST", "/user_directory/search", {"search_term": "captain"},
                     token=carol.access_token)
    assert r.json()["results"] == []
