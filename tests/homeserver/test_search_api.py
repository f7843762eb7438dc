"""POST /search on both engines (SQLite FTS5, PostgreSQL full-text search): ranking and
recency, keys, filters, context, groupings, next_batch, redaction, history visibility and
the spec's errors."""

from __future__ import annotations

import itertools
from typing import Any

import pytest_twisted

from tests.support.client import Client, User, q
from tests.support.server import RunningServer

_txn = itertools.count()


async def _room(c: Client, user: User, **body: Any) -> str:
    r = await c.call("POST", "/createRoom", body, token=user.access_token)
    assert r.status == 200, r.body
    return str(r.json()["room_id"])


async def _send(c: Client, user: User, room: str, text: str) -> str:
    r = await c.call("PUT", f"/rooms/{q(room)}/send/m.room.message/s{next(_txn)}",
                     {"msgtype": "m.text", "body": text}, token=user.access_token)
    assert r.status == 200, r.body
    return str(r.json()["event_id"])


async def _search(c: Client, user: User, term: str, next_batch: str | None = None,
                  **spec: Any) -> Any:
    path = "/search" + (f"?next_batch={q(next_batch)}" if next_batch else "")
    r = await c.call("POST", path,
                     {"search_categories": {"room_events": {"search_term": term, **spec}}},
                     token=user.access_token)
    assert r.status == 200, r.body
    return r.json()["search_categories"]["room_events"]


def _ids(body: Any) -> list[str]:
    return [r["result"]["event_id"] for r in body["results"]]


