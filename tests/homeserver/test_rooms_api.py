"""Rooms over HTTP on both engines: create, membership, send, state, redaction, history,
visibility, aliases, idempotency, concurrency and the spec's errors."""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted
from twisted.internet import defer

from tests.support.client import Client, User, q
from tests.support.server import RunningServer


async def _setup(hs: RunningServer) -> tuple[Client, User, User]:
    c = Client(hs.client_url)
    return c, await c.register("alice"), await c.register("bob")


async def _room(c: Client, user: User, **body: Any) -> str:
    r = await c.call("POST", "/createRoom", body, token=user.access_token)
    assert r.status == 200, r.body
    return str(r.json()["room_id"])


async def _send(c: Client, user: User, room: str, text: str, txn: str | None = None) -> str:
    txn = txn or f"t{abs(hash((user.user_id, text)))}"
    r = await c.call("PUT", f"/rooms/{q(room)}/send/m.room.message/{txn}",
                     {"msgtype": "m.text", "body": text}, token=user.access_token)
    assert r.status == 200, r.body
    return str(r.json()["event_id"])


@pytest_twisted.ensureDeferred
async def test_create_room_presets_and_state(hs: RunningServer) -> None:
    c, alice, bob = await _setup(hs)
    room = await _room(c, alice, preset="public_chat", name="Lobby", topic="Say hi",
                       room_alias_name="lobby")
    r = await c.call("GET", f"/rooms/{q(room)}/state", token=alice.access_token)
    state = {(e["type"], e["state_key"]): e for e in r.json()}
    assert state[("m.room.create", "")]["content"]["room_version"] == "12"
    assert state[("m.room.join_rules", "")]["content"]["join_rule"] == "public"
    assert state[("m.room.name", "")]["content"]["name"] == "Lobby"
    assert state[("m.room.topic", "")]["content"]["topic"] == "Say hi"
    assert state[("m.room.canonical_alias", "")]["content"]["alias"] == "#lobby:test.local"
    assert state[("m.room.member", alice.user_id)]["content"]["membership"] == "join"
    r = await c.call("GET", f"/rooms/{q(room)}/state/m.room.name", token=alice.access_token)
    assert r.json() == {"name": "Lobby"}
    r = await c.call("GET", f"/rooms/{q(room)}/state/m.room.name/", token=alice.access_token)
    assert r.status in (200, 404)  # an empty path segment is not a state key

    # Bob joins by alias; the directory resolves it.
    r = await c.call("GET", f"/directory/room/{q('#lobby:test.local')}")
    assert r.json()["room_id"] == room
    r = await c.call("POST", f"/join/{q('#lobby:test.local')}", {}, token=bob.access_token)
    assert (r.status, r.json()) == (200, {"room_id": room})
    r = await c.call("GET", "/joined_rooms", token=bob.access_token)
    assert r.json() == {"joined_rooms": [room]}
    r = await c.call("GET", f"/rooms/{q(room)}/joined_members", token=bob.access_token)
    assert set(r.json()["joined"]) == {alice.user_id, bob.user_id}

    for version in ("1", "6", "10", "11"):
        rid = await _room(c, alice, room_version=version, preset="private_chat")
        r = await c.call("GET", f"/rooms/{q(rid)}/state/m.room.create", token=alice.access_token)
        assert r.json()["room_version"] == version


@pytest_twisted.ensureDeferred
async def test_identical_concurrent_creates_make_distinct_rooms(hs: RunningServer) -> None:
    # v12 room IDs are the create event's hash: the same request at the same moment must not
    # name the same room twice (it did: a 500 for all but the first).
    c, alice, _ = await _setup(hs)
    rooms = await defer.gatherResults([
        defer.ensureDeferred(_room(c, alice, preset="public_chat", room_version="12"))
        for _ in range(6)
    ])
    assert len(set(rooms)) == 6


@pytest_twisted.ensureDeferred
async def test_create_room_bad_input(hs: RunningServer) -> None:
    c, alice, _ = await _setup(hs)
    for body, errcode in [
        ({"preset": "everyone"}, "M_BAD_JSON"),
        ({"room_version": "99"}, "M_UNSUPPORTED_ROOM_VERSION"),
        ({"room_version": 12}, "M_BAD_JSON"),
        ({"invite": "bob"}, "M_BAD_JSON"),
        ({"visibility": "secret"}, "M_BAD_JSON"),
        ({"initial_state": [1]}, "M_BAD_JSON"),
        ({"room_alias_name": "has space"}, "M_INVALID_PARAM"),
    ]:
        r = await c.call("POST", "/createRoom", body, token=alice.access_token)
        assert (r.status, r.json()["errcode"]) == (400, errcode), body
    await _room(c, alice, room_alias_name="taken")
    r = await c.call("POST", "/createRoom", {"room_alias_name": "taken"},
                     token=alice.access_token)
    assert (r.status, r.json()["errcode"]) == (400, "M_ROOM_IN_USE")


