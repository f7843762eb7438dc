"""Invites across two real servers over TLS on loopback: the invitee's server countersigns
(v2 /invite) and shows the invite in /sync with the room's stripped state; the invitee joins
or rejects through the inviting server (or, when it is unreachable, rejects locally); a server
that left a room joins it again; bad invites are refused."""

from __future__ import annotations

from typing import Any

import pytest_twisted

from federation.builder import build_event
from federation.room_versions import get_room_version
from federation.transport.client import HttpResponseError
from tests.homeserver.test_federation_rooms import eventually, messages, send_text, services
from tests.support.client import Client, q
from tests.support.databases import fresh_database
from tests.support.server import RunningServer, start_pair
from tests.support.sync import sync


async def _invited(ca: Client, alice: Any, room_id: str, user_id: str) -> None:
    r = await ca.call("POST", f"/rooms/{q(room_id)}/invite", {"user_id": user_id},
                      alice.access_token)
    assert r.status == 200, r.body


@pytest_twisted.ensureDeferred
async def test_remote_invite_shown_in_sync_and_accepted(
    pair: tuple[RunningServer, RunningServer],
) -> None:
    a, b = pair
    sa, sb = services(a), services(b)
    ca, cb = Client(a.client_url), Client(b.client_url)
    alice = await ca.register("alice")
    bob = await cb.register("bob")
    r = await ca.call("POST", "/createRoom", {"preset": "private_chat", "name": "Secret"},
                      alice.access_token)
    room_id = r.json()["room_id"]
    first = await sync(cb, bob)
    assert room_id not in first["rooms"]["invite"]

    await _invited(ca, alice, room_id, bob.user_id)
    # a.test persisted the invite with b.test's countersignature.
    member = await sa.state_store.membership(room_id, bob.user_id)
    assert member is not None and member.membership == "invite"
    stored = await sa.events.get_event(member.event_id)
    assert stored is not None and set(stored.event.signatures) == {"a.test", "b.test"}
    # Inviting again is a no-op answered at once.
    await _invited(ca, alice, room_id, bob.user_id)

    # bob's server is not in the room, yet bob sees the invite and what the room is.
    body = await sync(cb, bob, first["next_batch"])
    invite = body["rooms"]["invite"][room_id]["invite_state"]["events"]
    by_type = {(e["type"], e["state_key"]): e for e in invite}
    assert by_type[("m.room.name", "")]["content"]["name"] == "Secret"
    assert by_type[("m.room.member", bob.user_id)]["content"]["membership"] == "invite"
    assert by_type[("m.room.member", bob.user_id)]["sender"] == alice.user_id
    assert ("m.room.join_rules", "") in by_type
    assert not await sb.pipeline.room_exists(room_id)
    initial = await sync(cb, bob)
    assert room_id in initial["rooms"]["invite"]

    # bob accepts: the join goes through the inviting server (no via needed).
    r = await cb.call("POST", f"/rooms/{q(room_id)}/join", {}, bob.access_token)
    assert r.status == 200, r.body
    after = await sync(cb, bob, body["next_batch"])
    assert room_id in after["rooms"]["join"]
    assert room_id not in after["rooms"]["invite"]
    assert room_id not in (await sync(cb, bob))["rooms"]["invite"]
    await send_text(cb, bob, room_id, "thanks for the invite", "t1")

    async def on_a() -> bool:
        return "thanks for the invite" in await messages(ca, alice, room_id)

    await eventually(on_a)

    # bob leaves (b.test is out of the room, its copy goes stale); invited again, he sees
    # the new invite over his old leave and joins again through a.test.
    r = await cb.call("POST", f"/rooms/{q(room_id)}/leave", {}, bob.access_token)
    assert r.status == 200, r.body

    async def left_on_a() -> bool:
        return "b.test" not in await sa.federation.joined_servers(room_id)

    await eventually(left_on_a)
    await send_text(ca, alice, room_id, "while bob was out", "t2")
    since = (await sync(cb, bob))["next_batch"]
    await _invited(ca, alice, room_id, bob.user_id)
    body = await sync(cb, bob, since)
    assert room_id in body["rooms"]["invite"]
    assert room_id in (await sync(cb, bob))["rooms"]["invite"]
    r = await cb.call("POST", f"/rooms/{q(room_id)}/join", {}, bob.access_token)
    assert r.status == 200, r.body
    assert "while bob was out" in await messages(cb, bob, room_id)
    assert room_id in (await sync(cb, bob, body["next_batch"]))["rooms"]["join"]


