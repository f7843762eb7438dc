"""Notification counts on both engines: every new event evaluated for every local member,
counts moved by messages, mentions, threads and read receipts, and GET /notifications."""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted

from tests.support.client import Client, User, q
from tests.support.server import RunningServer

_txn = 0


async def _room(c: Client, owner: User, *members: User, **body: Any) -> str:
    r = await c.call("POST", "/createRoom", {"preset": "public_chat", **body},
                     token=owner.access_token)
    assert r.status == 200, r.body
    room = str(r.json()["room_id"])
    for m in members:
        r = await c.call("POST", f"/join/{q(room)}", {}, token=m.access_token)
        assert r.status == 200, r.body
    return room


async def _send(c: Client, user: User, room: str, body: str = "hi",
                event_type: str = "m.room.message", **content: Any) -> str:
    global _txn
    _txn += 1
    payload = {"msgtype": "m.text", "body": body, **content}
    r = await c.call("PUT", f"/rooms/{q(room)}/send/{event_type}/t{_txn}", payload,
                     token=user.access_token)
    assert r.status == 200, r.body
    return str(r.json()["event_id"])


async def _receipt(c: Client, user: User, room: str, event_id: str,
                   receipt_type: str = "m.read", **body: Any) -> None:
    r = await c.call("POST", f"/rooms/{q(room)}/receipt/{receipt_type}/{q(event_id)}", body,
                     token=user.access_token)
    assert r.status == 200, r.body


async def _counts(hs: RunningServer, user: User, room: str) -> tuple[Any, ...]:
    assert hs.hs.services is not None
    return await hs.hs.services.push.unread_counts(user.user_id, room)


async def _three(hs: RunningServer) -> tuple[Client, User, User, User]:
    c = Client(hs.client_url)
    return c, await c.register("alice"), await c.register("bob"), await c.register("carol")


@pytest_twisted.ensureDeferred
async def test_messages_mentions_and_receipts(hs: RunningServer) -> None:
    c, alice, bob, carol = await _three(hs)
    room = await _room(c, alice, bob, carol)
    # Joins and room creation notify nobody.
    assert await _counts(hs, alice, room) == (0, 0, {})
    e1 = await _send(c, bob, room, "one")
    await _send(c, bob, room, "two")
    await _send(c, bob, room, "three")
    assert await _counts(hs, alice, room) == (3, 0, {})
    assert await _counts(hs, carol, room) == (3, 0, {})
    # Nobody is notified of their own events.
    assert await _counts(hs, bob, room) == (0, 0, {})
    mention = await _send(c, bob, room, "Alice?", **{"m.mentions": {"user_ids":
                                                                    [alice.user_id]}})
    assert await _counts(hs, alice, room) == (4, 1, {})
    assert await _counts(hs, carol, room) == (4, 0, {})
    # Notices are suppressed.
    await _send(c, bob, room, "bot says", msgtype="m.notice")
    assert (await _counts(hs, alice, room))[:2] == (4, 1)

    # A read receipt marks everything up to its event read.
    await _receipt(c, alice, room, e1)
    assert await _counts(hs, alice, room) == (3, 1, {})
    # A private receipt further on counts too, and the furthest receipt wins.
    await _receipt(c, alice, room, mention, "m.read.private")
    assert await _counts(hs, alice, room) == (0, 0, {})
    await _receipt(c, alice, room, e1)  # behind: changes nothing
    assert await _counts(hs, alice, room) == (0, 0, {})

    # Sending marks what came before as read.
    assert await _counts(hs, carol, room) == (4, 0, {})
    await _send(c, carol, room, "I'm here")
    assert await _counts(hs, carol, room) == (0, 0, {})
    assert await _counts(hs, alice, room) == (1, 0, {})

    # The count of a new event is in the /sync response that carries it.
    r = await c.call("GET", "/sync?timeout=0", token=alice.access_token)
    assert r.status == 200, r.body
    since = r.json()["next_batch"]
    assert r.json()["rooms"]["join"][room]["unread_notifications"] == {
        "notification_count": 1, "highlight_count": 0}
    await _send(c, bob, room, "@room meeting now")  # legacy @room needs power level 50
    r = await c.call("GET", f"/sync?timeout=5000&since={since}", token=alice.access_token)
    joined = r.json()["rooms"]["join"][room]
    assert [e["content"]["body"] for e in joined["timeline"]["events"]] == ["@room meeting now"]
    assert joined["unread_notifications"] == {"notification_count": 2, "highlight_count": 0}
    await _send(c, alice, room, "@room meeting now")  # the creator has 100
    assert (await _counts(hs, bob, room))[:2] == (1, 1)