@pytest_twisted.ensureDeferred
async def test_search_rank_recent_keys_and_filters(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, bob = await c.register("alice"), await c.register("bob")
    room = await _room(c, alice, preset="public_chat", name="Quick room")
    r = await c.call("POST", f"/rooms/{q(room)}/join", {}, token=bob.access_token)
    assert r.status == 200
    fox = await _send(c, alice, room, "The quick brown fox jumps over the quick dog")
    await _send(c, alice, room, "A lazy dog sleeps")
    thinking = await _send(c, bob, room, "quick thinking")

    body = await _search(c, bob, "quick", keys=["content.body"], order_by="recent")
    assert _ids(body) == [thinking, fox]
    assert "quick" in body["highlights"]
    assert body["results"][0]["result"]["content"]["body"] == "quick thinking"
    body = await _search(c, bob, "quick", keys=["content.body"])  # by rank
    assert set(_ids(body)) == {thinking, fox}
    assert all(isinstance(r["rank"], float) for r in body["results"])
    body = await _search(c, bob, "quick")  # every key: the room name too
    types = {r["result"]["type"] for r in body["results"]}
    assert types == {"m.room.message", "m.room.name"}
    body = await _search(c, bob, "quick", keys=["content.name"])
    assert [r["result"]["content"]["name"] for r in body["results"]] == ["Quick room"]
    assert _ids(await _search(c, bob, "qui brow", keys=["content.body"])) == [fox]  # prefixes
    assert _ids(await _search(c, bob, "quick", keys=["content.body"],
                              filter={"senders": [bob.user_id]})) == [thinking]
    assert _ids(await _search(c, bob, "quick", keys=["content.body"],
                              filter={"not_senders": [bob.user_id]})) == [fox]
    assert _ids(await _search(c, bob, "quick", filter={"not_rooms": [room]})) == []
    assert _ids(await _search(c, bob, "nothing-matches-this")) == []
    assert _ids(await _search(c, bob, "!!!")) == []

    # Context and groupings.
    body = await _search(c, bob, "thinking", event_context={"before_limit": 1, "after_limit": 1},
                         groupings={"group_by": [{"key": "room_id"}, {"key": "sender"}]})
    (result,) = body["results"]
    assert [e["content"]["body"] for e in result["context"]["events_before"]] == [
        "A lazy dog sleeps"]
    assert result["context"]["events_after"] == []
    assert body["groups"]["room_id"][room]["results"] == [thinking]
    assert body["groups"]["sender"][bob.user_id]["results"] == [thinking]

    # Redacted events are no longer found.
    r = await c.call("PUT", f"/rooms/{q(room)}/redact/{q(thinking)}/red1", {},
                     token=bob.access_token)
    assert r.status == 200
    assert _ids(await _search(c, bob, "thinking")) == []


@pytest_twisted.ensureDeferred
async def test_search_pagination(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice = await c.register("alice")
    room = await _room(c, alice, preset="private_chat")
    sent = [await _send(c, alice, room, f"needle number {i}") for i in range(5)]
    for order in ("recent", "rank"):
        seen: list[str] = []
        token = None
        for _ in range(10):
            body = await _search(c, alice, "needle", token, order_by=order,
                                 filter={"limit": 2})
            assert len(body["results"]) <= 2
            seen += _ids(body)
            token = body.get("next_batch")
            if token is None:
                break
        assert sorted(seen) == sorted(sent) and len(seen) == 5, order
        if order == "recent":
            assert seen == sent[::-1]


@pytest_twisted.ensureDeferred
async def test_search_visibility(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, bob = await c.register("alice"), await c.register("bob")
    private = await _room(c, alice, preset="private_chat")
    await _send(c, alice, private, "secret plans")
    room = await _room(c, alice, preset="public_chat")
    r = await c.call("PUT", f"/rooms/{q(room)}/state/m.room.history_visibility",
                     {"history_visibility": "joined"}, token=alice.access_token)
    assert r.status == 200
    early = await _send(c, alice, room, "secret early")
    r = await c.call("POST", f"/rooms/{q(room)}/join", {}, token=bob.access_token)
    assert r.status == 200
    late = await _send(c, alice, room, "secret late")
    r = await c.call("POST", f"/rooms/{q(room)}/leave", {}, token=bob.access_token)
    after_leave = await _send(c, alice, room, "secret after bob left")

    body = await _search(c, bob, "secret", order_by="recent")
    assert _ids(body) == [late]  # not the private room, not before his join, not after
    assert "plans" not in str(body) and early not in str(body) and after_leave not in str(body)
    body = await _search(c, bob, "secret", order_by="rank", filter={"limit": 1})
    assert _ids(body) == [late]
    body = await _search(c, alice, "secret", order_by="recent")
    assert len(body["results"]) == 4


@pytest_twisted.ensureDeferred
async def test_search_bad_input(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice = await c.register("alice")
    for body, errcode in [
        ({}, "M_MISSING_PARAM"),
        ({"search_categories": {}}, "M_MISSING_PARAM"),
        ({"search_categories": {"room_events": {}}}, "M_MISSING_PARAM"),
        ({"search_categories": {"room_events": {"search_term": 5}}}, "M_BAD_JSON"),
        ({"search_categories": {"room_events": {"search_term": "x", "keys": ["content.x"]}}},
         "M_INVALID_PARAM"),
        ({"search_categories": {"room_events": {"search_term": "x", "order_by": "size"}}},
         "M_INVALID_PARAM"),
        ({"search_categories": {"room_events": {"search_term": "x", "filter": {"limit": 0}}}},
         "M_BAD_JSON"),
        ({"search_categories": {"room_events": {"search_term": "x",
                                                "filter": {"senders": "me"}}}}, "M_BAD_JSON"),
        ({"search_categories": {"room_events": {
            "search_term": "x", "event_context": {"before_limit": -1}}}}, "M_BAD_JSON"),
        ({"search_categories": {"room_events": {
            "search_term": "x", "groupings": {"group_by": [{"key": "type"}]}}}},
         "M_INVALID_PARAM"),
        ({"search_categories": {"room_events": {"search_term": "x", "include_state": 1}}},
         "M_BAD_JSON"),
        ({"search_categories": {"room_events": {
            "search_term": "x", "event_context": {"include_profile": "yes"}}}}, "M_BAD_JSON"),
    ]:
        r = await c.call("POST", "/search", body, token=alice.access_token)
        assert (r.status, r.json()["errcode"]) == (400, errcode), body
    ok = {"search_categories": {"room_events": {"search_term": "x"}}}
    for token in ("garbage", "s5", "r-1"):  # rank order wants an 'r' token
        r = await c.call("POST", f"/search?next_batch={token}", ok, token=alice.access_token)
        assert (r.status, r.json()["errcode"]) == (400, "M_INVALID_PARAM"), token
    r = await c.call("POST", "/search", ok)
    assert (r.status, r.json()["errcode"]) == (401, "M_MISSING_TOKEN")


@pytest_twisted.ensureDeferred
async def test_search_count_state_and_profiles(hs: RunningServer) -> None:
    """What Element's search shows: ``count``, the rooms' state (``include_state``) and the
    senders' names and avatars in the context (``include_profile``)."""
    c = Client(hs.client_url)
    alice, bob = await c.register("alice"), await c.register("bob")
    for user, name in ((alice, "Alice"), (bob, "Bobby")):
        r = await c.call("PUT", f"/profile/{q(user.user_id)}/displayname", {"displayname": name},
                         token=user.access_token)
        assert r.status == 200
    room = await _room(c, alice, preset="public_chat", name="Pets")
    other = await _room(c, bob, name="Elsewhere")
    r = await c.call("POST", f"/rooms/{q(room)}/join", {}, token=bob.access_token)
    assert r.status == 200
    await _send(c, alice, room, "my cat sleeps")
    await _send(c, bob, room, "which cat")
    found = [await _send(c, alice, room, f"cat number {i}") for i in range(3)]
    await _send(c, bob, other, "no cat here for alice")

    body = await _search(c, alice, "cat", order_by="recent", filter={"limit": 2},
                         include_state=True,
                         event_context={"before_limit": 2, "after_limit": 0,
                                        "include_profile": True})
    # Five matches alice may see, two per page; the other room is not hers.
    assert body["count"] == 5
    assert _ids(body) == [found[2], found[1]]
    assert list(body["state"]) == [room]
    names = [e["content"]["name"] for e in body["state"][room] if e["type"] == "m.room.name"]
    assert names == ["Pets"]
    ctx = body["results"][1]["context"]
    assert [e["sender"] for e in ctx["events_before"]] == [alice.user_id, bob.user_id]
    assert ctx["profile_info"][alice.user_id] == {"displayname": "Alice"}
    assert ctx["profile_info"][bob.user_id] == {"displayname": "Bobby"}
    # Without the options, neither appears.
    plain = await _search(c, alice, "cat", event_context={"before_limit": 1})
    assert "state" not in plain and "profile_info" not in plain["results"][0]["context"]
