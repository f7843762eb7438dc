"""Rooms across our server and a real Synapse on loopback: a room created on each side joined
from the other, messages both ways in the same order on both, state changes (name, topic,
power levels), kicks, bans, leaves and rejoins, edits and redactions, concurrent changes that
fork the room, every event format (room versions 1 to 12), aliases, invites (accepted and
rejected), restricted rooms, room directories, backfill of history a new joiner did not see
(each way), and catching up after our server was down.

One Synapse (SQLite) serves the module; each test starts a fresh server of ours."""

from __future__ import annotations

import os
import secrets
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from tests.support.client import Client, q
from tests.support.databases import fresh_database
from tests.support.interop import (
    SQLITE_ONLY,
    AnyUser,
    Side,
    all_messages,
    call_ok,
    event_on,
    eventually,
    exchange_and_check,
    fresh,
    invited_rooms,
    join,
    joined_pair,
    membership,
    messages,
    name_of,
    ours,
    send_text,
    state_of,
    synapse,
)
from tests.support.server import RunningServer, free_port, start_server
from tests.support.synapse import SynapseProcess

__all__ = ["ours", "synapse"]


async def check_state_changes(
    owner: tuple[Client, AnyUser], other: tuple[Client, AnyUser], room_id: str,
) -> None:
    """The owner renames the room, sets a topic, and gives the other user power; the other
    user can then set the topic, and both sides agree on all of it."""
    (co, uo), (cx, ux) = owner, other
    await call_ok(co, "PUT", f"/rooms/{q(room_id)}/state/m.room.name", uo, {"name": "Renamed"})
    await call_ok(co, "PUT", f"/rooms/{q(room_id)}/state/m.room.topic", uo,
                  {"topic": "set by owner"})
    levels = await state_of(co, uo, room_id, "m.room.power_levels")
    levels["users"][ux.user_id] = 50
    await call_ok(co, "PUT", f"/rooms/{q(room_id)}/state/m.room.power_levels", uo, levels)

    async def other_has_power() -> bool:
        pl = await state_of(cx, ux, room_id, "m.room.power_levels")
        name = await state_of(cx, ux, room_id, "m.room.name")
        return (pl is not None and pl["users"].get(ux.user_id) == 50
                and name is not None and name.get("name") == "Renamed")

    await eventually(other_has_power, what="name and power levels on the other side")
    await call_ok(cx, "PUT", f"/rooms/{q(room_id)}/state/m.room.topic", ux,
                  {"topic": "set by the other side"})

    async def topic_on_owner() -> bool:
        t = await state_of(co, uo, room_id, "m.room.topic")
        return t is not None and t.get("topic") == "set by the other side"

    await eventually(topic_on_owner, what="topic back on the owner's side")


async def check_kick(
    owner: tuple[Client, AnyUser], other: tuple[Client, AnyUser], room_id: str,
) -> None:
    (co, uo), (cx, ux) = owner, other
    await call_ok(co, "POST", f"/rooms/{q(room_id)}/kick", uo,
                  {"user_id": ux.user_id, "reason": "bye"})

    async def gone_on_other() -> bool:
        j = await call_ok(cx, "GET", "/joined_rooms", ux)
        return room_id not in j["joined_rooms"]

    await eventually(gone_on_other, what="the kick on the kicked user's server")
    r = await cx.call("PUT", f"/rooms/{q(room_id)}/send/m.room.message/after-kick",
                      {"msgtype": "m.text", "body": "still here?"}, ux.access_token)
    assert r.status == 403, r.body
    assert await membership(co, uo, room_id, ux.user_id) == "leave"


