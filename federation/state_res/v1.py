"""State resolution v1 (room version 1), as the spec describes and Synapse implements it.

Resolves conflicts type by type: power levels, then join rules, then memberships, each by
walking the candidates from the lowest depth (ties: highest sha1 of the event ID) and
keeping the last one the auth rules accept in a row; every other conflicted key takes the
deepest (ties: lowest sha1) event that passes auth. Auth is checked against the
unconflicted state plus what has been resolved so far.

Where the spec is silent, Synapse's choices are followed (each named in a test):

- a key that only some state sets have is not a conflict; it keeps its single value
  (``test_v1_key_missing_from_a_state_set_is_not_conflicted``);
- if no candidate for an ordinary key passes auth, the lowest-depth one is kept
  (``test_v1_normal_conflict_where_none_pass_keeps_lowest_depth``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

from federation.events import Event, StateKey
from federation.room_versions import RoomVersion
from federation.state_res._common import (
    POWER_KEY,
    AuthCheck,
    EventCache,
    StateMap,
    auth_types_for_event,
)


def separate_v1(
    state_sets: Sequence[StateMap],
) -> tuple[dict[StateKey, str], dict[StateKey, set[str]]]:
    """Unconflicted and conflicted state, v1 style: only differing values conflict."""
    values: dict[StateKey, set[str]] = {}
    for s in state_sets:
        for key, eid in s.items():
            ids = values.get(key)
            if ids is None:
                values[key] = {eid}
            else:
                ids.add(eid)
    unconflicted: dict[StateKey, str] = {}
    conflicted: dict[StateKey, set[str]] = {}
    for key, ids in values.items():
        if len(ids) == 1:
            unconflicted[key] = next(iter(ids))
        else:
            conflicted[key] = ids
    return unconflicted, conflicted


def resolve_v1(
    room_version: RoomVersion,
    state_sets: Sequence[StateMap],
    events: EventCache,
    auth_check: AuthCheck,
) -> dict[StateKey, str]:
    if len(state_sets) == 1:
        return dict(state_sets[0])
    unconflicted, conflicted_ids = separate_v1(state_sets)

    conflicted: dict[StateKey, list[Event]] = {}
    for key, ids in conflicted_ids.items():
        found = [ev for eid in ids if (ev := events.get(eid)) is not None]
        if len(found) > 1:
            conflicted[key] = found
        elif len(found) == 1:
            unconflicted[key] = found[0].event_id

    # Auth events come from the unconflicted state, for the keys the conflicted events need.
    auth_events: dict[StateKey, Event] = {}
    for evs in conflicted.values():
        for ev in evs:
            for key in auth_types_for_event(room_version, ev):
                if key not in auth_events and key in unconflicted:
                    aev = events.get(unconflicted[key])
                    if aev is not None:
                        auth_events[key] = aev

    resolved: dict[StateKey, Event] = {}
    if POWER_KEY in conflicted:
        resolved[POWER_KEY] = _resolve_auth_events(
            room_version, conflicted[POWER_KEY], auth_events, auth_check
        )
    auth_events.update(resolved)
    for key, evs in conflicted.items():
        if key[0] == "m.room.join_rules":
            resolved[key] = _resolve_auth_events(room_version, evs, auth_events, auth_check)
    auth_events.update(resolved)
    for key, evs in conflicted.items():
        if key[0] == "m.room.member":
            resolved[key] = _resolve_auth_events(room_version, evs, auth_events, auth_check)
    auth_events.update(resolved)
    for key, evs in conflicted.items():
        if key not in resolved:
            resolved[key] = _resolve_normal_events(evs, auth_events, auth_check)

    out = dict(unconflicted)
    for key, ev in resolved.items():
        out[key] = ev.event_id
    return out


def _ordered(events: Iterable[Event]) -> list[Event]:
    """Highest depth first; ties by lowest sha1(event_id)."""

    def key(e: Event) -> tuple[int, str]:
        return -int(e.depth), hashlib.sha1(e.event_id.encode("utf-8")).hexdigest()

    return sorted(events, key=key)


def _resolve_auth_events(
    room_version: RoomVersion,
    events: list[Event],
    auth_events: Mapping[StateKey, Event],
    auth_check: AuthCheck,
) -> Event:
    ascending = list(reversed(_ordered(events)))
    keys: set[StateKey] = set()
    for ev in events:
        keys |= auth_types_for_event(room_version, ev)
    current = {k: auth_events[k] for k in keys if k in auth_events}

    prev = ascending[0]
    for ev in ascending[1:]:
        current[(prev.type, prev.state_key)] = prev  # type: ignore[index]
        if not auth_check(ev, current):
            return prev
        prev = ev
    return prev


def _resolve_normal_events(
    events: list[Event], auth_events: Mapping[StateKey, Event], auth_check: AuthCheck
) -> Event:
    ordered = _ordered(events)
    for ev in ordered:
        if auth_check(ev, auth_events):
            return ev
    return ordered[-1]
