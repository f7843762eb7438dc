"""State resolution v2.1 (room version 12): the conflicted state subgraph, iterative auth
checks from an empty state, implicit create auth events and infinite-power creators.

The first two scenarios are Synapse's tests/state/test_v21.py.
"""

from __future__ import annotations

import pytest

from federation.room_versions import get_room_version
from federation.state_res import InMemoryAuthChains, resolve_state, sender_power_level
from federation.state_res._common import CREATOR_POWER_LEVEL, EventCache
from tests.federation.dagfactory import (
    ALICE,
    BAN,
    BOB,
    CHARLIE,
    EVELYN,
    JOIN,
    JOIN_RULES,
    LEAVE,
    POWER,
    ZARA,
    Room,
    create_content,
    eid,
    member,
)

V12 = get_room_version("12")
V11 = get_room_version("11")


def replay_room(rv=V12) -> Room:  # type: ignore[no-untyped-def]
    """Synapse's test_state_reset_replay_conflicted_subgraph DAG."""
    room = Room(rv)
    room.add("CREATE", ALICE, "m.room.create", "", create_content(rv))
    room.add("MA", ALICE, "m.room.member", ALICE, JOIN, auth=["CREATE"], prev=["CREATE"])
    room.add(
        "P1", ALICE, "m.room.power_levels", "", {"users": {}}, auth=["CREATE", "MA"], prev=["MA"]
    )
    room.add(
        "JR", ALICE, "m.room.join_rules", "", {"join_rule": "public"},
        auth=["CREATE", "MA", "P1"], prev=["P1"],
    )  # fmt: skip
    room.add("MB", BOB, "m.room.member", BOB, JOIN, auth=["CREATE", "P1", "JR"], prev=["JR"])
    room.add(
        "MC", CHARLIE, "m.room.member", CHARLIE, JOIN, auth=["CREATE", "P1", "JR"], prev=["MB"]
    )
    room.add(
        "P2", ALICE, "m.room.power_levels", "", {"users": {BOB: 50}},
        auth=["CREATE", "MA", "P1"], prev=["MC"],
    )  # fmt: skip
    room.add(
        "P3", BOB, "m.room.power_levels", "", {"users": {BOB: 50, CHARLIE: 50}},
        auth=["CREATE", "MB", "P2"], prev=["P2"],
    )  # fmt: skip
    room.add("ME1", EVELYN, "m.room.member", EVELYN, JOIN, auth=["CREATE", "P3", "JR"], prev=["P3"])
    # Evelyn's rename cites the *old* power levels directly, the new ones through ME1.
    room.add(
        "ME2", EVELYN, "m.room.member", EVELYN, JOIN,
        auth=["CREATE", "P1", "JR", "ME1"], prev=["ME1"],
    )  # fmt: skip
    room.add("MZ", ZARA, "m.room.member", ZARA, JOIN, auth=["CREATE", "P3", "JR"], prev=["P3"])
    return room


def test_state_reset_replay_conflicted_subgraph() -> None:
    room = replay_room()
    dodgy = room.state("CREATE", "MA", "MB", "MC", "ME2", "P1", "JR")
    sensible = room.state("CREATE", "MA", "MB", "MC", "MZ", "P3", "JR")
    expected = room.state("CREATE", "MA", "MB", "MC", "ME1", "MZ", "P3", "JR")
    assert room.resolve([dodgy, sensible]) == expected
    assert room.resolve([sensible, dodgy]) == expected


def test_conflicted_subgraph_of_replay_room() -> None:
    """P2 lies on the auth path between the conflicted P3 and P1, JR between MZ and P1: both
    are in the subgraph; the create event and Alice's join (below every conflicted event)
    are not."""
    room = replay_room()
    chains = InMemoryAuthChains(room.events)
    conflicted = {eid("ME2"), eid("MZ"), eid("P1"), eid("P3")}
    sub = chains.conflicted_subgraph(conflicted)
    assert eid("P2") in sub
    assert eid("ME1") in sub  # ME2 -> ME1 -> P3
    assert conflicted <= sub
    assert eid("CREATE") not in sub
    assert eid("JR") in sub  # MZ -> JR -> P1
    assert eid("MA") not in sub