@pytest_twisted.ensureDeferred
async def test_room_on_ours_joined_from_synapse(
    ours: RunningServer, synapse: SynapseProcess,
) -> None:
    co, cs = Client(ours.client_url), Client(synapse.client_url)
    alice = await co.register(fresh("alice"))
    bob = synapse.register_user(fresh("bob"))
    j = await call_ok(co, "POST", "/createRoom", alice,
                      {"preset": "public_chat", "name": "Ours", "room_alias_name": fresh("o")})
    room_id = j["room_id"]
    await join(cs, bob, room_id, name_of(ours))
    assert (await state_of(cs, bob, room_id, "m.room.name"))["name"] == "Ours"

    async def bob_joined_here() -> bool:
        return await membership(co, alice, room_id, bob.user_id) == "join"

    await eventually(bob_joined_here, what="bob's join on our server")
    sides: list[tuple[Client, AnyUser]] = [(co, alice), (cs, bob)]
    await exchange_and_check(sides, room_id, [0, 1, 0, 0, 1, 1])
    await check_state_changes((co, alice), (cs, bob), room_id)
    await check_kick((co, alice), (cs, bob), room_id)


@pytest_twisted.ensureDeferred
async def test_room_on_synapse_joined_from_ours(
    ours: RunningServer, synapse: SynapseProcess,
) -> None:
    co, cs = Client(ours.client_url), Client(synapse.client_url)
    alice = await co.register(fresh("alice"))
    bob = synapse.register_user(fresh("bob"))
    j = await call_ok(cs, "POST", "/createRoom", bob, {"preset": "public_chat", "name": "Syn"})
    room_id = j["room_id"]
    await join(co, alice, room_id, synapse.server_name)
    assert (await state_of(co, alice, room_id, "m.room.name"))["name"] == "Syn"

    async def alice_joined_there() -> bool:
        return await membership(cs, bob, room_id, alice.user_id) == "join"

    await eventually(alice_joined_there, what="alice's join on Synapse")
    sides: list[tuple[Client, AnyUser]] = [(co, alice), (cs, bob)]
    await exchange_and_check(sides, room_id, [1, 0, 0, 1, 0, 1])
    await check_state_changes((cs, bob), (co, alice), room_id)
    await check_kick((cs, bob), (co, alice), room_id)


@SQLITE_ONLY
@pytest_twisted.ensureDeferred
async def test_room_versions_both_ways(
    ours: RunningServer, synapse: SynapseProcess,
) -> None:
    """Rooms of the versions with distinct event formats (v1's server-assigned event IDs, v3+
    hashes, v11's redaction rules, v12's room ID from the create event), created on each side
    and joined from the other, with a message each way."""
    co, cs = Client(ours.client_url), Client(synapse.client_url)
    alice = await co.register(fresh("alice"))
    bob = synapse.register_user(fresh("bob"))
    for version in ("1", "6", "11", "12"):
        for (c, creator), (jc, joiner), via in (
                ((co, alice), (cs, bob), name_of(ours)),
                ((cs, bob), (co, alice), synapse.server_name)):
            room_id = (await call_ok(c, "POST", "/createRoom", creator, {
                "preset": "public_chat", "room_version": version}))["room_id"]
            await join(jc, joiner, room_id, via)
            create = await state_of(jc, joiner, room_id, "m.room.create")
            assert create.get("room_version", "1") == version
            await exchange_and_check([(c, creator), (jc, joiner)], room_id, [1, 0])


@SQLITE_ONLY
@pytest_twisted.ensureDeferred
async def test_joins_by_alias_both_ways(
    ours: RunningServer, synapse: SynapseProcess,
) -> None:
    co, cs = Client(ours.client_url), Client(synapse.client_url)
    alice = await co.register(fresh("alice"))
    bob = synapse.register_user(fresh("bob"))
    local_o, local_s = fresh("ours"), fresh("syn")
    room_o = (await call_ok(co, "POST", "/createRoom", alice,
                            {"preset": "public_chat", "room_alias_name": local_o}))["room_id"]
    room_s = (await call_ok(cs, "POST", "/createRoom", bob,
                            {"preset": "public_chat", "room_alias_name": local_s}))["room_id"]
    for c, u, alias, room_id in ((cs, bob, f"#{local_o}:{name_of(ours)}", room_o),
                                 (co, alice, f"#{local_s}:{synapse.server_name}", room_s)):
        j = await call_ok(c, "GET", f"/directory/room/{q(alias)}", u)
        assert j["room_id"] == room_id
        j = await call_ok(c, "POST", f"/join/{q(alias)}", u, {})
        assert j["room_id"] == room_id


