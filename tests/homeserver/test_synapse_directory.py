"""Room discovery with a real Synapse on loopback, both ways: each side's users list the
other's public room directory (with a search filter); our user walks a space only Synapse
has, and Synapse walks its space into our rooms through our ``/hierarchy``. One Synapse
(SQLite) serves the module."""

from __future__ import annotations

import os
from typing import Any

import pytest_twisted

from tests.support.client import Client, q
from tests.support.http import request
from tests.support.interop import ours, synapse
from tests.support.server import RunningServer
from tests.support.synapse import SynapseProcess, SynapseUser

__all__ = ["ours", "synapse"]  # the fixtures, shared with the other interop tests

V1 = "/_matrix/client/v1"


async def _syn(synapse: SynapseProcess, user: SynapseUser, method: str, path: str,
               body: Any = None) -> Any:
    r = await request(method, f"{synapse.client_url}{path}", body,
                      access_token=user.access_token)
    assert r.status == 200, (path, r.status, r.body[:300])
    return r.json()


@pytest_twisted.ensureDeferred
async def test_directory_and_hierarchy_both_ways(synapse: SynapseProcess,
                                                 ours: RunningServer) -> None:
    tag = os.urandom(3).hex()
    sam = synapse.register_user(f"sam{tag}")
    c = Client(ours.client_url)
    olga = await c.register(f"olga{tag}")
    ours_name = ours.hs.config.server_name

    # Rooms on Synapse, listed and walked from here.
    syn_space = (await _syn(synapse, sam, "POST", "/_matrix/client/v3/createRoom", {
        "preset": "public_chat", "visibility": "public", "name": f"Syn space {tag}",
        "creation_content": {"type": "m.space"}}))["room_id"]
    syn_room = (await _syn(synapse, sam, "POST", "/_matrix/client/v3/createRoom", {
        "preset": "public_chat", "visibility": "public", "name": f"Syn room {tag}",
        "topic": "from synapse"}))["room_id"]
    await _syn(synapse, sam, "PUT",
               f"/_matrix/client/v3/rooms/{q(syn_space)}/state/m.space.child/{q(syn_room)}",
               {"via": [synapse.server_name]})

    r = await c.call("POST", f"/publicRooms?server={q(synapse.server_name)}",
                     {"filter": {"generic_search_term": f"Syn room {tag}"}}, olga.access_token)
    assert r.status == 200, r.body
    assert [e["room_id"] for e in r.json()["chunk"]] == [syn_room]
    r = await c.call("GET", f"/publicRooms?server={q(synapse.server_name)}", None,
                     olga.access_token)
    assert r.status == 200, r.body
    assert {syn_space, syn_room} <= {e["room_id"] for e in r.json()["chunk"]}
    r = await c.call("GET", f"{V1}/rooms/{q(syn_space)}/hierarchy?via={q(synapse.server_name)}",
                     token=olga.access_token, raw_path=True)
    assert r.status == 200, r.body
    assert [x["room_id"] for x in r.json()["rooms"]] == [syn_space, syn_room]
    assert r.json()["rooms"][1]["topic"] == "from synapse"

    # Rooms here, listed and walked from Synapse.
    r = await c.call("POST", "/createRoom", {
        "preset": "public_chat", "visibility": "public", "name": f"Our space {tag}",
        "creation_content": {"type": "m.space"}}, olga.access_token)
    our_space = r.json()["room_id"]
    r = await c.call("POST", "/createRoom", {
        "preset": "public_chat", "visibility": "public", "name": f"Our room {tag}"},
        olga.access_token)
    our_room = r.json()["room_id"]
    r = await c.call("PUT", f"/rooms/{q(our_space)}/state/m.space.child/{q(our_room)}",
                     {"via": [ours_name]}, olga.access_token)
    assert r.status == 200, r.body

    listed = await _syn(synapse, sam, "POST",
                        f"/_matrix/client/v3/publicRooms?server={q(ours_name)}",
                        {"filter": {"generic_search_term": f"Our room {tag}"}})
    assert [e["room_id"] for e in listed["chunk"]] == [our_room]
    # Synapse walks only roots it has: its own space, with our space as a child.
    home = (await _syn(synapse, sam, "POST", "/_matrix/client/v3/createRoom", {
        "preset": "public_chat", "creation_content": {"type": "m.space"}}))["room_id"]
    await _syn(synapse, sam, "PUT",
               f"/_matrix/client/v3/rooms/{q(home)}/state/m.space.child/{q(our_space)}",
               {"via": [ours_name]})
    walked = await _syn(synapse, sam, "GET", f"{V1}/rooms/{q(home)}/hierarchy")
    assert [x["room_id"] for x in walked["rooms"]] == [home, our_space, our_room]
    assert walked["rooms"][2]["name"] == f"Our room {tag}"