@pytest_twisted.ensureDeferred
async def test_remote_invites_rejected_via_inviter_and_when_it_is_gone(
    engine: str, tmp_path: Any
) -> None:
    with fresh_database(engine, str(tmp_path / "dba")) as db_a, \
            fresh_database(engine, str(tmp_path / "dbb")) as db_b:
        a, b = await start_pair(str(tmp_path), db_a, db_b)
        try:
            sa = services(a)
            ca, cb = Client(a.client_url), Client(b.client_url)
            alice = await ca.register("alice")
            bob = await cb.register("bob")
            rooms = []
            for name in ("one", "two", "three"):
                r = await ca.call("POST", "/createRoom",
                                  {"preset": "private_chat", "name": name},
                                  alice.access_token)
                rooms.append(r.json()["room_id"])
                await _invited(ca, alice, rooms[-1], bob.user_id)
            one, two, three = rooms
            since = (await sync(cb, bob))["next_batch"]

            # alice withdraws the third invite: b.test hears of it and the invite goes.
            r = await ca.call("POST", f"/rooms/{q(three)}/kick", {"user_id": bob.user_id},
                              alice.access_token)
            assert r.status == 200, r.body

            async def withdrawn() -> bool:
                return three in (await sync(cb, bob, since))["rooms"]["leave"]

            await eventually(withdrawn)
            assert three not in (await sync(cb, bob))["rooms"]["invite"]

            # Rejected through a.test: a.test's room shows bob's leave.
            r = await cb.call("POST", f"/rooms/{q(one)}/leave", {"reason": "no thanks"},
                              bob.access_token)
            assert r.status == 200, r.body
            m = await sa.state_store.membership(one, bob.user_id)
            assert m is not None and m.membership == "leave"
            body = await sync(cb, bob, since)
            assert one not in body["rooms"]["invite"]
            leave = body["rooms"]["leave"][one]["timeline"]["events"]
            assert [(e["type"], e["content"]["membership"], e["content"].get("reason"))
                    for e in leave] == [("m.room.member", "leave", "no thanks")]

            # a.test is gone: bob can still make the invite go away.
            await a.stop()
            await services(b).federation_client.close()
            r = await cb.call("POST", f"/rooms/{q(two)}/leave", {}, bob.access_token)
            assert r.status == 200, r.body
            body = await sync(cb, bob, body["next_batch"])
            assert two in body["rooms"]["leave"]
            initial = await sync(cb, bob)
            assert initial["rooms"]["invite"] == {}
            # Rejecting again: no longer invited.
            r = await cb.call("POST", f"/rooms/{q(two)}/leave", {}, bob.access_token)
            assert r.status == 404, r.body
        finally:
            await a.stop()
            await b.stop()


