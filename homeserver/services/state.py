"""Room state for readers: the state at (after or before) an event, state events by key, and
state resolution where branches of a room's DAG meet.

Resolution runs ``federation.state_res.resolve_state`` in a database worker thread, with the
auth chain cover index (``storage.auth_chains.StorageAuthChains``) as its auth chain provider
and events loaded on demand from the same transaction. Local rooms never fork (the pipeline
builds every event on the current extremities); resolution is for events from other servers.
"""

from __future__ import annotations

from collections.abc import Container, Iterator, Mapping, Sequence

from federation.events import Event, StateKey
from federation.room_versions import RoomVersion
from federation.state_res import resolve_state
from homeserver.storage.auth_chains import StorageAuthChains
from homeserver.storage.engine import Database, Txn
from homeserver.storage.events import EventStore, StoredEvent, get_events_txn
from homeserver.storage.state import StateFilter, StateStore


class _TxnEvents(Container[str]):
    """Events loaded on demand inside one transaction; also the container of rejected IDs."""

    def __init__(self, txn: Txn, extra: Mapping[str, Event] | None = None) -> None:
        self._txn = txn
        self._events: dict[str, StoredEvent | None] = {}
        self._extra = extra or {}

    def _load(self, event_id: str) -> StoredEvent | None:
        if event_id not in self._events:
            found = get_events_txn(self._txn, [event_id])
            self._events[event_id] = found.get(event_id)
        return self._events[event_id]

    def preload(self, event_ids: Sequence[str]) -> None:
        wanted = [e for e in event_ids if e not in self._events]
        if wanted:
            found = get_events_txn(self._txn, wanted)
            for e in wanted:
                self._events[e] = found.get(e)

    def get(self, event_id: str) -> Event | None:
        if event_id in self._extra:
            return self._extra[event_id]
        stored = self._load(event_id)
        return stored.event if stored is not None else None

    def __contains__(self, event_id: object) -> bool:
        if not isinstance(event_id, str) or event_id in self._extra:
            return False
        stored = self._load(event_id)
        return stored is not None and stored.rejected is not None

    def __iter__(self) -> Iterator[str]:  # pragma: no cover - Container needs no iteration
        return iter(())


def resolve_txn(
    txn: Txn,
    room_version: RoomVersion,
    state_sets: Sequence[Mapping[StateKey, str]],
    extra: Mapping[str, Event] | None = None,
) -> tuple[dict[StateKey, str], StorageAuthChains]:
    """Resolve in a database thread. ``extra``: accepted events not persisted yet (the one
    being received), looked up before the database."""
    events = _TxnEvents(txn, extra)
    events.preload(sorted({e for s in state_sets for e in s.values()} - set(extra or ())))
    chains = StorageAuthChains(txn, events.get)
    resolved = resolve_state(
        room_version, state_sets, events.get, auth_chains=chains, rejected=events
    )
    return resolved, chains


class StateService:
    def __init__(self, db: Database, events: EventStore, state: StateStore) -> None:
        self.db = db
        self.events = events
        self.state = state

    async def state_after(
        self, event: StoredEvent, state_filter: StateFilter | None = None
    ) -> dict[StateKey, str]:
        """The room state after ``event`` (as event IDs)."""
        return await self.state.state_at_group(event.state_group, state_filter)

    async def state_before(
        self, event: StoredEvent, state_filter: StateFilter | None = None
    ) -> dict[StateKey, str]:
        """The room state the event was authorised against."""
        state = await self.state_after(event, state_filter)
        ev = event.event
        if ev.is_state() and event.rejected is None and state.get(ev.state_tuple) == ev.event_id:
            if event.replaces_state is not None:
                state[ev.state_tuple] = event.replaces_state
            else:
                del state[ev.state_tuple]
        return state

    async def state_events(self, ids: Mapping[StateKey, str]) -> dict[StateKey, StoredEvent]:
        found = await self.events.get_events(ids.values())
        return {k: found[v] for k, v in ids.items() if v in found}

    async def resolve(
        self, room_version: RoomVersion, state_sets: Sequence[Mapping[StateKey, str]]
    ) -> dict[StateKey, str]:
        """State resolution of ``state_sets`` (maps of (type, state_key) -> event ID)."""
        if len(state_sets) == 1:
            return dict(state_sets[0])
        resolved, _ = await self.db.run("resolve_state", resolve_txn, room_version, state_sets)
        return resolved