@pytest.mark.parametrize("on_ours", [True, False], ids=["room_on_ours", "room_on_synapse"])
@SQLITE_ONLY
@pytest_twisted.ensureDeferred
async def test_edits_and_redactions_across(
    ours: RunningServer, synapse: SynapseProcess, on_ours: bool,
) -> None:
    co, cs, alice, bob, room_id = await joined_pair(ours, synapse, on_ours)
    sides: list[tuple[Client, AnyUser]] = [(co, alice), (cs, bob)]
    for (c, u), (rc, ru) in (((co, alice), (cs, bob)), ((cs, bob), (co, alice))):
        original = await send_text(c, u, room_id, f"typo by {u.user_id}")
        edit = (await call_ok(c, "PUT", f"/rooms/{q(room_id)}/send/m.room.message/"
                              f"{secrets.token_hex(4)}", u, {
                                  "msgtype": "m.text", "body": "* fixed",
                                  "m.new_content": {"msgtype": "m.text", "body": "fixed"},
                                  "m.relates_to": {"rel_type": "m.replace",
                                                   "event_id": original}}))["event_id"]
        secret = await send_text(c, u, room_id, f"secret of {u.user_id}")

        async def arrived(rc: Client = rc, ru: AnyUser = ru, ids: tuple[str, ...] = (
                original, edit, secret)) -> bool:
            return all([await event_on(rc, ru, room_id, i) is not None for i in ids])

        await eventually(arrived, what="original, edit and secret on the other side")
        edited = await event_on(rc, ru, room_id, edit)
        assert edited["content"]["m.relates_to"] == {"rel_type": "m.replace",
                                                      "event_id": original}
        await call_ok(c, "PUT", f"/rooms/{q(room_id)}/redact/{q(secret)}/"
                      f"{secrets.token_hex(4)}", u, {"reason": "oops"})
        for c2, u2 in sides:
            async def redacted(c2: Client = c2, u2: AnyUser = u2,
                               secret: str = secret) -> bool:
                e = await event_on(c2, u2, room_id, secret)
                return e is not None and e["content"] == {}

            await eventually(redacted, what=f"the redaction of {secret} on {u2.user_id}")
    assert await messages(co, alice, room_id) == await messages(cs, bob, room_id)


