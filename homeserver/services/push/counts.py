"""Evaluating every new event for every local member of its room, and the unread counts that
come of it.

``EventsService.on_persisted`` hands each committed batch to ``on_persisted``; a room's
batches are processed strictly in order by a queue of its own (rooms run in parallel). Per
event: the push-relevant state of the room (joined member count, local joined members and
their display names, power levels, create event) comes from an in-memory ``RoomPushState``
kept at the event's state group -- loaded once, then moved on by the state events that pass
by, and reloaded when an event's state group shows it missed something. The members' compiled
rules and ignore lists come from ``PushRules.info_for`` (cached; misses loaded for the whole
room in one transaction), the event is described once (``EventContext``, whose memo makes
each distinct condition run once per event), and every member costs a walk over their
compiled rules. The batch's notifications are written in one transaction.

Counts read back what was written (``storage.push.unread_counts_txn``). The spec wants a new
event's count in the same /sync response as the event: ``unread_counts`` first waits (briefly)
until the rooms asked about have no batch still being evaluated.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer

from federation.auth_error import AuthError
from federation.events import Event, StateKey
from federation.power_levels import (
    CREATE_KEY,
    POWER_LEVELS_KEY,
    get_user_power_level,
    parse_power_level,
)
from homeserver.clock import Clock
from homeserver.services.push.evaluator import EventContext, evaluate
from homeserver.services.push.rules import PushRules
from homeserver.storage.cache import LruCache
from homeserver.storage.events import EventStore, StoredEvent
from homeserver.storage.push import MAIN_THREAD, OwnEvent, PushAction, PushStore
from homeserver.storage.state import StateFilter, StateStore

logger = logging.getLogger(__name__)

MEMBER = "m.room.member"
# How many relations to follow looking for a thread root (the spec suggests 3).
MAX_THREAD_HOPS = 3
# How long a counts read waits for the evaluation of events already persisted.
SETTLE_TIMEOUT_S = 2.0


@dataclass
class RoomPushState:
    """The push-relevant state of a room as of ``state_group``."""

    state_group: int
    joined_count: int
    # Local users joined to the room -> their display name there.
    local_members: dict[str, str | None]
    power_levels: Event | None
    create: Event | None


@dataclass(frozen=True)
class RoomCounts:
    """A user's unread notifications in a room: the whole room, the main timeline, and per
    thread root (threads with nothing unread left out)."""

    notifications: int
    highlights: int
    main: tuple[int, int] = (0, 0)
    threads: Mapping[str, tuple[int, int]] = field(default_factory=dict)


def _display_name(event: Event) -> str | None:
    name = event.content.get("displayname")
    return name if isinstance(name, str) else None


def _notification_levels(pl: Event | None) -> dict[str, int]:
    levels = pl.content.get("notifications") if pl is not None else None
    out: dict[str, int] = {}
    if pl is not None and isinstance(levels, dict):
        for key, value in levels.items():
            try:
                out[key] = parse_power_level(value, pl.room_version)
            except AuthError:
                continue
    return out


class PushEvaluator:
    def __init__(
        self,
        *,
        store: PushStore,
        rules: PushRules,
        events: EventStore,
        state_store: StateStore,
        clock: Clock,
        server_name: str,
        reactor: Any,
        room_cache_size: int = 10_000,
    ) -> None:
        self.store = store
        self.rules = rules
        self.events = events
        self.state_store = state_store
        self.clock = clock
        self.server_name = server_name
        self.reactor = reactor
        self._suffix = ":" + server_name
        self._rooms: LruCache[str, RoomPushState] = LruCache(room_cache_size, "push_rooms")
        self._queues: dict[str, deque[list[StoredEvent]]] = {}
        self._idle_waiters: dict[str, list[defer.Deferred[None]]] = {}
        self._stopped = False
        # Called with each batch's new notifications once they are stored (pushers).
        self.on_notified: list[Callable[[list[PushAction]], None]] = []
        self.evaluated = 0  # events evaluated (for tests and metrics)

    def stop(self) -> None:
        self._stopped = True

    def is_local(self, user_id: str) -> bool:
        return user_id.endswith(self._suffix)

    # -- the queue ---------------------------------------------------------------------------------
    def on_persisted(self, room_id: str, events: list[StoredEvent]) -> None:
        """The EventsService hook (synchronous: queue the batch, evaluate it soon)."""
        if self._stopped or not events:
            return
        queue = self._queues.get(room_id)
        if queue is None:
            queue = self._queues[room_id] = deque([events])
            defer.ensureDeferred(self._drain(room_id, queue))
        else:
            queue.append(events)

    async def _drain(self, room_id: str, queue: deque[list[StoredEvent]]) -> None:
        try:
            while queue:
                batch = queue[0]
                try:
                    await self._process(room_id, batch)
                except Exception:
                    logger.exception("evaluating push rules in %s failed", room_id)
                    self._rooms.pop(room_id)
                queue.popleft()
        finally:
            del self._queues[room_id]
            for d in self._idle_waiters.pop(room_id, []):
                if not d.called:
                    d.callback(None)

    def busy_rooms(self) -> list[str]:
        """Rooms with batches waiting to be evaluated."""
        return list(self._queues)

    async def settled(self, room_ids: Sequence[str], timeout_s: float = SETTLE_TIMEOUT_S) -> None:
        """Wait until no batch of these rooms is waiting to be evaluated (or the timeout)."""
        deadline = self.reactor.seconds() + timeout_s
        for room in room_ids:
            if room not in self._queues:
                continue
            d: defer.Deferred[None] = defer.Deferred()
            self._idle_waiters.setdefault(room, []).append(d)
            timer = self.reactor.callLater(max(0.0, deadline - self.reactor.seconds()), d.cancel)
            try:
                await d
            except defer.CancelledError:
                logger.warning("push evaluation in %s is slow: its counts may lag", room)
                return
            finally:
                if timer.active():
                    timer.cancel()

    # -- room state --------------------------------------------------------------------------------
    async def _load_room(self, room_id: str, state_group: int) -> RoomPushState:
        ids = await self.state_store.state_at_group(
            state_group, StateFilter.from_types([MEMBER, POWER_LEVELS_KEY[0], CREATE_KEY[0]])
        )
        member_ids = [eid for (t, _), eid in ids.items() if t == MEMBER]
        memberships = await self.store.memberships(member_ids)
        joined = [u for u, m in memberships.values() if m == "join"]
        wanted = [eid for eid, (u, m) in memberships.items() if m == "join" and self.is_local(u)]
        for key in (POWER_LEVELS_KEY, CREATE_KEY):
            if key in ids:
                wanted.append(ids[key])
        found = await self.events.get_events(wanted)
        local: dict[str, str | None] = {}
        for eid, (user, membership) in memberships.items():
            if membership == "join" and self.is_local(user) and eid in found:
                local[user] = _display_name(found[eid].event)
        pl = found.get(ids.get(POWER_LEVELS_KEY, ""))
        create = found.get(ids.get(CREATE_KEY, ""))
        return RoomPushState(
            state_group=state_group,
            joined_count=len(joined),
            local_members=local,
            power_levels=pl.event if pl is not None else None,
            create=create.event if create is not None else None,
        )

    async def _apply(self, state: RoomPushState, stored: StoredEvent) -> None:
        """Move the state on past a state event."""
        ev = stored.event
        state.state_group = stored.state_group
        if ev.type == MEMBER and ev.state_key is not None:
            user = ev.state_key
            before = None
            if stored.replaces_state is not None:
                prev = await self.events.get_event(stored.replaces_state)
                before = prev.event.membership if prev is not None else None
            was, now = before == "join", ev.membership == "join"
            state.joined_count += int(now) - int(was)
            if self.is_local(user):
                if now:
                    state.local_members[user] = _display_name(ev)
                else:
                    state.local_members.pop(user, None)
        elif (ev.type, ev.state_key) == POWER_LEVELS_KEY:
            state.power_levels = ev
        elif (ev.type, ev.state_key) == CREATE_KEY:
            state.create = ev

    async def _follow_upgrade(self, room_id: str, user_id: str, state: RoomPushState) -> None:
        """A local user joining an upgraded room keeps their rules about its predecessor."""
        if not self.is_local(user_id) or state.create is None:
            return
        predecessor = state.create.content.get("predecessor")
        old = predecessor.get("room_id") if isinstance(predecessor, dict) else None
        if isinstance(old, str) and old != room_id:
            try:
                await self.rules.copy_room_rules(user_id, old, room_id)
            except Exception:
                logger.exception("copying %s's push rules to %s failed", user_id, room_id)

    # -- threads -----------------------------------------------------------------------------------
    async def thread_of(self, event: Event) -> str:
        """The thread root an event belongs to (following up to 3 relations), else 'main'."""
        current: Event | None = event
        for _ in range(MAX_THREAD_HOPS):
            if current is None:
                break
            rel = current.content.get("m.relates_to")
            if not isinstance(rel, dict):
                break
            parent = rel.get("event_id")
            if not isinstance(parent, str):
                break
            if rel.get("rel_type") == "m.thread":
                return parent
            found = await self.events.get_event(parent)
            current = found.event if found is not None else None
        return MAIN_THREAD

    # -- evaluation --------------------------------------------------------------------------------
    async def _process(self, room_id: str, batch: list[StoredEvent]) -> None:
        actions: list[PushAction] = []
        own: list[OwnEvent] = []
        for stored in batch:
            if stored.rejected is not None or getattr(stored, "soft_failed", False):
                continue
            ev = stored.event
            state = self._rooms.get(room_id)
            fresh = False
            if state is None or (not ev.is_state() and stored.state_group != state.state_group):
                state = await self._load_room(room_id, stored.state_group)
                self._rooms.set(room_id, state)
                fresh = True
            await self._evaluate(stored, state, actions, own)
            if ev.is_state() and not fresh:
                await self._apply(state, stored)
            if ev.type == MEMBER and ev.membership == "join" and ev.state_key == ev.sender:
                await self._follow_upgrade(room_id, ev.sender, state)
        await self.store.add_push_actions(actions, own)
        if actions:
            for hook in self.on_notified:
                try:
                    hook(actions)
                except Exception:
                    logger.exception("on_notified hook failed")

    async def _evaluate(
        self,
        stored: StoredEvent,
        state: RoomPushState,
        actions: list[PushAction],
        own: list[OwnEvent],
    ) -> None:
        ev = stored.event
        sender = ev.sender
        users = [u for u in state.local_members if u != sender]
        invitee = ev.state_key if ev.type == MEMBER else None
        if (
            invitee is not None
            and ev.membership == "invite"
            and invitee != sender
            and self.is_local(invitee)
            and invitee not in state.local_members
        ):
            users.append(invitee)
        sender_local = self.is_local(sender)
        if not users and not sender_local:
            return
        thread = await self.thread_of(ev)
        if sender_local:
            own.append(OwnEvent(sender, stored.room_id, thread, stored.stream_ordering))
        if not users:
            return
        self.evaluated += 1
        auth: dict[StateKey, Event] = {}
        if state.create is not None:
            auth[CREATE_KEY] = state.create
        if state.power_levels is not None:
            auth[POWER_LEVELS_KEY] = state.power_levels
        try:
            sender_level = float(get_user_power_level(sender, auth))
        except AuthError:
            sender_level = 0.0
        event_dict = ev.pdu_json()
        event_dict["room_id"] = stored.room_id
        event_dict["event_id"] = stored.event_id
        ctx = EventContext(
            event=event_dict,
            member_count=state.joined_count,
            sender_power_level=sender_level,
            notification_levels=_notification_levels(state.power_levels),
        )
        infos = await self.rules.info_for(users)
        now = self.clock.time_ms()
        for user in users:
            info = infos[user]
            if sender in info.ignored:
                continue
            rule = evaluate(info.rules, ctx, state.local_members.get(user))
            if rule is None or not rule.notify:
                continue
            actions.append(PushAction(
                user_id=user,
                room_id=stored.room_id,
                thread_id=thread,
                stream_ordering=stored.stream_ordering,
                event_id=stored.event_id,
                actions=list(rule.actions),
                highlight=rule.highlight,
                ts=now,
            ))

    # -- counts ------------------------------------------------------------------------------------
    async def counts_for_rooms(
        self, user_id: str, room_ids: Sequence[str]
    ) -> dict[str, RoomCounts]:
        """Unread counts for each of these rooms (zero counts included)."""
        await self.settled(room_ids)
        found = await self.store.unread_counts(user_id, room_ids)
        out: dict[str, RoomCounts] = {}
        for room in room_ids:
            threads = found.get(room, {})
            n = sum(c[0] for c in threads.values())
            h = sum(c[1] for c in threads.values())
            out[room] = RoomCounts(
                notifications=n,
                highlights=h,
                main=threads.get(MAIN_THREAD, (0, 0)),
                threads={t: c for t, c in threads.items() if t != MAIN_THREAD},
            )
        return out
