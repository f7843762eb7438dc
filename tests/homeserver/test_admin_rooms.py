"""The rooms admin API on both engines: listing and search, details, members, state, block,
deleting a room (everyone removed, re-joins blocked, data purged, a notice room), the v2
background deletion with its status, and purging history before a point."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet import reactor, task

from homeserver.storage.purge import tables_with_room_id_txn
from tests.support.admin import admin_and_user, call
from tests.support.client import Client, User, q
from tests.support.media import MediaClient, png
from tests.support.server import RunningServer
from tests.support.sync import create_room, join, put_state, send

V1, V2 = "/_synapse/admin/v1", "/_synapse/admin/v2"


async def _messages(c: Client, user: User, room: str) -> list[dict[str, Any]]:
    r = await c.call("GET", f"/rooms/{q(room)}/messages?dir=b&limit=100",
                     token=user.access_token)
    assert r.status == 200, r.body
    return list(reversed(r.json()["chunk"]))


async def _poll(hs: RunningServer, path: str, token: str) -> dict[str, Any]:
    for _ in range(200):
        status, body = await call(hs, "GET", path, token)
        assert status == 200, body
        if body["status"] in ("complete", "failed"):
            return dict(body)
        await task.deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"{path} did not finish")


@pytest_twisted.ensureDeferred
async def test_list_and_inspect_rooms(hs: RunningServer) -> None:
    admin, alice = await admin_and_user(hs)
    c = Client(hs.client_url)
    bob = await c.register("bob")
    tok = admin.access_token
    garden = await create_room(c, alice, name="Garden", preset="public_chat",
                               room_alias_name="garden")
    await join(c, bob, garden)
    cellar = await create_room(c, bob, name="Cellar")

    status, body = await call(hs, "GET", f"{V1}/rooms", tok)
    assert status == 200 and body["total_rooms"] == 2 and body["offset"] == 0
    assert [r["name"] for r in body["rooms"]] == ["Cellar", "Garden"]
    g = next(r for r in body["rooms"] if r["room_id"] == garden)
    assert g["canonical_alias"] == "#garden:test.local" and g["joined_members"] == 2
    assert g["joined_local_members"] == 2 and g["creator"] == alice.user_id
    assert g["join_rules"] == "public" and g["federatable"] is True
    status, body = await call(hs, "GET", f"{V1}/rooms?order_by=joined_members&dir=b&limit=1",
                              tok)
    assert [r["room_id"] for r in body["rooms"]] == [garden] and body["next_batch"] == 1
    status, body = await call(hs, "GET", f"{V1}/rooms?search_term=cell", tok)
    assert [r["room_id"] for r in body["rooms"]] == [cellar]
    status, body = await call(hs, "GET", f"{V1}/rooms?search_term=%23garden", tok)
    assert [r["room_id"] for r in body["rooms"]] == [garden]

    status, body = await call(hs, "GET", f"{V1}/rooms/{q(garden)}", tok)
    assert status == 200 and body["name"] == "Garden" and body["state_events"] >= 6
    status, body = await call(hs, "GET", f"{V1}/rooms/{q(garden)}/members", tok)
    assert body == {"members": sorted([alice.user_id, bob.user_id]), "total": 2}
    status, body = await call(hs, "GET", f"{V1}/rooms/{q(garden)}/state", tok)
    types = {e["type"] for e in body["state"]}
    assert {"m.room.create", "m.room.name", "m.room.member"} <= types
    last = await send(c, bob, garden, "latest")
    status, body = await call(hs, "GET", f"{V1}/rooms/{q(garden)}/forward_extremities", tok)
    assert body["count"] == 1 and body["results"][0]["event_id"] == last

    for path, code, errcode in (
        (f"{V1}/rooms?order_by=colour", 400, "M_INVALID_PARAM"),
        (f"{V1}/rooms?from=-1", 400, "M_INVALID_PARAM"),
        (f"{V1}/rooms/{q('!unknown:test.local')}", 404, "M_NOT_FOUND"),
        (f"{V1}/rooms/{q('!unknown:test.local')}/members", 404, "M_NOT_FOUND"),
        (f"{V1}/rooms/{q('!unknown:test.local')}/state", 404, "M_NOT_FOUND"),
        (f"{V1}/rooms/not-a-room", 400, "M_INVALID_PARAM"),
    ):
        status, body = await call(hs, "GET", path, tok)
        assert (status, body["errcode"]) == (code, errcode), path


@pytest_twisted.ensureDeferred
async def test_block_status_refuses_joins(hs: RunningServer) -> None:
    admin, alice = await admin_and_user(hs)
    c = Client(hs.client_url)
    bob = await c.register("bob")
    tok = admin.access_token
    room = await create_room(c, alice, preset="public_chat")
    path = f"{V1}/rooms/{q(room)}/block"
    assert await call(hs, "GET", path, tok) == (200, {"block": False})
    assert await call(hs, "PUT", path, tok, {"block": True}) == (200, {"block": True})
    assert await call(hs, "GET", path, tok) == (200, {"block": True, "user_id": admin.user_id})
    r = await c.call("POST", f"/join/{q(room)}", {}, token=bob.access_token)
    assert (r.status, r.json()["errcode"]) == (403, "M_FORBIDDEN")
    r = await c.call("POST", f"/rooms/{q(room)}/invite", {"user_id": bob.user_id},
                     token=alice.access_token)
    assert (r.status, r.json()["errcode"]) == (403, "M_FORBIDDEN")
    assert await call(hs, "PUT", path, tok, {"block": False}) == (200, {"block": False})
    await join(c, bob, room)
    status, body = await call(hs, "PUT", path, tok, {"block": "yes"})
    assert (status, body["errcode"]) == (400, "M_BAD_JSON")


@pytest_twisted.ensureDeferred
async def test_delete_room_kicks_blocks_and_purges(hs: RunningServer) -> None:
    admin, alice = await admin_and_user(hs)
    c = Client(hs.client_url)
    bob = await c.register("bob")
    tok = admin.access_token
    room = await create_room(c, alice, preset="public_chat", room_alias_name="doomed")
    await join(c, bob, room)
    await send(c, alice, room, "something bad")

    status, body = await call(hs, "DELETE", f"{V1}/rooms/{q(room)}", tok, {
        "block": True, "purge": True, "new_room_user_id": admin.user_id,
        "room_name": "Moved", "message": "The room was closed.",
    })
    assert status == 200, body
    assert sorted(body["kicked_users"]) == sorted([alice.user_id, bob.user_id])
    assert body["failed_to_kick_users"] == [] and body["local_aliases"] == ["#doomed:test.local"]
    new_room = body["new_room_id"]

    # Gone: the admin API, the members' room lists and the room's data.
    status, body = await call(hs, "GET", f"{V1}/rooms/{q(room)}", tok)
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    r = await c.call("GET", "/joined_rooms", token=bob.access_token)
    assert r.json()["joined_rooms"] == [new_room]
    s = hs.hs.services
    assert not await s.pipeline.room_exists(room)

    def count(txn: Any) -> int:
        return int(txn.execute("SELECT COUNT(*) FROM events WHERE room_id = ?",
                               (room,)).fetchone()[0])

    assert await s.db.run("count", count) == 0

    def leftovers(txn: Any) -> dict[str, int]:
        out = {}
        for table in tables_with_room_id_txn(txn):
            n = int(txn.execute(f"SELECT COUNT(*) FROM {table} WHERE room_id = ?",
                                (room,)).fetchone()[0])
            if n:
                out[table] = n
        return out

    # Only the block, the task's status and state group tombstones (no content) remain.
    assert set(await s.db.run("leftovers", leftovers)) <= {"room_blocks", "admin_tasks",
                                                            "state_groups"}
    # Blocked: nobody can come back, not even by the old alias (now the notice room's).
    for who in (alice, bob):
        r = await c.call("POST", f"/join/{q(room)}", {}, token=who.access_token)
        assert (r.status, r.json()["errcode"]) == (403, "M_FORBIDDEN")
    r = await c.call("GET", f"/directory/room/{q('#doomed:test.local')}")
    assert r.json()["room_id"] == new_room
    # The members were moved to the notice room and read the message there.
    msgs = await _messages(c, bob, new_room)
    assert [m["content"]["body"] for m in msgs if m["type"] == "m.room.message"] == [
        "The room was closed."]
    r = await c.call("PUT", f"/rooms/{q(new_room)}/send/m.room.message/x1",
                     {"msgtype": "m.text", "body": "hi"}, token=bob.access_token)
    assert r.status == 403


@pytest_twisted.ensureDeferred
async def test_delete_room_v2_in_the_background(hs: RunningServer) -> None:
    admin, alice = await admin_and_user(hs)
    c = Client(hs.client_url)
    tok = admin.access_token
    room = await create_room(c, alice)
    await send(c, alice, room, "hello")
    status, body = await call(hs, "DELETE", f"{V2}/rooms/{q(room)}", tok, {"purge": False})
    assert status == 200
    delete_id = body["delete_id"]
    done = await _poll(hs, f"{V2}/rooms/delete_status/{delete_id}", tok)
    assert done["status"] == "complete"
    assert done["shutdown_room"]["kicked_users"] == [alice.user_id]
    status, body = await call(hs, "GET", f"{V2}/rooms/{q(room)}/delete_status", tok)
    assert [r["delete_id"] for r in body["results"]] == [delete_id]
    # Not purged and not blocked: the room is still there and she may join again.
    status, body = await call(hs, "GET", f"{V1}/rooms/{q(room)}", tok)
    assert status == 200 and body["joined_members"] == 0
    r = await c.call("POST", f"/rooms/{q(room)}/join", {}, token=alice.access_token)
    assert r.status in (200, 403)  # private room: the join rules decide, not a block

    for method, path, payload, code, errcode in (
        ("DELETE", f"{V2}/rooms/{q('!nope:test.local')}", {}, 404, "M_NOT_FOUND"),
        ("DELETE", f"{V2}/rooms/{q(room)}", {"block": 1}, 400, "M_BAD_JSON"),
        ("DELETE", f"{V2}/rooms/{q(room)}", {"new_room_user_id": "@x:elsewhere.org"}, 400,
         "M_INVALID_PARAM"),
        ("GET", f"{V2}/rooms/delete_status/nope", None, 404, "M_NOT_FOUND"),
    ):
        status, body = await call(hs, method, path, tok, payload)
        assert (status, body["errcode"]) == (code, errcode), path
    # Blocking a room this server never saw is allowed (it stays unjoinable).
    unknown = "!never:elsewhere.org"
    status, body = await call(hs, "DELETE", f"{V2}/rooms/{q(unknown)}", tok, {"block": True})
    assert status == 200
    assert await call(hs, "GET", f"{V1}/rooms/{q(unknown)}/block", tok) == (
        200, {"block": True, "user_id": admin.user_id})
    # Joining it by ID (a remote join, no local member) is refused as blocked.
    r = await c.call("POST", f"/rooms/{q(unknown)}/join", {}, token=admin.access_token)
    assert (r.status, r.json()["errcode"]) == (403, "M_FORBIDDEN")


@pytest_twisted.ensureDeferred
async def test_purge_history_keeps_state_and_the_newest(hs: RunningServer) -> None:
    admin, alice = await admin_and_user(hs)
    c = Client(hs.client_url)
    bob = await c.register("bob")
    tok = admin.access_token
    room = await create_room(c, alice, preset="public_chat", name="Before")
    await join(c, bob, room)
    await send(c, alice, room, "one")
    await send(c, bob, room, "two")
    await put_state(c, alice, room, "m.room.topic", {"topic": "kept"})
    point = await send(c, alice, room, "three")
    await send(c, bob, room, "four")

    # Without delete_local_events, local users' messages stay (they may be the only copy).
    status, body = await call(hs, "POST", f"{V1}/purge_history/{q(room)}/{q(point)}", tok, {})
    assert status == 200
    done = await _poll(hs, f"{V1}/purge_history_status/{body['purge_id']}", tok)
    assert done["status"] == "complete" and done["purged_events"] == 0

    status, body = await call(hs, "POST", f"{V1}/purge_history/{q(room)}", tok,
                              {"purge_up_to_event_id": point, "delete_local_events": True})
    done = await _poll(hs, f"{V1}/purge_history_status/{body['purge_id']}", tok)
    assert done["status"] == "complete" and done["purged_events"] == 2
    msgs = await _messages(c, bob, room)
    assert [m["content"]["body"] for m in msgs if m["type"] == "m.room.message"] == [
        "three", "four"]
    types = [m["type"] for m in msgs]
    assert types.count("m.room.member") == 2 and "m.room.topic" in types
    assert "m.room.create" in types
    # The room works on: new messages, state, the purged events are gone for good.
    await send(c, bob, room, "five")
    r = await c.call("GET", f"/rooms/{q(room)}/state/m.room.name", token=bob.access_token)
    assert r.json() == {"name": "Before"}
    msgs = await _messages(c, bob, room)
    assert [m["content"]["body"] for m in msgs if m["type"] == "m.room.message"] == [
        "three", "four", "five"]

    # By time: everything older than now, except the newest event (a forward extremity).
    now = hs.hs.services.clock.time_ms() + 1
    status, body = await call(hs, "POST", f"{V1}/purge_history/{q(room)}", tok,
                              {"purge_up_to_ts": now, "delete_local_events": True})
    done = await _poll(hs, f"{V1}/purge_history_status/{body['purge_id']}", tok)
    assert done["purged_events"] == 2
    msgs = await _messages(c, bob, room)
    assert [m["content"]["body"] for m in msgs if m["type"] == "m.room.message"] == ["five"]

    for payload, code, errcode in (
        ({}, 400, "M_MISSING_PARAM"),
        ({"purge_up_to_ts": "soon"}, 400, "M_BAD_JSON"),
        ({"purge_up_to_ts": 1, "purge_up_to_event_id": point}, 400, "M_INVALID_PARAM"),
        ({"purge_up_to_event_id": "$nope"}, 404, "M_NOT_FOUND"),
    ):
        status, body = await call(hs, "POST", f"{V1}/purge_history/{q(room)}", tok, payload)
        assert (status, body["errcode"]) == (code, errcode), payload
    status, body = await call(hs, "POST", f"{V1}/purge_history/{q('!x:test.local')}", tok,
                              {"purge_up_to_ts": 1})
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    status, body = await call(hs, "GET", f"{V1}/purge_history_status/nope", tok)
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")


@pytest_twisted.ensureDeferred
async def test_room_media_listed_and_quarantined(hs: RunningServer) -> None:
    admin, alice = await admin_and_user(hs)
    c = Client(hs.client_url)
    tok = admin.access_token
    room = await create_room(c, alice)
    m = MediaClient(hs.client_url)
    image = (await m.upload(png(40, 40), alice.access_token, "image/png")).json()["content_uri"]
    thumb = (await m.upload(png(8, 8), alice.access_token, "image/png")).json()["content_uri"]
    await send(c, alice, room, "", content={
        "msgtype": "m.image", "body": "cat.png", "url": image,
        "info": {"thumbnail_url": thumb}})
    await send(c, alice, room, "", content={
        "msgtype": "m.file", "body": "x", "url": "mxc://elsewhere.org/abc"})
    status, body = await call(hs, "GET", f"{V1}/room/{q(room)}/media", tok)
    assert status == 200
    assert body == {"local": sorted([image, thumb]), "remote": ["mxc://elsewhere.org/abc"]}
    status, body = await call(hs, "POST", f"{V1}/room/{q(room)}/media/quarantine", tok)
    # The remote file was never fetched here: only the two local ones are quarantined.
    assert (status, body) == (200, {"num_quarantined": 2})
    assert (await m.download(image, alice.access_token)).status == 404
    status, body = await call(hs, "GET", f"{V1}/room/{q('!no:test.local')}/media", tok)
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")


@pytest_twisted.ensureDeferred
async def test_one_report_with_the_reported_event(hs: RunningServer) -> None:
    admin, alice = await admin_and_user(hs)
    c = Client(hs.client_url)
    bob = await c.register("bob")
    tok = admin.access_token
    room = await create_room(c, alice, preset="public_chat", name="Forum")
    await join(c, bob, room)
    bad = await send(c, alice, room, "something nasty")
    r = await c.call("POST", f"/rooms/{q(room)}/report/{q(bad)}", {"reason": "rude"},
                     token=bob.access_token)
    assert r.status == 200, r.body
    # Redacted since: the operator still sees what was reported.
    r = await c.call("PUT", f"/rooms/{q(room)}/redact/{q(bad)}/r1", {}, token=alice.access_token)
    assert r.status == 200, r.body
    status, body = await call(hs, "GET", "/_synapse/admin/v1/event_reports", tok)
    (listed,) = body["event_reports"]
    path = f"/_synapse/admin/v1/event_reports/{listed['id']}"
    status, body = await call(hs, "GET", path, tok)
    assert status == 200
    assert (body["event_id"], body["user_id"], body["reason"], body["name"]) == (
        bad, bob.user_id, "rude", "Forum")
    assert body["sender"] == alice.user_id
    assert body["event_json"]["content"]["body"] == "something nasty"
    assert await call(hs, "DELETE", path, tok) == (200, {})
    status, body = await call(hs, "GET", path, tok)
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    status, body = await call(hs, "DELETE", path, tok)
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    status, body = await call(hs, "GET", "/_synapse/admin/v1/event_reports/abc", tok)
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
    status, body = await call(hs, "GET", f"{path}", alice.access_token)
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