@pytest.mark.parametrize("on_ours", [True, False], ids=["room_on_ours", "room_on_synapse"])
@SQLITE_ONLY
@pytest_twisted.ensureDeferred
async def test_concurrent_state_changes_converge(
    ours: RunningServer, synapse: SynapseProcess, on_ours: bool,
) -> None:
    """Both sides change the topic and send at the same moment (a fork in the room's graph);
    once each has the other's events, state resolution gives both the same topic, and the
    next events merge the fork."""
    co, cs, alice, bob, room_id = await joined_pair(ours, synapse, on_ours)
    owner = (co, alice) if on_ours else (cs, bob)
    other = (cs, bob) if on_ours else (co, alice)
    levels = await state_of(owner[0], owner[1], room_id, "m.room.power_levels")
    levels["users"][other[1].user_id] = 100
    await call_ok(owner[0], "PUT", f"/rooms/{q(room_id)}/state/m.room.power_levels",
                  owner[1], levels)

    async def promoted() -> bool:
        pl = await state_of(other[0], other[1], room_id, "m.room.power_levels")
        return pl is not None and pl["users"].get(other[1].user_id) == 100

    await eventually(promoted, what="the power level change on the other side")
    from twisted.internet.defer import ensureDeferred, gatherResults

    await gatherResults([
        ensureDeferred(call_ok(
            c, "PUT", f"/rooms/{q(room_id)}/state/m.room.topic", u,
            {"topic": f"topic of {u.user_id}"}))
        for c, u in ((co, alice), (cs, bob))])
    sent = [f"fork from {alice.user_id}", f"fork from {bob.user_id}"]
    await gatherResults([ensureDeferred(send_text(co, alice, room_id, sent[0])),
                         ensureDeferred(send_text(cs, bob, room_id, sent[1]))])

    async def both_have_both() -> bool:
        return all([set(sent) <= set(await messages(c, u, room_id))
                    for c, u in ((co, alice), (cs, bob))])

    await eventually(both_have_both, what="both forked messages on both sides")
    # A message from each side after the fork: both must then agree on the whole state.
    await send_text(co, alice, room_id, "after the fork, ours")
    await send_text(cs, bob, room_id, "after the fork, synapse")

    async def same_topic() -> bool:
        t1 = await state_of(co, alice, room_id, "m.room.topic")
        t2 = await state_of(cs, bob, room_id, "m.room.topic")
        return t1 is not None and t1 == t2

    await eventually(same_topic, what="the same topic on both sides")
    for c, u in ((co, alice), (cs, bob)):
        async def has_tail(c: Client = c, u: AnyUser = u) -> bool:
            have = await messages(c, u, room_id)
            return "after the fork, ours" in have and "after the fork, synapse" in have

        await eventually(has_tail, what="messages after the fork")
    state_o = {(e["type"], e["state_key"]): e["event_id"]
               for e in await call_ok(co, "GET", f"/rooms/{q(room_id)}/state", alice)}
    state_s = {(e["type"], e["state_key"]): e["event_id"]
               for e in await call_ok(cs, "GET", f"/rooms/{q(room_id)}/state", bob)}
    assert state_o == state_s


@pytest.mark.parametrize("on_ours", [True, False], ids=["room_on_ours", "room_on_synapse"])
@SQLITE_ONLY
@pytest_twisted.ensureDeferred
async def test_leave_rejoin_ban_unban_across(
    ours: RunningServer, synapse: SynapseProcess, on_ours: bool,
) -> None:
    co, cs, alice, bob, room_id = await joined_pair(ours, synapse, on_ours)
    owner: Side = (co, alice) if on_ours else (cs, bob)
    gc, gu = (cs, bob) if on_ours else (co, alice)
    resident = name_of(ours) if on_ours else synapse.server_name
    # The guest leaves, the owner talks on, the guest comes back and sees it.
    await call_ok(gc, "POST", f"/rooms/{q(room_id)}/leave", gu, {})

    async def guest_is(wanted: str) -> bool:
        return await membership(owner[0], owner[1], room_id, gu.user_id) == wanted

    await eventually(lambda: guest_is("leave"), what="the leave on the owner's side")
    await send_text(owner[0], owner[1], room_id, "while you were away")
    await join(gc, gu, room_id, resident)
    await eventually(lambda: guest_is("join"), what="the rejoin on the owner's side")
    await exchange_and_check([owner, (gc, gu)], room_id, [0, 1])
    assert "while you were away" in await messages(gc, gu, room_id)
    # Banned: out, and refused when joining again; unbanned: may join again.
    await call_ok(owner[0], "POST", f"/rooms/{q(room_id)}/ban", owner[1],
                  {"user_id": gu.user_id, "reason": "enough"})

    async def banned() -> bool:
        return room_id not in (await call_ok(gc, "GET", "/joined_rooms", gu))["joined_rooms"]

    await eventually(banned, what="the ban on the guest's side")
    r = await gc.call("POST", f"/join/{q(room_id)}?server_name={q(resident)}", {},
                      gu.access_token)
    assert r.status == 403, (r.status, r.body)
    await call_ok(owner[0], "POST", f"/rooms/{q(room_id)}/unban", owner[1],
                  {"user_id": gu.user_id})
    await join(gc, gu, room_id, resident)
    await eventually(lambda: guest_is("join"), what="the join after the unban")


