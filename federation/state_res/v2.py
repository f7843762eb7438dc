"""State resolution v2 (room versions 2-11) and v2.1 (room version 12).

v2.1 differs in two places, both switched on ``room_version.state_res``:

- the full conflicted set also contains the *conflicted state subgraph*;
- the first round of iterative auth checks starts from an empty state map rather than the
  unconflicted state map (state needed to authorise an event then comes from its own auth
  events).

Cost: after the split into (un)conflicted state, work is proportional to the full conflicted
set and the auth edges inside it. Each event's sender power level, power-levels parent and
mainline depth is computed once per resolution, never per comparison.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Container, Iterable, Mapping, Sequence

from federation.auth_rules import is_power_event
from federation.events import Event, StateKey
from federation.room_versions import RoomVersion, StateResAlgorithm
from federation.state_res._common import (
    POWER_KEY,
    AuthCheck,
    EventCache,
    StateMap,
    auth_types_for_event,
    flatten,
    sender_power_level,
    separate_with_values,
)
from federation.state_res.auth_chain import AuthChainProvider, reachable_within

_KeyFn = Callable[[str], tuple[int, int, str]]


def resolve_v2(
    room_version: RoomVersion,
    state_sets: Sequence[StateMap],
    events: EventCache,
    auth_chains: AuthChainProvider,
    auth_check: AuthCheck,
) -> dict[StateKey, str]:
    v2_1 = room_version.state_res is StateResAlgorithm.V2_1

    unconflicted, conflicted, value_sets = separate_with_values(state_sets)
    if not conflicted:
        return unconflicted

    conflicted_ids = flatten(conflicted.values())
    full_conflicted = auth_chains.auth_chain_difference(value_sets)
    full_conflicted |= conflicted_ids
    if v2_1:
        full_conflicted |= auth_chains.conflicted_subgraph(conflicted_ids)
    # Events we cannot find take no part (as in Synapse).
    full_conflicted = {eid for eid in full_conflicted if events.get(eid) is not None}

    power_events = [eid for eid in full_conflicted if is_power_event(events.get(eid))]  # type: ignore[arg-type]
    sorted_power = reverse_topological_power_sort(events, power_events, full_conflicted)

    base_state: Mapping[StateKey, str] = {} if v2_1 else unconflicted
    resolved = iterative_auth_checks(room_version, events, sorted_power, base_state, auth_check)

    picked = set(sorted_power)
    leftover = [eid for eid in full_conflicted if eid not in picked]
    leftover = mainline_sort(events, leftover, resolved.get(POWER_KEY))
    resolved = iterative_auth_checks(room_version, events, leftover, resolved, auth_check)

    # Unconflicted state always wins.
    resolved.update(unconflicted)
    return resolved


def reverse_topological_power_sort(
    events: EventCache, power_event_ids: Iterable[str], full_conflicted: Container[str]
) -> list[str]:
    """Power events and their auth ancestors within the full conflicted set, earliest first.

    Kahn's algorithm over the auth DAG restricted to the full conflicted set, taking at each
    step the smallest ready event by (higher sender power level, earlier origin_server_ts,
    smaller event_id).
    """
    graph = reachable_within(events, power_event_ids, full_conflicted)

    def key(eid: str) -> tuple[int, int, str]:
        ev = events.get(eid)
        ts = ev.origin_server_ts if ev is not None else 0
        return (-sender_power_level(events, eid), ts, eid)

    return lexicographical_topological_sort(graph, key)


def lexicographical_topological_sort(graph: Mapping[str, Iterable[str]], key: _KeyFn) -> list[str]:
    """Order ``graph`` (node -> the nodes it points at) so every node comes after the nodes
    it points at, choosing the smallest ``key`` among the ready nodes at each step.

    ``key`` is called once per node. Nodes in a cycle (malformed input) are left out.
    """
    outdegree: dict[str, int] = {}
    reverse: dict[str, list[str]] = {node: [] for node in graph}
    for node, edges in graph.items():
        n = 0
        for e in edges:
            if e in reverse:
                reverse[e].append(node)
                n += 1
        outdegree[node] = n
    ready = [(key(node), node) for node, n in outdegree.items() if n == 0]
    heapq.heapify(ready)
    out: list[str] = []
    push, pop = heapq.heappush, heapq.heappop
    while ready:
        _, node = pop(ready)
        out.append(node)
        for parent in reverse[node]:
            n = outdegree[parent] - 1
            outdegree[parent] = n
            if n == 0:
                push(ready, (key(parent), parent))
    return out


def iterative_auth_checks(
    room_version: RoomVersion,
    events: EventCache,
    event_ids: Sequence[str],
    base_state: Mapping[StateKey, str],
    auth_check: AuthCheck,
) -> dict[StateKey, str]:
    """Apply each event in turn to the state if the auth rules allow it.

    The auth events for an event are its own (non-rejected) auth events, overridden by the
    partially resolved state for each (type, state_key) the auth rules may consult. From
    v12 the create event is an implicit auth event, so it is always present.

    As in Synapse, events already marked rejected are skipped (never admitted), and rejected
    events are never used as auth events; see ``test_rejected_events_are_not_readmitted``.
    """
    resolved = dict(base_state)
    get, key_of, is_rejected = events.get, events.state_key_of, events.is_rejected
    for eid in event_ids:
        event = get(eid)
        if event is None or event.state_key is None:
            continue
        auth_events: dict[StateKey, Event] = {}
        for aid in events.auth_ids(eid):
            akey = key_of(aid)
            if akey is not None and not is_rejected(aid):
                auth_events[akey] = get(aid)  # type: ignore[assignment]
        for key in auth_types_for_event(room_version, event):
            sid = resolved.get(key)
            if sid is None:
                continue
            sev = get(sid)
            if sev is not None and not is_rejected(sid):
                auth_events[key] = sev
        if is_rejected(eid):
            continue
        if auth_check(event, auth_events):
            resolved[(event.type, event.state_key)] = eid
    return resolved


def mainline_sort(events: EventCache, event_ids: list[str], resolved_pl: str | None) -> list[str]:
    """Order events by mainline position relative to ``resolved_pl``, then ts, then ID.

    Positions are numbered as Synapse does: the oldest mainline event is 1, the resolved
    power levels event is the largest, and an event whose power-levels ancestry never meets
    the mainline is 0 (the spec's "∞", which sorts first). Every power levels event visited
    remembers its position, so each ancestry is walked at most once per resolution.
    """
    if not event_ids:
        return []
    mainline: list[str] = []
    pl = resolved_pl
    seen: set[str] = set()
    while pl is not None and pl not in seen:
        seen.add(pl)
        mainline.append(pl)
        pl = events.power_levels_parent(pl)
    depth_of: dict[str, int] = {eid: i for i, eid in enumerate(reversed(mainline), start=1)}

    def depth(eid: str) -> int:
        d = depth_of.get(eid)
        if d is not None:
            return d
        path: list[str] = []
        cur: str | None = eid
        found = 0
        while cur is not None:
            d = depth_of.get(cur)
            if d is not None:
                found = d
                break
            if cur in path:  # malformed cycle
                break
            path.append(cur)
            cur = events.power_levels_parent(cur)
        for p in path:
            depth_of[p] = found
        return found

    keyed = []
    for eid in event_ids:
        ev = events.get(eid)
        ts = ev.origin_server_ts if ev is not None else 0
        keyed.append((depth(eid), ts, eid))
    keyed.sort()
    return [k[2] for k in keyed]
