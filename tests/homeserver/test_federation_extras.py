"""Federation endpoints beside the room core, between two real servers (a.test, b.test over
TLS, b.test's requests signed with its real key): ``/timestamp_to_event`` for peers, knocking
on a room of a.test (``make_knock`` / ``send_knock``: by hand, then by a client of b.test),
and the generic ``/query/{type}``."""

from __future__ import annotations

import time
from typing import Any

import pytest
import pytest_twisted

from federation.events import Event
from federation.hashes import add_hashes
from federation.room_versions import KNOWN_ROOM_VERSIONS
from federation.signing import sign_event
from federation.transport.client import HttpResponseError
from homeserver.services.registry import Services
from tests.homeserver.test_federation_rooms import eventually, joined_room, services
from tests.support.client import Client, User, q
from tests.support.server import RunningServer
from tests.support.sync import create_room, put_state, send, sync

F = "/_matrix/federation/v1"
ALL_VERSIONS = sorted(KNOWN_ROOM_VERSIONS)


async def _fails(expect: int, errcode: str, call: Any) -> None:
    with pytest.raises(HttpResponseError) as e:
        await call
    assert (e.value.status, e.value.errcode) == (expect, errcode), e.value.body


@pytest_twisted.ensureDeferred
async def test_timestamp_to_event_and_query(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    ca, _, alice, _, room = await joined_room(a, b)
    fed = services(b).federation_client
    before = int(time.time() * 1000)
    event_id = await send(ca, alice, room, "hello")
    path = f"{F}/timestamp_to_event/{q(room)}"
    got = await fed.get_json("a.test", path, {"ts": str(before), "dir": "f"})
    assert got["event_id"] == event_id and got["origin_server_ts"] >= before
    back = await fed.get_json("a.test", path, {"ts": str(int(time.time() * 1000) + 60_000),
                                               "dir": "b"})
    assert back["event_id"] == event_id
    # Nothing after the future; bad parameters; a room a.test does not know.
    await _fails(404, "M_NOT_FOUND", fed.get_json(
        "a.test", path, {"ts": str(int(time.time() * 1000) + 60_000), "dir": "f"}))
    await _fails(400, "M_INVALID_PARAM", fed.get_json("a.test", path, {"ts": "x", "dir": "f"}))
    await _fails(400, "M_INVALID_PARAM", fed.get_json("a.test", path, {"ts": "1", "dir": "x"}))
    await _fails(400, "M_MISSING_PARAM", fed.get_json("a.test", path, {"dir": "f"}))
    await _fails(404, "M_NOT_FOUND", fed.get_json(
        "a.test", f"{F}/timestamp_to_event/{q('!nope:a.test')}", {"ts": "1", "dir": "f"}))

    # A private room b.test has no user in: its events are not b.test's to find.
    secret = await create_room(ca, alice, preset="private_chat")
    await send(ca, alice, secret, "secret")
    await _fails(404, "M_NOT_FOUND", fed.get_json(
        "a.test", f"{F}/timestamp_to_event/{q(secret)}", {"ts": str(before), "dir": "f"}))

    # The generic query: the types a.test answers work, any other is "not found".
    got = await fed.get_json("a.test", f"{F}/query/directory", {"room_alias": "#lobby:a.test"})
    assert got["room_id"] == room
    await _fails(404, "M_NOT_FOUND", fed.get_json("a.test", f"{F}/query/weather", {}))
    # Unsigned requests are refused.
    r = await Client(a.federation_url).call("GET", f"{F}/query/weather", raw_path=True)
    assert r.status == 401


def _signed_knock(sb: Services, template: dict[str, Any], version: str) -> Event:
    rv = KNOWN_ROOM_VERSIONS[version]
    pdu = {k: v for k, v in template.items() if k != "content"}
    pdu["content"] = {**template["content"], "membership": "knock", "reason": "let me in"}
    pdu["origin_server_ts"] = int(time.time() * 1000)
    pdu = sign_event(add_hashes(pdu), rv, sb.pipeline.signing_key, "b.test")
    return Event(pdu, rv)


@pytest_twisted.ensureDeferred
async def test_knock_over_federation(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    ca = Client(a.client_url)
    alice = await ca.register("alice")
    room = await create_room(ca, alice, preset="private_chat", name="Knock here")
    await put_state(ca, alice, room, "m.room.join_rules", {"join_rule": "knock"})
    sb = services(b)
    fed = sb.federation_client
    bob = "@bob:b.test"
    path = f"{F}/make_knock/{q(room)}/{q(bob)}"

    made = await fed.get_json("a.test", path, {"ver": ALL_VERSIONS})
    version = made["room_version"]
    assert made["event"]["content"]["membership"] == "knock"
    knock = _signed_knock(sb, made["event"], version)
    answer = await fed.put_json(
        "a.test", f"{F}/send_knock/{q(room)}/{q(knock.event_id)}", knock.pdu_json())
    types = {e["type"] for e in answer["knock_room_state"]}
    assert {"m.room.create", "m.room.join_rules", "m.room.name"} <= types
    # a.test now has bob knocking: alice sees it and may invite him.
    r = await ca.call("GET", f"/rooms/{q(room)}/state/m.room.member/{q(bob)}", None,
                      alice.access_token)
    assert r.status == 200 and r.json()["membership"] == "knock", r.body
    assert r.json()["reason"] == "let me in"

    # Bad input: no ver, a version list without the room's, another server's user, a
    # room that does not take knocks, a room a.test is not in, and a join in send_knock.
    await _fails(400, "M_MISSING_PARAM", fed.get_json("a.test", path, {}))
    await _fails(400, "M_INCOMPATIBLE_ROOM_VERSION", fed.get_json(
        "a.test", path, {"ver": [v for v in ALL_VERSIONS if v != version]}))
    await _fails(403, "M_FORBIDDEN", fed.get_json(
        "a.test", f"{F}/make_knock/{q(room)}/{q('@eve:c.test')}", {"ver": ALL_VERSIONS}))
    public = await create_room(ca, alice, preset="public_chat")
    await _fails(403, "M_FORBIDDEN", fed.get_json(
        "a.test", f"{F}/make_knock/{q(public)}/{q(bob)}", {"ver": ALL_VERSIONS}))
    await _fails(404, "M_NOT_FOUND", fed.get_json(
        "a.test", f"{F}/make_knock/{q('!nope:a.test')}/{q(bob)}", {"ver": ALL_VERSIONS}))
    old = await create_room(ca, alice, preset="private_chat", room_version="6")
    await _fails(403, "M_FORBIDDEN", fed.get_json(
        "a.test", f"{F}/make_knock/{q(old)}/{q(bob)}", {"ver": ALL_VERSIONS}))
    template = dict(made["event"])
    template["content"] = {"membership": "join"}
    rv = KNOWN_ROOM_VERSIONS[version]
    pdu = sign_event(add_hashes({**template, "origin_server_ts": int(time.time() * 1000)}),
                     rv, sb.pipeline.signing_key, "b.test")
    join = Event(pdu, rv)
    await _fails(400, "M_BAD_JSON", fed.put_json(
        "a.test", f"{F}/send_knock/{q(room)}/{q(join.event_id)}", pdu))
    await _fails(400, "M_BAD_JSON", fed.put_json(
        "a.test", f"{F}/send_knock/{q(room)}/{q(join.event_id)}", []))


async def _membership(c: Client, user: User, room: str, target: str) -> str | None:
    r = await c.call("GET", f"/rooms/{q(room)}/state/m.room.member/{q(target)}", None,
                     user.access_token)
    return r.json().get("membership") if r.status == 200 else None


@pytest_twisted.ensureDeferred
async def test_knock_on_a_remote_room(pair: tuple[RunningServer, RunningServer]) -> None:
    """bob of b.test knocks on alice's room on a.test, sees it in /sync, is invited, joins;
    a second knock is withdrawn by leaving."""
    a, b = pair
    ca, cb = Client(a.client_url), Client(b.client_url)
    alice, bob = await ca.register("alice"), await cb.register("bob")
    room = await create_room(ca, alice, preset="private_chat", name="Knock here",
                             room_alias_name="knocks")
    await put_state(ca, alice, room, "m.room.join_rules", {"join_rule": "knock"})

    r = await cb.call("POST", f"/knock/{q('#knocks:a.test')}", {"reason": "hi"},
                      bob.access_token)
    assert r.status == 200 and r.json() == {"room_id": room}, r.body
    assert await _membership(ca, alice, room, bob.user_id) == "knock"
    first = await sync(cb, bob)
    state = first["rooms"]["knock"][room]["knock_state"]["events"]
    assert {"m.room.name", "m.room.join_rules"} <= {e["type"] for e in state}
    mine = [e for e in state if e["type"] == "m.room.member"]
    assert [e["content"]["membership"] for e in mine] == ["knock"]
    assert mine[0]["content"]["reason"] == "hi"

    # Alice lets bob in: the invite reaches b.test, and bob joins.
    r = await ca.call("POST", f"/rooms/{q(room)}/invite", {"user_id": bob.user_id},
                      alice.access_token)
    assert r.status == 200, r.body

    async def invited() -> bool:
        body = await sync(cb, bob, first["next_batch"])
        return room in body["rooms"]["invite"]

    await eventually(invited)
    r = await cb.call("POST", f"/join/{q(room)}", {}, bob.access_token)
    assert r.status == 200, r.body
    assert await _membership(ca, alice, room, bob.user_id) == "join"

    # A knock withdrawn: leaving sends the leave to a.test, and bob's sync shows it left.
    other = await create_room(ca, alice, preset="private_chat")
    await put_state(ca, alice, other, "m.room.join_rules", {"join_rule": "knock"})
    r = await cb.call("POST", f"/knock/{q(other)}?via=a.test", {}, bob.access_token)
    assert r.status == 200, r.body
    since = (await sync(cb, bob))["next_batch"]
    r = await cb.call("POST", f"/rooms/{q(other)}/leave", {}, bob.access_token)
    assert r.status == 200, r.body
    assert await _membership(ca, alice, other, bob.user_id) == "leave"
    body = await sync(cb, bob, since)
    assert other in body["rooms"]["leave"] and other not in body["rooms"].get("knock", {})

    # Alice turns a knock down (a kick): b.test records it, bob's sync shows the room left.
    third = await create_room(ca, alice, preset="private_chat")
    await put_state(ca, alice, third, "m.room.join_rules", {"join_rule": "knock"})
    r = await cb.call("POST", f"/knock/{q(third)}?via=a.test", {}, bob.access_token)
    assert r.status == 200, r.body
    since = (await sync(cb, bob))["next_batch"]
    assert third in (await sync(cb, bob))["rooms"]["knock"]
    r = await ca.call("POST", f"/rooms/{q(third)}/kick", {"user_id": bob.user_id},
                      alice.access_token)
    assert r.status == 200, r.body

    async def turned_down() -> bool:
        return third in (await sync(cb, bob, since))["rooms"]["leave"]

    await eventually(turned_down)

    # The resident's refusal is the client's: a room that takes no knocks.
    public = await create_room(ca, alice, preset="public_chat")
    r = await cb.call("POST", f"/knock/{q(public)}?via=a.test", {}, bob.access_token)
    assert (r.status, r.json()["errcode"]) == (403, "M_FORBIDDEN"), r.body
    # No server to ask: 404.
    r = await cb.call("POST", f"/knock/{q('!nowhere:b.test')}", {}, bob.access_token)
    assert (r.status, r.json()["errcode"]) == (404, "M_NOT_FOUND"), r.body
