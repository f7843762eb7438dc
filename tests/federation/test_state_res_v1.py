"""State resolution v1 (room version 1)."""

from __future__ import annotations

import hashlib

from federation.room_versions import get_room_version
from federation.state_res import resolve_state
from federation.state_res.v1 import separate_v1
from tests.federation.dagfactory import (
    ALICE,
    BOB,
    CHARLIE,
    JOIN,
    POWER,
    TOPIC,
    ZARA,
    Room,
    create_content,
    eid,
)

V1 = get_room_version("1")
BASE = ["CREATE", "MA", "PL0", "JR0", "MB", "MC", "MZ"]


def base_room() -> Room:
    """Alice (100) creates a public room; Bob (50), Charlie and Zara (0) join. Depth 7."""
    room = Room(V1)
    room.add("CREATE", ALICE, "m.room.create", "", create_content(V1))
    room.add("MA", ALICE, "m.room.member", ALICE, JOIN, auth=["CREATE"], prev=["CREATE"])
    room.add(
        "PL0", ALICE, "m.room.power_levels", "", {"users": {ALICE: 100, BOB: 50}},
        auth=["CREATE", "MA"], prev=["MA"],
    )  # fmt: skip
    room.add(
        "JR0", ALICE, "m.room.join_rules", "", {"join_rule": "public"},
        auth=["CREATE", "MA", "PL0"], prev=["PL0"],
    )  # fmt: skip
    room.add("MB", BOB, "m.room.member", BOB, JOIN, auth=["CREATE", "PL0", "JR0"], prev=["JR0"])
    room.add(
        "MC", CHARLIE, "m.room.member", CHARLIE, JOIN, auth=["CREATE", "PL0", "JR0"], prev=["MB"]
    )
    room.add("MZ", ZARA, "m.room.member", ZARA, JOIN, auth=["CREATE", "PL0", "JR0"], prev=["MC"])
    return room


def test_v1_power_levels_walk_from_lowest_depth_and_stop_at_first_failure() -> None:
    """PA (depth 8) demotes Bob; Bob's PB (depth 9) then fails against PA, so PA stays —
    even though PB is deeper."""
    room = base_room()
    room.add(
        "PA", ALICE, "m.room.power_levels", "", {"users": {ALICE: 100, BOB: 0}},
        auth=["CREATE", "MA", "PL0"], prev=["MZ"],
    )  # fmt: skip
    room.add(
        "TB", BOB, "m.room.topic", "", {"topic": "b"}, auth=["CREATE", "MB", "PL0"], prev=["MZ"]
    )
    room.add(
        "PB", BOB, "m.room.power_levels", "", {"users": {ALICE: 100, BOB: 50, CHARLIE: 50}},
        auth=["CREATE", "MB", "PL0"], prev=["TB"],
    )  # fmt: skip
    assert room.events[eid("PA")].depth < room.events[eid("PB")].depth
    resolved = room.resolve([room.state(*BASE, "PA"), room.state(*BASE, "TB", "PB")])
    assert resolved[POWER] == eid("PA")
    # The topic was not conflicted (only one side set it): v1 keeps it unchecked.
    assert resolved[TOPIC] == eid("TB")


def test_v1_power_levels_deeper_event_wins_when_allowed() -> None:
    room = base_room()
    room.add(
        "PB", BOB, "m.room.power_levels", "", {"users": {ALICE: 100, BOB: 50, CHARLIE: 10}},
        auth=["CREATE", "MB", "PL0"], prev=["MZ"],
    )  # fmt: skip
    room.add(
        "TA", ALICE, "m.room.topic", "", {"topic": "a"}, auth=["CREATE", "MA", "PL0"], prev=["MZ"]
    )
    room.add(
        "PA", ALICE, "m.room.power_levels", "", {"users": {ALICE: 100, BOB: 50, ZARA: 10}},
        auth=["CREATE", "MA", "PL0"], prev=["TA"],
    )  # fmt: skip
    resolved = room.resolve([room.state(*BASE, "PB"), room.state(*BASE, "TA", "PA")])
    assert resolved[POWER] == eid("PA")


