"""State resolution: the state of a room where branches of its DAG meet.

``resolve_state`` picks the algorithm from the room version (v1 for room version 1, v2 for
2-11, v2.1 for 12). It is pure and synchronous; its inputs are designed so the caller's
caches carry over between calls:

- ``state_sets``: the states to resolve, each a map (event type, state_key) -> event ID;
- ``events``: ``get_event(event_id) -> Event | None``, a ``Mapping`` of events, or an
  ``EventCache`` kept by the caller (it memoises lookups and auth event IDs);
- ``auth_chains``: an ``AuthChainProvider`` (auth chains, auth difference, v2.1 conflicted
  subgraph). Defaults to an ``InMemoryAuthChains`` over ``events`` for this call; keep one
  per room to reuse its memoised chains, or back it with a storage index;
- ``rejected``: IDs of events that were rejected (never admitted, never used as auth events);
- ``auth_check``: ``(event, auth_events) -> bool``; defaults to
  ``federation.auth_rules.check_auth``.

Events the lookup cannot find are left out of resolution, as Synapse does.
"""

from __future__ import annotations

from collections.abc import Container, Sequence

from federation.auth_rules import is_power_event
from federation.events import StateKey
from federation.room_versions import RoomVersion, StateResAlgorithm
from federation.state_res._common import (
    AuthCheck,
    EventCache,
    EventLookup,
    StateMap,
    auth_types_for_event,
    default_auth_check,
    sender_power_level,
    separate,
)
from federation.state_res.auth_chain import AuthChainProvider, InMemoryAuthChains
from federation.state_res.v1 import resolve_v1
from federation.state_res.v2 import resolve_v2

__all__ = [
    "AuthChainProvider",
    "AuthCheck",
    "EventCache",
    "EventLookup",
    "InMemoryAuthChains",
    "StateMap",
    "auth_types_for_event",
    "is_power_event",
    "resolve_state",
    "sender_power_level",
    "separate",
]


def resolve_state(
    room_version: RoomVersion,
    state_sets: Sequence[StateMap],
    events: EventLookup | EventCache,
    *,
    auth_chains: AuthChainProvider | None = None,
    rejected: Container[str] | None = None,
    auth_check: AuthCheck | None = None,
) -> dict[StateKey, str]:
    """Resolve ``state_sets`` into one state map for a room of ``room_version``."""
    if not state_sets:
        return {}
    if isinstance(events, EventCache) and rejected is None:
        cache = events
    else:
        cache = EventCache(events._lookup if isinstance(events, EventCache) else events, rejected)
    check = auth_check if auth_check is not None else default_auth_check()
    if room_version.state_res is StateResAlgorithm.V1:
        return resolve_v1(room_version, state_sets, cache, check)
    if auth_chains is None:
        auth_chains = InMemoryAuthChains(cache)
    return resolve_v2(room_version, state_sets, cache, auth_chains, check)
