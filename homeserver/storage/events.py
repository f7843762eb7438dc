"""Events: persisting a room's events (JSON, DAG edges, extremities, stream and topological
order, rejection, state after each event, redactions, client transaction IDs), reading them
back, and paging through a room's history.

``persist_txn`` writes a batch of one room's events (in order) in the caller's transaction. It
takes the 'events' stream position as late as possible: the position's row lock keeps
positions committing in order (see ``streams``), and holding it only for the last few
statements lets different rooms persist in parallel on PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer

from federation.events import Event, JsonDict, StateKey
from federation.room_versions import RoomVersion, get_room_version
from homeserver.storage.auth_chains import ChainEvent, index_events_txn
from homeserver.storage.cache import LruCache
from homeserver.storage.engine import Database, Txn
from homeserver.storage.relations import index_relations_txn
from homeserver.storage.search import index_search_txn
from homeserver.storage.sql import chunks, marks
from homeserver.storage.state import (
    CurrentStateChange,
    KeyNids,
    create_group_txn,
    update_current_state_txn,
)

EVENTS_STREAM = "events"
BACKFILL_STREAM = "backfill"

def encode_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class DuplicateTransaction(Exception):
    """The client's transaction ID was used before; ``event_id`` is what it created."""

    def __init__(self, event_id: str) -> None:
        super().__init__(event_id)
        self.event_id = event_id


@dataclass(frozen=True)
class StoredEvent:
    """A persisted event as readers see it (``event`` is the redacted form once redacted)."""

    event: Event
    event_nid: int
    room_id: str
    stream_ordering: int
    state_group: int
    rejected: str | None
    replaces_state: str | None
    redacted_by: str | None
    txn_device: str | None
    txn_id: str | None
    soft_failed: bool = False

    @property
    def event_id(self) -> str:
        return self.event.event_id

    @property
    def depth(self) -> int:
        return self.event.depth

    @property
    def topological_token(self) -> str:
        return f"t{self.event.depth}-{self.stream_ordering}"


@dataclass(frozen=True)
class RoomRow:
    room_id: str
    room_version: RoomVersion
    creator: str
    is_public: bool
    created_ts: int
    extremities: list[str]
    state_group: int
    state_chain_len: int
    max_depth: int


@dataclass
class PersistItem:
    """One event to persist, with what the pipeline decided about it."""

    event: Event
    rejected: str | None = None
    soft_failed: bool = False
    # The state event this one replaces in the room state (None: a new key, or not state).
    replaces: str | None = None
    # (device_id, txn_id) of the client request that sent it.
    txn: tuple[str, str] | None = None
    # For a redaction applied now: the redacted event's ID and its redacted JSON.
    redacts: str | None = None
    redacted_json: JsonDict | None = None
    # Auth events as (event ID, (type, state_key)), for the chain index of state events.
    auth: Sequence[tuple[str, StateKey]] = ()

    @property
    def changes_state(self) -> bool:
        return self.event.is_state() and self.rejected is None


@dataclass(frozen=True)
class NewRoom:
    room_id: str
    room_version: str
    creator: str
    is_public: bool
    created_ts: int
    # Aliases to point at the room, atomically with its creation.
    aliases: tuple[str, ...] = ()


class AliasInUse(Exception):
    def __init__(self, alias: str) -> None:
        super().__init__(alias)
        self.alias = alias


