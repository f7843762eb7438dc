"""State storage on both engines: layered deltas, state at any event, current state,
membership queries, and state resolution over the stored auth chain index."""

from __future__ import annotations

import pytest
import pytest_twisted

from federation.events import StateKey
from federation.room_versions import get_room_version
from federation.state_res import resolve_state
from homeserver.config import DatabaseConfig
from homeserver.services.events import EventSpec, RoomHead, _Work
from homeserver.services.registry import Services
from homeserver.services.state import resolve_txn
from homeserver.storage import Txn
from homeserver.storage.events import StoredEvent, persist_txn
from homeserver.storage.state import SNAPSHOT_INTERVAL, StateFilter, load_group_txn
from tests.support.rooms import count, services, user

ALICE = user("alice")
TOPIC: StateKey = ("m.room.topic", "")


async def _stored(s: Services, event_id: str) -> StoredEvent:
    ev = await s.events.get_event(event_id)
    assert ev is not None
    return ev


@pytest_twisted.ensureDeferred
async def test_a_big_room_stores_deltas_not_copies(db_config: DatabaseConfig, tmp_path) -> None:
    async with services(db_config, str(tmp_path)) as s:
        created = await s.rooms.create_room(ALICE, preset="public_chat")
        room_id = created.room_id
        n = 250
        replay: dict[StateKey, str] = await s.pipeline.current_state_ids(room_id)
        checkpoints: list[tuple[str, dict[StateKey, str]]] = []
        for i in range(n):
            eid = await s.rooms.join(room_id, user(f"m{i}"))
            replay[("m.room.member", user(f"m{i}"))] = eid
            if i % 37 == 0 or i == n - 1:
                checkpoints.append((eid, dict(replay)))
        state_events = await count(s, "events", "room_id = ? AND state_key IS NOT NULL",
                                   (room_id,))
        groups = await count(s, "state_groups", "room_id = ?", (room_id,))
        entries = await count(s, "state_group_entries")
        # One group per state event; entries: one per state event plus a snapshot every
        # SNAPSHOT_INTERVAL hops -- not a copy of the whole state (~n^2/2 rows) per event.
        assert groups == state_events
        full_copies = sum(range(1, state_events + 1))
        assert entries < 4 * state_events < full_copies / 20
        longest = await s.db.run(
            "longest", lambda txn: txn.execute("SELECT MAX(chain_len) FROM state_groups")
            .fetchone()
        )
        assert longest is not None and longest[0] < SNAPSHOT_INTERVAL
        # Reading any group gives exactly the replayed state, across snapshot boundaries.
        for eid, expected in checkpoints:
            ev = await _stored(s, eid)
            assert await s.state.state_after(ev) == expected
        # The current_state table and the head agree with the newest group.
        current = await s.state_store.current_state(room_id)
        assert current == replay == await s.pipeline.current_state_ids(room_id)
        assert len(await s.state_store.members(room_id, ["join"])) == n + 1


@pytest_twisted.ensureDeferred
async def test_state_at_older_events(db_config: DatabaseConfig, tmp_path) -> None:
    async with services(db_config, str(tmp_path)) as s:
        room_id = (await s.rooms.create_room(ALICE, topic="first")).room_id
        msg1 = await s.rooms.send_event(room_id, ALICE, "m.room.message", {"body": "1"})
        t2 = await s.rooms.send_event(room_id, ALICE, "m.room.topic", {"topic": "second"}, "")
        msg2 = await s.rooms.send_event(room_id, ALICE, "m.room.message", {"body": "2"})
        t3 = await s.rooms.send_event(room_id, ALICE, "m.room.topic", {"topic": "third"}, "")

        async def topic_after(eid: str) -> str:
            ids = await s.state.state_after(await _stored(s, eid), StateFilter.from_keys([TOPIC]))
            return (await _stored(s, ids[TOPIC])).event.content["topic"]

        assert await topic_after(msg1) == "first"
        assert await topic_after(t2) == "second"
        assert await topic_after(msg2) == "second"
        assert await topic_after(t3) == "third"
        before = await s.state.state_before(await _stored(s, t2), StateFilter.from_keys([TOPIC]))
        assert (await _stored(s, before[TOPIC])).event.content["topic"] == "first"
        # A message shares the group of the state before it: no group per message.
        assert (await _stored(s, msg2)).state_group == (await _stored(s, t2)).state_group
        # unsigned.prev_content comes from the replaced event.
        served = await s.rooms.get_event(room_id, ALICE, t3)
        assert served["unsigned"]["prev_content"] == {"topic": "second"}
        assert served["unsigned"]["replaces_state"] == t2


@pytest_twisted.ensureDeferred
async def test_state_filters(db_config: DatabaseConfig, tmp_path) -> None:
    async with services(db_config, str(tmp_path)) as s:
        room_id = (await s.rooms.create_room(ALICE, preset="public_chat", name="n")).room_id
        bob = user("bob")
        await s.rooms.join(room_id, bob)
        last = await _stored(s, await s.rooms.send_event(room_id, bob, "m.room.message", {}))
        members = await s.state.state_after(last, StateFilter.from_types(["m.room.member"]))
        assert set(members) == {("m.room.member", ALICE), ("m.room.member", bob)}
        some = await s.state.state_after(
            last, StateFilter.from_keys([("m.room.name", ""), ("m.room.member", bob),
                                         ("m.room.member", user("nobody"))])
        )
        assert set(some) == {("m.room.name", ""), ("m.room.member", bob)}
        everything = await s.state.state_after(last)
        assert {k[0] for k in everything} >= {"m.room.create", "m.room.power_levels",
                                              "m.room.join_rules", "m.room.name"}
        # The same filters in SQL, uncached.
        direct = await s.db.run("load", load_group_txn, last.state_group,
                                StateFilter.from_types(["m.room.member"]))
        assert direct == members
        assert await s.db.run("none", load_group_txn, last.state_group,
                              StateFilter.from_keys([])) == {}