@pytest_twisted.ensureDeferred
async def test_membership_flow_and_forbidden_cases(hs: RunningServer) -> None:
    c, alice, bob = await _setup(hs)
    carol = await c.register("carol")
    room = await _room(c, alice, preset="private_chat")
    # Not invited: Bob cannot join a private room nor send into it.
    r = await c.call("POST", f"/rooms/{q(room)}/join", {}, token=bob.access_token)
    assert (r.status, r.json()["errcode"]) == (403, "M_FORBIDDEN")
    r = await c.call("PUT", f"/rooms/{q(room)}/send/m.room.message/x", {"body": "hi"},
                     token=bob.access_token)
    assert (r.status, r.json()["errcode"]) == (403, "M_FORBIDDEN")
    assert r.json()["error"]
    r = await c.call("GET", f"/rooms/{q(room)}/messages", token=bob.access_token)
    assert r.status == 403
    # Invite, join, talk.
    r = await c.call("POST", f"/rooms/{q(room)}/invite", {"user_id": bob.user_id},
                     token=alice.access_token)
    assert r.status == 200
    r = await c.call("GET", f"/rooms/{q(room)}/members?membership=invite",
                     token=alice.access_token)
    assert [m["state_key"] for m in r.json()["chunk"]] == [bob.user_id]
    assert (await c.call("POST", f"/rooms/{q(room)}/join", {}, token=bob.access_token)).status \
        == 200
    await _send(c, bob, room, "hello")
    # Bob (power 0) cannot kick Alice; Alice kicks, then bans, Bob.
    r = await c.call("POST", f"/rooms/{q(room)}/kick", {"user_id": alice.user_id},
                     token=bob.access_token)
    assert (r.status, r.json()["errcode"]) == (403, "M_FORBIDDEN")
    r = await c.call("POST", f"/rooms/{q(room)}/kick", {"user_id": bob.user_id,
                                                        "reason": "bye"},
                     token=alice.access_token)
    assert r.status == 200
    r = await c.call("POST", f"/rooms/{q(room)}/ban", {"user_id": bob.user_id},
                     token=alice.access_token)
    assert r.status == 200
    r = await c.call("POST", f"/rooms/{q(room)}/invite", {"user_id": bob.user_id},
                     token=alice.access_token)
    assert r.status == 403  # banned users cannot be invited
    r = await c.call("POST", f"/rooms/{q(room)}/unban", {"user_id": bob.user_id},
                     token=alice.access_token)
    assert r.status == 200
    r = await c.call("GET", f"/rooms/{q(room)}/members?not_membership=join",
                     token=alice.access_token)
    assert {m["state_key"]: m["content"]["membership"] for m in r.json()["chunk"]} == {
        bob.user_id: "leave"}
    # Carol leaves a room she never joined; an unknown room is 404.
    r = await c.call("POST", f"/rooms/{q(room)}/leave", {}, token=carol.access_token)
    assert r.status == 403
    r = await c.call("PUT", f"/rooms/{q('!nope:test.local')}/send/m.room.message/1",
                     {"body": "x"}, token=alice.access_token)
    assert (r.status, r.json()["errcode"]) == (404, "M_NOT_FOUND")
    r = await c.call("POST", f"/rooms/{q(room)}/invite", {"user_id": "not-a-user"},
                     token=alice.access_token)
    assert (r.status, r.json()["errcode"]) == (400, "M_INVALID_PARAM")
    # Leave and forget.
    assert (await c.call("POST", f"/rooms/{q(room)}/leave", {},
                         token=alice.access_token)).status == 200
    assert (await c.call("POST", f"/rooms/{q(room)}/forget", {},
                         token=alice.access_token)).status == 200
    assert (await c.call("GET", "/joined_rooms", token=alice.access_token)).json() == {
        "joined_rooms": []}