@dataclass(frozen=True)
class StatePlan:
    """A state to store: ``base`` (a group, None for empty) with ``delta`` applied
    ((type, state_key) -> event ID; None removes). No delta reuses ``base``."""

    base: int | None
    base_chain_len: int
    delta: Mapping[StateKey, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class HeadPlan:
    """For events whose state is not a straight line (from other servers): the state before
    the first event, and the room's state after the batch (default: after the last event)
    with the matching ``current_state`` changes."""

    before: StatePlan | None = None
    current: StatePlan | None = None
    current_changes: Sequence[CurrentStateChange] | None = None


@dataclass(frozen=True)
class PersistedEvent:
    event_nid: int
    stream_ordering: int
    state_group: int


@dataclass
class PersistResult:
    events: list[PersistedEvent]
    state_group: int
    state_chain_len: int
    current_state_changes: list[CurrentStateChange] = field(default_factory=list)


_EVENT_COLUMNS = (
    "n.event_id, e.event_nid, e.room_id, e.stream_ordering, e.json, e.rejected,"
    " e.state_group, rn.event_id, dn.event_id, e.txn_device, e.txn_id, r.room_version,"
    " e.soft_failed"
)
_EVENT_FROM = (
    " FROM events e JOIN event_nids n ON n.event_nid = e.event_nid"
    " JOIN rooms r ON r.room_id = e.room_id"
    " LEFT JOIN event_nids rn ON rn.event_nid = e.replaces"
    " LEFT JOIN event_nids dn ON dn.event_nid = e.redacted_by"
)


def _row_to_event(row: Sequence[Any]) -> StoredEvent:
    (event_id, nid, room_id, stream, raw, rejected, group, replaces, redacted_by, device,
     txn_id, version, soft_failed) = row
    rv = get_room_version(version)
    return StoredEvent(
        event=Event(json.loads(raw), rv, event_id),
        event_nid=int(nid),
        room_id=room_id,
        stream_ordering=int(stream),
        state_group=int(group),
        rejected=rejected,
        replaces_state=replaces,
        redacted_by=redacted_by,
        txn_device=device,
        txn_id=txn_id,
        soft_failed=bool(soft_failed),
    )


def get_events_txn(txn: Txn, event_ids: Sequence[str]) -> dict[str, StoredEvent]:
    out: dict[str, StoredEvent] = {}
    for chunk in chunks(event_ids):
        rows = txn.execute(
            f"SELECT {_EVENT_COLUMNS}{_EVENT_FROM}"
            f" WHERE n.event_id IN ({marks(len(chunk))})",
            chunk,
        ).fetchall()
        for row in rows:
            ev = _row_to_event(row)
            out[ev.event_id] = ev
    return out


def load_event_txn(txn: Txn, event_id: str) -> Event | None:
    found = get_events_txn(txn, [event_id])
    ev = found.get(event_id)
    return ev.event if ev is not None else None


def get_room_txn(txn: Txn, room_id: str) -> RoomRow | None:
    row = txn.execute(
        "SELECT room_id, room_version, creator, is_public, created_ts, extremities,"
        " state_group, state_chain_len, max_depth FROM rooms WHERE room_id = ?",
        (room_id,),
    ).fetchone()
    if row is None:
        return None
    return RoomRow(
        room_id=row[0],
        room_version=get_room_version(row[1]),
        creator=row[2],
        is_public=bool(row[3]),
        created_ts=int(row[4]),
        extremities=json.loads(row[5]),
        state_group=int(row[6]),
        state_chain_len=int(row[7]),
        max_depth=int(row[8]),
    )


def _intern_event_ids_txn(
    txn: Txn, new_ids: Sequence[str], referenced: Iterable[str], known: Mapping[str, int]
) -> tuple[dict[str, int], set[str]]:
    """nids for the new events and every referenced ID (interning unknown ones); also returns
    the new IDs that were interned before (referenced earlier, or maybe already persisted)."""
    new = set(new_ids)
    nids: dict[str, int] = {e: known[e] for e in referenced if e in known and e not in new}
    lookup = [e for e in set(referenced) if e not in nids and e not in new]
    for chunk in chunks(lookup):
        rows = txn.execute(
            f"SELECT event_id, event_nid FROM event_nids WHERE event_id IN"
            f" ({marks(len(chunk))})",
            chunk,
        ).fetchall()
        nids.update({r[0]: int(r[1]) for r in rows})
    to_insert = [*dict.fromkeys(new_ids), *[e for e in lookup if e not in nids]]
    for chunk in chunks(to_insert):
        rows = txn.execute(
            f"INSERT INTO event_nids (event_id) VALUES {','.join(['(?)'] * len(chunk))}"
            " ON CONFLICT (event_id) DO NOTHING RETURNING event_id, event_nid",
            chunk,
        ).fetchall()
        nids.update({r[0]: int(r[1]) for r in rows})
    preexisting = {e for e in to_insert if e not in nids}
    if preexisting:
        rows = txn.execute(
            f"SELECT event_id, event_nid FROM event_nids WHERE event_id IN"
            f" ({','.join('?' * len(preexisting))})",
            list(preexisting),
        ).fetchall()
        nids.update({r[0]: int(r[1]) for r in rows})
    return nids, preexisting & new


@dataclass
class PersistRequest:
    """One room's batch for ``persist_txn`` / ``persist_many_txn``."""

    room_id: str
    start_group: int | None
    start_chain_len: int
    items: Sequence[PersistItem]
    extremities: Sequence[str]
    max_depth: int
    new_room: NewRoom | None
    known_nids: Mapping[str, int]
    key_nids: KeyNids
    now: int
    plan: HeadPlan | None = None
    # History fetched from other servers (backfill): positions on the 'backfill' stream,
    # stored negated, so the events sort before everything and never show up in /sync.
    backfilled: bool = False


@dataclass
class _Staged:
    request: PersistRequest
    nids: dict[str, int]
    groups: list[int]
    encoded: list[str]
    result: PersistResult


def persist_txn(
    txn: Txn,
    room_id: str,
    start_group: int | None,
    start_chain_len: int,
    items: Sequence[PersistItem],
    extremities: Sequence[str],
    max_depth: int,
    new_room: NewRoom | None,
    known_nids: Mapping[str, int],
    key_nids: KeyNids,
    now: int,
    plan: HeadPlan | None = None,
) -> PersistResult:
    """Persist one room's events, in order; each event's state before it is the state after
    the previous one (the first: ``start_group``, or ``plan.before``). Returns positions and
    the new head."""
    request = PersistRequest(room_id, start_group, start_chain_len, items, extremities,
                             max_depth, new_room, known_nids, key_nids, now, plan)
    return persist_many_txn(txn, [request])[0]


def persist_many_txn(txn: Txn, requests: Sequence[PersistRequest]) -> list[PersistResult]:
    """Persist the batches of several rooms in one transaction (group commit): everything
    room by room, then one 'events' stream advance for all of them, then the event rows."""
    staged = [_stage_txn(txn, r) for r in requests]
    indexed = [(st.request, st.nids) for st in staged]
    index_relations_txn(txn, indexed)
    index_search_txn(txn, indexed)
    total = sum(len(st.request.items) for st in staged if not st.request.backfilled)
    position = 0
    if total:
        # From here on the 'events' stream row is locked until commit: keep it short (and
        # a backfill-only batch does not take it at all, so live sends never wait on one).
        row = txn.execute(
            "UPDATE stream_positions SET position = position + ? WHERE stream = ?"
            " RETURNING position",
            (total, EVENTS_STREAM),
        ).fetchone()
        assert row is not None
        position = int(row[0]) - total + 1
    back_total = sum(len(st.request.items) for st in staged if st.request.backfilled)
    back_position = 0
    if back_total:
        row = txn.execute(
            "UPDATE stream_positions SET position = position + ? WHERE stream = ?"
            " RETURNING position",
            (back_total, BACKFILL_STREAM),
        ).fetchone()
        assert row is not None
        back_position = -int(row[0])
    plain_rows: list[tuple[Any, ...]] = []
    for st in staged:
        req = st.request
        for i, it in enumerate(req.items):
            ev = it.event
            nid = st.nids[ev.event_id]
            if req.backfilled:
                ordering = back_position
                back_position += 1
            else:
                ordering = position
                position += 1
            st.result.events.append(PersistedEvent(nid, ordering, st.groups[i]))
            values = (
                nid, req.room_id, ev.type, ev.state_key, ev.sender,
                ev.membership if ev.type == "m.room.member" and ev.is_state() else None,
                ev.depth, ordering, ev.origin_server_ts, req.now, st.encoded[i],
                it.rejected, st.groups[i], st.nids[it.replaces] if it.replaces else None,
                it.txn[0] if it.txn else None, it.txn[1] if it.txn else None, it.soft_failed,
            )
            if it.txn is None:
                plain_rows.append(values)
                continue
            txn.execute(_INSERT_EVENT + _ON_TXN_CONFLICT, values)
            if txn.rowcount == 0:
                existing = txn.execute(
                    "SELECT n.event_id FROM events e JOIN event_nids n"
                    " ON n.event_nid = e.event_nid"
                    " WHERE e.sender = ? AND e.txn_device = ? AND e.txn_id = ?",
                    (ev.sender, it.txn[0], it.txn[1]),
                ).fetchone()
                assert existing is not None
                raise DuplicateTransaction(existing[0])
    if plain_rows:
        txn.executemany(_INSERT_EVENT, plain_rows)
    return [st.result for st in staged]


def _stage_txn(txn: Txn, req: PersistRequest) -> _Staged:
    """Everything of one room's batch but its event rows and stream positions."""
    room_id, items, plan, key_nids, now = req.room_id, req.items, req.plan, req.key_nids, req.now
    start_group, start_chain_len = req.start_group, req.start_chain_len
    extremities, max_depth, new_room = req.extremities, req.max_depth, req.new_room
    known_nids = req.known_nids
    new_ids = [it.event.event_id for it in items]
    referenced: set[str] = set()
    for state_plan in (plan.before, plan.current) if plan is not None else ():
        if state_plan is not None:
            referenced.update(e for e in state_plan.delta.values() if e is not None)
    for it in items:
        referenced.update(it.event.prev_event_ids)
        referenced.update(a for a, _ in it.auth)
        if it.replaces:
            referenced.add(it.replaces)
        if it.redacts:
            referenced.add(it.redacts)
    nids, preexisting = _intern_event_ids_txn(txn, new_ids, referenced | set(new_ids), known_nids)
    if preexisting:
        rows = txn.execute(
            f"SELECT event_nid FROM events WHERE event_nid IN ({','.join('?' * len(preexisting))})",
            [nids[e] for e in preexisting],
        ).fetchall()
        if rows:
            raise ValueError(f"events already persisted: {sorted(preexisting)}")

    txn.executemany(
        "INSERT INTO event_edges (event_nid, prev_nid) VALUES (?, ?)",
        [
            (nids[it.event.event_id], nids[p])
            for it in items
            for p in dict.fromkeys(it.event.prev_event_ids)
        ],
    )

    # State after each event: a new group for each accepted state event.
    keys = key_nids.intern_txn(txn, [it.event.state_tuple for it in items if it.changes_state])
    group, chain_len = start_group, start_chain_len
    if plan is not None and plan.before is not None:
        group, chain_len = _store_plan_txn(txn, room_id, plan.before, nids, key_nids)
    groups: list[int] = []
    changes: dict[StateKey, CurrentStateChange] = {}
    for it in items:
        ev = it.event
        if it.changes_state:
            group, chain_len = create_group_txn(
                txn, room_id, group, chain_len, {keys[ev.state_tuple]: nids[ev.event_id]}
            )
            changes[ev.state_tuple] = CurrentStateChange(
                ev.type, ev.state_key or "", ev.event_id,
                ev.membership if ev.type == "m.room.member" else None,
            )
        if group is None:
            raise ValueError("the first event of a room must be a state event")
        groups.append(group)
    assert group is not None

    index_events_txn(
        txn,
        [
            ChainEvent(nids[it.event.event_id], it.event.state_tuple,
                       [(nids[a], k) for a, k in it.auth])
            for it in items
            if it.event.is_state()
        ],
    )

    # The room's side (head, current state, redactions): no contention between rooms.
    for it in items:
        if it.redacts is None or it.rejected is not None:
            continue
        redaction_nid = nids[it.event.event_id]
        target_nid = nids[it.redacts]
        txn.execute(
            "INSERT INTO event_redactions (redacts, redaction_nid) VALUES (?, ?)",
            (it.redacts, redaction_nid),
        )
        if it.redacted_json is not None:
            apply_redaction_txn(txn, target_nid, redaction_nid, it.redacted_json, now)

    if plan is not None and plan.current is not None:
        group, chain_len = _store_plan_txn(txn, room_id, plan.current, nids, key_nids)
    if new_room is not None:
        txn.execute(
            "INSERT INTO rooms (room_id, room_version, creator, is_public, created_ts,"
            " extremities, state_group, state_chain_len, max_depth)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (room_id, new_room.room_version, new_room.creator, new_room.is_public,
             new_room.created_ts, encode_json(list(extremities)), group, chain_len, max_depth),
        )
        for alias in new_room.aliases:
            txn.execute(
                "INSERT INTO room_aliases (room_alias, room_id, creator, created_ts)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (room_alias) DO NOTHING",
                (alias, room_id, new_room.creator, now),
            )
            if txn.rowcount == 0:
                raise AliasInUse(alias)
    else:
        txn.execute(
            "UPDATE rooms SET extremities = ?, state_group = ?, state_chain_len = ?,"
            " max_depth = ? WHERE room_id = ?",
            (encode_json(list(extremities)), group, chain_len, max_depth, room_id),
        )
    change_list = list(changes.values())
    if plan is not None and plan.current_changes is not None:
        change_list = list(plan.current_changes)
    update_current_state_txn(txn, room_id, change_list)

    encoded = [encode_json(it.event.pdu_json()) for it in items]
    return _Staged(req, nids, groups, encoded, PersistResult([], group, chain_len, change_list))


