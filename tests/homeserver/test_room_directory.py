"""The public room directory on both engines: publishing (createRoom and
/directory/list/room), listing with filters and pagination tokens, permissions and bad input."""

from __future__ import annotations

from typing import Any

import pytest_twisted

from tests.support.client import Client, User, q
from tests.support.server import RunningServer


async def _room(c: Client, user: User, **body: Any) -> str:
    r = await c.call("POST", "/createRoom", body, token=user.access_token)
    assert r.status == 200, r.body
    return str(r.json()["room_id"])


async def _admin(hs: RunningServer, c: Client, name: str) -> User:
    user = await c.register(name)
    await hs.hs.services.users.set_admin(user.user_id, True)
    return user


@pytest_twisted.ensureDeferred
async def test_publish_and_list(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    admin = await _admin(hs, c, "admin")
    bob = await c.register("bob")
    lobby = await _room(c, admin, visibility="public", preset="public_chat", name="Lobby",
                        topic="Say hi", room_alias_name="lobby")
    await c.call("PUT", f"/rooms/{q(lobby)}/state/m.room.avatar", {"url": "mxc://test.local/a"},
                 token=admin.access_token)
    await c.call("PUT", f"/rooms/{q(lobby)}/state/m.room.history_visibility",
                 {"history_visibility": "world_readable"}, token=admin.access_token)
    r = await c.call("POST", f"/rooms/{q(lobby)}/join", {}, token=bob.access_token)
    assert r.status == 200
    space = await _room(c, admin, visibility="public", name="Space",
                        creation_content={"type": "m.space"})
    secret = await _room(c, admin, preset="private_chat", name="Secret")

    r = await c.call("GET", f"/directory/list/room/{q(lobby)}")
    assert r.json() == {"visibility": "public"}
    r = await c.call("GET", f"/directory/list/room/{q(secret)}")
    assert r.json() == {"visibility": "private"}

    r = await c.call("GET", "/publicRooms")
    assert r.status == 200, r.body
    body = r.json()
    assert body["total_room_count_estimate"] == 2
    assert [e["room_id"] for e in body["chunk"]] == [lobby, space]  # most members first
    entry = body["chunk"][0]
    assert entry == {
        "room_id": lobby, "name": "Lobby", "topic": "Say hi",
        "canonical_alias": "#lobby:test.local", "avatar_url": "mxc://test.local/a",
        "num_joined_members": 2, "world_readable": True, "guest_can_join": False,
        "join_rule": "public",
    }
    assert body["chunk"][1]["room_type"] == "m.space"
    assert body["chunk"][1]["join_rule"] == "public"  # visibility=public implies public_chat
    assert "next_batch" not in body and "prev_batch" not in body

    # Filters: the search term (name, topic, alias; any case) and room types.
    for flt, expected in [
        ({"generic_search_term": "LOB"}, [lobby]),
        ({"generic_search_term": "say h"}, [lobby]),
        ({"generic_search_term": "secret"}, []),
        ({"room_types": ["m.space"]}, [space]),
        ({"room_types": [None]}, [lobby]),
        ({"room_types": [None, "m.space"]}, [lobby, space]),
    ]:
        r = await c.call("POST", "/publicRooms", {"filter": flt}, token=bob.access_token)
        assert r.status == 200, r.body
        assert [e["room_id"] for e in r.json()["chunk"]] == expected, flt

    # Unpublishing takes the room out; a private room never appears.
    r = await c.call("PUT", f"/directory/list/room/{q(space)}", {"visibility": "private"},
                     token=admin.access_token)
    assert r.status == 200, r.body
    r = await c.call("GET", "/publicRooms")
    assert [e["room_id"] for e in r.json()["chunk"]] == [lobby]
    assert secret not in str(r.json())


@pytest_twisted.ensureDeferred
async def test_pagination_tokens(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    admin = await _admin(hs, c, "admin")
    rooms = [await _room(c, admin, visibility="public", name=f"Room {i}") for i in range(5)]
    seen: list[str] = []
    since = None
    tokens = []
    while True:
        body: dict[str, Any] = {"limit": 2}
        if since:
            body["since"] = since
        r = await c.call("POST", "/publicRooms", body, token=admin.access_token)
        assert r.status == 200, r.body
        page = r.json()
        assert page["total_room_count_estimate"] == 5
        assert len(page["chunk"]) <= 2
        seen += [e["room_id"] for e in page["chunk"]]
        tokens.append(page)
        if "next_batch" not in page:
            break
        since = page["next_batch"]
    assert sorted(seen) == sorted(rooms) and len(seen) == 5
    assert "prev_batch" not in tokens[0] and "prev_batch" in tokens[1]
    # prev_batch of the second page leads back to the first.
    r = await c.call("GET", f"/publicRooms?limit=2&since={q(tokens[1]['prev_batch'])}")
    assert [e["room_id"] for e in r.json()["chunk"]] == [e["room_id"] for e in tokens[0]["chunk"]]
    # GET pages the same way.
    r = await c.call("GET", f"/publicRooms?limit=2&since={q(tokens[0]['next_batch'])}")
    assert [e["room_id"] for e in r.json()["chunk"]] == [e["room_id"] for e in tokens[1]["chunk"]]


@pytest_twisted.ensureDeferred
async def test_permissions_and_bad_input(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    admin = await _admin(hs, c, "admin")
    alice = await c.register("alice")
    bob = await c.register("bob")
    room = await _room(c, alice, preset="public_chat", name="Alice's")
    await c.call("POST", f"/rooms/{q(room)}/join", {}, token=bob.access_token)

    # (The test config sets publish_by_anyone.) Bob, without canonical-alias power, may
    # not change the visibility either way; Alice, the room's admin, may.
    for vis in ("public", "private"):
        r = await c.call("PUT", f"/directory/list/room/{q(room)}", {"visibility": vis},
                         token=bob.access_token)
        assert (r.status, r.json()["errcode"]) == (403, "M_FORBIDDEN")
    r = await c.call("PUT", f"/directory/list/room/{q(room)}", {"visibility": "public"},
                     token=alice.access_token)
    assert r.status == 200, r.body
    r = await c.call("GET", "/publicRooms")
    assert [e["room_id"] for e in r.json()["chunk"]] == [room]
    # Someone who left loses the right.
    await c.call("POST", f"/rooms/{q(room)}/leave", {}, token=alice.access_token)
    r = await c.call("PUT", f"/directory/list/room/{q(room)}", {"visibility": "private"},
                     token=alice.access_token)
    assert (r.status, r.json()["errcode"]) == (403, "M_FORBIDDEN")

    r = await c.call("PUT", f"/directory/list/room/{q(room)}", {"visibility": "secret"},
                     token=admin.access_token)
    assert (r.status, r.json()["errcode"]) == (400, "M_INVALID_PARAM")
    r = await c.call("PUT", f"/directory/list/room/{q(room)}", {"visibility": "public"})
    assert (r.status, r.json()["errcode"]) == (401, "M_MISSING_TOKEN")
    for method in ("GET", "PUT"):
        r = await c.call(method, f"/directory/list/room/{q('!nope:test.local')}",
                         {"visibility": "public"}, token=admin.access_token)
        assert (r.status, r.json()["errcode"]) == (404, "M_NOT_FOUND")

    r = await c.call("POST", "/publicRooms", {})
    assert (r.status, r.json()["errcode"]) == (401, "M_MISSING_TOKEN")
    for body, errcode in [
        ({"limit": -1}, "M_BAD_JSON"),
        ({"limit": "10"}, "M_BAD_JSON"),
        ({"since": "garbage"}, "M_INVALID_PARAM"),
        ({"filter": "x"}, "M_BAD_JSON"),
        ({"filter": {"room_types": "m.space"}}, "M_BAD_JSON"),
        ({"filter": {"generic_search_term": 5}}, "M_BAD_JSON"),
    ]:
        r = await c.call("POST", "/publicRooms", body, token=bob.access_token)
        assert (r.status, r.json()["errcode"]) == (400, errcode), body
    for query in ("limit=x", "since=nzzz", "server=bad%20name"):
        r = await c.call("GET", f"/publicRooms?{query}")
        assert (r.status, r.json()["errcode"]) == (400, "M_INVALID_PARAM"), query
    # Other servers' directories (over federation) are for users only.
    r = await c.call("GET", "/publicRooms?server=elsewhere.example")
    assert (r.status, r.json()["errcode"]) == (401, "M_MISSING_TOKEN")


@pytest_twisted.ensureDeferred
async def test_publish_by_admins_only(tmp_path: Any, db_config: Any) -> None:
    from tests.support.server import start_server

    hs = await start_server(str(tmp_path), db_config,
                            room_directory={"publish_by_anyone": False})
    try:
        c = Client(hs.client_url)
        admin = await _admin(hs, c, "admin")
        alice = await c.register("alice")
        r = await c.call("POST", "/createRoom", {"visibility": "public"},
                         token=alice.access_token)
        assert (r.status, r.json()["errcode"]) == (403, "M_FORBIDDEN")
        room = await _room(c, alice, preset="public_chat")
        # Alice is the room's admin but not a server admin: may unpublish, not publish.
        r = await c.call("PUT", f"/directory/list/room/{q(room)}", {"visibility": "public"},
                         token=alice.access_token)
        assert (r.status, r.json()["errcode"]) == (403, "M_FORBIDDEN")
        r = await c.call("PUT", f"/directory/list/room/{q(room)}", {"visibility": "private"},
                         token=alice.access_token)
        assert r.status == 200
        r = await c.call("GET", "/publicRooms")
        assert r.json()["chunk"] == []
        # A server admin may publish any room, even one they are not in.
        r = await c.call("PUT", f"/directory/list/room/{q(room)}", {"visibility": "public"},
                         token=admin.access_token)
        assert r.status == 200
        r = await c.call("GET", "/publicRooms")
        assert [e["room_id"] for e in r.json()["chunk"]] == [room]
    finally:
        await hs.stop()
