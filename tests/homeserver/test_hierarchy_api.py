"""Space hierarchies on both engines: the m.space.child walk and its order, max_depth,
suggested_only, pagination, cycles, which rooms a user may see, and the spec's errors."""

from __future__ import annotations

from typing import Any

import pytest_twisted

from tests.support.client import Client, User, q
from tests.support.server import RunningServer

V1 = "/_matrix/client/v1"


async def _room(c: Client, user: User, **body: Any) -> str:
    r = await c.call("POST", "/createRoom", body, token=user.access_token)
    assert r.status == 200, r.body
    return str(r.json()["room_id"])


async def _child(c: Client, user: User, parent: str, child: str, **content: Any) -> None:
    content.setdefault("via", ["test.local"])
    r = await c.call("PUT", f"/rooms/{q(parent)}/state/m.space.child/{q(child)}", content,
                     token=user.access_token)
    assert r.status == 200, r.body


async def _walk(c: Client, user: User, root: str, query: str = "") -> Any:
    r = await c.call("GET", f"{V1}/rooms/{q(root)}/hierarchy?{query}", token=user.access_token,
                     raw_path=True)
    assert r.status == 200, r.body
    return r.json()


def _ids(body: Any) -> list[str]:
    return [r["room_id"] for r in body["rooms"]]


@pytest_twisted.ensureDeferred
async def test_hierarchy_walk(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, bob = await c.register("alice"), await c.register("bob")
    space = await _room(c, alice, preset="public_chat", name="Space",
                        creation_content={"type": "m.space"})
    a = await _room(c, alice, preset="public_chat", name="A", topic="Room A")
    b = await _room(c, alice, preset="private_chat", name="B")
    sub = await _room(c, alice, preset="public_chat", name="Sub")
    restricted = await _room(c, alice, preset="private_chat", name="R", room_version="10")
    r = await c.call("PUT", f"/rooms/{q(restricted)}/state/m.room.join_rules",
                     {"join_rule": "restricted",
                      "allow": [{"type": "m.room_membership", "room_id": space}]},
                     token=alice.access_token)
    assert r.status == 200, r.body
    await _child(c, alice, space, a, order="b", suggested=True)
    await _child(c, alice, space, b, order="a")
    await _child(c, alice, space, restricted, order="c")
    await _child(c, alice, space, "!gone:test.local", via=[])  # no via: not a child
    await _child(c, alice, a, sub)
    await _child(c, alice, sub, space)  # a cycle back to the root

    # Bob is in none of them: only public rooms, no invite-only or restricted ones.
    body = await _walk(c, bob, space)
    assert _ids(body) == [space, a, sub]
    root = body["rooms"][0]
    assert root["room_type"] == "m.space" and root["name"] == "Space"
    assert root["num_joined_members"] == 1 and root["join_rule"] == "public"
    assert [e["state_key"] for e in root["children_state"]] == [b, a, restricted]
    assert all(e["type"] == "m.space.child" and "sender" in e for e in root["children_state"])
    assert body["rooms"][1]["topic"] == "Room A"
    assert "next_batch" not in body
    # Alice sees everything, children in their 'order'.
    assert _ids(await _walk(c, alice, space)) == [space, b, a, restricted, sub]
    # Joining the space opens the restricted room to Bob.
    r = await c.call("POST", f"/rooms/{q(space)}/join", {}, token=bob.access_token)
    assert r.status == 200
    assert _ids(await _walk(c, bob, space)) == [space, a, restricted, sub]

    assert _ids(await _walk(c, bob, space, "max_depth=0")) == [space]
    assert _ids(await _walk(c, bob, space, "max_depth=1")) == [space, a, restricted]
    assert _ids(await _walk(c, bob, space, "suggested_only=true")) == [space, a]
    # Pages of one.
    seen, token = [], None
    for _ in range(10):
        body = await _walk(c, bob, space, "limit=1" + (f"&from={token}" if token else ""))
        assert len(body["rooms"]) == 1
        seen += _ids(body)
        token = body.get("next_batch")
        if token is None:
            break
    assert seen == [space, a, restricted, sub]
    # A sub-space as the root.
    assert _ids(await _walk(c, bob, a)) == [a, sub, space, restricted]


@pytest_twisted.ensureDeferred
async def test_hierarchy_errors(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, bob = await c.register("alice"), await c.register("bob")
    private = await _room(c, alice, preset="private_chat", creation_content={"type": "m.space"})
    for root in (private, "!nope:test.local"):
        r = await c.call("GET", f"{V1}/rooms/{q(root)}/hierarchy", token=bob.access_token,
                         raw_path=True)
        assert (r.status, r.json()["errcode"]) == (403, "M_FORBIDDEN"), root
    for query in ("limit=0", "limit=x", "max_depth=-1", "suggested_only=maybe", "from=x",
                  "from=-3"):
        r = await c.call("GET", f"{V1}/rooms/{q(private)}/hierarchy?{query}",
                         token=alice.access_token, raw_path=True)
        assert (r.status, r.json()["errcode"]) == (400, "M_INVALID_PARAM"), query
    r = await c.call("GET", f"{V1}/rooms/{q(private)}/hierarchy", raw_path=True)
    assert (r.status, r.json()["errcode"]) == (401, "M_MISSING_TOKEN")
    # Invited users may look.
    r = await c.call("POST", f"/rooms/{q(private)}/invite", {"user_id": bob.user_id},
                     token=alice.access_token)
    assert r.status == 200
    assert _ids(await _walk(c, bob, private)) == [private]
