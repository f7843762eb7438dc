"""/sync over HTTP on both engines: initial and incremental syncs, limited timelines that
/messages continues, state and state_after, invites, leaves, knocks, summaries, filters,
account data, tags, ignored users."""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted

from homeserver.services.sync import SyncToken
from tests.support.client import Client, User, q
from tests.support.server import RunningServer
from tests.support.sync import (
    bodies,
    create_room,
    ids,
    invite,
    join,
    leave,
    put_state,
    send,
    sync,
    timeline,
)


async def _setup(hs: RunningServer) -> tuple[Client, User, User]:
    c = Client(hs.client_url)
    return c, await c.register("alice"), await c.register("bob")


async def _messages(c: Client, user: User, room: str, **params: Any) -> dict[str, Any]:
    query = "&".join(f"{k}={q(str(v))}" for k, v in params.items())
    r = await c.call("GET", f"/rooms/{q(room)}/messages?{query}", token=user.access_token)
    assert r.status == 200, r.body
    out: dict[str, Any] = r.json()
    return out


@pytest_twisted.ensureDeferred
async def test_initial_sync_shape_and_state_before_timeline(hs: RunningServer) -> None:
    c, alice, _ = await _setup(hs)
    room = await create_room(c, alice, name="Tea")
    sent = [await send(c, alice, room, f"m{i}") for i in range(12)]
    body = await sync(c, alice)
    token = SyncToken.parse(body["next_batch"])
    assert token.events > 0
    assert set(body["rooms"]) == {"join", "invite", "leave", "knock"}
    assert "device_unused_fallback_key_types" in body
    data = body["rooms"]["join"][room]
    tl = data["timeline"]
    # Default limit 10: the newest ten messages, oldest first, and more before them.
    assert ids(tl["events"]) == sent[-10:]
    assert tl["limited"] is True
    assert all("room_id" not in e for e in tl["events"])
    # The state is the room's state before the timeline, with no timeline event in it.
    state = {(e["type"], e["state_key"]): e for e in data["state"]["events"]}
    assert state[("m.room.name", "")]["content"]["name"] == "Tea"
    assert state[("m.room.member", alice.user_id)]["content"]["membership"] == "join"
    assert not set(ids(data["state"]["events"])) & set(ids(tl["events"]))
    assert data["summary"]["m.joined_member_count"] == 1
    assert data["summary"]["m.invited_member_count"] == 0
    assert "m.heroes" not in data["summary"]  # the room has a name
    assert data["unread_notifications"].keys() == {"notification_count", "highlight_count"}


@pytest_twisted.ensureDeferred
async def test_small_room_fits_in_timeline_and_state_is_empty(hs: RunningServer) -> None:
    c, alice, _ = await _setup(hs)
    room = await create_room(c, alice)
    body = await sync(c, alice, filter={"room": {"timeline": {"limit": 50}}})
    data = body["rooms"]["join"][room]
    assert data["timeline"]["limited"] is False
    assert data["timeline"]["events"][0]["type"] == "m.room.create"
    assert data["state"]["events"] == []


@pytest_twisted.ensureDeferred
async def test_incremental_sync_returns_only_new_events(hs: RunningServer) -> None:
    c, alice, bob = await _setup(hs)
    room = await create_room(c, alice, preset="public_chat")
    first = await sync(c, alice)
    e1 = await send(c, alice, room, "one")
    await join(c, bob, room)
    e2 = await send(c, bob, room, "two")
    body = await sync(c, alice, first["next_batch"])
    tl = timeline(body, room)
    assert bodies(tl["events"]) == ["one", "two"]
    assert tl["limited"] is False
    assert e1 in ids(tl["events"]) and e2 in ids(tl["events"])
    # Bob's join is in the timeline, so the state delta is empty.
    assert body["rooms"]["join"][room]["state"]["events"] == []
    assert body["rooms"]["join"][room]["summary"]["m.joined_member_count"] == 2
    # Nothing new: an empty response, and the same token.
    again = await sync(c, alice, body["next_batch"])
    assert again["rooms"]["join"] == {}
    assert again["next_batch"] == body["next_batch"]