def _store_plan_txn(
    txn: Txn, room_id: str, plan: StatePlan, nids: Mapping[str, int], key_nids: KeyNids
) -> tuple[int, int]:
    if not plan.delta:
        if plan.base is None:
            raise ValueError("an empty state")
        return plan.base, plan.base_chain_len
    keys = key_nids.intern_txn(txn, plan.delta)
    delta = {keys[k]: (nids[e] if e is not None else None) for k, e in plan.delta.items()}
    return create_group_txn(txn, room_id, plan.base, plan.base_chain_len, delta)


_INSERT_EVENT = (
    "INSERT INTO events (event_nid, room_id, type, state_key, sender, membership, depth,"
    " stream_ordering, origin_server_ts, received_ts, json, rejected, state_group, replaces,"
    " txn_device, txn_id, soft_failed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_ON_TXN_CONFLICT = (
    " ON CONFLICT (sender, txn_device, txn_id) WHERE txn_id IS NOT NULL DO NOTHING"
)


def apply_redaction_txn(
    txn: Txn, target_nid: int, redaction_nid: int, redacted_json: JsonDict, now: int
) -> None:
    """Serve the redacted form from now on; keep the original for operators only."""
    row = txn.execute(
        "SELECT json, redacted_by FROM events WHERE event_nid = ?", (target_nid,)
    ).fetchone()
    if row is None:
        return
    if row[1] is None:
        txn.execute(
            "INSERT INTO redacted_originals (event_nid, json, redacted_ts) VALUES (?, ?, ?)",
            (target_nid, row[0], now),
        )
        txn.execute(
            "UPDATE events SET json = ?, redacted_by = ? WHERE event_nid = ?",
            (encode_json(redacted_json), redaction_nid, target_nid),
        )