@pytest_twisted.ensureDeferred
async def test_invites_accepted_and_rejected_both_ways(
    ours: RunningServer, synapse: SynapseProcess,
) -> None:
    """A private room on each side: the other side's user is invited (countersigned by their
    server), sees the invite with the room's name, and joins; a second invitee rejects."""
    co, cs = Client(ours.client_url), Client(synapse.client_url)
    alice, carol = await co.register(fresh("alice")), await co.register(fresh("carol"))
    bob, dave = synapse.register_user(fresh("bob")), synapse.register_user(fresh("dave"))
    for (c, u), (rc, accepter), (_, rejecter) in (
            ((co, alice), (cs, bob), (cs, dave)),
            ((cs, bob), (co, alice), (co, carol))):
        room_id = (await call_ok(c, "POST", "/createRoom", u,
                                 {"preset": "private_chat", "name": f"room of {u.user_id}"})
                   )["room_id"]
        for target in (accepter, rejecter):
            await call_ok(c, "POST", f"/rooms/{q(room_id)}/invite", u,
                          {"user_id": target.user_id})
            assert await membership(c, u, room_id, target.user_id) == "invite"

            async def invite_seen(target: AnyUser = target, room_id: str = room_id,
                                  rc: Client = rc) -> bool:
                return room_id in await invited_rooms(rc, target)

            await eventually(invite_seen, what=f"the invite in {target.user_id}'s sync")
            invite = (await invited_rooms(rc, target))[room_id]["invite_state"]["events"]
            names = [e["content"].get("name") for e in invite if e["type"] == "m.room.name"]
            assert names == [f"room of {u.user_id}"]
        await call_ok(rc, "POST", f"/rooms/{q(room_id)}/join", accepter, {})
        await call_ok(rc, "POST", f"/rooms/{q(room_id)}/leave", rejecter, {})

        async def settled(room_id: str = room_id, c: Client = c, u: AnyUser = u,
                          accepter: AnyUser = accepter, rejecter: AnyUser = rejecter) -> bool:
            return (await membership(c, u, room_id, accepter.user_id) == "join"
                    and await membership(c, u, room_id, rejecter.user_id) == "leave")

        await eventually(settled, what="the join and the rejection on the inviter's server")
        assert room_id not in await invited_rooms(rc, rejecter)
        await exchange_and_check([(c, u), (rc, accepter)], room_id, [0, 1])


@pytest.mark.parametrize("on_ours", [True, False], ids=["room_on_ours", "room_on_synapse"])
@SQLITE_ONLY
@pytest_twisted.ensureDeferred
async def test_restricted_room_joined_through_membership(
    ours: RunningServer, synapse: SynapseProcess, on_ours: bool,
) -> None:
    """A restricted room (v10) allowing members of another room: the other side's user, a
    member of that room, joins it through the resident server, which authorises the join."""
    co, cs, alice, bob, space_id = await joined_pair(ours, synapse, on_ours)
    owner = (co, alice) if on_ours else (cs, bob)
    guest = (cs, bob) if on_ours else (co, alice)
    room_id = (await call_ok(owner[0], "POST", "/createRoom", owner[1], {
        "preset": "private_chat", "room_version": "10",
        "initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": {
            "join_rule": "restricted",
            "allow": [{"type": "m.room_membership", "room_id": space_id}]}}]}))["room_id"]
    await join(guest[0], guest[1], room_id, name_of(ours) if on_ours else synapse.server_name)
    member = await state_of(owner[0], owner[1], room_id, "m.room.member", guest[1].user_id)

    async def joined_on_owner() -> bool:
        return await membership(owner[0], owner[1], room_id, guest[1].user_id) == "join"

    await eventually(joined_on_owner, what="the restricted join on the resident side")
    member = await state_of(owner[0], owner[1], room_id, "m.room.member", guest[1].user_id)
    assert member["join_authorised_via_users_server"] == owner[1].user_id
    await exchange_and_check([owner, guest], room_id, [1, 0])
    # Someone in no allowed room is refused.
    if on_ours:
        stranger: AnyUser = synapse.register_user(fresh("eve"))
        sc, via = cs, name_of(ours)
    else:
        stranger = await co.register(fresh("eve"))
        sc, via = co, synapse.server_name
    r = await sc.call("POST", f"/join/{q(room_id)}?server_name={q(via)}", {},
                      stranger.access_token)
    assert r.status == 403, (r.status, r.body)


