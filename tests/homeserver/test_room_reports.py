"""Reporting events and rooms, the admin list of reports, and /timestamp_to_event, on both
engines, with visibility and the spec's errors."""

from __future__ import annotations

import itertools
from typing import Any

import pytest_twisted
from twisted.internet import reactor, task

from tests.support.client import Client, User, q
from tests.support.server import RunningServer

ADMIN = "/_synapse/admin/v1/event_reports"
V1 = "/_matrix/client/v1"
_txn = itertools.count()


async def _room(c: Client, user: User, **body: Any) -> str:
    r = await c.call("POST", "/createRoom", body, token=user.access_token)
    assert r.status == 200, r.body
    return str(r.json()["room_id"])


async def _send(c: Client, user: User, room: str, text: str) -> str:
    r = await c.call("PUT", f"/rooms/{q(room)}/send/m.room.message/m{next(_txn)}",
                     {"msgtype": "m.text", "body": text}, token=user.access_token)
    assert r.status == 200, r.body
    return str(r.json()["event_id"])


async def _tick() -> None:
    # Distinct origin_server_ts (milliseconds) for events sent one after another.
    await task.deferLater(reactor, 0.02, lambda: None)


async def _event_ts(c: Client, user: User, room: str, event_id: str) -> int:
    r = await c.call("GET", f"/rooms/{q(room)}/event/{q(event_id)}", token=user.access_token)
    return int(r.json()["origin_server_ts"])


