"""The event pipeline: every event of a room goes build -> auth -> persist -> notify here.

Events of one room are handled strictly in order by the room's queue (made on demand and
dropped when idle); different rooms run in parallel. The queue drains in batches: sends that
arrive while a batch is being persisted are built one after another, each on the state and
extremities the previous one left (so concurrent sends never fork the room) and each
authorised on its own, then persisted together in one transaction -- group commit, as
Synapse's persistence queue does. A caller gets its event ID only once that transaction has
committed.

Under the queue, the room's head -- forward extremities, depth, current state (IDs), state
group -- is cached in memory, so building a local event costs no query. The head moves on only
after a commit; if a transaction fails it is dropped and read afresh. The work is shielded
from cancellation: a client hanging up does not abandon a half-applied batch.

Room-level rules (membership transitions, redaction permission, ...) live in
``services.rooms``, which hands the pipeline a ``prepare`` callback that runs in the queue with
a ``RoomView`` of the state as it will be when the event is built.
"""

from __future__ import annotations

import logging
from collections import ChainMap, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from signedjson.types import SigningKey
from twisted.internet import defer

from federation.auth_rules import CREATE_KEY, AuthError, auth_types_for_event, check_auth
from federation.builder import EventBuildError, build_event
from federation.canonical_json import encode_canonical_json
from federation.events import Event, JsonDict, StateKey
from federation.identifiers import create_event_id_from_room_id, get_domain
from federation.pdu_checks import (
    AuthEventsRejected,
    Verdict,
    check_auth_events,
    run_auth_checks,
)
from federation.power_levels import get_named_level, get_user_power_level
from federation.redaction import redact
from federation.room_versions import RoomVersion
from homeserver.clock import Clock
from homeserver.http.errors import Codes, MatrixError
from homeserver.services.notifier import Notifier
from homeserver.storage.cache import LruCache
from homeserver.storage.engine import Database
from homeserver.storage.events import (
    EVENTS_STREAM,
    DuplicateTransaction,
    EventStore,
    HeadPlan,
    NewRoom,
    PersistItem,
    PersistRequest,
    PersistResult,
    StatePlan,
    StoredEvent,
)
from homeserver.storage.state import CurrentStateChange, StateFilter, StateStore

logger = logging.getLogger(__name__)
T = TypeVar("T")

MAX_EVENT_BYTES = 65536
MAX_KEY_BYTES = 255
# At most this many forward extremities become a new event's prev_events.
MAX_PREV_EVENTS = 10
# At most this many queued sends go into one transaction.
MAX_BATCH = 100
MEMBER = "m.room.member"
REDACTION = "m.room.redaction"


@dataclass
class EventSpec:
    """A local event to build: what the sender asked for."""

    type: str
    sender: str
    content: JsonDict
    state_key: str | None = None
    redacts: str | None = None
    # (device_id, txn_id) of the client request, for idempotent retries.
    txn: tuple[str, str] | None = None
    # origin_server_ts chosen by an application service (timestamp massaging); None: now.
    origin_server_ts: int | None = None
    # Called with the built event before it is persisted; returns it with more signatures
    # (an invite countersigned by the invitee's server). May raise MatrixError.
    countersign: Callable[[Event, RoomView], Awaitable[Event]] | None = None


@dataclass(frozen=True)
class SendResult:
    event_id: str
    stream_ordering: int | None
    # True when nothing new was made: a retried transaction or a no-op change.
    existing: bool = False


class MissingEvents(Exception):
    """A received event cites events this server does not have (fetch them first)."""

    def __init__(self, event_ids: Sequence[str]) -> None:
        super().__init__(", ".join(event_ids))
        self.event_ids = list(event_ids)


@dataclass(frozen=True)
class ReceivedResult:
    event_id: str
    verdict: Verdict
    reason: str | None
    stream_ordering: int | None
    # Already persisted before: nothing was done.
    existing: bool = False


@dataclass
class RoomHead:
    """A room's head, as cached for its queue."""

    room_id: str
    room_version: RoomVersion
    creator: str
    extremities: list[str]
    max_depth: int
    state_group: int
    state_chain_len: int
    state: dict[StateKey, str]


@dataclass
class _Work:
    """A batch being built: state and extremities move on as each event is built, on top of
    the head, which changes only once the batch is committed."""

    head: RoomHead
    extremities: list[str]
    max_depth: int
    changes: dict[StateKey, str] = field(default_factory=dict)
    built: dict[str, Event] = field(default_factory=dict)
    txns: dict[tuple[str, str, str], str] = field(default_factory=dict)

    def state_id(self, key: StateKey) -> str | None:
        found = self.changes.get(key)
        return found if found is not None else self.head.state.get(key)


class RoomView:
    """What a ``prepare`` callback may read: the room's state as the event will see it."""

    def __init__(self, pipeline: EventsService, work: _Work) -> None:
        self._pipeline = pipeline
        self._work = work

    @property
    def room_id(self) -> str:
        return self._work.head.room_id

    @property
    def room_version(self) -> RoomVersion:
        return self._work.head.room_version

    @property
    def creator(self) -> str:
        return self._work.head.creator

    def state_ids(self) -> Mapping[StateKey, str]:
        return ChainMap(self._work.changes, self._work.head.state)

    def state_id(self, key: StateKey) -> str | None:
        return self._work.state_id(key)

    async def state_events(self, keys: Iterable[StateKey]) -> dict[StateKey, Event]:
        ids = {k: i for k in keys if (i := self._work.state_id(k)) is not None}
        found = await self._pipeline._events(self._work, ids.values())
        return {k: found[v] for k, v in ids.items()}

    async def state_event(self, key: StateKey) -> Event | None:
        return (await self.state_events([key])).get(key)

    async def membership(self, user_id: str) -> str | None:
        ev = await self.state_event((MEMBER, user_id))
        return ev.membership if ev is not None else None

    async def power_level(self, user_id: str) -> float:
        state = await self.state_events([CREATE_KEY, ("m.room.power_levels", "")])
        return get_user_power_level(user_id, state)

    async def named_level(self, name: str) -> int:
        state = await self.state_events([("m.room.power_levels", "")])
        return get_named_level(state, name)