@SQLITE_ONLY
@pytest_twisted.ensureDeferred
async def test_public_room_directories_across(
    ours: RunningServer, synapse: SynapseProcess,
) -> None:
    co, cs = Client(ours.client_url), Client(synapse.client_url)
    alice = await co.register(fresh("alice"))
    bob = synapse.register_user(fresh("bob"))
    names = {}
    for c, u, side in ((co, alice, "ours"), (cs, bob, "synapse")):
        names[side] = fresh(f"public on {side} ")
        room_id = (await call_ok(c, "POST", "/createRoom", u, {
            "preset": "public_chat", "visibility": "public", "name": names[side],
            "topic": "listed"}))["room_id"]
        names[side + "_id"] = room_id
    for c, u, server, side in ((co, alice, synapse.server_name, "synapse"),
                               (cs, bob, name_of(ours), "ours")):
        j = await call_ok(c, "GET", f"/publicRooms?server={q(server)}&limit=50", u)
        listed = {r["room_id"]: r for r in j["chunk"]}
        assert names[side + "_id"] in listed, j
        entry = listed[names[side + "_id"]]
        assert entry["name"] == names[side] and entry["topic"] == "listed"
        assert entry["num_joined_members"] == 1
        j = await call_ok(c, "POST", f"/publicRooms?server={q(server)}", u,
                          {"limit": 50, "filter": {"generic_search_term": names[side]}})
        assert [r["room_id"] for r in j["chunk"]] == [names[side + "_id"]]


@pytest_twisted.ensureDeferred
async def test_synapse_backfills_history_from_ours(
    ours: RunningServer, synapse: SynapseProcess,
) -> None:
    """History sent before Synapse's user joined reaches them through Synapse's backfill
    from our server (``/backfill``), in order."""
    co, cs = Client(ours.client_url), Client(synapse.client_url)
    alice = await co.register(fresh("alice"))
    bob = synapse.register_user(fresh("bob"))
    room_id = (await call_ok(co, "POST", "/createRoom", alice, {"preset": "public_chat"}))[
        "room_id"]
    history = [f"before the join {i}" for i in range(30)]
    for text in history:
        await send_text(co, alice, room_id, text)
    await join(cs, bob, room_id, name_of(ours))
    assert await all_messages(cs, bob, room_id) == history


@pytest_twisted.ensureDeferred
async def test_ours_backfills_history_from_synapse(
    ours: RunningServer, synapse: SynapseProcess,
) -> None:
    """History sent in a Synapse room before our user joined is fetched from Synapse
    (``/backfill``) when our user pages back, checked, and shown in order, with the
    room's creation under it."""
    co, cs = Client(ours.client_url), Client(synapse.client_url)
    alice = await co.register(fresh("alice"))
    bob = synapse.register_user(fresh("bob"))
    room_id = (await call_ok(cs, "POST", "/createRoom", bob, {"preset": "public_chat"}))[
        "room_id"]
    history = [f"before the join {i}" for i in range(30)]
    for text in history:
        await send_text(cs, bob, room_id, text)
    await join(co, alice, room_id, synapse.server_name)
    assert await all_messages(co, alice, room_id) == history
    # Paged to the start: the create event is there too.
    body = await call_ok(co, "GET", f"/rooms/{q(room_id)}/messages?dir=f&limit=5", alice)
    assert body["chunk"][0]["type"] == "m.room.create"