@pytest_twisted.ensureDeferred
async def test_reports_and_admin_list(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    admin, alice, bob, eve = [await c.register(n) for n in ("admin", "alice", "bob", "eve")]
    await hs.hs.services.users.set_admin(admin.user_id, True)
    room = await _room(c, alice, preset="public_chat", name="Reported")
    r = await c.call("POST", f"/rooms/{q(room)}/join", {}, token=bob.access_token)
    assert r.status == 200
    bad = await _send(c, alice, room, "something bad")

    r = await c.call("POST", f"/rooms/{q(room)}/report/{q(bad)}",
                     {"reason": "rude", "score": -100}, token=bob.access_token)
    assert (r.status, r.json()) == (200, {})
    r = await c.call("POST", f"/rooms/{q(room)}/report/{q(bad)}", {}, token=bob.access_token)
    assert r.status == 200  # reason and score are optional
    r = await c.call("POST", f"/rooms/{q(room)}/report", {"reason": "the whole room"},
                     token=eve.access_token)
    assert (r.status, r.json()) == (200, {})

    # Only admins read them.
    r = await c.call("GET", ADMIN, token=bob.access_token, raw_path=True)
    assert (r.status, r.json()["errcode"]) == (403, "M_FORBIDDEN")
    r = await c.call("GET", ADMIN, raw_path=True)
    assert (r.status, r.json()["errcode"]) == (401, "M_MISSING_TOKEN")
    r = await c.call("GET", ADMIN, token=admin.access_token, raw_path=True)
    assert r.status == 200, r.body
    body = r.json()
    assert body["total"] == 3
    newest, middle, oldest = body["event_reports"]
    assert (newest["event_id"], newest["user_id"], newest["reason"]) == (None, eve.user_id,
                                                                          "the whole room")
    assert (oldest["event_id"], oldest["reason"], oldest["score"]) == (bad, "rude", -100)
    assert oldest["sender"] == alice.user_id and oldest["name"] == "Reported"
    assert middle["reason"] is None and middle["score"] is None
    r = await c.call("GET", f"{ADMIN}?limit=1&dir=f", token=admin.access_token, raw_path=True)
    assert [e["id"] for e in r.json()["event_reports"]] == [oldest["id"]]
    assert r.json()["next_token"] == 1
    r = await c.call("GET", f"{ADMIN}?from=1&limit=5&dir=f", token=admin.access_token,
                     raw_path=True)
    assert [e["id"] for e in r.json()["event_reports"]] == [middle["id"], newest["id"]]
    assert "next_token" not in r.json()
    r = await c.call("GET", f"{ADMIN}?user_id={q(eve.user_id)}", token=admin.access_token,
                     raw_path=True)
    assert [e["id"] for e in r.json()["event_reports"]] == [newest["id"]]
    for query in ("dir=x", "limit=0", "from=-1"):
        r = await c.call("GET", f"{ADMIN}?{query}", token=admin.access_token, raw_path=True)
        assert (r.status, r.json()["errcode"]) == (400, "M_INVALID_PARAM"), query


@pytest_twisted.ensureDeferred
async def test_report_errors_and_visibility(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, eve = await c.register("alice"), await c.register("eve")
    room = await _room(c, alice, preset="private_chat")
    secret = await _send(c, alice, room, "private")
    # Eve is not in the room: the event is not hers to see, so it is "not found".
    r = await c.call("POST", f"/rooms/{q(room)}/report/{q(secret)}", {"reason": "x"},
                     token=eve.access_token)
    assert (r.status, r.json()["errcode"]) == (404, "M_NOT_FOUND")
    for path in (f"/rooms/{q(room)}/report/{q('$nope')}",
                 f"/rooms/{q('!nope:test.local')}/report/{q(secret)}",
                 f"/rooms/{q('!nope:test.local')}/report"):
        r = await c.call("POST", path, {"reason": "x"}, token=alice.access_token)
        assert (r.status, r.json()["errcode"]) == (404, "M_NOT_FOUND"), path
    for body in ({"score": -101}, {"score": 1}, {"score": "bad"}, {"reason": 5}):
        r = await c.call("POST", f"/rooms/{q(room)}/report/{q(secret)}", body,
                         token=alice.access_token)
        assert (r.status, r.json()["errcode"]) == (400, "M_BAD_JSON"), body
    r = await c.call("POST", f"/rooms/{q(room)}/report", {}, token=alice.access_token)
    assert (r.status, r.json()["errcode"]) == (400, "M_MISSING_PARAM")
    r = await c.call("POST", f"/rooms/{q(room)}/report", {"reason": "x"})
    assert (r.status, r.json()["errcode"]) == (401, "M_MISSING_TOKEN")
    reports, total = await hs.hs.services.room_reports.list_reports(
        offset=0, limit=10, newest_first=True, room_id=None, user_id=None)
    assert total == 0 and reports == []  # nothing stored by the failures


@pytest_twisted.ensureDeferred
async def test_timestamp_to_event(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, dave, eve = [await c.register(n) for n in ("alice", "dave", "eve")]
    room = await _room(c, alice, preset="public_chat")
    r = await c.call("PUT", f"/rooms/{q(room)}/state/m.room.history_visibility",
                     {"history_visibility": "joined"}, token=alice.access_token)
    assert r.status == 200
    await _tick()
    first = await _send(c, alice, room, "first")
    await _tick()
    r = await c.call("POST", f"/rooms/{q(room)}/join", {}, token=dave.access_token)
    assert r.status == 200
    r = await c.call("GET", f"/rooms/{q(room)}/state/m.room.member/{q(dave.user_id)}"
                     "?format=event", token=dave.access_token)
    dave_join = r.json()["event_id"]
    await _tick()
    last = await _send(c, alice, room, "last")
    t_first = await _event_ts(c, alice, room, first)
    t_last = await _event_ts(c, alice, room, last)

    async def lookup(user: User, ts: int, direction: str) -> Any:
        return await c.call(
            "GET", f"{V1}/rooms/{q(room)}/timestamp_to_event?ts={ts}&dir={direction}",
            token=user.access_token, raw_path=True)

    r = await lookup(alice, t_last + 10_000, "b")
    assert r.status == 200, r.body
    assert r.json() == {"event_id": last, "origin_server_ts": t_last}
    for ts, direction in ((t_first, "b"), (t_first, "f"), (t_first + 1, "b")):
        r = await lookup(alice, ts, direction)
        assert r.json() == {"event_id": first, "origin_server_ts": t_first}, (ts, direction)
    r = await lookup(alice, 0, "f")
    assert r.status == 200
    r = await c.call("GET", f"/rooms/{q(room)}/event/{q(r.json()['event_id'])}",
                     token=alice.access_token)
    assert r.json()["type"] == "m.room.create"  # the room's first event
    r = await lookup(alice, t_last + 10_000, "f")
    assert (r.status, r.json()["errcode"]) == (404, "M_NOT_FOUND")
    # Dave joined after 'first' (history visibility 'joined'): going back from 'first' he
    # skips it, to the change to 'joined' (visible under the previous 'shared'); going
    # forward from 'first' he skips it too, to his own join.
    r = await lookup(dave, t_first, "b")
    assert r.status == 200, r.body
    found = r.json()["event_id"]
    assert found != first
    r = await c.call("GET", f"/rooms/{q(room)}/event/{q(found)}", token=dave.access_token)
    assert r.json()["type"] == "m.room.history_visibility"
    r = await lookup(dave, t_first, "f")
    assert r.status == 200 and r.json()["event_id"] == dave_join
    # Never a member of a room that is not world readable.
    r = await lookup(eve, 0, "f")
    assert (r.status, r.json()["errcode"]) == (403, "M_FORBIDDEN")

    base = f"{V1}/rooms/{q(room)}/timestamp_to_event"
    for query, errcode in (("dir=f", "M_MISSING_PARAM"), ("ts=1", "M_MISSING_PARAM"),
                           ("ts=x&dir=f", "M_INVALID_PARAM"), ("ts=-1&dir=f", "M_INVALID_PARAM"),
                           ("ts=1&dir=up", "M_INVALID_PARAM")):
        r = await c.call("GET", f"{base}?{query}", token=alice.access_token, raw_path=True)
        assert (r.status, r.json()["errcode"]) == (400, errcode), query
    r = await c.call("GET", f"{V1}/rooms/{q('!nope:test.local')}/timestamp_to_event?ts=1&dir=f",
                     token=alice.access_token, raw_path=True)
    assert (r.status, r.json()["errcode"]) == (404, "M_NOT_FOUND")