# -- pagination --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Position:
    """A point between events of a room: after every event at or below (depth, stream) in
    topological order ('t' tokens), or after every event at or below a stream position
    ('s' tokens, depth None)."""

    depth: int | None
    stream: int

    def token(self) -> str:
        if self.depth is None:
            return f"s{self.stream}"
        return f"t{self.depth}-{self.stream}"

    @staticmethod
    def parse(token: str) -> Position:
        try:
            if token.startswith("s"):
                # A /sync next_batch ('s<events>_<other streams>...') counts as its events
                # position.
                return Position(None, int(token[1:].split("_", 1)[0]))
            if token.startswith("t"):
                depth, stream = token[1:].split("-", 1)
                return Position(int(depth), int(stream))
        except ValueError:
            pass
        raise ValueError(f"invalid pagination token {token!r}")


def paginate_txn(
    txn: Txn, room_id: str, start: Position | None, end: Position | None, backwards: bool,
    limit: int,
) -> list[StoredEvent]:
    """Up to ``limit`` accepted events after ``start`` in the direction of travel (not past
    ``end``), in that order."""
    clauses = ["e.room_id = ?", "e.rejected IS NULL", "NOT e.soft_failed"]
    params: list[Any] = [room_id]
    for pos, is_start in ((start, True), (end, False)):
        if pos is None:
            continue
        # Going back, events before the start point and after the end point.
        before = backwards == is_start
        if pos.depth is None:
            if before and backwards:
                # Walk the topological index back from the end, skipping what came after
                # the stream position (the unary + keeps SQLite from picking the stream
                # index and sorting the whole room instead).
                clauses.append("+e.stream_ordering <= ?")
            else:
                clauses.append("e.stream_ordering <= ?" if before else "e.stream_ordering > ?")
            params.append(pos.stream)
        else:
            clauses.append(
                "(e.depth, e.stream_ordering) <= (?, ?)"
                if before
                else "(e.depth, e.stream_ordering) > (?, ?)"
            )
            params.extend((pos.depth, pos.stream))
    order = "DESC" if backwards else "ASC"
    if txn.engine == "postgres":
        # Walk the topological index even before statistics exist (a fresh table looks
        # tiny to the planner, which would then sort the whole room).
        txn.execute("SET LOCAL enable_sort = off")
    rows = txn.execute(
        f"SELECT {_EVENT_COLUMNS}{_EVENT_FROM} WHERE {' AND '.join(clauses)}"
        f" ORDER BY e.depth {order}, e.stream_ordering {order} LIMIT ?",
        [*params, limit],
    ).fetchall()
    return [_row_to_event(r) for r in rows]