def test_v1_normal_conflict_picks_deepest_event_that_passes_auth() -> None:
    """Bob's topic is deeper, but fails once the power levels resolve to Alice's demotion."""
    room = base_room()
    room.add(
        "TA", ALICE, "m.room.topic", "", {"topic": "a"}, auth=["CREATE", "MA", "PL0"], prev=["MZ"]
    )
    room.add(
        "PA", ALICE, "m.room.power_levels", "", {"users": {ALICE: 100, BOB: 0}},
        auth=["CREATE", "MA", "PL0"], prev=["TA"],
    )  # fmt: skip
    room.add("X", BOB, "m.room.message", None, {}, auth=["CREATE", "MB", "PL0"], prev=["MZ"])
    room.add("Y", BOB, "m.room.message", None, {}, auth=["CREATE", "MB", "PL0"], prev=["X"])
    room.add(
        "TB", BOB, "m.room.topic", "", {"topic": "b"}, auth=["CREATE", "MB", "PL0"], prev=["Y"]
    )
    assert room.events[eid("TB")].depth > room.events[eid("TA")].depth
    a = room.state(*BASE, "TA", "PA")
    b = room.state(*BASE, "TB")
    b[POWER] = eid("PL0")
    resolved = room.resolve([a, b])
    assert resolved[POWER] == eid("PA")
    assert resolved[TOPIC] == eid("TA")
    # Without the demotion Bob's deeper topic wins.
    assert room.resolve([room.state(*BASE, "TA"), b])[TOPIC] == eid("TB")


def test_v1_normal_conflict_where_none_pass_keeps_lowest_depth() -> None:
    """Synapse's choice where the spec is silent: if no candidate passes, keep the last in
    the order tried, i.e. the lowest depth."""
    room = base_room()
    room.add(
        "TZ1", ZARA, "m.room.topic", "", {"topic": "1"}, auth=["CREATE", "MZ", "PL0"], prev=["MZ"]
    )
    room.add(
        "TZ2", ZARA, "m.room.topic", "", {"topic": "2"}, auth=["CREATE", "MZ", "PL0"], prev=["TZ1"]
    )
    resolved = room.resolve([room.state(*BASE, "TZ1"), room.state(*BASE, "TZ2")])
    assert resolved[TOPIC] == eid("TZ1")


def test_v1_equal_depth_tie_broken_by_lowest_sha1() -> None:
    room = base_room()
    room.add(
        "T_a", ALICE, "m.room.topic", "", {"topic": "a"}, auth=["CREATE", "MA", "PL0"], prev=["MZ"]
    )
    room.add(
        "T_b", ALICE, "m.room.topic", "", {"topic": "b"}, auth=["CREATE", "MA", "PL0"], prev=["MZ"]
    )
    want = min([eid("T_a"), eid("T_b")], key=lambda e: hashlib.sha1(e.encode()).hexdigest())
    resolved = room.resolve([room.state(*BASE, "T_a"), room.state(*BASE, "T_b")])
    assert resolved[TOPIC] == want


def test_v1_key_missing_from_a_state_set_is_not_conflicted() -> None:
    """Synapse's v1 (and the v1 spec's "different event_ids for the same key"): a key only
    one state set has is not a conflict, so even an unauthorised event there is kept; v2
    would re-check it."""
    room = base_room()
    room.add(
        "TZ", ZARA, "m.room.topic", "", {"topic": "z"}, auth=["CREATE", "MZ", "PL0"], prev=["MZ"]
    )
    a = room.state(*BASE, "TZ")
    b = room.state(*BASE)
    unconflicted, conflicted = separate_v1([a, b])
    assert unconflicted[TOPIC] == eid("TZ") and not conflicted
    assert room.resolve([a, b])[TOPIC] == eid("TZ")


def test_v1_single_state_set_is_returned_as_is() -> None:
    room = base_room()
    s = room.state(*BASE)
    assert resolve_state(V1, [s], room.events) == s


def test_v1_does_not_need_auth_chains() -> None:
    """v1 never asks for auth chains: a provider that explodes is never touched."""
    room = base_room()
    room.add(
        "T_a", ALICE, "m.room.topic", "", {"topic": "a"}, auth=["CREATE", "MA", "PL0"], prev=["MZ"]
    )
    room.add(
        "T_b", BOB, "m.room.topic", "", {"topic": "b"}, auth=["CREATE", "MB", "PL0"], prev=["T_a"]
    )

    class Exploding:
        def __getattr__(self, name: str) -> object:
            raise AssertionError(name)

    got = resolve_state(
        V1,
        [room.state(*BASE, "T_a"), room.state(*BASE, "T_b")],
        room.events,
        auth_chains=Exploding(),  # type: ignore[arg-type]
    )
    assert got[TOPIC] == eid("T_b")
