"""Room discovery between two real servers over TLS: a user of b.test lists a.test's public
rooms (paging, search, room types) through b, walks a space that only a.test has and a
local space whose children live on a.test, and a third party exchanges an OpenID token of
an a.test user at a.test; plus the spec's errors (directory not shared, unsigned requests,
rooms the asking server may not see)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted

from federation.transport.client import HttpResponseError
from tests.support.client import Client, User, q
from tests.support.databases import fresh_database
from tests.support.http import request
from tests.support.server import RunningServer, start_pair

V1 = "/_matrix/client/v1"


@pytest_twisted.async_yield_fixture
async def pair(engine: str, tmp_path: Any) -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    with fresh_database(engine, str(tmp_path / "dba")) as db_a, \
            fresh_database(engine, str(tmp_path / "dbb")) as db_b:
        a, b = await start_pair(str(tmp_path), db_a, db_b)
        # Only a.test shares its directory with other servers (the services read the flag
        # from their config on each request).
        assert a.hs.services is not None
        a.hs.services.config = dataclasses.replace(a.hs.config,
                                                   public_rooms_over_federation=True)
        try:
            yield a, b
        finally:
            await a.stop()
            await b.stop()


async def _room(c: Client, user: User, **body: Any) -> str:
    r = await c.call("POST", "/createRoom", body, token=user.access_token)
    assert r.status == 200, r.body
    return str(r.json()["room_id"])


@pytest_twisted.ensureDeferred
async def test_public_rooms_and_openid_across_servers(
    pair: tuple[RunningServer, RunningServer],
) -> None:
    a, b = pair
    ca, cb = Client(a.client_url), Client(b.client_url)
    alice, bob = await ca.register("alice"), await cb.register("bob")
    alpha = await _room(ca, alice, preset="public_chat", visibility="public", name="Alpha")
    beta = await _room(ca, alice, preset="public_chat", visibility="public", name="Beta",
                       topic="second")
    space = await _room(ca, alice, preset="public_chat", visibility="public", name="Gamma",
                        creation_content={"type": "m.space"})
    await _room(ca, alice, preset="private_chat", name="Hidden")
    # alice's rooms have one member each; a second member orders beta first.
    carol = await ca.register("carol")
    assert (await ca.call("POST", f"/join/{q(beta)}", {}, carol.access_token)).status == 200

    r = await cb.call("GET", "/publicRooms?server=a.test", None, bob.access_token)
    assert r.status == 200, r.body
    listed = r.json()
    assert listed["chunk"][0]["room_id"] == beta
    assert {e["room_id"] for e in listed["chunk"]} == {alpha, beta, space}
    assert listed["total_room_count_estimate"] == 3
    assert next(e for e in listed["chunk"] if e["room_id"] == beta)["num_joined_members"] == 2

    # Paging with a.test's tokens, through b.
    r = await cb.call("GET", "/publicRooms?server=a.test&limit=2", None, bob.access_token)
    first = r.json()
    assert len(first["chunk"]) == 2 and "next_batch" in first
    r = await cb.call("GET", f"/publicRooms?server=a.test&limit=2&since={first['next_batch']}",
                      None, bob.access_token)
    second = r.json()
    assert len(second["chunk"]) == 1 and "prev_batch" in second
    assert {e["room_id"] for e in first["chunk"] + second["chunk"]} == {alpha, beta, space}

    # Filters go over federation with POST.
    r = await cb.call("POST", "/publicRooms?server=a.test",
                      {"filter": {"generic_search_term": "SECOND"}}, bob.access_token)
    assert [e["room_id"] for e in r.json()["chunk"]] == [beta]
    r = await cb.call("POST", "/publicRooms?server=a.test",
                      {"filter": {"room_types": ["m.space"]}}, bob.access_token)
    assert [e["room_id"] for e in r.json()["chunk"]] == [space]

    # b.test does not share its directory: a's users hear so.
    r = await ca.call("GET", "/publicRooms?server=b.test", None, alice.access_token)
    assert (r.status, r.json()["errcode"]) == (403, "M_FORBIDDEN")
    # Bad input, and other servers' directories only for users.
    r = await cb.call("GET", "/publicRooms?server=bad%20name", None, bob.access_token)
    assert (r.status, r.json()["errcode"]) == (400, "M_INVALID_PARAM")
    r = await cb.call("GET", "/publicRooms?server=a.test")
    assert (r.status, r.json()["errcode"]) == (401, "M_MISSING_TOKEN")
    r = await request("GET", f"{a.federation_url}/_matrix/federation/v1/publicRooms")
    assert (r.status, r.json()["errcode"]) == (401, "M_UNAUTHORIZED")

    # OpenID: alice's token tells a third party (here: anyone calling a.test) who she is.
    r = await ca.call("POST", f"/user/{q(alice.user_id)}/openid/request_token", {},
                      alice.access_token)
    assert r.status == 200, r.body
    token = r.json()
    assert token["matrix_server_name"] == "a.test" and token["token_type"] == "Bearer"
    assert token["expires_in"] == 3600
    info = f"{a.federation_url}/_matrix/federation/v1/openid/userinfo"
    r = await request("GET", f"{info}?access_token={token['access_token']}")
    assert r.status == 200 and r.json() == {"sub": alice.user_id}
    r = await request("GET", f"{info}?access_token=nope")
    assert (r.status, r.json()["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    r = await request("GET", info)
    assert (r.status, r.json()["errcode"]) == (401, "M_MISSING_TOKEN")
    r = await ca.call("POST", f"/user/{q(carol.user_id)}/openid/request_token", {},
                      alice.access_token)
    assert (r.status, r.json()["errcode"]) == (403, "M_FORBIDDEN")


@pytest_twisted.ensureDeferred
async def test_hierarchy_of_a_remote_space(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    ca, cb = Client(a.client_url), Client(b.client_url)
    alice, bob = await ca.register("alice"), await cb.register("bob")
    space = await _room(ca, alice, preset="public_chat", name="Space",
                        creation_content={"type": "m.space"})
    sub = await _room(ca, alice, preset="public_chat", name="Sub",
                      creation_content={"type": "m.space"})
    public = await _room(ca, alice, preset="public_chat", name="Public", topic="open")
    private = await _room(ca, alice, preset="private_chat", name="Private")
    leaf = await _room(ca, alice, preset="public_chat", name="Leaf")
    for parent, child, order in ((space, public, "a"), (space, private, "b"),
                                 (space, sub, "c"), (sub, leaf, "a")):
        r = await ca.call("PUT", f"/rooms/{q(parent)}/state/m.space.child/{q(child)}",
                          {"via": ["a.test"], "order": order}, alice.access_token)
        assert r.status == 200, r.body

    async def walk(query: str) -> Any:
        r = await cb.call("GET", f"{V1}/rooms/{q(space)}/hierarchy?via=a.test{query}",
                          token=bob.access_token, raw_path=True)
        assert r.status == 200, r.body
        return r.json()

    # b.test has none of these rooms: the walk comes from a.test, without the private room.
    body = await walk("")
    assert [r["room_id"] for r in body["rooms"]] == [space, public, sub, leaf]
    root = body["rooms"][0]
    assert root["name"] == "Space" and root["room_type"] == "m.space"
    assert {c["state_key"] for c in root["children_state"]} == {public, private, sub}
    assert body["rooms"][1]["topic"] == "open"
    assert [r["room_id"] for r in (await walk("&max_depth=0"))["rooms"]] == [space]
    page = await walk("&limit=2")
    assert [r["room_id"] for r in page["rooms"]] == [space, public]
    rest = await walk(f"&limit=2&from={page['next_batch']}")
    assert [r["room_id"] for r in rest["rooms"]] == [sub, leaf]

    # A space on b.test whose children live on a.test: the walk crosses over.
    home = await _room(cb, bob, preset="public_chat", name="Home",
                       creation_content={"type": "m.space"})
    for child in (sub, private):
        r = await cb.call("PUT", f"/rooms/{q(home)}/state/m.space.child/{q(child)}",
                          {"via": ["a.test"]}, bob.access_token)
        assert r.status == 200, r.body
    r = await cb.call("GET", f"{V1}/rooms/{q(home)}/hierarchy", token=bob.access_token,
                      raw_path=True)
    assert r.status == 200, r.body
    assert [x["room_id"] for x in r.json()["rooms"]] == [home, sub, leaf]
    assert r.json()["rooms"][2]["name"] == "Leaf"

    # The federation answer names what b.test may not see.
    assert b.hs.services is not None
    fed = b.hs.services.federation_client
    answer = await fed.get_json("a.test", f"/_matrix/federation/v1/hierarchy/{q(space)}")
    assert answer["room"]["room_id"] == space
    assert {c["room_id"] for c in answer["children"]} == {public, sub}
    assert answer["inaccessible_children"] == [private]
    for room in (private, "!unknown:a.test"):
        with pytest.raises(HttpResponseError) as e:
            await fed.get_json("a.test", f"/_matrix/federation/v1/hierarchy/{q(room)}")
        assert (e.value.status, e.value.errcode) == (404, "M_NOT_FOUND")
    # Without a server to ask, b.test cannot know the room.
    r = await cb.call("GET", f"{V1}/rooms/{q(space)}/hierarchy", token=bob.access_token,
                      raw_path=True)
    assert (r.status, r.json()["errcode"]) == (403, "M_FORBIDDEN")
