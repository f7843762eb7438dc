"""Restricted rooms across two of our servers: a member of an allowed room joins through the
resident server, which vouches for the join (``join_authorised_via_users_server``) and signs
it; someone in no allowed room is refused at make_join, and a join that names a voucher the
resident never gave is refused at send_join without changing the room."""

from __future__ import annotations

import pytest_twisted

from federation.events import Event
from federation.hashes import add_hashes
from federation.signing import sign_event
from federation.transport.client import HttpResponseError
from tests.homeserver.test_federation_rooms import eventually, services, state_of
from tests.support.client import Client, q
from tests.support.server import RunningServer


@pytest_twisted.ensureDeferred
async def test_restricted_join_vouched_for_by_the_resident(
    pair: tuple[RunningServer, RunningServer],
) -> None:
    a, b = pair
    ca, cb = Client(a.client_url), Client(b.client_url)
    alice = await ca.register("alice")
    bob, carol = await cb.register("bob"), await cb.register("carol")
    r = await ca.call("POST", "/createRoom", {"preset": "public_chat"}, alice.access_token)
    space_id = r.json()["room_id"]
    r = await ca.call("POST", "/createRoom", {
        "preset": "private_chat", "room_version": "10",
        "initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": {
            "join_rule": "restricted",
            "allow": [{"type": "m.room_membership", "room_id": space_id}]}}]},
        alice.access_token)
    room_id = r.json()["room_id"]
    sa, sb = services(a), services(b)

    # carol is in no allowed room: a.test refuses to make her a join.
    r = await cb.call("POST", f"/join/{q(room_id)}?server_name=a.test", {}, carol.access_token)
    assert r.status == 403, r.body
    assert not await sb.pipeline.room_exists(room_id)

    # A join naming alice as its voucher, made up by b.test: refused, the room unchanged.
    rv, template = await sa.pipeline.template(
        room_id, "m.room.member", carol.user_id,
        {"membership": "join", "join_authorised_via_users_server": alice.user_id},
        carol.user_id)
    template["origin_server_ts"] = sa.clock.time_ms()
    assert b.hs.signing_key is not None
    forged = Event(sign_event(add_hashes(template), rv, b.hs.signing_key, "b.test"), rv)
    try:
        await sb.federation_client.put_json(
            "a.test", f"/_matrix/federation/v2/send_join/{q(room_id)}/{q(forged.event_id)}",
            forged.pdu_json())
        raise AssertionError("a.test accepted a join it never vouched for")
    except HttpResponseError as e:
        assert (e.status, e.errcode) == (403, "M_FORBIDDEN")
    assert await sa.state_store.membership(room_id, carol.user_id) is None

    # bob joins the allowed room, then the restricted one: alice vouches, a.test signs.
    r = await cb.call("POST", f"/join/{q(space_id)}?server_name=a.test", {}, bob.access_token)
    assert r.status == 200, r.body
    # A join a.test would vouch for, with malformed signatures: 400, not countersigned.
    rv, template = await sa.pipeline.template(
        room_id, "m.room.member", bob.user_id,
        {"membership": "join", "join_authorised_via_users_server": alice.user_id},
        bob.user_id)
    template["origin_server_ts"] = sa.clock.time_ms()
    bad = dict(sign_event(add_hashes(template), rv, b.hs.signing_key, "b.test"),
               signatures="nope")
    try:
        await sb.federation_client.put_json(
            "a.test", f"/_matrix/federation/v2/send_join/{q(room_id)}/"
            f"{q(Event(dict(bad), rv).event_id)}", bad)
        raise AssertionError("a.test accepted a join with malformed signatures")
    except HttpResponseError as e:
        assert (e.status, e.errcode) == (400, "M_BAD_JSON")
    r = await cb.call("POST", f"/join/{q(room_id)}?server_name=a.test", {}, bob.access_token)
    assert r.status == 200, r.body
    member = await state_of(cb, bob, room_id, "m.room.member", bob.user_id)
    assert member["membership"] == "join"
    assert member["join_authorised_via_users_server"] == alice.user_id

    async def joined_on_a() -> bool:
        m = await sa.state_store.membership(room_id, bob.user_id)
        return m is not None and m.membership == "join"

    await eventually(joined_on_a)
    stored = await sa.events.get_event((await sa.state_store.membership(
        room_id, bob.user_id)).event_id)  # type: ignore[union-attr]
    assert stored is not None
    assert set(stored.event.pdu_json()["signatures"]) == {"a.test", "b.test"}