@pytest_twisted.ensureDeferred
async def test_rejoining_a_room_after_leaving(
    pair: tuple[RunningServer, RunningServer],
) -> None:
    a, b = pair
    sa, sb = services(a), services(b)
    ca, cb = Client(a.client_url), Client(b.client_url)
    alice = await ca.register("alice")
    bob = await cb.register("bob")
    r = await ca.call("POST", "/createRoom", {"preset": "public_chat", "name": "Lobby"},
                      alice.access_token)
    room_id = r.json()["room_id"]
    r = await cb.call("POST", f"/join/{q(room_id)}?via=a.test", {}, bob.access_token)
    assert r.status == 200, r.body
    r = await cb.call("POST", f"/rooms/{q(room_id)}/leave", {}, bob.access_token)
    assert r.status == 200, r.body

    async def left_on_a() -> bool:
        return "b.test" not in await sa.federation.joined_servers(room_id)

    await eventually(left_on_a)
    # a.test goes on without b.test.
    await send_text(ca, alice, room_id, "while bob was away", "w1")
    r = await ca.call("PUT", f"/rooms/{q(room_id)}/state/m.room.name", {"name": "Renamed"},
                      alice.access_token)
    assert r.status == 200, r.body
    # b.test's view of the room is stale; the rejoin goes through a.test.
    r = await cb.call("POST", f"/rooms/{q(room_id)}/join", {}, bob.access_token)
    assert r.status == 200, r.body
    name = await sb.pipeline.current_state_event(room_id, ("m.room.name", ""))
    assert name is not None and name.event.content["name"] == "Renamed"
    r = await cb.call("GET", "/joined_rooms", None, bob.access_token)
    assert room_id in r.json()["joined_rooms"]
    await send_text(cb, bob, room_id, "back again", "b1")

    async def back_on_a() -> bool:
        return "back again" in await messages(ca, alice, room_id)

    await eventually(back_on_a)
    await send_text(ca, alice, room_id, "welcome back", "w2")

    async def reply_on_b() -> bool:
        return "welcome back" in await messages(cb, bob, room_id)

    await eventually(reply_on_b)