@pytest_twisted.ensureDeferred
async def test_dm_invites_rules_and_ignored_users(hs: RunningServer) -> None:
    c, alice, bob, carol = await _three(hs)
    # An invite notifies the invitee (.m.rule.invite_for_me) before they join.
    r = await c.call("POST", "/createRoom", {"preset": "trusted_private_chat",
                                             "invite": [bob.user_id], "is_direct": True},
                     token=alice.access_token)
    dm = r.json()["room_id"]
    assert await _counts(hs, bob, dm) == (1, 0, {})
    assert hs.hs.services is not None
    rows = await hs.hs.services.push.notifications(bob.user_id, None, 10, False)
    assert rows[0].actions == ["notify", {"set_tweak": "sound", "value": "default"}]
    r = await c.call("POST", f"/join/{q(dm)}", {}, token=bob.access_token)
    assert r.status == 200
    # A message in a two-member room: .m.rule.room_one_to_one (with a sound).
    await _send(c, alice, dm, "psst")
    rows = await hs.hs.services.push.notifications(bob.user_id, None, 10, False)
    assert rows[0].actions == ["notify", {"set_tweak": "sound", "value": "default"}]

    # A room rule mutes a room; a sender rule can make someone loud.
    room = await _room(c, alice, bob, carol)
    r = await c.call("PUT", f"/pushrules/global/room/{q(room)}", {"actions": []},
                     token=bob.access_token)
    assert r.status == 200
    await _send(c, alice, room, "muted message")
    assert (await _counts(hs, bob, room))[:2] == (0, 0)
    assert (await _counts(hs, carol, room))[:2] == (1, 0)
    r = await c.call("PUT", f"/pushrules/global/sender/{q(alice.user_id)}",
                     {"actions": ["notify", {"set_tweak": "highlight"}]},
                     token=carol.access_token)
    assert r.status == 200
    await _send(c, alice, room, "loud message")
    assert (await _counts(hs, carol, room))[:2] == (2, 1)
    # The master rule silences everything.
    r = await c.call("PUT", "/pushrules/global/override/.m.rule.master/enabled",
                     {"enabled": True}, token=carol.access_token)
    assert r.status == 200
    await _send(c, alice, room, "silence")
    assert (await _counts(hs, carol, room))[:2] == (2, 1)

    # Ignored users notify nobody who ignores them (the cache follows account data).
    r = await c.call("PUT", f"/user/{q(bob.user_id)}/account_data/m.ignored_user_list",
                     {"ignored_users": {alice.user_id: {}}}, token=bob.access_token)
    assert r.status == 200
    before = await _counts(hs, bob, dm)
    await _send(c, alice, dm, "ignored")
    assert await _counts(hs, bob, dm) == before