@pytest_twisted.ensureDeferred
async def test_limited_incremental_sync_paginates_back_seamlessly(hs: RunningServer) -> None:
    c, alice, bob = await _setup(hs)
    room = await create_room(c, alice, preset="public_chat")
    await join(c, bob, room)
    since = (await sync(c, bob))["next_batch"]
    sent = [await send(c, alice, room, f"m{i}") for i in range(25)]
    await put_state(c, alice, room, "m.room.topic", {"topic": "in the gap"})
    sent += [await send(c, alice, room, f"n{i}") for i in range(8)]
    body = await sync(c, bob, since, filter={"room": {"timeline": {"limit": 5}}})
    tl = timeline(body, room)
    assert tl["limited"] is True
    assert ids(tl["events"]) == sent[-5:]
    # The state delta covers the gap: the topic changed there.
    state = body["rooms"]["join"][room]["state"]["events"]
    assert [e["content"]["topic"] for e in state if e["type"] == "m.room.topic"] == ["in the gap"]
    assert not [e for e in state if e["type"] == "m.room.member"]  # no membership changed

    # /messages from prev_batch backwards continues right before the timeline...
    seen: list[str] = []
    token = tl["prev_batch"]
    for _ in range(20):
        page = await _messages(c, bob, room, dir="b", limit=4, **{"from": token})
        seen += [e["event_id"] for e in page["chunk"]]
        if "end" not in page:
            break
        token = page["end"]
    gap = [e for e in seen if e in sent]
    assert gap[: len(sent) - 5] == list(reversed(sent[:-5]))
    assert not set(seen) & set(ids(tl["events"]))
    # ...and /messages from the since token forwards to prev_batch is exactly the gap.
    page = await _messages(c, bob, room, dir="f", limit=100,
                           **{"from": since, "to": tl["prev_batch"]})
    forward = [e["event_id"] for e in page["chunk"] if e["type"] == "m.room.message"]
    assert forward == sent[:-5]
    assert [e["type"] for e in page["chunk"]].count("m.room.topic") == 1


@pytest_twisted.ensureDeferred
async def test_state_after(hs: RunningServer) -> None:
    c, alice, _ = await _setup(hs)
    room = await create_room(c, alice, preset="public_chat", name="Before")
    body = await sync(c, alice, use_state_after=True)
    data = body["rooms"]["join"][room]
    assert "state" not in data
    after = {(e["type"], e["state_key"]): e for e in data["state_after"]["events"]}
    # state_after is the state at the end of the timeline: complete.
    assert after[("m.room.name", "")]["content"]["name"] == "Before"
    assert ("m.room.create", "") in after

    await send(c, alice, room, "hello")
    quiet = await sync(c, alice, body["next_batch"], use_state_after=True)
    assert quiet["rooms"]["join"][room]["state_after"]["events"] == []

    name_id = await put_state(c, alice, room, "m.room.name", {"name": "After"})
    await send(c, alice, room, "later")
    changed = await sync(c, alice, quiet["next_batch"], use_state_after=True)
    events = changed["rooms"]["join"][room]["state_after"]["events"]
    assert ids(events) == [name_id]
    assert name_id in ids(changed["rooms"]["join"][room]["timeline"]["events"])

    # Without use_state_after the same change appears only in the timeline.
    plain = await sync(c, alice, quiet["next_batch"])
    assert "state_after" not in plain["rooms"]["join"][room]
    assert plain["rooms"]["join"][room]["state"]["events"] == []


