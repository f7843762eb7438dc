"""GET /_matrix/client/v1/room_summary/{roomIdOrAlias} (spec v1.15): a room's preview for
members and for those who may see it (public, knockable, world-readable, restricted to a room
they are in); "not found" for everyone else, with or without an access token; rooms on
another server described by it."""

from __future__ import annotations

from typing import Any

import pytest_twisted

from tests.support.client import Client, User, q
from tests.support.server import RunningServer
from tests.support.sync import create_room, join, put_state


async def _summary(c: Client, ref: str, user: User | None, expect: int = 200,
                   via: str = "") -> Any:
    path = f"/_matrix/client/v1/room_summary/{q(ref)}" + (f"?via={q(via)}" if via else "")
    r = await c.call("GET", path, None, user.access_token if user else None, raw_path=True)
    assert r.status == expect, r.body
    return r.json()


@pytest_twisted.ensureDeferred
async def test_room_summary_local(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice = await c.register("alice")
    bob = await c.register("bob")
    public = await create_room(c, alice, preset="public_chat", name="Cheese",
                               topic="Tasty", room_alias_name="cheese")
    private = await create_room(c, alice, preset="private_chat", name="Secret")
    space = await create_room(c, alice, preset="public_chat",
                              creation_content={"type": "m.space"})
    restricted = await create_room(c, alice, preset="private_chat", room_version="10")
    await put_state(c, alice, restricted, "m.room.join_rules", {
        "join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": space}]})

    got = await _summary(c, public, bob)
    assert got["room_id"] == public
    assert got["name"] == "Cheese" and got["topic"] == "Tasty"
    assert got["canonical_alias"] == "#cheese:test.local"
    assert got["num_joined_members"] == 1
    assert got["join_rule"] == "public" and got["world_readable"] is False
    assert isinstance(got["room_version"], str)
    assert "membership" not in got and "encryption" not in got
    # By alias, and without an access token for a public room (no membership then).
    assert (await _summary(c, "#cheese:test.local", bob))["room_id"] == public
    anonymous = await _summary(c, public, None)
    assert anonymous["name"] == "Cheese" and "membership" not in anonymous
    await join(c, bob, public)
    assert (await _summary(c, public, bob))["membership"] == "join"

    # A private (and encrypted by default) room: its members only.
    mine = await _summary(c, private, alice)
    assert mine["membership"] == "join" and mine["join_rule"] == "invite"
    assert mine["encryption"] == "m.megolm.v1.aes-sha2"
    for who in (bob, None):
        err = await _summary(c, private, who, expect=404)
        assert err["errcode"] == "M_NOT_FOUND"

    # Restricted to a space: visible once bob is in the space, with the allowed rooms.
    await _summary(c, restricted, bob, expect=404)
    await join(c, bob, space)
    got = await _summary(c, restricted, bob)
    assert got["join_rule"] == "restricted" and got["allowed_room_ids"] == [space]
    assert got["room_version"] == "10"
    assert (await _summary(c, space, bob))["room_type"] == "m.space"
    await _summary(c, restricted, None, expect=404)

    # Bad input.
    assert (await _summary(c, "#nope:test.local", bob, expect=404))["errcode"] == "M_NOT_FOUND"
    assert (await _summary(c, "!unknown:test.local", bob, expect=404))["errcode"] == \
        "M_NOT_FOUND"
    assert (await _summary(c, "not-a-room", bob, expect=400))["errcode"] == "M_INVALID_PARAM"
    r = await c.call("GET", f"/_matrix/client/v1/room_summary/{q(public)}", None, "bad-token",
                     raw_path=True)
    assert r.status == 401 and r.json()["errcode"] == "M_UNKNOWN_TOKEN"


@pytest_twisted.ensureDeferred
async def test_room_summary_of_a_room_on_another_server(
    pair: tuple[RunningServer, RunningServer],
) -> None:
    a, b = pair
    ca, cb = Client(a.client_url), Client(b.client_url)
    alice = await ca.register("alice")
    bob = await cb.register("bob")
    public = await create_room(ca, alice, preset="public_chat", name="Across",
                               room_alias_name="across")
    private = await create_room(ca, alice, preset="private_chat", name="Hidden")
    got = await _summary(cb, public, bob, via="a.test")
    assert got["room_id"] == public and got["name"] == "Across"
    assert got["num_joined_members"] == 1 and got["join_rule"] == "public"
    # By the other server's alias (it names itself as the server to ask).
    assert (await _summary(cb, "#across:a.test", bob))["name"] == "Across"
    await _summary(cb, private, bob, expect=404, via="a.test")