@pytest_twisted.ensureDeferred
async def test_thread_counts(hs: RunningServer) -> None:
    c, alice, bob, _ = await _three(hs)
    room = await _room(c, alice, bob)
    root = await _send(c, bob, room, "thread root")
    thread = {"rel_type": "m.thread", "event_id": root}
    t1 = await _send(c, bob, room, "in thread", **{"m.relates_to": thread})
    t2 = await _send(c, bob, room, "in thread again", **{"m.relates_to": thread})
    # A relation to a threaded event belongs to the thread too (up to 3 hops).
    await _send(c, bob, room, "about t2",
                **{"m.relates_to": {"rel_type": "m.reference", "event_id": t2}})
    main = await _send(c, bob, room, "main again")
    n, h, threads = await _counts(hs, alice, room)
    assert (n, h, threads) == (5, 0, {root: (3, 0)})
    assert hs.hs.services is not None
    detail = (await hs.hs.services.push.counts_for_rooms(alice.user_id, [room]))[room]
    assert detail.main == (2, 0) and detail.threads == {root: (3, 0)}

    # A threaded receipt reads only its thread; 'main' only the main timeline.
    await _receipt(c, alice, room, t1, thread_id=root)
    assert await _counts(hs, alice, room) == (4, 0, {root: (2, 0)})
    await _receipt(c, alice, room, main, thread_id="main")
    assert await _counts(hs, alice, room) == (2, 0, {root: (2, 0)})
    # An unthreaded receipt reads everything before its event, whatever the thread.
    await _receipt(c, alice, room, main)
    assert await _counts(hs, alice, room) == (0, 0, {})

    # /sync with unread_thread_notifications reports threads apart.
    await _send(c, bob, room, "more", **{"m.relates_to": thread})
    flt = json.dumps({"room": {"timeline": {"unread_thread_notifications": True}}})
    r = await c.call("GET", f"/sync?timeout=0&filter={q(flt)}", token=alice.access_token)
    joined = r.json()["rooms"]["join"][room]
    assert joined["unread_thread_notifications"] == {
        root: {"notification_count": 1, "highlight_count": 0}}


@pytest_twisted.ensureDeferred
async def test_notifications_endpoint(hs: RunningServer) -> None:
    c, alice, bob, carol = await _three(hs)
    room = await _room(c, alice, bob, carol)
    sent = []
    for i in range(5):
        mentions = {"user_ids": [alice.user_id]} if i % 2 == 0 else {}
        sent.append(await _send(c, bob, room, f"message {i}", **{"m.mentions": mentions}))
    await _receipt(c, alice, room, sent[1])

    r = await c.call("GET", "/notifications?limit=2", token=alice.access_token)
    assert r.status == 200, r.body
    page = r.json()
    assert [n["event"]["event_id"] for n in page["notifications"]] == [sent[4], sent[3]]
    first = page["notifications"][0]
    assert first["room_id"] == room and first["read"] is False
    assert first["event"]["content"]["body"] == "message 4"
    assert "room_id" not in first["event"]
    assert first["actions"][0] == "notify" and {"set_tweak": "highlight"} in first["actions"]
    assert isinstance(first["ts"], int)
    r = await c.call("GET", f"/notifications?limit=2&from={page['next_token']}",
                     token=alice.access_token)
    page2 = r.json()
    assert [n["event"]["event_id"] for n in page2["notifications"]] == [sent[2], sent[1]]
    assert [n["read"] for n in page2["notifications"]] == [False, True]
    r = await c.call("GET", f"/notifications?limit=2&from={page2['next_token']}",
                     token=alice.access_token)
    assert [n["event"]["event_id"] for n in r.json()["notifications"]] == [sent[0]]
    assert "next_token" not in r.json()

    r = await c.call("GET", "/notifications?only=highlight", token=alice.access_token)
    assert [n["event"]["event_id"] for n in r.json()["notifications"]] == [
        sent[4], sent[2], sent[0]]
    # Bob was notified of nothing (his own messages).
    r = await c.call("GET", "/notifications", token=bob.access_token)
    assert r.json() == {"notifications": []}
    for query in ("from=abc", "limit=0", "limit=x"):
        r = await c.call("GET", f"/notifications?{query}", token=alice.access_token)
        assert (r.status, r.json()["errcode"]) == (400, "M_INVALID_PARAM"), query