@pytest_twisted.ensureDeferred
async def test_invite_join_leave_sections(hs: RunningServer) -> None:
    c, alice, bob = await _setup(hs)
    room = await create_room(c, alice, name="Secret", topic="shh")
    start = (await sync(c, bob))["next_batch"]
    await invite(c, alice, room, bob)
    body = await sync(c, bob, start)
    assert list(body["rooms"]["invite"]) == [room]
    stripped = body["rooms"]["invite"][room]["invite_state"]["events"]
    kinds = {(e["type"], e["state_key"]) for e in stripped}
    assert ("m.room.create", "") in kinds
    assert ("m.room.name", "") in kinds and ("m.room.topic", "") in kinds
    assert ("m.room.member", bob.user_id) in kinds
    assert all(set(e) == {"type", "state_key", "sender", "content"} for e in stripped)
    # An initial sync shows the pending invite too.
    assert room in (await sync(c, bob))["rooms"]["invite"]

    await join(c, bob, room)
    await send(c, alice, room, "welcome")
    joined = await sync(c, bob, body["next_batch"])
    assert room not in joined["rooms"]["invite"]
    data = joined["rooms"]["join"][room]
    # Newly joined: the full state and the recent timeline.
    state = {(e["type"], e["state_key"]) for e in data["state"]["events"]}
    timeline_keys = {(e["type"], e.get("state_key")) for e in data["timeline"]["events"]}
    assert ("m.room.create", "") in state | timeline_keys
    assert ("m.room.name", "") in state | timeline_keys
    assert "welcome" in bodies(data["timeline"]["events"])

    await send(c, alice, room, "before you go")
    await leave(c, bob, room)
    await send(c, alice, room, "after bob left")
    left = await sync(c, bob, joined["next_batch"])
    assert room not in left["rooms"]["join"]
    tl = left["rooms"]["leave"][room]["timeline"]["events"]
    assert bodies(tl) == ["before you go"]
    assert tl[-1]["type"] == "m.room.member" and tl[-1]["content"]["membership"] == "leave"
    # Left rooms stay out of later syncs, and out of initial ones unless include_leave.
    later = await sync(c, bob, left["next_batch"])
    assert later["rooms"]["leave"] == {}
    assert room not in (await sync(c, bob))["rooms"]["leave"]
    archived = await sync(c, bob, filter={"room": {"include_leave": True}})
    assert "after bob left" not in bodies(archived["rooms"]["leave"][room]["timeline"]["events"])


@pytest_twisted.ensureDeferred
async def test_rejected_invite_and_knock(hs: RunningServer) -> None:
    c, alice, bob = await _setup(hs)
    room = await create_room(c, alice, name="Nope")
    start = (await sync(c, bob))["next_batch"]
    await invite(c, alice, room, bob)
    await send(c, alice, room, "private chatter")
    invited = await sync(c, bob, start)
    assert room in invited["rooms"]["invite"]
    await leave(c, bob, room)
    rejected = await sync(c, bob, invited["next_batch"])
    data = rejected["rooms"]["leave"][room]
    # Only the rejection itself: bob never saw the room.
    assert [e["content"]["membership"] for e in data["timeline"]["events"]] == ["leave"]
    assert data["state"]["events"] == []

    knock_room = await create_room(c, alice, room_version="12", name="Knock here",
                                   initial_state=[{"type": "m.room.join_rules",
                                                   "content": {"join_rule": "knock"}}])
    r = await c.call("POST", f"/knock/{q(knock_room)}", {}, token=bob.access_token)
    assert r.status == 200, r.body
    knocked = await sync(c, bob, rejected["next_batch"])
    stripped = knocked["rooms"]["knock"][knock_room]["knock_state"]["events"]
    assert ("m.room.member", bob.user_id) in {(e["type"], e["state_key"]) for e in stripped}
    assert any(e["type"] == "m.room.name" for e in stripped)


@pytest_twisted.ensureDeferred
async def test_heroes_for_unnamed_rooms(hs: RunningServer) -> None:
    c, alice, bob = await _setup(hs)
    carol = await c.register("carol")
    room = await create_room(c, alice, invite=[bob.user_id, carol.user_id])
    await join(c, bob, room)
    body = await sync(c, alice)
    summary = body["rooms"]["join"][room]["summary"]
    # By the stream order of their membership: carol's invite came before bob's join.
    assert summary["m.heroes"] == [carol.user_id, bob.user_id]
    assert summary["m.joined_member_count"] == 2
    assert summary["m.invited_member_count"] == 1