@pytest_twisted.ensureDeferred
async def test_send_is_idempotent_and_limited(hs: RunningServer) -> None:
    c, alice, _ = await _setup(hs)
    room = await _room(c, alice)
    first = await _send(c, alice, room, "once", txn="txn1")
    again = await _send(c, alice, room, "once", txn="txn1")
    assert first == again
    r = await c.call("GET", f"/rooms/{q(room)}/messages?dir=b&limit=50",
                     token=alice.access_token)
    bodies = [e["content"].get("body") for e in r.json()["chunk"]
              if e["type"] == "m.room.message"]
    assert bodies == ["once"]
    big = {"msgtype": "m.text", "body": "x" * 70000}
    r = await c.call("PUT", f"/rooms/{q(room)}/send/m.room.message/big", big,
                     token=alice.access_token)
    assert (r.status, r.json()["errcode"]) == (413, "M_TOO_LARGE")
    r = await c.call("PUT", f"/rooms/{q(room)}/send/m.room.message/bad", b"[]",
                     token=alice.access_token)
    assert (r.status, r.json()["errcode"]) == (400, "M_BAD_JSON")
    r = await c.call("PUT", f"/rooms/{q(room)}/state/m.room.topic/{'k' * 300}", {},
                     token=alice.access_token)
    assert (r.status, r.json()["errcode"]) == (400, "M_INVALID_PARAM")


@pytest_twisted.ensureDeferred
async def test_concurrent_sends_into_one_room(hs: RunningServer) -> None:
    c, alice, bob = await _setup(hs)
    room = await _room(c, alice, preset="public_chat")
    await c.call("POST", f"/rooms/{q(room)}/join", {}, token=bob.access_token)
    sends = [
        _send(c, user, room, f"{user.user_id} {i}", txn=f"c{i}")
        for i in range(15) for user in (alice, bob)
    ]
    ids = await defer.gatherResults([defer.ensureDeferred(x) for x in sends])
    assert len(set(ids)) == 30
    r = await c.call("GET", f"/rooms/{q(room)}/messages?dir=b&limit=100",
                     token=alice.access_token)
    seen = [e["event_id"] for e in r.json()["chunk"] if e["type"] == "m.room.message"]
    assert sorted(seen) == sorted(ids)
    assert hs.hs.services is not None
    # One linear history: a single forward extremity.
    assert len(hs.hs.services.pipeline.forward_extremities(room) or []) == 1


@pytest_twisted.ensureDeferred
async def test_pagination_and_context(hs: RunningServer) -> None:
    c, alice, _ = await _setup(hs)
    room = await _room(c, alice)
    ids = [await _send(c, alice, room, f"m{i}", txn=f"p{i}") for i in range(12)]
    r = await c.call("GET", f"/rooms/{q(room)}/messages?dir=b&limit=5", token=alice.access_token)
    page1 = r.json()
    assert [e["event_id"] for e in page1["chunk"]] == ids[::-1][:5]
    r = await c.call("GET", f"/rooms/{q(room)}/messages?dir=b&limit=5&from={q(page1['end'])}",
                     token=alice.access_token)
    assert [e["event_id"] for e in r.json()["chunk"]] == ids[::-1][5:10]
    # Forward from the start of history.
    r = await c.call("GET", f"/rooms/{q(room)}/messages?dir=f&limit=100",
                     token=alice.access_token)
    forward = [e["event_id"] for e in r.json()["chunk"] if e["type"] == "m.room.message"]
    assert forward == ids
    f = json.dumps({"types": ["m.room.member"]})
    r = await c.call("GET", f"/rooms/{q(room)}/messages?dir=b&limit=50&filter={q(f)}",
                     token=alice.access_token)
    assert {e["type"] for e in r.json()["chunk"]} == {"m.room.member"}
    r = await c.call("GET", f"/rooms/{q(room)}/context/{q(ids[5])}?limit=4",
                     token=alice.access_token)
    ctx = r.json()
    assert ctx["event"]["event_id"] == ids[5]
    assert [e["event_id"] for e in ctx["events_before"]] == [ids[4], ids[3]]
    assert [e["event_id"] for e in ctx["events_after"]] == [ids[6], ids[7]]
    for bad in ("dir=x", "limit=-1", "limit=abc", "filter=%7Bnot"):
        r = await c.call("GET", f"/rooms/{q(room)}/messages?{bad}", token=alice.access_token)
        assert r.status == 400, bad