Prepare = Callable[[RoomView], Awaitable["EventSpec | str"]]


def _shield(d: defer.Deferred[T]) -> defer.Deferred[T]:
    """A Deferred that fires with ``d``'s result; cancelling it leaves ``d`` running."""
    out: defer.Deferred[T] = defer.Deferred()

    def fire(result: Any) -> None:
        if not out.called:
            out.callback(result)

    d.addBoth(fire)
    return out


def _resolve(d: defer.Deferred[T], result: T | BaseException) -> None:
    if d.called:
        return
    if isinstance(result, BaseException):
        d.errback(result)
    else:
        d.callback(result)


@dataclass
class _Send:
    prepare: Prepare | EventSpec
    deferred: defer.Deferred[SendResult]
    # Persist in a transaction of its own (a retry after a batch failed).
    solo: bool = False


@dataclass
class _Exclusive:
    run: Callable[[], Awaitable[Any]]
    deferred: defer.Deferred[Any]


class _RoomQueue:
    def __init__(self) -> None:
        self.jobs: deque[_Send | _Exclusive] = deque()
        self.batches = 0  # transactions (for tests and metrics)


def size_error(e: EventBuildError) -> MatrixError:
    if "the limit is" in e.args[0]:
        return MatrixError(413, Codes.TOO_LARGE, f"Event is too large: {e.args[0]}")
    return MatrixError(400, Codes.BAD_JSON, f"Invalid event: {e.args[0]}")


def validate_spec(spec: EventSpec) -> None:
    if len(spec.type.encode("utf-8")) > MAX_KEY_BYTES:
        raise MatrixError(400, Codes.INVALID_PARAM, "Event type is longer than 255 bytes")
    if spec.state_key is not None and len(spec.state_key.encode("utf-8")) > MAX_KEY_BYTES:
        raise MatrixError(400, Codes.INVALID_PARAM, "State key is longer than 255 bytes")
    try:
        size = len(encode_canonical_json(spec.content))
    except (ValueError, TypeError) as e:
        raise MatrixError(400, Codes.BAD_JSON, f"Content is not valid JSON: {e}") from None
    if size > MAX_EVENT_BYTES:
        raise MatrixError(
            413, Codes.TOO_LARGE, f"Event content is {size} bytes; the limit is {MAX_EVENT_BYTES}"
        )