def test_v2_without_subgraph_differs_on_replay_room() -> None:
    """The same DAG in v11 shows the state reset v2.1 fixes: without the subgraph, P2 is not
    replayed, so Bob's P3 is judged against P1 (where Bob has no power) and the room's
    power levels reset to P1; Evelyn's dodgy rename survives."""
    room = replay_room(V11)
    dodgy = room.state("CREATE", "MA", "MB", "MC", "ME2", "P1", "JR")
    sensible = room.state("CREATE", "MA", "MB", "MC", "MZ", "P3", "JR")
    resolved = room.resolve([dodgy, sensible])
    assert resolved[POWER] == eid("P1")
    assert resolved[member(EVELYN)] == eid("ME2")


def start_empty_room(rv=V12) -> Room:  # type: ignore[no-untyped-def]
    """Synapse's test_state_reset_start_empty_set DAG."""
    room = Room(rv)
    room.add("CREATE", ALICE, "m.room.create", "", create_content(rv))
    room.add("MA1", ALICE, "m.room.member", ALICE, JOIN, auth=["CREATE"], prev=["CREATE"])
    users = {BOB: 100}
    room.add(
        "P",
        ALICE,
        "m.room.power_levels",
        "",
        {"users": users},
        auth=["CREATE", "MA1"],
        prev=["MA1"],
    )
    room.add(
        "JR1", ALICE, "m.room.join_rules", "", {"join_rule": "public"},
        auth=["CREATE", "MA1", "P"], prev=["P"],
    )  # fmt: skip
    room.add("MB", BOB, "m.room.member", BOB, JOIN, auth=["CREATE", "P", "JR1"], prev=["JR1"])
    room.add(
        "JR2", ALICE, "m.room.join_rules", "", {"join_rule": "invite"},
        auth=["CREATE", "MA1", "P"], prev=["MB"],
    )  # fmt: skip
    room.add("MA2", ALICE, "m.room.member", ALICE, LEAVE, auth=["CREATE", "P", "MA1"], prev=["JR2"])
    return room


def test_state_reset_start_empty_set() -> None:
    """Conflicting join rules whose sender has since left: v2.1 keeps the newer rule."""
    room = start_empty_room()
    correct = room.state("CREATE", "MA2", "MB", "P", "JR2")
    incorrect = room.state("CREATE", "MA2", "MB", "P", "JR1")
    assert room.resolve([correct, incorrect]) == correct


def test_v2_resets_join_rules_when_sender_has_left() -> None:
    """The v2 behaviour v2.1 fixes: starting from the unconflicted state (Alice has left),
    neither join rules event passes and the key vanishes."""
    room = start_empty_room(V11)
    correct = room.state("CREATE", "MA2", "MB", "P", "JR2")
    incorrect = room.state("CREATE", "MA2", "MB", "P", "JR1")
    resolved = room.resolve([correct, incorrect])
    assert JOIN_RULES not in resolved
    assert resolved[member(ALICE)] == eid("MA2")


def test_conflicted_subgraph_is_paths_between_conflicted_events() -> None:
    """A <- B <- C <- D (auth edges point left), E <- B: with B and D conflicted, the
    subgraph is {B, C, D}; A (below) and E (off-path) are excluded."""
    room = Room(V12)
    room.add("CREATE", ALICE, "m.room.create", "", create_content(V12))
    room.add("A", ALICE, "m.room.member", ALICE, JOIN, auth=["CREATE"], prev=["CREATE"])
    room.add("B", ALICE, "m.room.power_levels", "", {"users": {}}, auth=["A"], prev=["A"])
    room.add(
        "C", ALICE, "m.room.power_levels", "", {"users": {BOB: 1}}, auth=["A", "B"], prev=["B"]
    )
    room.add(
        "D", ALICE, "m.room.power_levels", "", {"users": {BOB: 2}}, auth=["A", "C"], prev=["C"]
    )
    room.add("E", ALICE, "m.room.topic", "", {}, auth=["A", "B"], prev=["B"])
    chains = InMemoryAuthChains(room.events)
    assert chains.conflicted_subgraph({eid("B"), eid("D")}) == {eid("B"), eid("C"), eid("D")}
    assert chains.conflicted_subgraph({eid("E")}) == {eid("E")}


def test_create_event_is_an_implicit_auth_event() -> None:
    room = start_empty_room()
    ma1 = room.events[eid("MA1")]
    assert eid("CREATE") not in ma1.auth_event_ids
    chains = InMemoryAuthChains(room.events)
    assert chains.auth_chain(eid("MA1")) == {eid("CREATE")}
    assert chains.auth_chain(eid("JR1")) == {eid("CREATE"), eid("MA1"), eid("P")}


