"""The auth chain cover index answers exactly what a naive walk of the auth graph answers."""

from __future__ import annotations

import random

import pytest_twisted
from twisted.internet import reactor

from federation.events import Event, StateKey
from federation.room_versions import get_room_version
from federation.state_res import InMemoryAuthChains
from homeserver.config import DatabaseConfig
from homeserver.storage import Txn, open_database
from homeserver.storage.auth_chains import ChainEvent, StorageAuthChains, index_events_txn
from homeserver.storage.schema import migrate

RV = get_room_version("10")
KEYS: list[StateKey] = [
    ("m.room.power_levels", ""),
    ("m.room.join_rules", ""),
    *[("m.room.member", f"@u{i}:x") for i in range(5)],
]


def random_dag(rng: random.Random, n: int) -> list[Event]:
    """State events in topological order; each cites a few earlier events of distinct keys
    (often not the newest of a key, so chains fork)."""
    create = Event(
        {"type": "m.room.create", "state_key": "", "room_id": "!r:x", "sender": "@u0:x",
         "auth_events": [], "prev_events": [], "content": {}},
        RV, "$e0",
    )
    events = [create]
    for i in range(1, n):
        key = rng.choice(KEYS)
        cited: dict[StateKey, str] = {("m.room.create", ""): "$e0"}
        for _ in range(rng.randint(0, 4)):
            ev = rng.choice(events[1:] or events)
            assert ev.state_key is not None
            cited.setdefault((ev.type, ev.state_key), ev.event_id)
        # Usually extend the newest event of the same key, as real rooms do.
        same = [e for e in events if e.state_key is not None and e.state_tuple == key]
        if same and rng.random() < 0.7:
            cited[key] = same[-1].event_id
        events.append(Event(
            {"type": key[0], "state_key": key[1], "room_id": "!r:x", "sender": "@u0:x",
             "auth_events": list(cited.values()), "prev_events": [], "content": {}},
            RV, f"$e{i}",
        ))
    return events


def index(txn: Txn, events: list[Event], batch: int) -> dict[str, int]:
    nids: dict[str, int] = {}
    for ev in events:
        row = txn.execute(
            "INSERT INTO event_nids (event_id) VALUES (?) RETURNING event_nid", (ev.event_id,)
        ).fetchone()
        assert row is not None
        nids[ev.event_id] = int(row[0])
    by_id = {e.event_id: e for e in events}
    chain_events = [
        ChainEvent(nids[e.event_id], e.state_tuple,
                   [(nids[a], by_id[a].state_tuple) for a in e.auth_event_ids])
        for e in events
    ]
    # Index in batches of different sizes, as the pipeline does.
    for i in range(0, len(chain_events), batch):
        assert index_events_txn(txn, chain_events[i : i + batch]) == []
    return nids


def compare(txn: Txn, events: list[Event], rng: random.Random) -> dict[str, int]:
    by_id = {e.event_id: e for e in events}
    naive = InMemoryAuthChains(by_id)
    chains = StorageAuthChains(txn, lambda eid: None)  # the index alone must answer
    ids = [e.event_id for e in events]
    for eid in ids:
        assert set(chains.auth_chain(eid)) == set(naive.auth_chain(eid)), eid
    for _ in range(40):
        sets = [set(rng.sample(ids, rng.randint(1, 6))) for _ in range(rng.randint(2, 4))]
        assert chains.auth_chain_difference(sets) == naive.auth_chain_difference(sets), sets
    for _ in range(40):
        conflicted = set(rng.sample(ids, rng.randint(1, 5)))
        assert chains.conflicted_subgraph(conflicted) == naive.conflicted_subgraph(
            conflicted
        ), conflicted
    assert chains.walk_answers == 0
    return {"index": chains.index_answers}


@pytest_twisted.ensureDeferred
async def test_index_matches_a_naive_walk_on_random_dags(db_config: DatabaseConfig) -> None:
    db = open_database(db_config, reactor)
    try:
        await migrate(db)
        for seed in range(6):
            rng = random.Random(seed)
            events = random_dag(rng, rng.randint(20, 70))
            # Different rooms in one database: nids and chains must not mix.
            await db.run("index", index, events if seed == 0 else _renamed(events, seed),
                         rng.choice([1, 5, 100]))
            answers = await db.run(
                "compare", compare, events if seed == 0 else _renamed(events, seed), rng
            )
            assert answers["index"] > 0
    finally:
        await db.close()


def _renamed(events: list[Event], seed: int) -> list[Event]:
    def rid(eid: str) -> str:
        return f"{eid}-{seed}"

    out = []
    for e in events:
        pdu = e.pdu_json()
        pdu["auth_events"] = [rid(a) for a in e.auth_event_ids]
        out.append(Event(pdu, RV, rid(e.event_id)))
    return out


@pytest_twisted.ensureDeferred
async def test_links_stay_few_in_a_long_linear_room(db_config: DatabaseConfig) -> None:
    """Members joining one after another: each new chain links to a handful of others; the
    index does not grow with the square of the room."""
    db = open_database(db_config, reactor)
    try:
        await migrate(db)
        pl: StateKey = ("m.room.power_levels", "")
        events = [Event({"type": "m.room.create", "state_key": "", "room_id": "!r:x",
                         "sender": "@a:x", "auth_events": [], "content": {}}, RV, "$c")]
        events.append(Event({"type": "m.room.member", "state_key": "@a:x", "room_id": "!r:x",
                             "sender": "@a:x", "auth_events": ["$c"], "content": {}}, RV, "$ja"))
        events.append(Event({"type": pl[0], "state_key": "", "room_id": "!r:x", "sender": "@a:x",
                             "auth_events": ["$c", "$ja"], "content": {}}, RV, "$pl"))
        events.append(Event({"type": "m.room.join_rules", "state_key": "", "room_id": "!r:x",
                             "sender": "@a:x", "auth_events": ["$c", "$ja", "$pl"],
                             "content": {}}, RV, "$jr"))
        for i in range(200):
            events.append(Event({"type": "m.room.member", "state_key": f"@u{i}:x",
                                 "room_id": "!r:x", "sender": f"@u{i}:x",
                                 "auth_events": ["$c", "$pl", "$jr"], "content": {}},
                                RV, f"$j{i}"))
        await db.run("index", index, events, 50)

        def links(txn: Txn) -> int:
            row = txn.execute("SELECT COUNT(*) FROM event_auth_chain_links").fetchone()
            assert row is not None
            return int(row[0])

        assert await db.run("links", links) <= 4 * len(events)
        chain = await db.run("chain", lambda txn: StorageAuthChains(txn, lambda e: None)
                             .auth_chain("$j150"))
        assert chain == {"$c", "$ja", "$pl", "$jr"}
    finally:
        await db.close()
