"""GET /sync: everything that changed for one user's device between two sync tokens.

A request reads the user's memberships, then the newest committed position of every stream
(``SyncToken``); the response covers exactly (since, now] on each stream, so consecutive syncs
never skip or repeat anything. Nothing new (every position unchanged) costs two small reads
before waiting. Otherwise each part is read from ``since`` onwards through an index
(``storage.sync``), never by scanning history:

- rooms: the user's membership events in the range sort rooms into join (newly joined rooms
  get their recent timeline and full state), invite/knock (stripped state), leave (the
  timeline up to the leave); rooms with new events, typing, receipts or room account data;
- timeline: the newest ``limit`` visible, filtered events, ``limited`` when more exist, and
  ``prev_batch`` = ``s<stream before the first one>``, which /messages continues from;
- ``state`` (before the timeline) or ``state_after`` (at its end, with ``use_state_after``):
  a diff of the state at ``since`` and there, skipped when the timeline holds every event of
  the range; full state for new rooms, initial syncs and ``full_state``;
- ephemeral (typing, receipts), account data, to-device, device lists, presence.

With a ``timeout`` and nothing to say, the request waits on the notifier for any stream to
move for this user or one of their joined rooms (so an event wakes only those in its room),
then reads again from where it left off. The to-device messages a ``since`` token covers are
deleted when it is used: the client has acknowledged them.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from twisted.internet import defer

from federation.events import JsonDict, StateKey
from homeserver.clock import Clock
from homeserver.http.errors import Codes, MatrixError
from homeserver.services.e2ee import E2eeServices
from homeserver.services.events import MEMBER, EventsService
from homeserver.services.notifier import Notifier
from homeserver.services.presence import OFFLINE, PresenceService
from homeserver.services.receipts import ReceiptService, receipt_events
from homeserver.services.rooms import RoomService
from homeserver.services.state import StateService
from homeserver.services.sync.device_lists import device_list_delta
from homeserver.services.sync.filter import EventFilter, SyncFilter
from homeserver.services.sync.token import InvalidToken, SyncToken
from homeserver.services.typing import TypingService
from homeserver.storage.account_data import AccountDataStore
from homeserver.storage.cache import LruCache
from homeserver.storage.events import EventStore, StoredEvent
from homeserver.storage.out_of_band import OutOfBandMembership, OutOfBandStore
from homeserver.storage.state import StateFilter, StateStore
from homeserver.storage.sync import MembershipChange, SyncStore

logger = logging.getLogger(__name__)
T = TypeVar("T")

NAME: StateKey = ("m.room.name", "")
CANONICAL_ALIAS: StateKey = ("m.room.canonical_alias", "")
STRIPPED_STATE: list[StateKey] = [
    ("m.room.create", ""), NAME, ("m.room.avatar", ""), ("m.room.topic", ""),
    ("m.room.join_rules", ""), CANONICAL_ALIAS, ("m.room.encryption", ""),
]
SUMMARY_TYPES = {MEMBER, NAME[0], CANONICAL_ALIAS[0]}
IGNORED_USER_LIST = "m.ignored_user_list"
PUSH_RULES = "m.push_rules"
TO_DEVICE_LIMIT = 100
# At most this many rounds of reading back when filters hide events from a timeline.
MAX_TIMELINE_ROUNDS = 5
ROOM_CONCURRENCY = 8
MAX_TIMEOUT_MS = 10 * 60 * 1000


@dataclass
class SyncRequest:
    user_id: str
    device_id: str | None
    since: SyncToken | None = None
    timeout_ms: int = 0
    full_state: bool = False
    filter: SyncFilter = field(default_factory=SyncFilter)
    set_presence: str | None = None
    use_state_after: bool = False


@dataclass
class _Snapshot:
    token: SyncToken
    # room -> (membership, event ID) as read just before ``token``
    memberships: dict[str, tuple[str, str]]
    # For an initial sync: the events position read before the memberships.
    base_events: int = 0
    # The out-of-band memberships among ``memberships``, by event ID.
    out_of_band: dict[str, OutOfBandMembership] = field(default_factory=dict)

    @property
    def joined_rooms(self) -> list[str]:
        return [r for r, (m, _) in self.memberships.items() if m == "join"]


@dataclass
class _Result:
    token: SyncToken
    join: dict[str, JsonDict] = field(default_factory=dict)
    invite: dict[str, JsonDict] = field(default_factory=dict)
    leave: dict[str, JsonDict] = field(default_factory=dict)
    knock: dict[str, JsonDict] = field(default_factory=dict)
    presence: list[JsonDict] = field(default_factory=list)
    account_data: list[JsonDict] = field(default_factory=list)
    to_device: list[JsonDict] = field(default_factory=list)
    changed: set[str] = field(default_factory=set)
    left: set[str] = field(default_factory=set)

    def has_content(self) -> bool:
        return bool(
            self.join or self.invite or self.leave or self.knock or self.presence
            or self.account_data or self.to_device or self.changed or self.left
        )


@dataclass
class _Timeline:
    events: list[StoredEvent]
    limited: bool
    # Every event of the range is in ``events`` (nothing hidden, nothing left out).
    complete: bool
    prev_batch: str


def _diff(old: Mapping[StateKey, str], new: Mapping[StateKey, str]) -> dict[StateKey, str]:
    return {k: v for k, v in new.items() if old.get(k) != v}


def _stripped(ev: StoredEvent) -> JsonDict:
    e = ev.event
    return {"type": e.type, "state_key": e.state_key, "sender": e.sender, "content": e.content}


def _out_of_band_leave(req: SyncRequest, oob: OutOfBandMembership, now: int,
                       account_data: list[JsonDict]) -> JsonDict:
    """A rejected invite to a room this server is not in: the leave event alone."""
    ev = oob.event
    events: list[JsonDict] = []
    if req.filter.timeline.matches(ev.type, ev.sender, ev.content):
        events.append(ev.pdu_json() if req.filter.event_format == "federation" else {
            "event_id": ev.event_id, "type": ev.type, "sender": ev.sender,
            "state_key": ev.state_key, "content": ev.content,
            "origin_server_ts": ev.origin_server_ts,
            "unsigned": {"age": max(0, now - ev.origin_server_ts)},
        })
    data: JsonDict = {
        "timeline": {"events": events, "limited": False,
                     "prev_batch": f"s{oob.stream_ordering - 1}"},
        "account_data": {"events": account_data},
    }
    data["state_after" if req.use_state_after else "state"] = {"events": []}
    return data


async def _gather(items: Sequence[T], fn: Callable[[T], Awaitable[Any]]) -> list[Any]:
    sem = defer.DeferredSemaphore(ROOM_CONCURRENCY)

    async def one(item: T) -> Any:
        await sem.acquire()
        try:
            return await fn(item)
        finally:
            sem.release()

    return list(await defer.gatherResults(
        [defer.ensureDeferred(one(i)) for i in items], consumeErrors=True
    ))


PushSource = Callable[[], Any]


class SyncService:
    def __init__(
        self,
        *,
        clock: Clock,
        rooms: RoomService,
        pipeline: EventsService,
        state: StateService,
        state_store: StateStore,
        events: EventStore,
        store: SyncStore,
        notifier: Notifier,
        typing: TypingService,
        receipts: ReceiptService,
        presence: PresenceService,
        account_data: AccountDataStore,
        e2ee: E2eeServices,
        push_source: PushSource = lambda: None,
    ) -> None:
        self.clock = clock
        self.rooms = rooms
        self.pipeline = pipeline
        self.state = state
        self.state_store = state_store
        self.events = events
        self.store = store
        self.notifier = notifier
        self.typing = typing
        self.receipts = receipts
        self.presence = presence
        self.account_data = account_data
        self.e2ee = e2ee
        self.push_source = push_source
        self.closing = False
        self._acked: LruCache[tuple[str, str], int] = LruCache(100_000)
        # user -> (account_data position, ignored users read at or after it)
        self._ignored: LruCache[str, tuple[int, frozenset[str]]] = LruCache(100_000)
        # Invites to (and rejections of) rooms this server is not in; set by federation.
        self.out_of_band: OutOfBandStore | None = None

    def shutdown(self) -> None:
        """Answer every waiting request now and wait no more (the server is stopping)."""
        self.closing = True
        self.notifier.wake_all()

    # == the request ========================================================================

    async def sync(self, req: SyncRequest) -> JsonDict:
        counted = await self.presence.sync_started(req.user_id, req.set_presence)
        try:
            return await self._sync(req)
        finally:
            self.presence.sync_ended(req.user_id, counted)

    async def current_token(self) -> SyncToken:
        return SyncToken.from_positions(await self.store.positions(), self.typing.position)

    async def keys_changes(self, user_id: str, from_token: str,
                           to_token: str | None) -> JsonDict:
        """GET /keys/changes: the device_lists delta between two /sync tokens."""
        try:
            since = SyncToken.parse(from_token)
            to = SyncToken.parse(to_token) if to_token else await self.current_token()
        except InvalidToken:
            raise MatrixError(400, Codes.INVALID_PARAM,
                              "'from' and 'to' must be tokens returned by /sync") from None
        changed, left = await device_list_delta(self.store, self.state_store, self.e2ee.keys,
                                                user_id, since, to)
        return {"changed": sorted(changed), "left": sorted(left)}

    async def _snapshot(self, user_id: str, initial: bool) -> _Snapshot:
        base = (await self.store.positions()).get("events", 0) if initial else 0
        rows = await self.state_store.rooms_for_user(user_id)
        memberships = {m.room_id: (m.membership, m.event_id) for m in rows}
        out_of_band = {}
        if self.out_of_band is not None:
            rows_oob = await self.out_of_band.latest(user_id)
            # The room-state memberships these compete with, in one read.
            ids = [memberships[o.room_id][1] for o in rows_oob if o.room_id in memberships]
            members = await self.events.get_events(ids) if ids else {}
            for o in rows_oob:
                known = memberships.get(o.room_id)
                member = members.get(known[1]) if known else None
                # Newer than what the room's (possibly stale) state says.
                if member is None or member.stream_ordering < o.stream_ordering:
                    memberships[o.room_id] = (o.membership, o.event_id)
                    out_of_band[o.event_id] = o
        return _Snapshot(await self.current_token(), memberships, base, out_of_band)

    async def _sync(self, req: SyncRequest) -> JsonDict:
        since = req.since
        if since is not None and req.device_id and since.to_device > 0:
            # The token acknowledges the to-device messages up to its position (each device's
            # acknowledged position is remembered, so repeated tokens cost no write).
            key = (req.user_id, req.device_id)
            if (self._acked.get(key) or 0) < since.to_device:
                await self.e2ee.to_device.delete_to_device_up_to(
                    req.user_id, req.device_id, since.to_device
                )
                self._acked.set(key, since.to_device)
        waits = since is not None and not req.full_state
        timeout = min(max(0, req.timeout_ms), MAX_TIMEOUT_MS) if waits else 0
        started = self.clock.monotonic()
        while True:
            snap = await self._snapshot(req.user_id, initial=since is None)
            now = snap.token
            result: _Result | None = None
            if since is None or req.full_state or now != since:
                result = await self._compute(req, since, snap)
                if result.has_content():
                    return await self._respond(req, result)
            remaining = int(timeout - (self.clock.monotonic() - started) * 1000)
            if remaining <= 0 or self.closing:
                return await self._respond(req, result or _Result(now))
            # Nothing for this user in (since, now]: wait for more, then carry on from now.
            await self.notifier.wait_for(req.user_id, snap.joined_rooms, now.streams(), remaining)
            since = now

    async def _respond(self, req: SyncRequest, result: _Result) -> JsonDict:
        body: JsonDict = {
            "next_batch": result.token.encode(),
            "rooms": {
                "join": result.join, "invite": result.invite, "leave": result.leave,
                "knock": result.knock,
            },
            "presence": {"events": result.presence},
            "account_data": {"events": result.account_data},
            "to_device": {"events": result.to_device},
            "device_lists": {"changed": sorted(result.changed), "left": sorted(result.left)},
        }
        if req.device_id:
            counts, fallback = await self.e2ee.keys.sync_key_counts(req.user_id, req.device_id)
            body["device_one_time_keys_count"] = counts
            body["device_unused_fallback_key_types"] = fallback
        return body

    # == computing the response =============================================================

    async def _compute(
        self, req: SyncRequest, since: SyncToken | None, snap: _Snapshot
    ) -> _Result:
        user = req.user_id
        f = req.filter
        now = snap.token
        initial = since is None
        full = initial or req.full_state
        s = since or SyncToken()
        # A typing position from before a restart of this process means nothing now.
        typing_since = s.typing if s.typing <= now.typing else 0
        result = _Result(now)

        # Membership at ``now``: as read, updated by the user's membership events since.
        lower = snap.base_events if initial else s.events
        changes = await self.store.membership_changes(user, lower, now.events)
        out_of_band: dict[str, OutOfBandMembership] = {}
        if self.out_of_band is not None and lower < now.events:
            for o in await self.out_of_band.changes(user, lower, now.events):
                out_of_band[o.event_id] = o
                changes.append(MembershipChange(
                    o.room_id, o.event_id, o.membership, o.stream_ordering,
                    "invite" if o.membership == "leave" else None, o.sender))
            changes.sort(key=lambda c: c.stream_ordering)
        out_of_band.update(snap.out_of_band)
        by_room: dict[str, list[MembershipChange]] = defaultdict(list)
        current = dict(snap.memberships)
        for c in changes:
            by_room[c.room_id].append(c)
            current[c.room_id] = (c.membership, c.event_id)
        if initial:
            by_room.clear()

        def joined_at_since(room_id: str, skip_last: bool = False) -> bool:
            """Joined at ``since`` and throughout the range (up to its last change)."""
            if initial:
                return False
            rc = by_room.get(room_id)
            if rc:
                kept = rc[:-1] if skip_last else rc
                return rc[0].prev_membership == "join" and all(
                    c.membership == "join" for c in kept
                )
            return current[room_id][0] == "join"

        ignored = await self._ignored_users(user, now.account_data)
        joined_all = [r for r, (m, _) in current.items() if m == "join"]
        joined = [r for r in joined_all if f.allows_room(r)]
        new_joined = {r for r in joined if full or not joined_at_since(r)}
        newly_joined_all = {r for r in joined_all if not initial and not joined_at_since(r)}
        old_joined = [r for r in joined if r not in new_joined]

        # What changed in the rooms the user was already in (on an initial sync every room is
        # new: no need to look at their history).
        with_events: dict[str, int] = {}
        if not initial:
            with_events = await self.store.rooms_with_events(
                [r for r in joined_all if r not in newly_joined_all], s.events, now.events
            )
        typing_rooms = set(self.typing.changed_rooms(joined, typing_since))
        receipts = []
        if old_joined and s.receipts < now.receipts:
            receipts += await self.receipts.for_rooms(old_joined, s.receipts, now.receipts)
        if new_joined:
            receipts += await self.receipts.for_rooms(sorted(new_joined), 0, now.receipts)
        receipt_evs = receipt_events(receipts, user, ignored)
        account_rows = await self.store.account_data(user, 0 if initial else s.account_data,
                                                     now.account_data)
        room_data: dict[str, list[JsonDict]] = defaultdict(list)
        for room_id, data_type, content in account_rows:
            ev = {"type": data_type, "content": content}
            if not room_id:
                if f.account_data.matches(data_type):
                    result.account_data.append(ev)
            elif f.room_account_data.allows_room(room_id) and f.room_account_data.matches(
                data_type
            ):
                room_data[room_id].append(ev)
        if initial:
            await self._default_push_rules(user, account_rows, f.account_data, result)

        to_emit = set(new_joined)
        to_emit |= {r for r in old_joined if r in with_events or r in typing_rooms
                    or r in receipt_evs or r in room_data}
        if req.full_state:
            to_emit |= set(old_joined)

        async def join_room(room_id: str) -> tuple[str, JsonDict | None]:
            # New to the user: the recent timeline, not just what came after ``since``.
            fresh = initial or room_id in newly_joined_all
            data = await self._room(
                req, room_id, lower=0 if fresh else s.events, upper=now.events,
                full_state=full or room_id in new_joined, joined_now=True, ignored=ignored,
                account_data=room_data.get(room_id, []),
            )
            ephemeral: list[JsonDict] = []
            eph = f.ephemeral
            if eph.allows_room(room_id):
                if (room_id in typing_rooms or (room_id in new_joined and
                                                self.typing.typing_users(room_id))) and (
                    eph.matches("m.typing")
                ):
                    ephemeral.append(self.typing.event(room_id, ignored))
                if room_id in receipt_evs and eph.matches("m.receipt"):
                    ephemeral.append(receipt_evs[room_id])
            if not (room_id in new_joined or ephemeral or data["timeline"]["events"]
                    or data.get("state", {}).get("events")
                    or data.get("state_after", {}).get("events")
                    or data["account_data"]["events"] or req.full_state):
                return room_id, None
            data["ephemeral"] = {"events": ephemeral}
            return room_id, data

        for room_id, data in await _gather(sorted(to_emit), join_room):
            if data is not None:
                result.join[room_id] = data
        await self._unread(req, result.join)

        # Invites and knocks: new ones (all of them on an initial sync).
        for room_id, (membership, event_id) in sorted(current.items()):
            if membership not in ("invite", "knock") or not f.allows_room(room_id):
                continue
            if not initial and room_id not in by_room and not req.full_state:
                continue
            member = await self.events.get_event(event_id)
            oob = out_of_band.get(event_id)
            if member is None and oob is not None and membership == "invite":
                if oob.sender not in ignored:
                    result.invite[room_id] = {"invite_state": {"events": oob.stripped_state}}
                continue
            if member is None and oob is not None:
                # A knock on a room this server is not in (services/federation_knocks).
                result.knock[room_id] = {"knock_state": {"events": oob.stripped_state}}
                continue
            if member is None:
                continue
            if membership == "invite" and member.event.sender in ignored:
                continue
            stripped = await self._stripped_state(member)
            if membership == "invite":
                result.invite[room_id] = {"invite_state": {"events": stripped}}
            else:
                result.knock[room_id] = {"knock_state": {"events": stripped}}

        # Rooms left (or banned from): newly, or all of them with include_leave.
        leave_rooms = [
            r for r, (m, _) in current.items()
            if m in ("leave", "ban") and f.allows_room(r)
            and (r in by_room or (full and f.include_leave))
        ]
        if leave_rooms:
            forgotten = await self.events.forgotten_rooms(user)
            leave_rooms = [r for r in leave_rooms if r not in forgotten]

        async def leave_room(room_id: str) -> tuple[str, JsonDict | None]:
            oob = out_of_band.get(current[room_id][1])
            if oob is not None:
                return room_id, _out_of_band_leave(req, oob, self.clock.time_ms(),
                                                   room_data.get(room_id, []))
            return room_id, await self._left_room(
                req, room_id, current[room_id][1], by_room.get(room_id, []),
                joined_at_since(room_id, skip_last=True), full, ignored,
                room_data.get(room_id, []),
            )

        for room_id, data in await _gather(sorted(leave_rooms), leave_room):
            if data is not None:
                result.leave[room_id] = data

        if not initial:
            await self._device_lists(
                user, s, now, result, joined_all, newly_joined_all, with_events,
                [r for r in leave_rooms if r in by_room],
            )
        await self._presence(user, s, now, initial, result, f.presence, ignored,
                             sorted(newly_joined_all))
        if req.device_id and since is not None and s.to_device >= now.to_device:
            # No message for any device since the token: nothing to read.
            result.token = result.token.with_(to_device=max(now.to_device, s.to_device))
        elif req.device_id:
            batch = await self.e2ee.to_device.get_to_device(
                user, req.device_id, s.to_device if since else 0, TO_DEVICE_LIMIT
            )
            result.to_device = batch.events
            if len(batch.events) >= TO_DEVICE_LIMIT:
                result.token = result.token.with_(to_device=batch.position)
            else:
                result.token = result.token.with_(
                    to_device=max(now.to_device, batch.position)
                )
        return result

    # == rooms ===============================================================================

    async def _room(
        self,
        req: SyncRequest,
        room_id: str,
        *,
        lower: int,
        upper: int,
        full_state: bool,
        joined_now: bool,
        ignored: set[str],
        account_data: list[JsonDict],
    ) -> JsonDict:
        f = req.filter
        user = req.user_id
        tl = await self._timeline(req, room_id, lower, upper, joined_now, ignored)
        senders = {e.event.sender for e in tl.events}
        timeline_ids = {e.event_id for e in tl.events}
        lazy = f.lazy_load_members

        # The state part: ids of the state events to send.
        base_at: StoredEvent | int  # what lazy-loaded members are read at
        if req.use_state_after:
            base_at = upper
            if full_state:
                ids = await self._state_at(room_id, upper)
            elif tl.complete and not any(e.event.is_state() for e in tl.events):
                ids = {}
            else:
                ids = _diff(await self._state_at(room_id, lower),
                            await self._state_at(room_id, upper))
        else:
            base_at = tl.events[0] if tl.events else upper
            if full_state:
                ids = await self._state_before(room_id, base_at)
            elif tl.complete:
                ids = {}
            else:
                ids = _diff(await self._state_at(room_id, lower),
                            await self._state_before(room_id, base_at))

        summary: JsonDict | None = None
        changed_types = {k[0] for k in ids}
        changed_types |= {e.event.type for e in tl.events if e.event.is_state()}
        if joined_now and (full_state or changed_types & SUMMARY_TYPES):
            summary = await self._summary(room_id, user)

        if lazy:
            wanted = set(senders)
            if full_state:
                wanted.add(user)
                wanted.update((summary or {}).get("m.heroes", []))
                # Members of a full state are only those wanted (gap members stay in diffs).
                ids = {k: v for k, v in ids.items() if k[0] != MEMBER or k[1] in wanted}
            keys = [(MEMBER, u) for u in wanted]
            if keys:
                found = await self._state_before(room_id, base_at, StateFilter.from_keys(keys)) \
                    if not req.use_state_after else await self._state_at(
                        room_id, upper, StateFilter.from_keys(keys))
                for k, v in found.items():
                    if v not in timeline_ids or req.use_state_after:
                        ids.setdefault(k, v)

        state_events: list[StoredEvent] = []
        if f.state.allows_room(room_id) and ids:
            loaded = await self.events.get_events(ids.values())
            state_events = [
                loaded[v] for v in ids.values()
                if v in loaded and f.state.matches(
                    loaded[v].event.type, loaded[v].event.sender, loaded[v].event.content
                )
            ]
            state_events.sort(key=lambda e: e.stream_ordering)

        data: JsonDict = {
            "timeline": {
                "events": await self._serialize(req, tl.events),
                "limited": tl.limited,
                "prev_batch": tl.prev_batch,
            },
            "account_data": {"events": account_data},
        }
        state_json = {"events": await self._serialize(req, state_events)}
        data["state_after" if req.use_state_after else "state"] = state_json
        if summary is not None:
            data["summary"] = summary
        return data

    async def _timeline(
        self, req: SyncRequest, room_id: str, lower: int, upper: int, joined_now: bool,
        ignored: set[str],
    ) -> _Timeline:
        """The newest ``limit`` events in (lower, upper] the user may see and the filter
        lets through, oldest first."""
        f = req.filter
        tf: EventFilter = f.timeline
        limit = f.timeline_limit
        if not tf.allows_room(room_id) or tf.blocks_everything or lower >= upper:
            empty_range = lower >= upper
            return _Timeline([], False, empty_range, f"s{upper}")
        kept: list[StoredEvent] = []
        hidden = False
        exhausted = False
        cursor = upper
        rounds = 0
        while len(kept) <= limit and not exhausted and rounds < MAX_TIMELINE_ROUNDS:
            rounds += 1
            want = limit + 1 - len(kept)
            rows = await self.store.room_events_before(room_id, lower, cursor, want)
            if len(rows) < want:
                exhausted = True
            if not rows:
                break
            cursor = rows[-1].stream_ordering - 1
            visible = await self.rooms.filter_visible(room_id, req.user_id, rows, joined_now)
            for e in visible:
                ev = e.event
                if ev.sender in ignored and not ev.is_state():
                    continue
                if not tf.matches(ev.type, ev.sender, ev.content):
                    continue
                kept.append(e)
            if len(visible) != len(rows) or len(kept) < len(rows):
                hidden = True
        limited = len(kept) > limit or not exhausted
        events = list(reversed(kept[:limit]))
        prev_batch = f"s{events[0].stream_ordering - 1}" if events else f"s{upper}"
        return _Timeline(events, limited, not limited and not hidden, prev_batch)

    async def _state_at(
        self, room_id: str, position: int, state_filter: StateFilter | None = None
    ) -> dict[StateKey, str]:
        if position <= 0:
            return {}
        group = await self.store.state_group_at(room_id, position)
        if group is None:
            return {}
        return await self.state_store.state_at_group(group, state_filter)

    async def _state_before(
        self, room_id: str, at: StoredEvent | int, state_filter: StateFilter | None = None
    ) -> dict[StateKey, str]:
        if isinstance(at, int):
            return await self._state_at(room_id, at, state_filter)
        return await self.state.state_before(at, state_filter)

    async def _summary(self, room_id: str, user_id: str) -> JsonDict:
        counts = await self.store.member_counts(room_id)
        summary: JsonDict = {
            "m.joined_member_count": counts.joined,
            "m.invited_member_count": counts.invited,
        }
        ids = await self.pipeline.current_state_ids(
            room_id, StateFilter.from_keys([NAME, CANONICAL_ALIAS])
        )
        named = False
        if ids:
            found = await self.events.get_events(ids.values())
            name = found.get(ids.get(NAME, ""))
            alias = found.get(ids.get(CANONICAL_ALIAS, ""))
            named = bool(name and name.event.content.get("name")) or bool(
                alias and alias.event.content.get("alias")
            )
        if not named:
            summary["m.heroes"] = await self.store.heroes(room_id, user_id)
        return summary

    async def _unread(self, req: SyncRequest, rooms: Mapping[str, JsonDict]) -> None:
        """Unread counts of the joined rooms in the response, from the push service in one
        query: totals for the whole room and per thread root. With
        ``unread_thread_notifications`` the room's counts are the main timeline's (totals
        minus the threads') and the threads are listed apart."""
        if not rooms:
            return
        push = self.push_source()
        if push is None:
            for data in rooms.values():
                data["unread_notifications"] = {"notification_count": 0, "highlight_count": 0}
            return
        counts = await push.counts_for_rooms(req.user_id, list(rooms))
        for room_id, data in rooms.items():
            c = counts[room_id]
            notifications, highlights = c.notifications, c.highlights
            if req.filter.timeline.unread_thread_notifications:
                per_thread = {
                    root: {"notification_count": int(n), "highlight_count": int(h)}
                    for root, (n, h) in c.threads.items()
                    if n or h
                }
                notifications -= sum(t["notification_count"] for t in per_thread.values())
                highlights -= sum(t["highlight_count"] for t in per_thread.values())
                if per_thread:
                    data["unread_thread_notifications"] = per_thread
            data["unread_notifications"] = {
                "notification_count": max(0, int(notifications)),
                "highlight_count": max(0, int(highlights)),
            }

    async def _left_room(
        self,
        req: SyncRequest,
        room_id: str,
        event_id: str,
        changes: list[MembershipChange],
        joined_at_since: bool,
        full: bool,
        ignored: set[str],
        account_data: list[JsonDict],
    ) -> JsonDict | None:
        leave = await self.events.get_event(event_id)
        if leave is None:
            return None
        if changes:
            prev = changes[-1].prev_membership
        else:
            replaced = await self.events.get_event(leave.replaces_state or "")
            prev = replaced.event.membership if replaced is not None else None
        if prev != "join" and not joined_at_since:
            # Never in the room (a refused invite, a withdrawn knock, a ban): only the
            # membership event itself.
            events = await self._serialize(req, [leave]) if req.filter.timeline.matches(
                leave.event.type, leave.event.sender, leave.event.content
            ) else []
            data: JsonDict = {
                "timeline": {"events": events, "limited": False,
                             "prev_batch": f"s{leave.stream_ordering - 1}"},
                "account_data": {"events": account_data},
            }
            data["state_after" if req.use_state_after else "state"] = {"events": []}
            return data
        lower = 0 if (full or not joined_at_since) else (req.since or SyncToken()).events
        return await self._room(
            req, room_id, lower=lower, upper=leave.stream_ordering,
            full_state=full or not joined_at_since, joined_now=False, ignored=ignored,
            account_data=account_data,
        )

    async def _stripped_state(self, member: StoredEvent) -> list[JsonDict]:
        ids = await self.state_store.state_at_group(
            member.state_group, StateFilter.from_keys(STRIPPED_STATE)
        )
        found = await self.events.get_events(ids.values())
        out = [_stripped(found[i]) for i in ids.values() if i in found]
        out.append(_stripped(member))
        return out

    async def _serialize(self, req: SyncRequest, events: list[StoredEvent]) -> list[JsonDict]:
        if not events:
            return []
        f = req.filter
        if f.event_format == "federation":
            out = [e.event.pdu_json() for e in events]
        else:
            out = await self.rooms.serialize(events, req.user_id, req.device_id)
            for e in out:
                e.pop("room_id", None)
        if f.event_fields is not None:
            out = [f.shape(e) for e in out]
        return out

    async def _default_push_rules(self, user: str, rows: Sequence[tuple[str, str, Any]],
                                  wanted: EventFilter, result: _Result) -> None:
        """``m.push_rules`` is written only when a user changes a rule; clients (Element)
        expect it in every initial sync, so a user who never changed theirs gets the
        server-default ruleset here, as Synapse does."""
        push = self.push_source()
        if push is None or not wanted.matches(PUSH_RULES):
            return
        if any(not room_id and data_type == PUSH_RULES for room_id, data_type, _ in rows):
            return
        result.account_data.append(
            {"type": PUSH_RULES, "content": {"global": await push.rules.ruleset(user)}}
        )

    async def _ignored_users(self, user_id: str, position: int) -> set[str]:
        """The user's ignore list; ``position`` is the account_data stream's, read before:
        while it has not moved, nobody's account data has changed and a cached list holds."""
        hit = self._ignored.get(user_id)
        if hit is not None and hit[0] == position:
            return set(hit[1])
        content = await self.account_data.get(user_id, "", IGNORED_USER_LIST)
        ignored: set[str] = set()
        if isinstance(content, dict) and isinstance(content.get("ignored_users"), dict):
            ignored = {u for u in content["ignored_users"] if isinstance(u, str) and u != user_id}
        self._ignored.set(user_id, (position, frozenset(ignored)))
        return ignored

    # == device lists and presence ==========================================================

    async def _device_lists(
        self,
        user: str,
        since: SyncToken,
        now: SyncToken,
        result: _Result,
        joined: list[str],
        newly_joined: set[str],
        with_events: Mapping[str, int],
        newly_left: list[str],
    ) -> None:
        changed: set[str] = set()
        left_candidates: set[str] = set()
        if since.device_lists < now.device_lists:
            rows = await self.store.device_list_candidates(since.device_lists, now.device_lists)
            plain = {u for u, only_for in rows if only_for is None}
            shared = await self.store.sharing_a_room(user, plain)
            changed |= await self.e2ee.keys.changed_users(
                user, since.device_lists, shared, to=now.device_lists
            )
        if newly_joined:
            changed |= await self.store.joined_members(sorted(newly_joined))
        old = [r for r in joined if r in with_events and r not in newly_joined]
        for _room, member, membership in await self.store.member_changes_in_rooms(
            old, since.events, now.events
        ):
            if membership == "join":
                changed.add(member)
            elif membership in ("leave", "ban"):
                left_candidates.add(member)
        if newly_left:
            left_candidates |= await self.store.joined_members(newly_left)
        left_candidates.discard(user)
        if left_candidates:
            still = await self.store.sharing_a_room(user, left_candidates)
            left = left_candidates - still
            result.left = left
            changed -= left
        result.changed = changed

    async def _presence(
        self,
        user: str,
        since: SyncToken,
        now: SyncToken,
        initial: bool,
        result: _Result,
        pf: EventFilter,
        ignored: set[str],
        newly_joined: list[str],
    ) -> None:
        if not self.presence.enabled or pf.blocks_everything:
            return
        store = self.presence.store
        rows = []
        if initial:
            mates = await self.state_store.users_sharing_rooms(user) | {user}
            found = await store.get(sorted(mates - ignored))
            rows = [r for r in found.values() if r.state != OFFLINE or r.status_msg]
        else:
            if since.presence < now.presence:
                changed = {r.user_id: r for r in await store.changed(since.presence,
                                                                    now.presence)}
                candidates = set(changed) - ignored
                visible = await self.store.sharing_a_room(user, candidates - {user})
                if user in candidates:
                    visible.add(user)
                rows = [changed[u] for u in sorted(visible)]
            if newly_joined:
                members = await self.store.joined_members(newly_joined)
                seen = {r.user_id for r in rows}
                found = await store.get(sorted(members - ignored - seen))
                rows += [r for r in found.values() if r.state != OFFLINE]
        result.presence = [
            self.presence.event(r) for r in rows if pf.matches("m.presence", r.user_id)
        ]