def creators_room(additional: list[str] | None = None) -> Room:
    room = Room(V12)
    extra = {"additional_creators": additional} if additional else {}
    room.add("CREATE", ALICE, "m.room.create", "", create_content(V12, **extra))
    room.add("MA", ALICE, "m.room.member", ALICE, JOIN, auth=["CREATE"], prev=["CREATE"])
    room.add(
        "PL0", ALICE, "m.room.power_levels", "", {"users": {CHARLIE: 100}}, auth=["MA"], prev=["MA"]
    )
    room.add(
        "JR",
        ALICE,
        "m.room.join_rules",
        "",
        {"join_rule": "public"},
        auth=["MA", "PL0"],
        prev=["PL0"],
    )
    room.add("MB", BOB, "m.room.member", BOB, JOIN, auth=["PL0", "JR"], prev=["JR"])
    room.add("MC", CHARLIE, "m.room.member", CHARLIE, JOIN, auth=["PL0", "JR"], prev=["MB"])
    return room


CREATORS_BASE = ["CREATE", "MA", "PL0", "JR", "MB", "MC"]


def test_creator_sorts_with_infinite_power() -> None:
    room = creators_room(additional=[BOB])
    cache = EventCache(room.events)
    assert sender_power_level(cache, eid("PL0")) == CREATOR_POWER_LEVEL  # Alice
    assert sender_power_level(cache, eid("MB")) == CREATOR_POWER_LEVEL  # additional creator
    assert sender_power_level(cache, eid("MC")) == 100  # Charlie: listed at 100


def test_creator_power_change_sorts_before_admin_and_wins() -> None:
    """Alice (creator) demotes Charlie (100) while Charlie promotes Zara: the creator's
    change sorts first despite its later timestamp, and Charlie's then fails."""
    room = creators_room()
    room.add(
        "P_ALICE", ALICE, "m.room.power_levels", "", {"users": {CHARLIE: 0}},
        auth=["MA", "PL0"], prev=["MC"], ts=1000,
    )  # fmt: skip
    room.add(
        "P_CHARLIE", CHARLIE, "m.room.power_levels", "", {"users": {CHARLIE: 100, ZARA: 50}},
        auth=["MC", "PL0"], prev=["MC"], ts=10,
    )  # fmt: skip
    a = room.state(*CREATORS_BASE, "P_ALICE")
    b = room.state(*CREATORS_BASE, "P_CHARLIE")
    assert room.resolve([a, b])[POWER] == eid("P_ALICE")


def test_additional_creator_cannot_be_banned_by_admin() -> None:
    """Charlie (100) bans Bob on one branch; Bob is an additional creator, with infinite
    power, so the ban fails re-authorisation and Bob stays."""
    room = creators_room(additional=[BOB])
    room.add("BAN_B", CHARLIE, "m.room.member", BOB, BAN, auth=["MC", "MB", "PL0"], prev=["MC"])
    room.add("T", ALICE, "m.room.topic", "", {"topic": "x"}, auth=["MA", "PL0"], prev=["MC"])
    a = room.state(*CREATORS_BASE, "BAN_B")
    b = room.state(*CREATORS_BASE, "T")
    assert room.resolve([a, b])[member(BOB)] == eid("MB")


def test_admin_can_ban_non_creator_in_v12() -> None:
    """Control: without additional_creators, the same ban of Bob (level 0) stands."""
    room = creators_room()
    room.add("BAN_B", CHARLIE, "m.room.member", BOB, BAN, auth=["MC", "MB", "PL0"], prev=["MC"])
    room.add("T", ALICE, "m.room.topic", "", {"topic": "x"}, auth=["MA", "PL0"], prev=["MC"])
    a = room.state(*CREATORS_BASE, "BAN_B")
    b = room.state(*CREATORS_BASE, "T")
    assert room.resolve([a, b])[member(BOB)] == eid("BAN_B")


@pytest.mark.parametrize("order", [0, 1])
def test_v12_unconflicted_bogus_state_is_not_trusted_for_power_events(order: int) -> None:
    """v2.1 starts the power-event pass empty: a power event is judged by its own auth
    events, not by unconflicted state that happens to lack its sender's membership."""
    room = start_empty_room()
    # Both sides agree Alice has left, but disagree on the join rules.
    states = [
        room.state("CREATE", "MA2", "MB", "P", "JR2"),
        room.state("CREATE", "MA2", "MB", "P", "JR1"),
    ]
    if order:
        states.reverse()
    resolved = resolve_state(V12, states, room.events)
    assert resolved[JOIN_RULES] == eid("JR2")
    assert resolved[member(ALICE)] == eid("MA2")
