"""Room upgrades on both engines: tombstone, copied state, power levels (v12 creators),
bans, aliases, directory, the old room restricted, and the spec's errors."""

from __future__ import annotations

from typing import Any

import pytest_twisted

from tests.support.client import Client, User, q
from tests.support.server import RunningServer


async def _room(c: Client, user: User, **body: Any) -> str:
    r = await c.call("POST", "/createRoom", body, token=user.access_token)
    assert r.status == 200, r.body
    return str(r.json()["room_id"])


async def _state(c: Client, user: User, room: str) -> dict[tuple[str, str], Any]:
    r = await c.call("GET", f"/rooms/{q(room)}/state", token=user.access_token)
    assert r.status == 200, r.body
    return {(e["type"], e["state_key"]): e for e in r.json()}


async def _put(c: Client, user: User, room: str, event_type: str, content: Any,
               state_key: str = "") -> None:
    path = f"/rooms/{q(room)}/state/{event_type}" + (f"/{q(state_key)}" if state_key else "")
    r = await c.call("PUT", path, content, token=user.access_token)
    assert r.status == 200, r.body


async def _upgrade(c: Client, user: User, room: str, version: str) -> Any:
    return await c.call("POST", f"/rooms/{q(room)}/upgrade", {"new_version": version},
                        token=user.access_token)