@pytest_twisted.ensureDeferred
async def test_bad_invites_are_refused(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    sb = services(b)
    ca = Client(a.client_url)
    alice = await ca.register("alice")
    assert b.hs.signing_key is not None
    rv = get_room_version("10")

    def invite(target: str, sender: str = "@bob:b.test", version: Any = rv) -> Any:
        return build_event(
            room_version=version, event_type="m.room.member", sender=sender,
            content={"membership": "invite"}, room_id="!somewhere:b.test", prev_events=[],
            current_state={}, origin_server_ts=sb.clock.time_ms(),
            signing_key=b.hs.signing_key, server_name="b.test", state_key=target, depth=5)

    async def put(event: Any, version: str = "10", event_id: str | None = None,
                  body: Any = None) -> HttpResponseError:
        path = (f"/_matrix/federation/v2/invite/{q(event.room_id)}/"
                f"{q(event_id or event.event_id)}")
        try:
            await sb.federation_client.put_json("a.test", path, body or {
                "room_version": version, "event": event.pdu_json(), "invite_room_state": []})
        except HttpResponseError as e:
            return e
        raise AssertionError("the invite was accepted")

    good = invite(alice.user_id)
    e = await put(good, version="99")
    assert (e.status, e.errcode) == (400, "M_INCOMPATIBLE_ROOM_VERSION")
    assert e.body["room_version"] == "99"
    e = await put(good, event_id="$other")
    assert (e.status, e.errcode) == (400, "M_BAD_JSON")
    e = await put(invite("@carol:c.test"))
    assert e.status == 400
    e = await put(invite("@nobody:a.test"))
    assert (e.status, e.errcode) == (404, "M_NOT_FOUND")
    # b.test may not invite on behalf of another server's user.
    e = await put(invite(alice.user_id, sender="@mallory:c.test"))
    assert e.status in (400, 403)
    tampered = dict(good.pdu_json(), content={"membership": "invite", "x": 1})
    e = await put(good, body={"room_version": "10", "event": tampered})
    assert (e.status, e.errcode) == (400, "M_BAD_JSON")
    e = await put(good, body={"event": good.pdu_json()})
    assert (e.status, e.errcode) == (400, "M_BAD_JSON")
    # Nothing of it reached alice.
    body = await sync(ca, alice)
    assert body["rooms"]["invite"] == {}
    # The good one is countersigned and shown.
    signed = await sb.federation_client.put_json(
        "a.test", f"/_matrix/federation/v2/invite/{q(good.room_id)}/{q(good.event_id)}",
        {"room_version": "10", "event": good.pdu_json(),
         "invite_room_state": [{"type": "m.room.name", "state_key": "", "sender": "@bob:b.test",
                                "content": {"name": "Over there"}}, "junk"]})
    assert set(signed["event"]["signatures"]) == {"a.test", "b.test"}
    body = await sync(ca, alice)
    state = body["rooms"]["invite"][good.room_id]["invite_state"]["events"]
    assert {e["type"] for e in state} == {"m.room.name", "m.room.member"}
    # v1 of the endpoint (room versions 1 and 2): the event is the body, the stripped state
    # in its unsigned section; the answer is [200, {"event": ...}].
    old = invite(alice.user_id, version=get_room_version("1"))
    pdu = dict(old.pdu_json(), unsigned={"invite_room_state": [
        {"type": "m.room.name", "state_key": "", "sender": "@bob:b.test",
         "content": {"name": "Old style"}}]})
    answer = await sb.federation_client.put_json(
        "a.test", f"/_matrix/federation/v1/invite/{q(old.room_id)}/{q(old.event_id)}", pdu)
    assert answer[0] == 200 and "a.test" in answer[1]["event"]["signatures"]
    body = await sync(ca, alice)
    state = body["rooms"]["invite"][old.room_id]["invite_state"]["events"]
    assert {e["content"].get("name") for e in state} >= {"Old style"}


@pytest_twisted.ensureDeferred
async def test_invite_refused_by_the_invitees_server(engine: str, tmp_path: Any) -> None:
    with fresh_database(engine, str(tmp_path / "dba")) as db_a, \
            fresh_database(engine, str(tmp_path / "dbb")) as db_b:
        a, b = await start_pair(str(tmp_path), db_a, db_b,
                                federation_b={"blocked_servers": ["a.test"]})
        try:
            sa = services(a)
            ca, cb = Client(a.client_url), Client(b.client_url)
            alice = await ca.register("alice")
            bob = await cb.register("bob")
            r = await ca.call("POST", "/createRoom", {"preset": "private_chat"},
                              alice.access_token)
            room_id = r.json()["room_id"]
            r = await ca.call("POST", f"/rooms/{q(room_id)}/invite", {"user_id": bob.user_id},
                              alice.access_token)
            assert (r.status, r.json()["errcode"]) == (403, "M_FORBIDDEN"), r.body
            assert await sa.state_store.membership(room_id, bob.user_id) is None
            # The room goes on as if the invite had never been tried.
            await send_text(ca, alice, room_id, "still fine", "f1")
            assert await messages(ca, alice, room_id) == ["still fine"]
            assert (await sync(cb, bob))["rooms"]["invite"] == {}
        finally:
            await a.stop()
            await b.stop()


@pytest_twisted.ensureDeferred
async def test_only_the_inviting_server_withdraws_an_invite(
    pair: tuple[RunningServer, RunningServer],
) -> None:
    a, b = pair
    sb = services(b)
    ca, cb = Client(a.client_url), Client(b.client_url)
    alice = await ca.register("alice")
    bob = await cb.register("bob")
    r = await ca.call("POST", "/createRoom", {"preset": "private_chat"}, alice.access_token)
    room_id = r.json()["room_id"]
    await _invited(ca, alice, room_id, bob.user_id)
    invites = sb.federation.invites
    assert await invites.pending(room_id, bob.user_id) is not None
    # A third server's kick of bob (its own user as sender) is ignored.
    forged = {"type": "m.room.member", "room_id": room_id, "state_key": bob.user_id,
              "sender": "@mallory:c.test", "content": {"membership": "leave"},
              "origin_server_ts": 1, "depth": 5, "prev_events": [], "auth_events": []}
    assert await invites.on_retraction("c.test", forged) is None
    # A malformed PDU from the inviting server is answered, not raised.
    bad = dict(forged, sender=alice.user_id, signatures="nope", depth="x")
    result = await invites.on_retraction("a.test", bad)
    assert result is None or "error" in result[1]
    assert await invites.pending(room_id, bob.user_id) is not None
    assert room_id in (await sync(cb, bob))["rooms"]["invite"]