# -- the store ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Alias:
    room_alias: str
    room_id: str
    creator: str


class EventStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._events: LruCache[str, StoredEvent] = LruCache(50_000, "events")
        self._versions: dict[str, RoomVersion] = {}
        # Group commit: batches of different rooms that arrive while a transaction is in
        # flight go together into the next one (one stream advance, one commit).
        self._waiting: list[tuple[PersistRequest, defer.Deferred[PersistResult]]] = []
        self._in_flight = 0
        self.max_in_flight = 1 if db.engine == "sqlite" else 2
        self.transactions = 0

    # -- persisting ---------------------------------------------------------------------------
    async def persist(self, request: PersistRequest) -> PersistResult:
        """Persist one room's batch, maybe in one transaction with other rooms' batches.
        Never call it twice at once for one room (the room's queue ensures that)."""
        d: defer.Deferred[PersistResult] = defer.Deferred()
        self._waiting.append((request, d))
        self._start()
        return await d

    def _start(self) -> None:
        while self._waiting and self._in_flight < self.max_in_flight:
            batch, self._waiting = self._waiting, []
            self._in_flight += 1
            defer.ensureDeferred(self._commit(batch))

    async def _commit(
        self, batch: list[tuple[PersistRequest, defer.Deferred[PersistResult]]]
    ) -> None:
        try:
            try:
                self.transactions += 1
                results = await self.db.run(
                    "persist_events", persist_many_txn, [r for r, _ in batch]
                )
            except Exception as e:
                if len(batch) == 1:
                    batch[0][1].errback(e)
                    return
                # One batch spoilt the transaction for all: give each its own.
                for request, d in batch:
                    try:
                        self.transactions += 1
                        (result,) = await self.db.run(
                            "persist_events", persist_many_txn, [request]
                        )
                    except Exception as e1:
                        d.errback(e1)
                    else:
                        d.callback(result)
                return
            for (_, d), result in zip(batch, results, strict=True):
                d.callback(result)
        finally:
            self._in_flight -= 1
            self._start()

    # -- events ---------------------------------------------------------------------------
    def cache(self, events: Iterable[StoredEvent]) -> None:
        for ev in events:
            self._events.set(ev.event_id, ev)

    def invalidate(self, event_id: str) -> None:
        self._events.pop(event_id)

    def forget_room(self, room_id: str, event_ids: Iterable[str]) -> None:
        """Forget cached rows of a purged room."""
        self._versions.pop(room_id, None)
        for event_id in event_ids:
            self._events.pop(event_id)

    def cached(self, event_id: str) -> StoredEvent | None:
        return self._events.get(event_id)

    async def get_events(self, event_ids: Iterable[str]) -> dict[str, StoredEvent]:
        """The persisted events among ``event_ids`` (missing ones are left out)."""
        out: dict[str, StoredEvent] = {}
        missing: list[str] = []
        for eid in dict.fromkeys(event_ids):
            ev = self._events.get(eid)
            if ev is None:
                missing.append(eid)
            else:
                out[eid] = ev
        if missing:
            loaded = await self.db.run("get_events", get_events_txn, missing)
            self.cache(loaded.values())
            out.update(loaded)
        return out

    async def get_event(self, event_id: str) -> StoredEvent | None:
        return (await self.get_events([event_id])).get(event_id)

    async def paginate(
        self, room_id: str, start: Position | None, end: Position | None, backwards: bool,
        limit: int,
    ) -> list[StoredEvent]:
        events = await self.db.run(
            "paginate", paginate_txn, room_id, start, end, backwards, limit
        )
        self.cache(events)
        return events

    async def room_events_by_stream(
        self, room_id: str, after: int, upto: int, limit: int
    ) -> tuple[list[StoredEvent], bool]:
        """The newest ``limit`` accepted events with ``after`` < stream <= ``upto``, oldest
        first, and whether older ones in that range were left out (sync's ``limited``)."""

        def txn_fn(txn: Txn) -> list[StoredEvent]:
            rows = txn.execute(
                f"SELECT {_EVENT_COLUMNS}{_EVENT_FROM} WHERE e.room_id = ?"
                " AND e.stream_ordering > ? AND e.stream_ordering <= ? AND e.rejected IS NULL"
                " AND NOT e.soft_failed ORDER BY e.stream_ordering DESC LIMIT ?",
                (room_id, after, upto, limit + 1),
            ).fetchall()
            return [_row_to_event(r) for r in rows]

        events = await self.db.run("room_events_by_stream", txn_fn)
        self.cache(events)
        limited = len(events) > limit
        return list(reversed(events[:limit])), limited

    async def membership_changes(
        self, user_id: str, after: int, upto: int
    ) -> list[StoredEvent]:
        """The user's membership events with ``after`` < stream <= ``upto``, oldest first
        (sync: rooms joined, invited to, left in that range)."""

        def txn_fn(txn: Txn) -> list[StoredEvent]:
            rows = txn.execute(
                f"SELECT {_EVENT_COLUMNS}{_EVENT_FROM} WHERE e.state_key = ?"
                " AND e.membership IS NOT NULL AND e.stream_ordering > ?"
                " AND e.stream_ordering <= ? AND e.rejected IS NULL ORDER BY e.stream_ordering",
                (user_id, after, upto),
            ).fetchall()
            return [_row_to_event(r) for r in rows]

        events = await self.db.run("membership_changes", txn_fn)
        self.cache(events)
        return events

    async def backward_extremities(
        self, room_id: str, low: int, high: int | None, limit: int
    ) -> list[tuple[str, str, int]]:
        """Events we lack that the room's events at depths [low, high] cite as prev events
        (where our copy of its history stops): (missing ID, citing event ID, its depth),
        deepest first."""

        def txn_fn(txn: Txn) -> list[tuple[str, str, int]]:
            sql = ("SELECT n.event_id, rn.event_id, e.depth FROM events e"
                   " JOIN event_edges ed ON ed.event_nid = e.event_nid"
                   " JOIN event_nids n ON n.event_nid = ed.prev_nid"
                   " JOIN event_nids rn ON rn.event_nid = e.event_nid"
                   " WHERE e.room_id = ? AND e.depth >= ?")
            args: list[Any] = [room_id, low]
            if high is not None:
                sql += " AND e.depth <= ?"
                args.append(high)
            sql += (" AND NOT EXISTS (SELECT 1 FROM events p WHERE p.event_nid = ed.prev_nid)"
                    " ORDER BY e.depth DESC LIMIT ?")
            rows = txn.execute(sql, [*args, limit]).fetchall()
            return [(r[0], r[1], int(r[2])) for r in rows]

        return await self.db.run("backward_extremities", txn_fn)

    async def latest_event_at(self, room_id: str, pos: Position) -> StoredEvent | None:
        """The last accepted event at or before ``pos`` (for state 'at' a token)."""
        events = await self.paginate(room_id, pos, None, True, 1)
        return events[0] if events else None

    async def original_json(self, event_id: str) -> JsonDict | None:
        """The unredacted JSON of a redacted event: for server operators only."""

        def txn_fn(txn: Txn) -> JsonDict | None:
            row = txn.execute(
                "SELECT o.json FROM redacted_originals o JOIN event_nids n"
                " ON n.event_nid = o.event_nid WHERE n.event_id = ?",
                (event_id,),
            ).fetchone()
            return json.loads(row[0]) if row else None

        return await self.db.run("original_json", txn_fn)

    async def event_for_txn(self, sender: str, device_id: str, txn_id: str) -> str | None:
        def txn_fn(txn: Txn) -> str | None:
            row = txn.execute(
                "SELECT n.event_id FROM events e JOIN event_nids n ON n.event_nid = e.event_nid"
                " WHERE e.sender = ? AND e.txn_device = ? AND e.txn_id = ?",
                (sender, device_id, txn_id),
            ).fetchone()
            return row[0] if row else None

        return await self.db.run("event_for_txn", txn_fn)

    # -- rooms ----------------------------------------------------------------------------
    async def get_room(self, room_id: str) -> RoomRow | None:
        row = await self.db.run("get_room", get_room_txn, room_id)
        if row is not None:
            self._versions[room_id] = row.room_version
        return row

    async def room_version(self, room_id: str) -> RoomVersion | None:
        rv = self._versions.get(room_id)
        if rv is None:
            row = await self.get_room(room_id)
            rv = row.room_version if row else None
        return rv

    async def set_public(self, room_id: str, is_public: bool) -> None:
        await self.db.run(
            "set_room_public",
            lambda txn: txn.execute(
                "UPDATE rooms SET is_public = ? WHERE room_id = ?", (is_public, room_id)
            ),
        )

    async def public_rooms(self) -> list[str]:
        def txn_fn(txn: Txn) -> list[str]:
            rows = txn.execute(
                "SELECT room_id FROM rooms WHERE is_public = ? ORDER BY room_id", (True,)
            ).fetchall()
            return [r[0] for r in rows]

        return await self.db.run("public_rooms", txn_fn)

    # -- aliases --------------------------------------------------------------------------
    async def create_alias(self, alias: str, room_id: str, creator: str, now: int) -> bool:
        """False if the alias is taken."""

        def txn_fn(txn: Txn) -> bool:
            txn.execute(
                "INSERT INTO room_aliases (room_alias, room_id, creator, created_ts)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (room_alias) DO NOTHING",
                (alias, room_id, creator, now),
            )
            return txn.rowcount > 0

        return await self.db.run("create_alias", txn_fn)

    async def get_alias(self, alias: str) -> Alias | None:
        def txn_fn(txn: Txn) -> Alias | None:
            row = txn.execute(
                "SELECT room_alias, room_id, creator FROM room_aliases WHERE room_alias = ?",
                (alias,),
            ).fetchone()
            return Alias(*row) if row else None

        return await self.db.run("get_alias", txn_fn)

    async def delete_alias(self, alias: str) -> bool:
        def txn_fn(txn: Txn) -> bool:
            txn.execute("DELETE FROM room_aliases WHERE room_alias = ?", (alias,))
            return txn.rowcount > 0

        return await self.db.run("delete_alias", txn_fn)

    async def aliases_for_room(self, room_id: str) -> list[str]:
        def txn_fn(txn: Txn) -> list[str]:
            rows = txn.execute(
                "SELECT room_alias FROM room_aliases WHERE room_id = ? ORDER BY room_alias",
                (room_id,),
            ).fetchall()
            return [r[0] for r in rows]

        return await self.db.run("aliases_for_room", txn_fn)

    # -- forgotten rooms ------------------------------------------------------------------
    async def forget(self, user_id: str, room_id: str) -> None:
        await self.db.run(
            "forget_room",
            lambda txn: txn.execute(
                "INSERT INTO room_forgotten (user_id, room_id) VALUES (?, ?)"
                " ON CONFLICT (user_id, room_id) DO NOTHING",
                (user_id, room_id),
            ),
        )

    async def unforget(self, user_id: str, room_id: str) -> None:
        await self.db.run(
            "unforget_room",
            lambda txn: txn.execute(
                "DELETE FROM room_forgotten WHERE user_id = ? AND room_id = ?",
                (user_id, room_id),
            ),
        )

    async def forgotten_rooms(self, user_id: str) -> set[str]:
        def txn_fn(txn: Txn) -> set[str]:
            rows = txn.execute(
                "SELECT room_id FROM room_forgotten WHERE user_id = ?", (user_id,)
            ).fetchall()
            return {r[0] for r in rows}

        return await self.db.run("forgotten_rooms", txn_fn)