@pytest_twisted.ensureDeferred
async def test_redaction_is_what_everyone_sees(hs: RunningServer) -> None:
    c, alice, bob = await _setup(hs)
    room = await _room(c, alice, preset="public_chat")
    await c.call("POST", f"/rooms/{q(room)}/join", {}, token=bob.access_token)
    secret = await _send(c, bob, room, "my password is hunter2", txn="s1")
    r = await c.call("PUT", f"/rooms/{q(room)}/redact/{q(secret)}/r1", {"reason": "oops"},
                     token=bob.access_token)
    assert r.status == 200
    for token in (alice.access_token, bob.access_token):
        r = await c.call("GET", f"/rooms/{q(room)}/event/{q(secret)}", token=token)
        assert r.json()["content"] == {}
        assert "redacted_because" in r.json()["unsigned"]
        r = await c.call("GET", f"/rooms/{q(room)}/messages?limit=50", token=token)
        assert "hunter2" not in r.body.decode()
    # Alice (moderator) may redact Bob's events; Bob may not redact Alice's.
    mine = await _send(c, alice, room, "alice msg", txn="s2")
    r = await c.call("PUT", f"/rooms/{q(room)}/redact/{q(mine)}/r2", {},
                     token=bob.access_token)
    assert (r.status, r.json()["errcode"]) == (403, "M_FORBIDDEN")


@pytest_twisted.ensureDeferred
async def test_history_visibility_joined(hs: RunningServer) -> None:
    c, alice, bob = await _setup(hs)
    room = await _room(c, alice, preset="public_chat", initial_state=[
        {"type": "m.room.history_visibility", "state_key": "",
         "content": {"history_visibility": "joined"}}])
    before = await _send(c, alice, room, "before bob", txn="v1")
    await c.call("POST", f"/rooms/{q(room)}/join", {}, token=bob.access_token)
    after = await _send(c, alice, room, "after bob", txn="v2")
    r = await c.call("GET", f"/rooms/{q(room)}/messages?limit=50", token=bob.access_token)
    visible = {e["event_id"] for e in r.json()["chunk"]}
    assert after in visible and before not in visible
    r = await c.call("GET", f"/rooms/{q(room)}/event/{q(before)}", token=bob.access_token)
    assert (r.status, r.json()["errcode"]) == (404, "M_NOT_FOUND")
    r = await c.call("GET", f"/rooms/{q(room)}/context/{q(before)}", token=bob.access_token)
    assert r.status == 404


@pytest_twisted.ensureDeferred
async def test_aliases(hs: RunningServer) -> None:
    c, alice, bob = await _setup(hs)
    room = await _room(c, alice)
    alias = "#team:test.local"
    r = await c.call("PUT", f"/directory/room/{q(alias)}", {"room_id": room},
                     token=bob.access_token)
    assert (r.status, r.json()["errcode"]) == (403, "M_FORBIDDEN")
    r = await c.call("PUT", f"/directory/room/{q(alias)}", {"room_id": room},
                     token=alice.access_token)
    assert r.status == 200
    r = await c.call("PUT", f"/directory/room/{q(alias)}", {"room_id": room},
                     token=alice.access_token)
    assert r.status == 409
    r = await c.call("GET", f"/rooms/{q(room)}/aliases", token=alice.access_token)
    assert r.json() == {"aliases": [alias]}
    for bad in ("team", "#no-domain", "#x:other.test"):
        r = await c.call("PUT", f"/directory/room/{q(bad)}", {"room_id": room},
                         token=alice.access_token)
        assert (r.status, r.json()["errcode"]) == (400, "M_INVALID_PARAM"), bad
    r = await c.call("DELETE", f"/directory/room/{q(alias)}", token=bob.access_token)
    assert r.status == 403
    r = await c.call("DELETE", f"/directory/room/{q(alias)}", token=alice.access_token)
    assert r.status == 200
    r = await c.call("GET", f"/directory/room/{q(alias)}")
    assert (r.status, r.json()["errcode"]) == (404, "M_NOT_FOUND")


@pytest_twisted.ensureDeferred
async def test_trailing_slash_is_the_empty_state_key(hs: RunningServer) -> None:
    c, alice, _ = await _setup(hs)
    room = await _room(c, alice)
    r = await c.call("PUT", f"/rooms/{q(room)}/state/m.room.topic/", {"topic": "slash"},
                     token=alice.access_token)
    assert r.status == 200, r.body
    r = await c.call("GET", f"/rooms/{q(room)}/state/m.room.topic/", token=alice.access_token)
    assert r.json() == {"topic": "slash"}
    r = await c.call("GET", f"/rooms/{q(room)}/state/m.room.topic", token=alice.access_token)
    assert r.json() == {"topic": "slash"}