@pytest_twisted.ensureDeferred
async def test_filters(hs: RunningServer) -> None:
    c, alice, bob = await _setup(hs)
    room = await create_room(c, alice, preset="public_chat", name="Filtered")
    other = await create_room(c, alice, name="Other")
    await join(c, bob, room)
    await send(c, alice, room, "from alice")
    await send(c, bob, room, "from bob")
    await send(c, alice, room, "", event_type="m.reaction",
               content={"m.relates_to": {"rel_type": "m.annotation", "event_id": "$x",
                                         "key": "+1"}})
    await send(c, alice, other, "elsewhere")

    only_msgs = {"room": {"timeline": {"types": ["m.room.message"], "limit": 20}}}
    body = await sync(c, alice, filter=only_msgs)
    assert {e["type"] for e in timeline(body, room)["events"]} == {"m.room.message"}

    wildcard = {"room": {"timeline": {"not_types": ["m.room.*"], "limit": 20}}}
    body = await sync(c, alice, filter=wildcard)
    assert [e["type"] for e in timeline(body, room)["events"]] == ["m.reaction"]

    by_sender = {"room": {"timeline": {"senders": [bob.user_id], "limit": 20}}}
    body = await sync(c, alice, filter=by_sender)
    assert bodies(timeline(body, room)["events"]) == ["from bob"]

    not_sender = {"room": {"timeline": {"not_senders": [alice.user_id],
                                        "types": ["m.room.message"]}}}
    body = await sync(c, alice, filter=not_sender)
    assert bodies(timeline(body, room)["events"]) == ["from bob"]

    rooms_only = {"room": {"rooms": [other]}}
    body = await sync(c, alice, filter=rooms_only)
    assert list(body["rooms"]["join"]) == [other]
    body = await sync(c, alice, filter={"room": {"not_rooms": [other]}})
    assert list(body["rooms"]["join"]) == [room]

    state_types = {"room": {"state": {"types": ["m.room.name"]},
                            "timeline": {"limit": 1}}}
    body = await sync(c, alice, filter=state_types)
    assert {e["type"] for e in body["rooms"]["join"][room]["state"]["events"]} == {
        "m.room.name"
    }

    # A stored filter by ID behaves the same as the inline one.
    r = await c.call("POST", f"/user/{q(alice.user_id)}/filter", by_sender,
                     token=alice.access_token)
    filter_id = r.json()["filter_id"]
    body = await sync(c, alice, filter=filter_id)
    assert bodies(timeline(body, room)["events"]) == ["from bob"]
    await sync(c, alice, filter="999", expect=400)
    await sync(c, alice, filter="{not json", expect=400)
    await sync(c, alice, filter=json.dumps({"room": {"timeline": {"limit": "x"}}}),
               expect=400)

    # event_fields keeps only the listed paths.
    shaped = {"event_fields": ["type", "content.body"],
              "room": {"timeline": {"types": ["m.room.message"]}}}
    body = await sync(c, alice, filter=shaped)
    assert timeline(body, other)["events"] == [
        {"type": "m.room.message", "content": {"body": "elsewhere"}}
    ]


@pytest_twisted.ensureDeferred
async def test_lazy_loading_members(hs: RunningServer) -> None:
    c, alice, bob = await _setup(hs)
    carol = await c.register("carol")
    room = await create_room(c, alice, preset="public_chat", name="Lazy")
    await join(c, bob, room)
    await join(c, carol, room)
    for i in range(12):
        await send(c, bob, room, f"b{i}")
    lazy = {"room": {"state": {"lazy_load_members": True}}}
    body = await sync(c, alice, filter=lazy)
    members = {e["state_key"] for e in body["rooms"]["join"][room]["state"]["events"]
               if e["type"] == "m.room.member"}
    # Bob spoke; alice is the syncing user; carol said nothing.
    assert members == {bob.user_id, alice.user_id}
    full = await sync(c, alice)
    all_members = {e["state_key"] for e in full["rooms"]["join"][room]["state"]["events"]
                   if e["type"] == "m.room.member"}
    assert all_members == {alice.user_id, bob.user_id, carol.user_id}

    # An incremental sync brings the member event of a sender the client has not seen.
    await send(c, carol, room, "hi, I'm carol")
    inc = await sync(c, alice, body["next_batch"], filter=lazy)
    members = {e["state_key"] for e in inc["rooms"]["join"][room]["state"]["events"]
               if e["type"] == "m.room.member"}
    assert carol.user_id in members