@pytest_twisted.ensureDeferred
async def test_membership_queries(db_config: DatabaseConfig, tmp_path) -> None:
    async with services(db_config, str(tmp_path)) as s:
        bob, carol = user("bob"), user("carol")
        r1 = (await s.rooms.create_room(ALICE, preset="public_chat")).room_id
        r2 = (await s.rooms.create_room(ALICE, invite=[bob])).room_id
        r3 = (await s.rooms.create_room(ALICE, preset="public_chat")).room_id
        await s.rooms.join(r1, bob)
        await s.rooms.join(r3, bob)
        await s.rooms.leave(r3, bob)
        await s.rooms.join(r1, carol)
        await s.rooms.ban(r1, ALICE, carol)
        mine = {m.room_id: m.membership for m in await s.state_store.rooms_for_user(bob)}
        assert mine == {r1: "join", r2: "invite", r3: "leave"}
        assert await s.rooms.joined_rooms(bob) == [r1]
        joined = {m.user_id for m in await s.state_store.members(r1, ["join"])}
        assert joined == {ALICE, bob}
        assert [m.user_id for m in await s.state_store.members(r1, ["ban"])] == [carol]
        m = await s.state_store.membership(r2, bob)
        assert m is not None and m.membership == "invite"
        # Who shares a joined room with whom (presence and device-list tracking).
        assert await s.state_store.users_sharing_rooms(bob) == {ALICE, bob}
        assert await s.state_store.users_sharing_rooms(carol) == set()
        assert await s.state_store.users_sharing_rooms(ALICE) == {ALICE, bob}


@pytest.mark.parametrize("version", ["10", "12"])
@pytest_twisted.ensureDeferred
async def test_resolution_of_a_fork_uses_the_stored_index(
    db_config: DatabaseConfig, tmp_path, version: str
) -> None:
    """Two branches from one point (as federation brings): the storage-backed resolution
    agrees with resolution over events in memory."""
    async with services(db_config, str(tmp_path)) as s:
        rv = get_room_version(version)
        bob = user("bob")
        room_id = (await s.rooms.create_room(ALICE, preset="public_chat", room_version=version)
                   ).room_id
        await s.rooms.join(room_id, bob)
        pl = await s.pipeline.current_state_event(room_id, ("m.room.power_levels", ""))
        assert pl is not None
        promote = dict(pl.event.content)
        promote["users"] = {**promote.get("users", {}), bob: 50}
        await s.rooms.send_event(room_id, ALICE, "m.room.power_levels", promote, "")
        fork = await s.pipeline._load_head(room_id)
        fork_state = dict(fork.state)

        async def branch(spec: EventSpec) -> StoredEvent:
            head = RoomHead(room_id, rv, fork.creator, list(fork.extremities), fork.max_depth,
                            fork.state_group, fork.state_chain_len, dict(fork_state))
            work = _Work(head, list(head.extremities), head.max_depth)
            item = await s.pipeline._build(work, spec)
            await s.db.run("persist", persist_txn, room_id, head.state_group,
                           head.state_chain_len, [item], work.extremities, work.max_depth, None,
                           {}, s.state_store.key_nids, 0)
            return await _stored(s, item.event.event_id)

        # Branch A: Alice demotes Bob again; branch B: Bob (still 50 there) changes the topic.
        demote = dict(promote)
        demote["users"] = {k: v for k, v in promote["users"].items() if k != bob}
        a = await branch(EventSpec("m.room.power_levels", ALICE, demote, ""))
        b = await branch(EventSpec("m.room.topic", bob, {"topic": "bob's"}, ""))
        sets = [await s.state.state_after(a), await s.state.state_after(b)]
        assert sets[0] != sets[1]

        resolved, chains = await s.db.run("resolve", resolve_txn, rv, sets)
        all_ids = {eid for st in sets for eid in st.values()}
        events = {e: se.event for e, se in (await s.events.get_events(all_ids)).items()}
        # Complete the in-memory view with every event reachable through auth events.
        todo = list(all_ids)
        while todo:
            ev = events.get(todo.pop())
            assert ev is not None
            extra = list(ev.auth_event_ids)
            if rv.room_id_is_create_event_hash and not ev.is_create():
                extra.append("$" + room_id[1:])
            for aid in extra:
                if aid not in events:
                    found = await s.events.get_event(aid)
                    assert found is not None
                    events[aid] = found.event
                    todo.append(aid)
        assert resolved == resolve_state(rv, sets, events)
        assert await s.state.resolve(rv, sets) == resolved
        # Alice's demotion wins (power events first), so Bob's topic fails the checks.
        assert resolved[("m.room.power_levels", "")] == a.event_id
        assert resolved.get(TOPIC) != b.event_id
        assert chains.index_answers > 0 and chains.walk_answers == 0


@pytest_twisted.ensureDeferred
async def test_row_counts_are_reported(db_config: DatabaseConfig, tmp_path) -> None:
    async with services(db_config, str(tmp_path)) as s:
        await s.rooms.create_room(ALICE)
        counts = await s.state_store.row_counts()
        assert counts["state_groups"] >= 5 and counts["current_state"] >= 5

        def keys(txn: Txn) -> int:
            row = txn.execute("SELECT COUNT(*) FROM state_keys").fetchone()
            assert row is not None
            return int(row[0])

        assert counts["state_keys"] == await s.db.run("keys", keys)
