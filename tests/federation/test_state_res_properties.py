"""Properties of state resolution on generated forked rooms: independence from input order,
and the auth chain provider against brute-force definitions."""

from __future__ import annotations

import random
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.events import Event, StateKey
from federation.room_versions import get_room_version
from federation.state_res import InMemoryAuthChains, resolve_state, separate
from federation.state_res._common import auth_ids_of
from tests.federation.dagfactory import forked_room

VERSIONS = ["1", "2", "10", "12"]


def shuffled(mapping: Mapping, rng: random.Random) -> dict:
    items = list(mapping.items())
    rng.shuffle(items)
    return dict(items)


@settings(max_examples=40, deadline=None)
@given(
    version=st.sampled_from(VERSIONS),
    seed=st.integers(0, 10_000),
    branches=st.integers(2, 4),
    shuffle_seed=st.integers(0, 2**32),
)
def test_result_independent_of_input_order(
    version: str, seed: int, branches: int, shuffle_seed: int
) -> None:
    rv = get_room_version(version)
    events, tips = forked_room(rv, seed, branches=branches)
    baseline = resolve_state(rv, tips, events)

    rng = random.Random(shuffle_seed)
    permuted = [shuffled(t, rng) for t in tips]
    rng.shuffle(permuted)
    event_list = list(events.items())
    rng.shuffle(event_list)
    as_callable = dict(event_list).get  # a lookup function rather than a Mapping

    assert resolve_state(rv, permuted, as_callable) == baseline
    # Unconflicted state survives; the create event is always there.
    unconflicted, _ = separate(tips)
    assert unconflicted.items() <= baseline.items()
    assert ("m.room.create", "") in baseline


@settings(max_examples=25, deadline=None)
@given(version=st.sampled_from(VERSIONS), seed=st.integers(0, 10_000))
def test_duplicate_state_sets_change_nothing(version: str, seed: int) -> None:
    rv = get_room_version(version)
    events, tips = forked_room(rv, seed, branches=2)
    resolved = resolve_state(rv, tips, events)
    assert resolve_state(rv, [*tips, dict(tips[0])], events) == resolved
    assert resolve_state(rv, [tips[1], tips[0], tips[1]], events) == resolved


def naive_chain(events: Mapping[str, Event], event_id: str) -> set[str]:
    seen: set[str] = set()
    stack = list(auth_ids_of(events[event_id])) if event_id in events else []
    while stack:
        e = stack.pop()
        if e in seen:
            continue
        seen.add(e)
        if e in events:
            stack.extend(auth_ids_of(events[e]))
    return seen


def naive_auth_difference(
    events: Mapping[str, Event], state_sets: list[Mapping[StateKey, str]]
) -> set[str]:
    chains = []
    for s in state_sets:
        c = set(s.values())
        for e in s.values():
            c |= naive_chain(events, e)
        chains.append(c)
    return set.union(*chains) - set.intersection(*chains)


@settings(max_examples=30, deadline=None)
@given(version=st.sampled_from(["2", "12"]), seed=st.integers(0, 10_000), n=st.integers(2, 4))
def test_auth_difference_matches_definition(version: str, seed: int, n: int) -> None:
    rv = get_room_version(version)
    events, tips = forked_room(rv, seed, branches=n)
    chains = InMemoryAuthChains(events)
    got = chains.auth_chain_difference([set(t.values()) for t in tips])
    assert got == naive_auth_difference(events, tips)
    for eid in list(events)[:10]:
        assert chains.auth_chain(eid) == naive_chain(events, eid)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 4))
def test_conflicted_subgraph_matches_definition(seed: int, n: int) -> None:
    rv = get_room_version("12")
    events, tips = forked_room(rv, seed, branches=n)
    _, conflicted = separate(tips)
    conflicted_ids = set().union(*conflicted.values()) if conflicted else set()
    chains = {e: naive_chain(events, e) for e in events}
    want = set(conflicted_ids)
    for x in events:
        below = chains[x] & conflicted_ids  # x reaches a conflicted event
        above = any(x in chains[c] for c in conflicted_ids)  # a conflicted event reaches x
        if below and above:
            want.add(x)
    assert InMemoryAuthChains(events).conflicted_subgraph(conflicted_ids) == want


@pytest.mark.parametrize("version", ["2", "12"])
def test_larger_room_resolves_consistently_with_fresh_and_shared_caches(version: str) -> None:
    rv = get_room_version(version)
    events, tips = forked_room(rv, 7, members=200, branches=4, steps=30)
    chains = InMemoryAuthChains(events)
    first = resolve_state(rv, tips, events, auth_chains=chains)
    # A warm provider, and a different pairing order, give the same answer.
    assert resolve_state(rv, tips[::-1], events, auth_chains=chains) == first
    assert resolve_state(rv, tips, events) == first
    assert len(first) >= 200