@pytest_twisted.ensureDeferred
async def test_upgrade_copies_state_and_restricts_old_room(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, bob, carol = [await c.register(n) for n in ("alice", "bob", "carol")]
    old = await _room(c, alice, preset="public_chat", name="Old", topic="Topic",
                      room_alias_name="up", room_version="10", visibility="public")
    await _put(c, alice, old, "m.room.history_visibility",
               {"history_visibility": "world_readable"})
    await _put(c, alice, old, "m.room.encryption", {"algorithm": "m.megolm.v1.aes-sha2"})
    await _put(c, alice, old, "m.room.server_acl", {"allow": ["*"], "deny": ["evil.example"]})
    await _put(c, alice, old, "m.room.avatar", {"url": "mxc://test.local/pic"})
    for user in (bob, carol):
        r = await c.call("POST", f"/rooms/{q(old)}/join", {}, token=user.access_token)
        assert r.status == 200
    r = await c.call("POST", f"/rooms/{q(old)}/ban",
                     {"user_id": carol.user_id, "reason": "spam"}, token=alice.access_token)
    assert r.status == 200
    state = await _state(c, alice, old)
    pl = dict(state[("m.room.power_levels", "")]["content"])
    pl["users"] = {**pl["users"], bob.user_id: 40}
    await _put(c, alice, old, "m.room.power_levels", pl)

    r = await _upgrade(c, alice, old, "12")
    assert r.status == 200, r.body
    new = r.json()["replacement_room"]
    assert new != old

    old_state = await _state(c, alice, old)
    tomb = old_state[("m.room.tombstone", "")]["content"]
    assert tomb["replacement_room"] == new
    old_pl = old_state[("m.room.power_levels", "")]["content"]
    assert old_pl["events_default"] >= 50 and old_pl["invite"] >= 50
    r = await c.call("PUT", f"/rooms/{q(old)}/send/m.room.message/t1",
                     {"msgtype": "m.text", "body": "hi"}, token=bob.access_token)
    assert (r.status, r.json()["errcode"]) == (403, "M_FORBIDDEN")
    assert old_state[("m.room.canonical_alias", "")]["content"] == {}

    new_state = await _state(c, alice, new)
    create = new_state[("m.room.create", "")]
    assert create["content"]["room_version"] == "12"
    assert create["content"]["predecessor"]["room_id"] == old
    assert create["sender"] == alice.user_id
    for key in [("m.room.name", ""), ("m.room.topic", ""), ("m.room.join_rules", ""),
                ("m.room.history_visibility", ""), ("m.room.encryption", ""),
                ("m.room.server_acl", ""), ("m.room.avatar", "")]:
        assert new_state[key]["content"] == old_state[key]["content"], key
    new_pl = new_state[("m.room.power_levels", "")]["content"]
    assert alice.user_id not in new_pl["users"]  # a v12 creator is never listed
    assert new_pl["users"][bob.user_id] == 40
    assert new_pl["events_default"] == 0  # the new room is not restricted
    assert new_state[("m.room.member", carol.user_id)]["content"]["membership"] == "ban"
    assert new_state[("m.room.canonical_alias", "")]["content"]["alias"] == "#up:test.local"
    r = await c.call("GET", f"/directory/room/{q('#up:test.local')}")
    assert r.json()["room_id"] == new
    r = await c.call("GET", f"/directory/list/room/{q(old)}")
    assert r.json() == {"visibility": "private"}
    r = await c.call("GET", f"/directory/list/room/{q(new)}")
    assert r.json() == {"visibility": "public"}
    # Bob can join the new room (public join rule carried over) and speak there.
    r = await c.call("POST", f"/rooms/{q(new)}/join", {}, token=bob.access_token)
    assert r.status == 200, r.body

    # Back from v12 to v11: the upgrader is listed with the creator's 100 again.
    r = await _upgrade(c, alice, new, "11")
    assert r.status == 200, r.body
    newer = r.json()["replacement_room"]
    newer_state = await _state(c, alice, newer)
    assert newer_state[("m.room.power_levels", "")]["content"]["users"][alice.user_id] == 100
    assert newer_state[("m.room.create", "")]["content"]["predecessor"]["room_id"] == new


@pytest_twisted.ensureDeferred
async def test_upgrade_errors(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, bob, eve = [await c.register(n) for n in ("alice", "bob", "eve")]
    room = await _room(c, alice, preset="public_chat")
    r = await c.call("POST", f"/rooms/{q(room)}/join", {}, token=bob.access_token)
    assert r.status == 200

    for body, status, errcode in [
        ({"new_version": "99"}, 400, "M_UNSUPPORTED_ROOM_VERSION"),
        ({}, 400, "M_MISSING_PARAM"),
        ({"new_version": 11}, 400, "M_BAD_JSON"),
        ({"new_version": "11", "additional_creators": [bob.user_id]}, 400, "M_INVALID_PARAM"),
        ({"new_version": "12", "additional_creators": ["not-a-user"]}, 400, "M_INVALID_PARAM"),
    ]:
        r = await c.call("POST", f"/rooms/{q(room)}/upgrade", body, token=alice.access_token)
        assert (r.status, r.json()["errcode"]) == (status, errcode), body
    for user in (bob, eve):  # no tombstone power; not in the room
        r = await _upgrade(c, user, room, "11")
        assert (r.status, r.json()["errcode"]) == (403, "M_FORBIDDEN")
    r = await _upgrade(c, alice, "!nope:test.local", "11")
    assert (r.status, r.json()["errcode"]) == (404, "M_NOT_FOUND")
    r = await c.call("POST", f"/rooms/{q(room)}/upgrade", {"new_version": "11"})
    assert (r.status, r.json()["errcode"]) == (401, "M_MISSING_TOKEN")
    # Nothing was created by the failures: still no tombstone.
    state = await _state(c, alice, room)
    assert ("m.room.tombstone", "") not in state

    # A v12 upgrade with an additional creator: both unlisted in the power levels.
    r = await c.call("POST", f"/rooms/{q(room)}/upgrade",
                     {"new_version": "12", "additional_creators": [bob.user_id]},
                     token=alice.access_token)
    assert r.status == 200, r.body
    new = r.json()["replacement_room"]
    r = await c.call("POST", f"/rooms/{q(new)}/join", {}, token=bob.access_token)
    new_state = await _state(c, alice, new)
    assert new_state[("m.room.create", "")]["content"]["additional_creators"] == [bob.user_id]
    users = new_state[("m.room.power_levels", "")]["content"]["users"]
    assert alice.user_id not in users and bob.user_id not in users
    # An upgraded room cannot be upgraded again.
    r = await _upgrade(c, alice, room, "11")
    assert (r.status, r.json()["errcode"]) == (400, "M_INVALID_PARAM")
