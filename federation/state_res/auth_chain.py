"""Auth chains, the auth difference and (v2.1) the conflicted state subgraph.

State resolution reaches the auth graph only through ``AuthChainProvider``, so a caller can
back it with whatever index it keeps (the homeserver will use a chain cover index in storage).
``InMemoryAuthChains`` is the default: it memoises each event's auth chain, so an instance
kept across resolutions never walks the same part of the graph twice.

Definitions follow Synapse, which every deployed server must agree with:

- the *full auth chain* of a state set includes the state set's own events as well as their
  auth chains (the spec's wording takes only the auth chains; see
  ``test_auth_difference_counts_state_events_themselves``);
- the *conflicted state subgraph* is every event that is both reachable from a conflicted
  event by following ``auth_events`` and from which a conflicted event is reachable, plus the
  conflicted events themselves.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Sequence
from collections.abc import Set as AbstractSet
from typing import Protocol

from federation.state_res._common import EventCache, EventLookup

_EMPTY: frozenset[str] = frozenset()


class AuthChainProvider(Protocol):
    """What state resolution needs to know about the auth graph."""

    def auth_chain(self, event_id: str) -> AbstractSet[str]:
        """All events reachable from ``event_id`` through ``auth_events`` (excluding itself)."""
        ...

    def auth_chain_difference(self, state_sets: Sequence[AbstractSet[str]]) -> set[str]:
        """union(C_i) - intersection(C_i), C_i being state set i's events and their auth chains."""
        ...

    def conflicted_subgraph(self, conflicted_event_ids: AbstractSet[str]) -> set[str]:
        """The v2.1 conflicted state subgraph (including the conflicted events)."""
        ...


class InMemoryAuthChains:
    """An ``AuthChainProvider`` over an event lookup, memoising every auth chain it computes.

    Unknown events (the lookup returns None) appear in auth chains as IDs with no ancestors.
    Safe to keep for the lifetime of a room's events: events are immutable, so is their
    auth chain.
    """

    def __init__(self, events: EventLookup | EventCache) -> None:
        self._events = events if isinstance(events, EventCache) else EventCache(events)
        self._chains: dict[str, frozenset[str]] = {}

    @property
    def events(self) -> EventCache:
        return self._events

    def auth_chain(self, event_id: str) -> frozenset[str]:
        chain = self._chains.get(event_id)
        if chain is not None:
            return chain
        chains = self._chains
        auth_ids = self._events.auth_ids
        # Iterative post-order walk; ``visiting`` guards against (malformed) cycles.
        visiting: set[str] = set()
        stack: list[tuple[str, bool]] = [(event_id, False)]
        while stack:
            eid, expanded = stack.pop()
            if eid in chains:
                continue
            parents = auth_ids(eid)
            if not expanded:
                if eid in visiting:
                    continue
                visiting.add(eid)
                stack.append((eid, True))
                for p in parents:
                    if p not in chains and p not in visiting:
                        stack.append((p, False))
                continue
            if not parents:
                chains[eid] = _EMPTY
            elif len(parents) == 1:
                p = parents[0]
                chains[eid] = chains.get(p, _EMPTY).union(parents)
            else:
                acc = set(parents)
                for p in parents:
                    acc.update(chains.get(p, _EMPTY))
                chains[eid] = frozenset(acc)
        return chains[event_id]

    def _closure(self, event_ids: Iterable[str], stop: AbstractSet[str] = _EMPTY) -> set[str]:
        """The events plus their auth chains, leaving out ``stop`` and everything reached
        only through it (pass a set closed under auth chains, e.g. an earlier closure).

        Walks breadth-first but takes any memoised chain whole, so a cold call costs one visit
        per event reached and a warm one mostly C-level set unions.
        """
        chains = self._chains
        cache = self._events
        known = cache._auth_ids
        load = cache.auth_ids
        closure = {e for e in event_ids if e not in stop}
        stack = list(closure)
        pop, push = stack.pop, stack.append
        while stack:
            eid = pop()
            chain = chains.get(eid)
            if chain is not None:
                closure.update(chain - stop if stop else chain)
                continue
            parents = known.get(eid)
            if parents is None:
                parents = load(eid)
            for p in parents:
                if p not in closure and p not in stop:
                    closure.add(p)
                    push(p)
        return closure

    def auth_chain_difference(self, state_sets: Sequence[AbstractSet[str]]) -> set[str]:
        if len(state_sets) < 2:
            return set()
        sets = [s if isinstance(s, set | frozenset) else set(s) for s in state_sets]
        common = sets[0].intersection(*sets[1:])
        # Events in every state set contribute the same ancestors to every C_i: compute that
        # shared part once; each state set's own part is then walked only down to it.
        shared = self._closure(common)
        extras = [self._closure(s - common, shared) for s in sets]
        union = extras[0].union(*extras[1:])
        inter = extras[0].intersection(*extras[1:])
        return union - inter

    def conflicted_subgraph(self, conflicted_event_ids: AbstractSet[str]) -> set[str]:
        conflicted = (
            conflicted_event_ids
            if isinstance(conflicted_event_ids, set | frozenset)
            else set(conflicted_event_ids)
        )
        auth_ids = self._events.auth_ids
        # reaches[x]: a conflicted event is reachable from x through >= 1 auth edge.
        # Iterative post-order over the ancestors of the conflicted events.
        reaches: dict[str, bool] = {}
        visiting: set[str] = set()
        stack: list[tuple[str, bool]] = [(e, False) for e in conflicted]
        while stack:
            eid, expanded = stack.pop()
            if eid in reaches:
                continue
            parents = auth_ids(eid)
            if not expanded:
                if eid in visiting:
                    continue
                visiting.add(eid)
                stack.append((eid, True))
                for p in parents:
                    if p not in reaches:
                        stack.append((p, False))
                continue
            reaches[eid] = any(p in conflicted or reaches.get(p, False) for p in parents)
        result = set(conflicted)
        result.update(e for e, r in reaches.items() if r)
        return result


def reachable_within(
    events: EventCache, start: Iterable[str], allowed: Container[str]
) -> dict[str, set[str]]:
    """The auth graph restricted to ``allowed``, walked from ``start`` (each start included).

    Returns node -> its auth events inside ``allowed``. Like Synapse, the walk only passes
    through events in ``allowed``.
    """
    graph: dict[str, set[str]] = {}
    stack = list(start)
    auth_ids = events.auth_ids
    while stack:
        eid = stack.pop()
        if eid in graph:
            continue
        edges: set[str] = set()
        graph[eid] = edges
        for aid in auth_ids(eid):
            if aid in allowed:
                edges.add(aid)
                if aid not in graph:
                    stack.append(aid)
    return graph
