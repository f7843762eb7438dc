"""Relations, threads and bundled aggregations on both engines: the index written at persist
time, pagination and filters, edits/threads/references in unsigned.m.relations, redaction,
history visibility and the spec's errors."""

from __future__ import annotations

import itertools
from typing import Any

import pytest_twisted

from tests.support.client import Client, User, q
from tests.support.server import RunningServer

V1 = "/_matrix/client/v1"
_txn = itertools.count()


async def _room(c: Client, user: User, **body: Any) -> str:
    r = await c.call("POST", "/createRoom", body, token=user.access_token)
    assert r.status == 200, r.body
    return str(r.json()["room_id"])


async def _send(c: Client, user: User, room: str, body: str, rel: dict[str, Any] | None = None,
                event_type: str = "m.room.message", **extra: Any) -> str:
    content: dict[str, Any] = {"msgtype": "m.text", "body": body, **extra}
    if rel is not None:
        content["m.relates_to"] = rel
    r = await c.call("PUT", f"/rooms/{q(room)}/send/{event_type}/r{next(_txn)}", content,
                     token=user.access_token)
    assert r.status == 200, r.body
    return str(r.json()["event_id"])


def _thread(root: str) -> dict[str, Any]:
    return {"rel_type": "m.thread", "event_id": root}


async def _join(c: Client, user: User, room: str) -> None:
    r = await c.call("POST", f"/rooms/{q(room)}/join", {}, token=user.access_token)
    assert r.status == 200, r.body


async def _relations(c: Client, user: User, room: str, event: str, suffix: str = "",
                     query: str = "") -> Any:
    r = await c.call("GET", f"{V1}/rooms/{q(room)}/relations/{q(event)}{suffix}?{query}",
                     token=user.access_token, raw_path=True)
    assert r.status == 200, r.body
    return r.json()