@pytest_twisted.ensureDeferred
async def test_ours_catches_up_after_downtime(
    engine: str, tmp_path: Any, synapse: SynapseProcess,
) -> None:
    """Our server is down (its port closed, kept-alive connections dropped) while Synapse's
    user talks; once it is back, Synapse's retried transactions deliver everything, in
    Synapse's order, and our messages flow to Synapse again."""
    port = free_port("127.0.0.2")
    data_dir = os.path.join(str(tmp_path), "hs")
    with fresh_database(engine, str(tmp_path / "db")) as db:
        server = await start_server(data_dir, db, f"127.0.0.2:{port}", port)
        try:
            co, cs = Client(server.client_url), Client(synapse.client_url)
            alice = await co.register(fresh("alice"))
            bob = synapse.register_user(fresh("bob"))
            room_id = (await call_ok(cs, "POST", "/createRoom", bob,
                                     {"preset": "public_chat"}))["room_id"]
            await join(co, alice, room_id, synapse.server_name)
            await exchange_and_check([(co, alice), (cs, bob)], room_id, [1, 0])
            await server.stop()
            missed = [f"while ours was down {i}" for i in range(6)]
            for text in missed:
                await send_text(cs, bob, room_id, text)
            server = await start_server(data_dir, db, f"127.0.0.2:{port}", port)
            co = Client(server.client_url)
            # Our server contacting Synapse tells it we are back.
            await send_text(co, alice, room_id, "back again")

            async def caught_up() -> bool:
                return set(missed) <= set(await messages(co, alice, room_id))

            await eventually(caught_up, timeout=60, what="the missed messages on ours")
            assert [m for m in await messages(co, alice, room_id) if m in missed] == missed

            async def back_on_synapse() -> bool:
                return "back again" in await messages(cs, bob, room_id)

            await eventually(back_on_synapse, what="our message on Synapse")
        finally:
            await server.stop()


@SQLITE_ONLY
@pytest_twisted.ensureDeferred
async def test_server_acl_set_on_ours_shuts_synapse_out(
    ours: RunningServer, synapse: SynapseProcess,
) -> None:
    """A server ACL denying Synapse: what Synapse's user sends afterwards is refused by our
    server, while our messages still reach Synapse; once the ACL is lifted, Synapse's
    messages come in again."""
    co, cs, alice, bob, room_id = await joined_pair(ours, synapse, on_ours=True)
    await exchange_and_check([(co, alice), (cs, bob)], room_id, [1])
    acl = {"allow": ["*"], "deny": [synapse.server_name.split(":")[0]],
           "allow_ip_literals": True}
    await call_ok(co, "PUT", f"/rooms/{q(room_id)}/state/m.room.server_acl", alice, acl)

    async def acl_on_synapse() -> bool:
        return await state_of(cs, bob, room_id, "m.room.server_acl") == acl

    await eventually(acl_on_synapse, what="the ACL on Synapse")
    await send_text(cs, bob, room_id, "from a denied server")
    # Our next message goes round: had Synapse's come in, it would be there before it.
    await send_text(co, alice, room_id, "after the ACL")

    async def ours_on_synapse() -> bool:
        return "after the ACL" in await messages(cs, bob, room_id)

    await eventually(ours_on_synapse, what="our message on Synapse")
    # Synapse sent its message at once; give its transaction time to have been refused.
    for _ in range(20):
        assert "from a denied server" not in await messages(co, alice, room_id)
        await task.deferLater(reactor, 0.1, lambda: None)
    await call_ok(co, "PUT", f"/rooms/{q(room_id)}/state/m.room.server_acl", alice,
                  {"allow": ["*"], "deny": [], "allow_ip_literals": True})

    async def acl_lifted() -> bool:
        a = await state_of(cs, bob, room_id, "m.room.server_acl")
        return a is not None and a.get("deny") == []

    await eventually(acl_lifted, what="the lifted ACL on Synapse")
    await exchange_and_check([(co, alice), (cs, bob)], room_id, [1, 0])