class EventsService:
    """The pipeline. ``send`` for one local event, ``create_room`` for a new room's events."""

    def __init__(
        self,
        *,
        db: Database,
        store: EventStore,
        state_store: StateStore,
        notifier: Notifier,
        clock: Clock,
        server_name: str,
        signing_key: SigningKey,
    ) -> None:
        self.db = db
        self.store = store
        self.state_store = state_store
        self.notifier = notifier
        self.clock = clock
        self.server_name = server_name
        self.signing_key = signing_key
        self.queues: dict[str, _RoomQueue] = {}
        self.batches = 0
        self._heads: LruCache[str, RoomHead] = LruCache(20_000, "room_heads")
        self._txns: LruCache[tuple[str, str, str], str] = LruCache(100_000)
        self._last_create_ts = 0  # see create_room
        # Called after each committed batch (room_id, events): sync, push, federation sending.
        self.on_persisted: list[Callable[[str, list[StoredEvent]], None]] = []

    # -- reading the head ------------------------------------------------------------------
    async def _load_head(self, room_id: str) -> RoomHead:
        head = self._heads.get(room_id)
        if head is not None:
            return head
        row = await self.store.get_room(room_id)
        if row is None:
            raise MatrixError(404, Codes.NOT_FOUND, f"Unknown room {room_id}")
        state = await self.state_store.current_state(room_id)
        head = RoomHead(
            room_id=room_id,
            room_version=row.room_version,
            creator=row.creator,
            extremities=list(row.extremities),
            max_depth=row.max_depth,
            state_group=row.state_group,
            state_chain_len=row.state_chain_len,
            state=state,
        )
        self._heads.set(room_id, head)
        return head

    async def room_exists(self, room_id: str) -> bool:
        if self._heads.get(room_id) is not None:
            return True
        return await self.store.get_room(room_id) is not None

    async def current_state_ids(
        self, room_id: str, state_filter: StateFilter | None = None
    ) -> dict[StateKey, str]:
        """The room's current state (404 for an unknown room)."""
        head = self._heads.get(room_id)
        if head is not None:
            return (state_filter or StateFilter.all()).apply(head.state)
        if not await self.room_exists(room_id):
            raise MatrixError(404, Codes.NOT_FOUND, f"Unknown room {room_id}")
        return await self.state_store.current_state(room_id, state_filter)

    async def current_state_event(self, room_id: str, key: StateKey) -> StoredEvent | None:
        ids = await self.current_state_ids(room_id, StateFilter.from_keys([key]))
        return await self.store.get_event(ids[key]) if key in ids else None

    def forget_room(self, room_id: str, event_ids: list[str]) -> None:
        """Drop cached heads and events after the room's rows were purged (admin API)."""
        self._heads.pop(room_id)
        self.store.forget_room(room_id, event_ids)

    def forward_extremities(self, room_id: str) -> list[str] | None:
        head = self._heads.get(room_id)
        return list(head.extremities) if head is not None else None

    # -- the room queue ------------------------------------------------------------------------
    def _enqueue(self, room_id: str, job: _Send | _Exclusive) -> None:
        queue = self.queues.get(room_id)
        if queue is None:
            queue = self.queues[room_id] = _RoomQueue()
            queue.jobs.append(job)
            defer.ensureDeferred(self._drain(room_id, queue))
        else:
            queue.jobs.append(job)

    async def _drain(self, room_id: str, queue: _RoomQueue) -> None:
        batch: list[_Send] = []
        try:
            while queue.jobs:
                job = queue.jobs.popleft()
                if isinstance(job, _Exclusive):
                    try:
                        _resolve(job.deferred, await job.run())
                    except BaseException as e:
                        _resolve(job.deferred, e)
                    continue
                batch = [job]
                while not job.solo and len(batch) < MAX_BATCH and queue.jobs:
                    nxt = queue.jobs[0]
                    if not isinstance(nxt, _Send) or nxt.solo:
                        break
                    batch.append(queue.jobs.popleft())  # type: ignore[arg-type]
                queue.batches += 1
                await self._process(room_id, batch, queue)
        except BaseException:
            logger.exception("the event queue of %s failed", room_id)
            self._heads.pop(room_id)
            for job in [*batch, *queue.jobs]:
                _resolve(job.deferred, MatrixError(500, Codes.UNKNOWN, "Internal error"))
        finally:
            del self.queues[room_id]

    async def send(self, room_id: str, prepare: Prepare | EventSpec) -> SendResult:
        """Build, authorise and persist one local event in ``room_id``.

        ``prepare`` (or the spec itself) runs in the room's queue; it may return an event ID
        instead of a spec to say "nothing to do, this is the answer". Raises MatrixError:
        404 unknown room, 403 (with the auth rules' reason), 413 too large, 400 malformed.
        """
        if isinstance(prepare, EventSpec):
            validate_spec(prepare)
            if prepare.txn is not None:
                seen = self._txns.get((prepare.sender, *prepare.txn))
                if seen is not None:
                    return SendResult(seen, None, existing=True)
        d: defer.Deferred[SendResult] = defer.Deferred()
        self._enqueue(room_id, _Send(prepare, d))
        return await _shield(d)

    async def exclusive(self, room_id: str, run: Callable[[], Awaitable[T]]) -> T:
        """Run ``run`` in the room's queue, alone (for writers other than local sends)."""
        d: defer.Deferred[T] = defer.Deferred()
        self._enqueue(room_id, _Exclusive(run, d))
        return await _shield(d)

    async def _process(self, room_id: str, batch: list[_Send], queue: _RoomQueue) -> None:
        try:
            head = await self._load_head(room_id)
        except BaseException as e:
            for job in batch:
                _resolve(job.deferred, e)
            return
        work = _Work(head, list(head.extremities), head.max_depth)
        items: list[PersistItem] = []
        built: list[tuple[_Send, int]] = []  # job, index into items
        answered: list[tuple[_Send, str]] = []  # no-ops, answered once the batch commits
        for job in batch:
            try:
                prepare = job.prepare
                if isinstance(prepare, EventSpec):
                    spec: EventSpec | str = prepare
                else:
                    spec = await prepare(RoomView(self, work))
                    if isinstance(spec, EventSpec):
                        validate_spec(spec)
                if isinstance(spec, str):
                    answered.append((job, spec))
                    continue
                if spec.txn is not None:
                    key = (spec.sender, *spec.txn)
                    seen = work.txns.get(key) or self._txns.get(key)
                    if seen is not None:
                        answered.append((job, seen))
                        continue
                if spec.countersign is not None:
                    items.append(await self._countersigned(work, spec, spec.countersign))
                else:
                    items.append(await self._build(work, spec))
                built.append((job, len(items) - 1))
                if spec.txn is not None:
                    work.txns[(spec.sender, *spec.txn)] = items[-1].event.event_id
            except MatrixError as e:
                _resolve(job.deferred, e)
            except Exception as e:
                logger.exception("building an event in %s failed", room_id)
                _resolve(job.deferred, e)
        if items:
            try:
                result, stored = await self._persist(work, items, None)
            except DuplicateTransaction as dup:
                if len(items) == 1:
                    job = built[0][0]
                    spec_txn = items[0].txn
                    if spec_txn is not None:
                        self._txns.set((items[0].event.sender, *spec_txn), dup.event_id)
                    _resolve(job.deferred, SendResult(dup.event_id, None, existing=True))
                    for job, eid in answered:
                        _resolve(job.deferred, SendResult(eid, None, existing=True))
                    return
                # Some retried transaction was only in the database: redo them one by one.
                redo = sorted([j for j, _ in built] + [j for j, _ in answered],
                              key=batch.index)
                for job in reversed(redo):
                    queue.jobs.appendleft(_Send(job.prepare, job.deferred, solo=True))
                return
            except BaseException as e:
                for job, _ in built:
                    _resolve(job.deferred, e)
                for job, _ in answered:
                    _resolve(job.deferred, e)
                return
            # Publish first: a caller that gets its event ID back must find it on the stream.
            self._after_commit(room_id, stored, result)
            for job, i in built:
                _resolve(job.deferred, SendResult(stored[i].event_id, stored[i].stream_ordering))
        for job, eid in answered:
            _resolve(job.deferred, SendResult(eid, None, existing=True))

    async def create_room(
        self,
        room_version: RoomVersion,
        creator: str,
        create_content: JsonDict,
        specs: Sequence[EventSpec],
        *,
        is_public: bool = False,
        room_id: str | None = None,
        aliases: Sequence[str] = (),
    ) -> tuple[str, list[str]]:
        """Build the create event and ``specs`` after it, authorise each against the state
        the ones before it made, and persist them all in one transaction. Returns the room ID
        and the event IDs. ``room_id`` is required before v12 (whose room ID comes from the
        create event)."""
        create_spec = EventSpec("m.room.create", creator, create_content, state_key="")
        validate_spec(create_spec)
        for spec in specs:
            validate_spec(spec)
        if room_version.room_id_is_create_event_hash:
            room_id = None
        elif room_id is None:
            raise ValueError("room_id is required before room version 12")
        # From v12 the room ID is the create event's hash: two identical createRoom requests
        # in one millisecond would name the same room, so create timestamps never repeat.
        created_ts = max(self.clock.time_ms(), self._last_create_ts + 1)
        self._last_create_ts = created_ts
        try:
            create = build_event(
                room_version=room_version, event_type="m.room.create", sender=creator,
                content=create_content, room_id=room_id, prev_events=[], current_state={},
                origin_server_ts=created_ts, signing_key=self.signing_key,
                server_name=self.server_name, state_key="",
            )
            check_auth(create, {})
        except EventBuildError as e:
            raise size_error(e) from None
        except AuthError as e:
            raise MatrixError(400, Codes.BAD_JSON, f"Invalid create event: {e.reason}") from None
        rid = create.room_id

        async def run() -> list[str]:
            head = RoomHead(rid, room_version, creator, [], 0, 0, 0, {})
            work = _Work(head, [], 0)
            self._advance(work, create)
            items = [PersistItem(create)]
            for spec in specs:
                items.append(await self._build(work, spec))
            new_room = NewRoom(rid, room_version.identifier, creator, is_public,
                               self.clock.time_ms(), tuple(aliases))
            result, stored = await self._persist(work, items, new_room)
            self._after_commit(rid, stored, result)
            return [s.event_id for s in stored]

        return rid, await self.exclusive(rid, run)

    # -- events from other servers ------------------------------------------------------------
    async def receive(self, event: Event) -> ReceivedResult:
        """Persist an event of a known room from another server, through the same queue.

        The caller has run ``pdu_checks`` steps 1-3 (well-formed, signatures, content hash)
        and fetched missing prev and auth events (``MissingEvents`` names them otherwise).
        Steps 4-6 run here: the cited auth events, the auth rules against them, against the
        state before the event (resolved where its prev_events' states differ) and against
        the current state. A rejected event is stored as such and changes nothing; a
        soft-failed one is stored with its state but does not become a forward extremity or
        change the current state. Otherwise the room's state becomes the resolution of its
        forward extremities' states.
        """
        return await self.exclusive(event.room_id, lambda: self._receive(event))

    async def _receive(self, event: Event) -> ReceivedResult:
        from homeserver.services.state import resolve_txn

        room_id = event.room_id
        head = await self._load_head(room_id)
        rv = head.room_version
        if event.room_version is not rv:
            raise ValueError(f"event of room version {event.room_version.identifier} in a "
                             f"room of version {rv.identifier}")
        existing = await self.store.get_event(event.event_id)
        if existing is not None:
            verdict = Verdict.REJECTED if existing.rejected else Verdict.ACCEPTED
            return ReceivedResult(existing.event_id, verdict, existing.rejected,
                                  existing.stream_ordering, existing=True)
        prev_ids = list(dict.fromkeys(event.prev_event_ids))
        auth_ids = list(dict.fromkeys(event.auth_event_ids))
        create_id = None
        if rv.room_id_is_create_event_hash:
            create_id = create_event_id_from_room_id(room_id)
        wanted = [*prev_ids, *auth_ids, *([create_id] if create_id else [])]
        found = await self.store.get_events(wanted)
        missing = [e for e in wanted if e not in found]
        if missing:
            raise MissingEvents(missing)

        # The state before the event: its prev events' states, resolved if they differ.
        groups = sorted({found[p].state_group for p in prev_ids})
        if len(groups) == 1:
            before_plan = StatePlan(groups[0], await self._chain_len(groups[0]))
            before = await self.state_store.state_at_group(groups[0])
        else:
            sets = [await self.state_store.state_at_group(g) for g in groups]
            before, _ = await self.db.run("resolve_state", resolve_txn, rv, sets)
            base = min(range(len(sets)), key=lambda i: _diff_size(sets[i], before))
            before_plan = StatePlan(groups[base], await self._chain_len(groups[base]),
                                    _diff(sets[base], before))

        rejected_ids = {e for e, se in found.items() if se.rejected is not None}
        keys = auth_types_for_event(rv, event.type, event.state_key, event.sender,
                                    event.content) | {CREATE_KEY}
        needed = [i for k in keys for i in (before.get(k), head.state.get(k)) if i is not None]
        states = await self.store.get_events(needed)

        def events_for(ids: Mapping[StateKey, str]) -> dict[StateKey, Event]:
            return {k: states[ids[k]].event for k in keys if ids.get(k) in states}

        verdict, reason = Verdict.ACCEPTED, None
        try:
            by_key = check_auth_events(
                event, {e: found[e].event for e in auth_ids}, rejected=rejected_ids,
                create_event=found[create_id].event if create_id else None,
            )
        except AuthEventsRejected as e:
            verdict, reason = Verdict.REJECTED, e.reason
        else:
            outcome = run_auth_checks(event, by_key, events_for(before), events_for(head.state))
            verdict, reason = outcome.verdict, outcome.reason

        item = PersistItem(event, rejected=reason if verdict is Verdict.REJECTED else None,
                           soft_failed=verdict is Verdict.SOFT_FAILED)
        if verdict is Verdict.ACCEPTED and event.type == REDACTION and event.redacts:
            # A redaction from another server applies as a local one does.
            item.redacts = event.redacts
            target = await self.store.get_event(event.redacts)
            if (target is not None and target.room_id == room_id
                    and _may_apply_redaction(event, target.event, events_for(before))):
                item.redacted_json = redact(target.event.pdu_json(), rv)
        if event.is_state():
            item.replaces = before.get(event.state_tuple)
            item.auth = [(a, found[a].event.state_tuple) for a in auth_ids
                         if found[a].event.is_state()]
            if create_id is not None:
                item.auth.append((create_id, CREATE_KEY))
        after = dict(before)
        if item.changes_state:
            after[event.state_tuple] = event.event_id

        extremities = list(head.extremities)
        current = StatePlan(head.state_group, head.state_chain_len)
        changes: list[CurrentStateChange] = []
        new_state = head.state
        if verdict is Verdict.ACCEPTED:
            extremities = [e for e in extremities if e not in prev_ids] + [event.event_id]
            if extremities == [event.event_id]:
                new_state = after
            else:
                other_ids = [e for e in extremities if e != event.event_id]
                others = await self.store.get_events(other_ids)
                sets = [after] + [
                    await self.state_store.state_at_group(others[e].state_group)
                    for e in other_ids if e in others
                ]
                new_state, _ = await self.db.run(
                    "resolve_state", resolve_txn, rv, sets, {event.event_id: event}
                )
            current = StatePlan(head.state_group, head.state_chain_len,
                                _diff(head.state, new_state))
            changes = await self._current_changes(head.state, new_state,
                                                  {event.event_id: event})
        plan = HeadPlan(before=before_plan, current=current, current_changes=changes)
        work = _Work(head, extremities, max(head.max_depth, event.depth))
        work.changes = {k: v for k, v in new_state.items() if head.state.get(k) != v}
        result, stored = await self._persist(work, [item], None, plan)
        for k in [k for k in head.state if k not in new_state]:
            del head.state[k]
        self._after_commit(room_id, stored, result)
        return ReceivedResult(event.event_id, verdict, reason, stored[0].stream_ordering)

    async def template(
        self, room_id: str, event_type: str, sender: str, content: JsonDict,
        state_key: str | None = None,
    ) -> tuple[RoomVersion, JsonDict]:
        """An unsigned event template on the room's head, for a remote server to complete
        (make_join / make_leave): prev_events, auth_events and depth filled in."""

        async def run() -> tuple[RoomVersion, JsonDict]:
            head = await self._load_head(room_id)
            work = _Work(head, list(head.extremities), head.max_depth)
            item = await self._build(work, EventSpec(event_type, sender, content, state_key))
            pdu = dict(item.event.pdu_json())
            for key in ("signatures", "hashes", "unsigned", "event_id"):
                pdu.pop(key, None)
            return head.room_version, pdu

        return await self.exclusive(room_id, run)

    async def persist_joined_room(
        self, room_version: RoomVersion, state: Sequence[Event], auth_chain: Sequence[Event],
        join: Event,
    ) -> ReceivedResult:
        """Store a room we join through another server: its state and auth chain as the
        resident server gave them (already checked by the caller), then our join on top.

        The state events are stored in auth order; the room's state is set to exactly the
        given state (not what replaying them would give), then the join follows it."""
        room_id = join.room_id

        async def run() -> ReceivedResult:
            rejoin = False
            if await self.store.get_room(room_id) is not None:
                prevs = await self.store.get_events(join.prev_event_ids)
                if len(prevs) == len(set(join.prev_event_ids)):
                    return await self._receive(join)
                # A room we had left: our view of it stopped when we did.
                rejoin = True
            by_id = {e.event_id: e for e in [*auth_chain, *state]}
            ordered: list[Event] = []
            seen: set[str] = set()

            def visit(ev: Event) -> None:
                stack = [(ev, False)]
                while stack:
                    e, done = stack.pop()
                    if done:
                        ordered.append(e)
                        continue
                    if e.event_id in seen:
                        continue
                    seen.add(e.event_id)
                    stack.append((e, True))
                    for a in reversed(e.auth_event_ids):
                        if a in by_id and a not in seen:
                            stack.append((by_id[a], False))

            for e in sorted(by_id.values(), key=lambda e: (e.depth, e.event_id)):
                visit(e)
            state_map = {e.state_tuple: e.event_id for e in state}
            create_id = state_map.get(CREATE_KEY)
            if create_id is None or create_id not in by_id:
                raise ValueError("the room state has no create event")
            create = by_id[create_id]
            ordered.sort(key=lambda e: 0 if e.event_id == create_id else 1)
            creator = str(create.content.get("creator") or create.sender)
            def auth_of(e: Event) -> list[tuple[str, StateKey]]:
                auth = [(a, by_id[a].state_tuple) for a in e.auth_event_ids if a in by_id]
                if room_version.room_id_is_create_event_hash and e.event_id != create_id:
                    auth.append((create_id, CREATE_KEY))
                return auth

            if rejoin:
                return await self._rejoin(join, by_id, ordered, state_map, auth_of)
            items = []
            for e in ordered:
                item = PersistItem(e)
                item.auth = auth_of(e)
                items.append(item)
            head = RoomHead(room_id, room_version, creator, [], 0, 0, 0, {})
            depth = max(e.depth for e in ordered)
            work = _Work(head, list(join.prev_event_ids), depth)
            work.changes = dict(state_map)
            changes = [
                CurrentStateChange(e.type, e.state_key or "", e.event_id,
                                   e.membership if e.type == MEMBER else None)
                for e in (by_id[i] for i in state_map.values())
            ]
            plan = HeadPlan(current=StatePlan(None, 0, dict(state_map)), current_changes=changes)
            new_room = NewRoom(room_id, room_version.identifier, creator, False,
                               self.clock.time_ms())
            result, stored = await self._persist(work, items, new_room, plan)
            self._after_commit(room_id, stored, result)
            item = PersistItem(join, replaces=state_map.get(join.state_tuple))
            item.auth = auth_of(join)
            work = _Work(head, [join.event_id], max(depth, join.depth))
            work.changes = {join.state_tuple: join.event_id}
            result, stored = await self._persist(work, [item], None)
            self._after_commit(room_id, stored, result)
            return ReceivedResult(join.event_id, Verdict.ACCEPTED, None,
                                  stored[0].stream_ordering)

        return await self.exclusive(room_id, run)

    async def _rejoin(
        self, join: Event, by_id: Mapping[str, Event], ordered: Sequence[Event],
        state_map: Mapping[StateKey, str],
        auth_of: Callable[[Event], list[tuple[str, StateKey]]],
    ) -> ReceivedResult:
        """Join a room we know but had left: store the resident's state and auth chain
        events we lack (as history before the join), then the join on exactly that state."""
        room_id = join.room_id
        head = await self._load_head(room_id)
        known = await self.store.get_events(by_id.keys())
        items = []
        for e in ordered:
            if e.event_id not in known:
                item = PersistItem(e)
                item.auth = auth_of(e)
                items.append(item)
        snapshot = StatePlan(None, 0, dict(state_map))
        if items:
            # The current state and head stay as they are until the join.
            work = _Work(head, list(head.extremities), head.max_depth)
            plan = HeadPlan(before=snapshot,
                            current=StatePlan(head.state_group, head.state_chain_len),
                            current_changes=[])
            result, stored = await self._persist(work, items, None, plan)
            self._after_commit(room_id, stored, result)
        after = {**state_map, join.state_tuple: join.event_id}
        changes = await self._current_changes(head.state, after, {join.event_id: join})
        item = PersistItem(join, replaces=state_map.get(join.state_tuple))
        item.auth = auth_of(join)
        work = _Work(head, [join.event_id], max(head.max_depth, join.depth))
        plan = HeadPlan(before=snapshot, current=StatePlan(None, 0, after),
                        current_changes=changes)
        try:
            result, stored = await self._persist(work, [item], None, plan)
        finally:
            # The head's state was replaced, not moved on: read it afresh.
            self._heads.pop(room_id)
        self._after_commit(room_id, stored, result)
        return ReceivedResult(join.event_id, Verdict.ACCEPTED, None, stored[0].stream_ordering)

    async def persist_backfilled(
        self, room_id: str, events: Sequence[tuple[Event, str | None]], successor: str,
    ) -> list[StoredEvent]:
        """Store history fetched from another server: ``events`` (oldest first, each with
        why it was rejected, or None) sit before ``successor``, the event of ours that cites
        the newest of them. They take the state before ``successor`` (moved on by their own
        state events), never change the room's current state or forward extremities, and
        get positions before everything on the events stream, so /sync never sees them."""

        async def run() -> list[StoredEvent]:
            head = await self._load_head(room_id)
            known = await self.store.get_events([e.event_id for e, _ in events])
            todo = [(e, r) for e, r in events if e.event_id not in known]
            after = await self.store.get_event(successor)
            if not todo or after is None or after.room_id != room_id:
                return []
            delta: dict[StateKey, str | None] = {}
            if after.event.is_state() and after.rejected is None and not after.soft_failed:
                delta[after.event.state_tuple] = after.replaces_state
            before = StatePlan(after.state_group, await self._chain_len(after.state_group),
                               delta)
            items = await self._history_items(room_id, todo)
            return await self._persist_history(head, items, before)

        return await self.exclusive(room_id, run)

    async def _history_items(
        self, room_id: str, todo: Sequence[tuple[Event, str | None]],
    ) -> list[PersistItem]:
        """Items for history events (each with why it was rejected, or None), their auth
        events' keys looked up in the batch, then in the database."""
        auth_ids = {a for e, _ in todo for a in e.auth_event_ids}
        in_batch = {e.event_id: e for e, _ in todo}
        stored_auth = await self.store.get_events(auth_ids - set(in_batch))
        keys = {eid: se.event.state_tuple for eid, se in stored_auth.items()
                if se.event.is_state()}
        keys.update({eid: e.state_tuple for eid, e in in_batch.items() if e.is_state()})
        items = []
        for e, rejected in todo:
            item = PersistItem(e, rejected=rejected)
            if e.is_state():
                item.auth = [(a, keys[a]) for a in e.auth_event_ids if a in keys]
                if e.room_version.room_id_is_create_event_hash and not e.is_create():
                    item.auth.append((create_event_id_from_room_id(room_id), CREATE_KEY))
            items.append(item)
        return items

    async def _persist_history(
        self, head: RoomHead, items: list[PersistItem], before: StatePlan,
    ) -> list[StoredEvent]:
        """Persist events before the room's head: state ``before`` the first, positions
        before everything on the events stream; current state and extremities unchanged."""
        work = _Work(head, list(head.extremities), head.max_depth)
        plan = HeadPlan(before=before,
                        current=StatePlan(head.state_group, head.state_chain_len),
                        current_changes=[])
        _, stored = await self._persist(work, items, None, plan, backfilled=True)
        return stored

    async def receive_across_gap(
        self, event: Event, history: Sequence[Event],
        prevs: Sequence[tuple[Event, Mapping[StateKey, str]]],
    ) -> ReceivedResult:
        """``receive`` for an event whose prev events were missing and have been fetched
        with the state before each (``/state_ids``), checked by the caller: ``history``
        (state and auth events we lack, in auth order) and each prev event are stored as
        history -- each prev on exactly the state the other server gave for it -- and the
        event then goes through ``_receive``, which resolves its prevs' states as usual. The
        prev events' own ancestors stay unknown (backward extremities, for /backfill)."""

        async def run() -> ReceivedResult:
            head = await self._load_head(event.room_id)
            wanted = [e.event_id for e in history] + [p.event_id for p, _ in prevs]
            known = await self.store.get_events(wanted)
            todo = [(e, None) for e in history if e.event_id not in known]
            first = prevs[0][1] if prevs else head.state
            if todo:
                items = await self._history_items(event.room_id, todo)
                await self._persist_history(head, items, self._plan_for(head, first))
            for prev, state in prevs:
                if prev.event_id in known:
                    continue
                [item] = await self._history_items(event.room_id, [(prev, None)])
                if prev.is_state():
                    item.replaces = state.get(prev.state_tuple)
                await self._persist_history(head, [item], self._plan_for(head, state))
            return await self._receive(event)

        return await self.exclusive(event.room_id, run)

    @staticmethod
    def _plan_for(head: RoomHead, state: Mapping[StateKey, str]) -> StatePlan:
        """``state`` stored as a delta on the room's current state group."""
        return StatePlan(head.state_group, head.state_chain_len, _diff(head.state, state))

    async def _chain_len(self, group: int) -> int:
        from homeserver.storage.state import group_chain_len_txn

        return await self.db.run("group_chain_len", group_chain_len_txn, group)

    async def _current_changes(
        self, old: Mapping[StateKey, str], new: Mapping[StateKey, str],
        extra: Mapping[str, Event] | None = None,
    ) -> list[CurrentStateChange]:
        changed = {k: v for k, v in new.items() if old.get(k) != v}
        found = {e: se.event for e, se in (await self.store.get_events(changed.values())).items()}
        found.update(extra or {})
        out = [
            CurrentStateChange(t, sk, eid, found[eid].membership
                               if t == MEMBER and eid in found else None)
            for (t, sk), eid in changed.items()
        ]
        out += [CurrentStateChange(t, sk, None, None) for (t, sk) in old if (t, sk) not in new]
        return out

    # -- build and authorise -------------------------------------------------------------------
    async def _events(self, work: _Work, ids: Iterable[str]) -> dict[str, Event]:
        out: dict[str, Event] = {}
        missing = []
        for eid in ids:
            built = work.built.get(eid)
            if built is not None:
                out[eid] = built
            else:
                missing.append(eid)
        if missing:
            found = await self.store.get_events(missing)
            for eid in missing:
                if eid not in found:
                    raise RuntimeError(f"event {eid} of room {work.head.room_id} is missing")
                out[eid] = found[eid].event
        return out

    async def _build(self, work: _Work, spec: EventSpec) -> PersistItem:
        head = work.head
        rv = head.room_version
        keys = auth_types_for_event(rv, spec.type, spec.state_key, spec.sender, spec.content)
        keys.add(CREATE_KEY)
        ids = {k: i for k in keys if (i := work.state_id(k)) is not None}
        prev_ids = work.extremities[-MAX_PREV_EVENTS:]
        loaded = await self._events(work, [*ids.values(), *prev_ids])
        state = {k: loaded[i] for k, i in ids.items()}
        try:
            event = build_event(
                room_version=rv,
                event_type=spec.type,
                sender=spec.sender,
                content=spec.content,
                room_id=head.room_id,
                prev_events=[loaded[p] for p in prev_ids],
                current_state=state,
                origin_server_ts=(spec.origin_server_ts if spec.origin_server_ts is not None
                                  else self.clock.time_ms()),
                signing_key=self.signing_key,
                server_name=self.server_name,
                state_key=spec.state_key,
                redacts=spec.redacts,
            )
        except EventBuildError as e:
            raise size_error(e) from None
        try:
            check_auth(event, state)
        except AuthError as e:
            raise MatrixError(403, Codes.FORBIDDEN, e.reason) from None

        item = PersistItem(event, txn=spec.txn)
        if event.is_state():
            item.replaces = work.state_id(event.state_tuple)
            by_id = {e.event_id: k for k, e in state.items()}
            auth = [(a, by_id[a]) for a in event.auth_event_ids if a in by_id]
            if rv.room_id_is_create_event_hash:
                auth.append((create_event_id_from_room_id(head.room_id), CREATE_KEY))
            item.auth = auth
        if event.type == REDACTION and event.redacts is not None:
            item.redacts = event.redacts
            target = await self.store.get_event(event.redacts)
            if target is not None and target.room_id == head.room_id:
                if _may_apply_redaction(event, target.event, state):
                    item.redacted_json = redact(target.event.pdu_json(), rv)
        self._advance(work, event)
        return item

    async def _countersigned(
        self, work: _Work, spec: EventSpec,
        countersign: Callable[[Event, RoomView], Awaitable[Event]],
    ) -> PersistItem:
        """Build, then have the event countersigned (its ID does not change); if that
        fails, the batch goes on as if the event had never been built."""
        saved = (list(work.extremities), work.max_depth, dict(work.changes))
        item = await self._build(work, spec)
        try:
            signed = await countersign(item.event, RoomView(self, work))
        except BaseException:
            work.extremities, work.max_depth, work.changes = saved
            work.built.pop(item.event.event_id, None)
            raise
        if signed.event_id != item.event.event_id:
            raise RuntimeError("countersigning changed the event ID")
        item.event = signed
        work.built[signed.event_id] = signed
        return item

    def _advance(self, work: _Work, event: Event) -> None:
        work.built[event.event_id] = event
        work.extremities = [event.event_id]
        work.max_depth = max(work.max_depth, event.depth)
        if event.is_state():
            work.changes[event.state_tuple] = event.event_id

    # -- persist and publish ----------------------------------------------------------------
    async def _persist(
        self, work: _Work, items: list[PersistItem], new_room: NewRoom | None,
        plan: HeadPlan | None = None, backfilled: bool = False,
    ) -> tuple[PersistResult, list[StoredEvent]]:
        head = work.head
        referenced: set[str] = set()
        for it in items:
            referenced.update(it.event.prev_event_ids)
            referenced.update(a for a, _ in it.auth)
            if it.replaces:
                referenced.add(it.replaces)
            if it.redacts:
                referenced.add(it.redacts)
        known = {}
        for eid in referenced:
            cached = self.store.cached(eid)
            if cached is not None:
                known[eid] = cached.event_nid
        try:
            result = await self.store.persist(PersistRequest(
                head.room_id,
                head.state_group if new_room is None else None,
                head.state_chain_len,
                items,
                work.extremities,
                work.max_depth,
                new_room,
                known,
                self.state_store.key_nids,
                self.clock.time_ms(),
                plan,
                backfilled,
            ))
        except DuplicateTransaction:
            raise
        except BaseException:
            # The transaction may or may not have committed: read the head afresh next time.
            self._heads.pop(head.room_id)
            raise
        self.batches += 1
        # Committed: move the head on.
        head.state.update(work.changes)
        head.extremities = work.extremities
        head.max_depth = work.max_depth
        head.state_group = result.state_group
        head.state_chain_len = result.state_chain_len
        if new_room is not None:
            self._heads.set(head.room_id, head)
        stored = [
            StoredEvent(
                event=it.event,
                event_nid=p.event_nid,
                room_id=head.room_id,
                stream_ordering=p.stream_ordering,
                state_group=p.state_group,
                rejected=it.rejected,
                replaces_state=it.replaces,
                redacted_by=None,
                txn_device=it.txn[0] if it.txn else None,
                txn_id=it.txn[1] if it.txn else None,
                soft_failed=it.soft_failed,
            )
            for it, p in zip(items, result.events, strict=True)
        ]
        self.store.cache(stored)
        for it in items:
            if it.redacted_json is not None and it.redacts is not None:
                self.store.invalidate(it.redacts)
            if it.txn is not None:
                self._txns.set((it.event.sender, *it.txn), it.event.event_id)
        return result, stored

    def _after_commit(self, room_id: str, stored: list[StoredEvent], result: PersistResult) -> None:
        users = {
            s.event.state_key
            for s in stored
            if s.event.type == MEMBER and s.event.state_key is not None
        }
        self.notifier.notify(
            EVENTS_STREAM, stored[-1].stream_ordering, rooms=[room_id], users=users
        )
        for hook in self.on_persisted:
            try:
                hook(room_id, stored)
            except Exception:
                logger.exception("on_persisted hook failed for %s", room_id)