@pytest_twisted.ensureDeferred
async def test_account_data_tags_and_full_state(hs: RunningServer) -> None:
    c, alice, bob = await _setup(hs)
    room = await create_room(c, alice)
    first = await sync(c, alice)
    uid = q(alice.user_id)
    r = await c.call("PUT", f"/user/{uid}/account_data/org.example.settings", {"a": 1},
                     token=alice.access_token)
    assert r.status == 200
    r = await c.call("PUT", f"/user/{uid}/rooms/{q(room)}/tags/m.favourite", {"order": 0.25},
                     token=alice.access_token)
    assert r.status == 200, r.body
    r = await c.call("PUT", f"/user/{uid}/rooms/{q(room)}/tags/u.work", {},
                     token=alice.access_token)
    assert r.status == 200
    body = await sync(c, alice, first["next_batch"])
    assert {"type": "org.example.settings", "content": {"a": 1}} in body["account_data"]["events"]
    room_data = body["rooms"]["join"][room]["account_data"]["events"]
    assert room_data == [{"type": "m.tag",
                          "content": {"tags": {"m.favourite": {"order": 0.25}, "u.work": {}}}}]
    assert body["rooms"]["join"][room]["timeline"]["events"] == []

    r = await c.call("GET", f"/user/{uid}/rooms/{q(room)}/tags", token=alice.access_token)
    assert r.json() == {"tags": {"m.favourite": {"order": 0.25}, "u.work": {}}}
    r = await c.call("DELETE", f"/user/{uid}/rooms/{q(room)}/tags/u.work",
                     token=alice.access_token)
    assert r.status == 200
    r = await c.call("GET", f"/user/{uid}/rooms/{q(room)}/tags", token=alice.access_token)
    assert r.json() == {"tags": {"m.favourite": {"order": 0.25}}}
    r = await c.call("PUT", f"/user/{uid}/rooms/{q(room)}/tags/x", {"order": "first"},
                     token=alice.access_token)
    assert r.status == 400
    r = await c.call("GET", f"/user/{uid}/rooms/{q(room)}/tags", token=bob.access_token)
    assert r.status == 403

    # full_state sends every joined room with its whole state, even with nothing new.
    quiet = await sync(c, alice, body["next_batch"])
    full = await sync(c, alice, quiet["next_batch"], full_state=True)
    types = {e["type"] for e in full["rooms"]["join"][room]["state"]["events"]}
    assert {"m.room.create", "m.room.member", "m.room.power_levels"} <= types
    assert full["rooms"]["join"][room]["timeline"]["events"] == []


@pytest_twisted.ensureDeferred
async def test_ignored_users(hs: RunningServer) -> None:
    c, alice, bob = await _setup(hs)
    room = await create_room(c, bob, preset="public_chat")
    await join(c, alice, room)
    uid = q(alice.user_id)
    r = await c.call("PUT", f"/user/{uid}/account_data/m.ignored_user_list",
                     {"ignored_users": {bob.user_id: {}}}, token=alice.access_token)
    assert r.status == 200
    start = (await sync(c, alice))["next_batch"]
    await send(c, bob, room, "you can't hear me")
    topic = await put_state(c, bob, room, "m.room.topic", {"topic": "state still shows"})
    body = await sync(c, alice, start)
    tl = timeline(body, room)["events"]
    assert bodies(tl) == []
    assert ids(tl) == [topic]  # state events from ignored users are still sent

    # Invites from an ignored user are not shown.
    private = await create_room(c, bob)
    await invite(c, bob, private, alice)
    later = await sync(c, alice, body["next_batch"])
    assert later["rooms"]["invite"] == {}
    assert private not in (await sync(c, alice))["rooms"]["invite"]

    # Un-ignoring brings new messages back.
    r = await c.call("PUT", f"/user/{uid}/account_data/m.ignored_user_list",
                     {"ignored_users": {}}, token=alice.access_token)
    await send(c, bob, room, "now you can")
    again = await sync(c, alice, later["next_batch"])
    assert bodies(timeline(again, room)["events"]) == ["now you can"]


@pytest_twisted.ensureDeferred
async def test_bad_requests(hs: RunningServer) -> None:
    c, alice, _ = await _setup(hs)
    await sync(c, alice, "garbage", expect=400)
    await sync(c, alice, "s1_2_3", expect=400)
    await sync(c, alice, set_presence="away", expect=400)
    await sync(c, alice, full_state="yes", expect=400)
    r = await c.call("GET", "/sync")
    assert r.status == 401