@pytest_twisted.ensureDeferred
async def test_relations_filters_and_pagination(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, bob = await c.register("alice"), await c.register("bob")
    room = await _room(c, alice, preset="public_chat")
    await _join(c, bob, room)
    root = await _send(c, alice, room, "root")
    t1 = await _send(c, bob, room, "reply 1", _thread(root))
    t2 = await _send(c, alice, room, "reply 2", _thread(root))
    edit = await _send(c, alice, room, "* root!", {"rel_type": "m.replace", "event_id": root},
                       **{"m.new_content": {"msgtype": "m.text", "body": "root!"}})
    r = await c.call("PUT", f"/rooms/{q(room)}/send/m.reaction/react1",
                     {"m.relates_to": {"rel_type": "m.annotation", "event_id": root,
                                       "key": "👍"}}, token=bob.access_token)
    reaction = r.json()["event_id"]
    # A relation of a relation (an edit of a thread reply) only shows with recurse.
    nested = await _send(c, bob, room, "* reply 1!", {"rel_type": "m.replace", "event_id": t1})
    await _send(c, alice, room, "unrelated")

    body = await _relations(c, alice, room, root)
    assert [e["event_id"] for e in body["chunk"]] == [reaction, edit, t2, t1]
    assert "next_batch" not in body and "recursion_depth" not in body
    body = await _relations(c, alice, room, root, query="dir=f")
    assert [e["event_id"] for e in body["chunk"]] == [t1, t2, edit, reaction]
    body = await _relations(c, alice, room, root, "/m.thread")
    assert [e["event_id"] for e in body["chunk"]] == [t2, t1]
    body = await _relations(c, alice, room, root, "/m.annotation/m.reaction")
    assert [e["event_id"] for e in body["chunk"]] == [reaction]
    body = await _relations(c, alice, room, root, "/m.annotation/m.room.message")
    assert body["chunk"] == []
    body = await _relations(c, alice, room, root, query="recurse=true")
    assert [e["event_id"] for e in body["chunk"]] == [nested, reaction, edit, t2, t1]
    assert body["recursion_depth"] == 3

    # Pages of two, backwards then forwards, each continuing where the last stopped.
    seen = []
    token = None
    for _ in range(5):
        page = await _relations(c, alice, room, root,
                                query="limit=2" + (f"&from={q(token)}" if token else ""))
        seen += [e["event_id"] for e in page["chunk"]]
        token = page.get("next_batch")
        if token is None:
            break
    assert seen == [reaction, edit, t2, t1]
    page = await _relations(c, alice, room, root, query="limit=2&dir=f")
    assert [e["event_id"] for e in page["chunk"]] == [t1, t2]
    page = await _relations(c, alice, room, root,
                            query=f"limit=2&dir=f&from={q(page['next_batch'])}")
    assert [e["event_id"] for e in page["chunk"]] == [edit, reaction]


@pytest_twisted.ensureDeferred
async def test_bundled_aggregations(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, bob = await c.register("alice"), await c.register("bob")
    room = await _room(c, alice, preset="public_chat")
    await _join(c, bob, room)
    root = await _send(c, alice, room, "root")
    lonely = await _send(c, alice, room, "nobody answers")
    await _send(c, bob, room, "reply 1", _thread(root))
    t2 = await _send(c, bob, room, "reply 2", _thread(root))
    edit1 = await _send(c, alice, room, "* v1", {"rel_type": "m.replace", "event_id": root})
    edit2 = await _send(c, alice, room, "* v2", {"rel_type": "m.replace", "event_id": root})
    # An edit by someone else is no edit.
    hijack = await _send(c, bob, room, "* hijack", {"rel_type": "m.replace", "event_id": root})
    ref = await _send(c, bob, room, "see above", {"rel_type": "m.reference", "event_id": root})

    r = await c.call("GET", f"/rooms/{q(room)}/event/{q(root)}", token=alice.access_token)
    rel = r.json()["unsigned"]["m.relations"]
    assert rel["m.replace"]["event_id"] == edit2
    assert rel["m.thread"]["count"] == 2
    assert rel["m.thread"]["latest_event"]["event_id"] == t2
    assert rel["m.thread"]["current_user_participated"] is True  # alice sent the root
    assert rel["m.reference"] == {"chunk": [{"event_id": ref}]}
    r = await c.call("GET", f"/rooms/{q(room)}/event/{q(lonely)}", token=alice.access_token)
    assert "m.relations" not in r.json()["unsigned"]

    carol = await c.register("carol")
    await _join(c, carol, room)
    r = await c.call("GET", f"/rooms/{q(room)}/messages?dir=b&limit=50",
                     token=carol.access_token)
    by_id = {e["event_id"]: e for e in r.json()["chunk"]}
    thread = by_id[root]["unsigned"]["m.relations"]["m.thread"]
    assert thread["current_user_participated"] is False and thread["count"] == 2
    # Sync serves them too.
    flt = q('{"room":{"timeline":{"limit":50}}}')
    r = await c.call("GET", f"/sync?filter={flt}", token=carol.access_token)
    timeline = r.json()["rooms"]["join"][room]["timeline"]["events"]
    (served,) = [e for e in timeline if e["event_id"] == root]
    assert served["unsigned"]["m.relations"]["m.thread"]["count"] == 2

    # Redacting the latest edit falls back to the one before; redacting that leaves none.
    for redacted, expected in ((edit2, edit1), (edit1, None)):
        r = await c.call("PUT", f"/rooms/{q(room)}/redact/{q(redacted)}/x{next(_txn)}", {},
                         token=alice.access_token)
        assert r.status == 200, r.body
        r = await c.call("GET", f"/rooms/{q(room)}/event/{q(root)}", token=alice.access_token)
        got = r.json()["unsigned"]["m.relations"].get("m.replace")
        assert (got["event_id"] if got else None) == expected
    body = await _relations(c, alice, room, root, "/m.replace")
    # Redacted events lose their relation; the other sender's edit is listed (not bundled).
    assert [e["event_id"] for e in body["chunk"]] == [hijack]


@pytest_twisted.ensureDeferred
async def test_threads(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, bob, carol = [await c.register(n) for n in ("alice", "bob", "carol")]
    room = await _room(c, alice, preset="public_chat")
    await _join(c, bob, room)
    await _join(c, carol, room)
    a = await _send(c, alice, room, "thread A")
    b = await _send(c, bob, room, "thread B")
    await _send(c, alice, room, "no thread")
    await _send(c, carol, room, "in A", _thread(a))
    await _send(c, alice, room, "in B", _thread(b))
    await _send(c, bob, room, "in A again", _thread(a))

    r = await c.call("GET", f"{V1}/rooms/{q(room)}/threads",
                     token=alice.access_token, raw_path=True)
    assert r.status == 200, r.body
    chunk = r.json()["chunk"]
    assert [e["event_id"] for e in chunk] == [a, b]  # most recently active first
    assert chunk[0]["unsigned"]["m.relations"]["m.thread"]["count"] == 2
    r = await c.call("GET", f"{V1}/rooms/{q(room)}/threads?limit=1",
                     token=alice.access_token, raw_path=True)
    assert [e["event_id"] for e in r.json()["chunk"]] == [a]
    token = r.json()["next_batch"]
    r = await c.call("GET", f"{V1}/rooms/{q(room)}/threads?limit=1&from={q(token)}",
                     token=alice.access_token, raw_path=True)
    assert [e["event_id"] for e in r.json()["chunk"]] == [b]
    assert "next_batch" not in r.json()
    # participated: carol replied in A only; bob started B and replied in A.
    for user, expected in ((carol, [a]), (bob, [a, b])):
        r = await c.call("GET", f"{V1}/rooms/{q(room)}/threads?include=participated",
                         token=user.access_token, raw_path=True)
        assert [e["event_id"] for e in r.json()["chunk"]] == expected


@pytest_twisted.ensureDeferred
async def test_visibility(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, dave, eve = [await c.register(n) for n in ("alice", "dave", "eve")]
    room = await _room(c, alice, preset="public_chat")
    r = await c.call("PUT", f"/rooms/{q(room)}/state/m.room.history_visibility",
                     {"history_visibility": "joined"}, token=alice.access_token)
    assert r.status == 200
    early = await _send(c, alice, room, "before dave")
    await _send(c, alice, room, "early reply", _thread(early))
    await _join(c, dave, room)
    root = await _send(c, alice, room, "while dave is here")
    seen = await _send(c, alice, room, "reply dave sees", _thread(root))
    r = await c.call("POST", f"/rooms/{q(room)}/leave", {}, token=dave.access_token)
    assert r.status == 200
    hidden = await _send(c, alice, room, "reply after dave left", _thread(root))
    await _send(c, alice, room, "* edited later", {"rel_type": "m.replace", "event_id": root})

    # The root sent before he joined is not his to see, nor its relations.
    r = await c.call("GET", f"{V1}/rooms/{q(room)}/relations/{q(early)}",
                     token=dave.access_token, raw_path=True)
    assert (r.status, r.json()["errcode"]) == (404, "M_NOT_FOUND")
    body = await _relations(c, dave, room, root)
    assert [e["event_id"] for e in body["chunk"]] == [seen]
    r = await c.call("GET", f"/rooms/{q(room)}/event/{q(root)}", token=dave.access_token)
    rel = r.json()["unsigned"]["m.relations"]
    assert rel["m.thread"]["count"] == 1 and rel["m.thread"]["latest_event"]["event_id"] == seen
    assert "m.replace" not in rel
    assert hidden not in str(r.json())
    r = await c.call("GET", f"{V1}/rooms/{q(room)}/threads", token=dave.access_token, raw_path=True)
    assert [e["event_id"] for e in r.json()["chunk"]] == [root]
    assert hidden not in str(r.json())
    # Alice sees it all.
    body = await _relations(c, alice, room, root)
    assert [e["event_id"] for e in body["chunk"]][1:] == [hidden, seen]

    # Never a member: nothing at all.
    r = await c.call("GET", f"{V1}/rooms/{q(room)}/relations/{q(root)}",
                     token=eve.access_token, raw_path=True)
    assert (r.status, r.json()["errcode"]) == (404, "M_NOT_FOUND")
    r = await c.call("GET", f"{V1}/rooms/{q(room)}/threads",
                     token=eve.access_token, raw_path=True)
    assert (r.status, r.json()["errcode"]) == (403, "M_FORBIDDEN")


@pytest_twisted.ensureDeferred
async def test_bad_input(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice = await c.register("alice")
    room = await _room(c, alice, preset="public_chat")
    root = await _send(c, alice, room, "root")
    base = f"{V1}/rooms/{q(room)}/relations/{q(root)}"
    for query in ("dir=x", "from=garbage", "to=t1", "limit=0", "limit=x", "recurse=maybe"):
        r = await c.call("GET", f"{base}?{query}",
                     token=alice.access_token, raw_path=True)
        assert (r.status, r.json()["errcode"]) == (400, "M_INVALID_PARAM"), query
    for path in (f"{V1}/rooms/{q('!nope:test.local')}/relations/{q(root)}",
                 f"{V1}/rooms/{q(room)}/relations/{q('$nope')}",
                 f"{V1}/rooms/{q('!nope:test.local')}/threads"):
        r = await c.call("GET", path,
                     token=alice.access_token, raw_path=True)
        assert (r.status, r.json()["errcode"]) == (404, "M_NOT_FOUND"), path
    r = await c.call("GET", base, raw_path=True)
    assert (r.status, r.json()["errcode"]) == (401, "M_MISSING_TOKEN")
    for query in ("include=mine", "from=x", "limit=0"):
        r = await c.call("GET", f"{V1}/rooms/{q(room)}/threads?{query}",
                         token=alice.access_token, raw_path=True)
        assert (r.status, r.json()["errcode"]) == (400, "M_INVALID_PARAM"), query