def _diff(old: Mapping[StateKey, str], new: Mapping[StateKey, str]) -> dict[StateKey, str | None]:
    delta: dict[StateKey, str | None] = {k: v for k, v in new.items() if old.get(k) != v}
    delta.update({k: None for k in old if k not in new})
    return delta


def _diff_size(old: Mapping[StateKey, str], new: Mapping[StateKey, str]) -> int:
    return len(_diff(old, new))


def _may_apply_redaction(
    redaction: Event, target: Event, state: Mapping[StateKey, Event]
) -> bool:
    """Whether a redaction takes effect on its target: the redacter has the redact level, or
    (room v3+) comes from the target sender's server; v1/v2 checked this in the auth rules."""
    if redaction.room_version.uses_server_assigned_event_ids:
        return True
    if get_user_power_level(redaction.sender, state) >= get_named_level(state, "redact"):
        return True
    return get_domain(redaction.sender) == get_domain(target.sender)


# -- the client format -----------------------------------------------------------------------


def client_event(
    stored: StoredEvent,
    now_ms: int,
    *,
    device: tuple[str, str | None] | None = None,
    replaced: StoredEvent | None = None,
    redaction: StoredEvent | None = None,
) -> JsonDict:
    """The event in the client-server API's ClientEvent format.

    ``device`` is the requester's (user_id, device_id), to add ``transaction_id`` for its own
    sends; ``replaced`` the state event this one replaced (``prev_content``); ``redaction``
    the event that redacted it (``redacted_because``).
    """
    ev = stored.event
    out: JsonDict = {
        "event_id": ev.event_id,
        "type": ev.type,
        "sender": ev.sender,
        "origin_server_ts": ev.origin_server_ts,
        "content": ev.content,
        "room_id": stored.room_id,
    }
    if ev.is_state():
        out["state_key"] = ev.state_key
    redacts = ev.redacts
    if redacts is not None:
        # v11 moved it into content; clients of older versions read the top-level key.
        out["redacts"] = redacts
    unsigned: JsonDict = {"age": max(0, now_ms - ev.origin_server_ts)}
    if replaced is not None:
        unsigned["replaces_state"] = replaced.event_id
        unsigned["prev_content"] = replaced.event.content
        unsigned["prev_sender"] = replaced.event.sender
    if redaction is not None:
        unsigned["redacted_because"] = client_event(redaction, now_ms)
    if (
        device is not None
        and stored.txn_id is not None
        and device[0] == ev.sender
        and device[1] == stored.txn_device
    ):
        unsigned["transaction_id"] = stored.txn_id
    out["unsigned"] = unsigned
    return out
