"""Presence: online, unavailable (idle) and offline, with an optional status message.

Each user's presence lives in memory while they are online or idle (last activity, last
sync, syncs in flight) and in the ``presence`` table, which is rewritten -- with a new
position on the 'presence' stream that wakes everyone sharing a room with them -- only when
something clients should hear changes: the state, the status message, ``currently_active``.
Plain activity only moves the in-memory last-active time (reported as ``last_active_ago``).

Timers (one looping call): an online user with no activity for ``idle_timeout_ms`` becomes
unavailable; a user with no sync in flight for ``offline_timeout_ms`` after their last one
becomes offline. Activity (sending an event, setting presence online) brings an idle user
back online; a sync with ``set_presence=online`` (the default) brings an offline user online.

With ``presence.enabled: false`` the endpoints still answer, but nothing is stored or sent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from twisted.internet import defer, task

from federation.events import JsonDict
from federation.identifiers import get_domain
from homeserver.clock import Clock
from homeserver.config.model import PresenceConfig
from homeserver.http.errors import Codes, MatrixError, forbidden
from homeserver.services.events import EventsService
from homeserver.storage.cache import LruCache
from homeserver.storage.events import StoredEvent
from homeserver.storage.presence import PresenceRow, PresenceStore
from homeserver.storage.state import StateStore

logger = logging.getLogger(__name__)

ONLINE, UNAVAILABLE, OFFLINE = "online", "unavailable", "offline"
STATES = (ONLINE, UNAVAILABLE, OFFLINE)
# Active within this long counts as currently active.
ACTIVE_WINDOW_MS = 60_000
MAX_STATUS_MSG = 1024


@dataclass
class _Live:
    row: PresenceRow
    last_active: int
    last_sync: int
    syncing: int = 0


class PresenceService:
    def __init__(
        self,
        *,
        config: PresenceConfig,
        server_name: str,
        store: PresenceStore,
        state_store: StateStore,
        pipeline: EventsService,
        clock: Clock,
        reactor: Any,
    ) -> None:
        self.config = config
        self.enabled = config.enabled
        self.server_name = server_name
        self.store = store
        self.state_store = state_store
        self.clock = clock
        self.reactor = reactor
        self._live: dict[str, _Live] = {}
        # Local users found offline (or never seen) by ``bump_active``: their next message
        # needs no read, as every change of a local user's row goes through ``_update``.
        self._offline: LruCache[str, bool] = LruCache(100_000)
        self._locks: dict[str, defer.DeferredLock] = {}
        self._loop: task.LoopingCall | None = None
        # Called with each stored change (the federation sender's m.presence EDUs).
        self.on_change: list[Callable[[PresenceRow], None]] = []
        if self.enabled:
            pipeline.on_persisted.append(self._on_persisted)

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Resume the timers of users stored as online or idle."""
        if not self.enabled:
            return
        now = self.clock.time_ms()
        for row in await self.store.not_offline():
            self._live.setdefault(row.user_id, _Live(row, row.last_active_ts, now))
        interval = min(self.config.idle_timeout_ms, self.config.offline_timeout_ms) / 4000.0
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self.reactor
        self._loop.start(max(0.02, min(interval, 5.0)), now=False).addErrback(
            lambda f: logger.error("presence timer failed: %s", f.getTraceback())
        )

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    # -- reading -----------------------------------------------------------------------------
    async def _current(self, user_id: str) -> tuple[PresenceRow, int] | None:
        live = self._live.get(user_id)
        if live is not None:
            return live.row, live.last_active
        found = (await self.store.get([user_id])).get(user_id)
        return (found, found.last_active_ts) if found is not None else None

    async def get_presence(self, requester: str, user_id: str) -> JsonDict:
        """GET /presence/{userId}/status: for the user and those who share a room with them."""
        if requester != user_id:
            shared = await self.state_store.users_sharing_rooms(requester)
            if user_id not in shared:
                raise forbidden("You are not allowed to see their presence")
        if not self.enabled:
            return {"presence": OFFLINE}
        current = await self._current(user_id)
        if current is None:
            return {"presence": OFFLINE}
        row, last_active = current
        return self.content(row, last_active)

    def content(self, row: PresenceRow, last_active: int | None = None) -> JsonDict:
        now = self.clock.time_ms()
        active = row.last_active_ts if last_active is None else last_active
        out: JsonDict = {"presence": row.state}
        if active:
            out["last_active_ago"] = max(0, now - active)
        if row.state == ONLINE:
            out["currently_active"] = row.currently_active
        if row.status_msg is not None:
            out["status_msg"] = row.status_msg
        return out

    def event(self, row: PresenceRow) -> JsonDict:
        live = self._live.get(row.user_id)
        last_active = live.last_active if live is not None else None
        return {"type": "m.presence", "sender": row.user_id,
                "content": self.content(row, last_active)}

    # -- writing -----------------------------------------------------------------------------
    def _lock(self, user_id: str) -> defer.DeferredLock:
        lock = self._locks.get(user_id)
        if lock is None:
            lock = self._locks[user_id] = defer.DeferredLock()
        return lock

    async def _update(self, user_id: str, change: Any) -> None:
        """Apply ``change(live_or_None, now) -> new row or None`` under the user's lock and
        store the new row if there is one."""
        lock = self._lock(user_id)
        await lock.acquire()
        try:
            now = self.clock.time_ms()
            live = self._live.get(user_id)
            if live is None:
                stored = (await self.store.get([user_id])).get(user_id)
                if stored is not None:
                    live = _Live(stored, stored.last_active_ts, now)
            row = change(live, now)
            if row is None:
                if live is not None and live.row.state != OFFLINE:
                    self._live.setdefault(user_id, live)
                return
            self._offline.pop(user_id)
            position = await self.store.put(row)
            row = replace(row, stream_id=position)
            for hook in self.on_change:
                try:
                    hook(row)
                except Exception:
                    logger.exception("presence hook failed for %s", user_id)
            if live is None:
                live = _Live(row, row.last_active_ts, now)
            live.row = row
            live.last_active = max(live.last_active, row.last_active_ts)
            if row.state == OFFLINE and live.syncing == 0:
                self._live.pop(user_id, None)
            else:
                self._live[user_id] = live
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._locks.pop(user_id, None)

    async def receive_remote(self, user_id: str, update: JsonDict) -> bool:
        """Presence of a remote user from their server (an ``m.presence`` EDU entry): stored
        as given (their server times it out, not us), and no hook runs (no echo back)."""
        state = update.get("presence")
        if not self.enabled or state not in STATES:
            return False
        now = self.clock.time_ms()
        ago = update.get("last_active_ago")
        last_active = now - ago if isinstance(ago, int) and ago >= 0 else 0
        status = update.get("status_msg")
        row = PresenceRow(
            user_id, state,
            status if isinstance(status, str) and len(status) <= MAX_STATUS_MSG else None,
            last_active, now, update.get("currently_active") is True and state == ONLINE,
        )
        await self.store.put(row)
        return True

    async def set_presence(self, user_id: str, state: Any, status_msg: Any = None) -> None:
        """PUT /presence/{userId}/status (the caller checked it is the user's own)."""
        if state not in STATES:
            raise MatrixError(400, Codes.INVALID_PARAM,
                              f"presence must be one of {', '.join(STATES)}")
        if status_msg is not None and (
            not isinstance(status_msg, str) or len(status_msg) > MAX_STATUS_MSG
        ):
            raise MatrixError(400, Codes.INVALID_PARAM,
                              f"status_msg must be a string of at most {MAX_STATUS_MSG} chars")
        if not self.enabled:
            return

        def change(live: _Live | None, now: int) -> PresenceRow:
            last_active = live.last_active if live is not None else 0
            if state == ONLINE:
                last_active = now
            return PresenceRow(
                user_id, state, status_msg, last_active, now,
                state == ONLINE and now - last_active < ACTIVE_WINDOW_MS,
            )

        await self._update(user_id, change)
        live = self._live.get(user_id)
        if live is not None:
            live.last_sync = max(live.last_sync, self.clock.time_ms())

    async def sync_started(self, user_id: str, set_presence: str | None) -> bool:
        """A /sync began. ``set_presence`` online (the default) brings an offline user online,
        unavailable makes them idle, offline leaves presence alone. Returns whether the sync
        counts as the user being connected (pass it to ``sync_ended``)."""
        if not self.enabled or set_presence == OFFLINE:
            return False
        wanted = set_presence or ONLINE

        def change(live: _Live | None, now: int) -> PresenceRow | None:
            row = live.row if live is not None else None
            current = row.state if row is not None else OFFLINE
            msg = row.status_msg if row is not None else None
            last_active = live.last_active if live is not None else 0
            if wanted == ONLINE and current == OFFLINE:
                return PresenceRow(user_id, ONLINE, msg, now, now, True)
            if wanted == UNAVAILABLE and current != UNAVAILABLE:
                return PresenceRow(user_id, UNAVAILABLE, msg, last_active, now, False)
            return None

        await self._update(user_id, change)
        now = self.clock.time_ms()
        live = self._live.get(user_id)
        if live is None:
            return False
        live.syncing += 1
        live.last_sync = now
        return True

    def sync_ended(self, user_id: str, counted: bool) -> None:
        if not counted:
            return
        live = self._live.get(user_id)
        if live is not None:
            live.syncing = max(0, live.syncing - 1)
            live.last_sync = self.clock.time_ms()

    def _on_persisted(self, room_id: str, events: list[StoredEvent]) -> None:
        """Sending an event is activity."""
        for sender in {e.event.sender for e in events}:
            try:
                local = get_domain(sender) == self.server_name
            except Exception:
                local = False
            if local:
                defer.ensureDeferred(self.bump_active(sender)).addErrback(
                    lambda f: logger.warning("presence update failed: %s", f.value)
                )

    async def bump_active(self, user_id: str) -> None:
        if not self.enabled:
            return
        live = self._live.get(user_id)
        now = self.clock.time_ms()
        if live is not None and live.row.state == ONLINE and live.row.currently_active:
            live.last_active = now
            return
        if live is None and self._offline.get(user_id):
            return  # sending is not connecting (below): still offline, nothing to read

        def change(live: _Live | None, now: int) -> PresenceRow | None:
            if live is None or live.row.state == OFFLINE:
                return None  # sending is not connecting: a sync brings the user online
            live.last_active = now
            return replace(live.row, state=ONLINE, last_active_ts=now, currently_active=True)

        await self._update(user_id, change)
        if user_id not in self._live:
            self._offline.set(user_id, True)

    def _tick(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._check_timers())

    async def _check_timers(self) -> None:
        now = self.clock.time_ms()
        idle, offline = self.config.idle_timeout_ms, self.config.offline_timeout_ms
        for user_id, live in list(self._live.items()):
            row = live.row
            target: PresenceRow | None = None
            if row.state != OFFLINE and live.syncing == 0 and now - live.last_sync > offline:
                target = replace(row, state=OFFLINE, currently_active=False,
                                 last_active_ts=live.last_active)
            elif row.state == ONLINE and now - live.last_active > idle:
                target = replace(row, state=UNAVAILABLE, currently_active=False,
                                 last_active_ts=live.last_active)
            elif row.state == ONLINE and row.currently_active and (
                now - live.last_active > ACTIVE_WINDOW_MS
            ):
                target = replace(row, currently_active=False, last_active_ts=live.last_active)
            if target is None:
                continue
            expected = row

            def change(current: _Live | None, _now: int, expected: PresenceRow = expected,
                       target: PresenceRow = target) -> PresenceRow | None:
                # Skip if something else changed the user meanwhile.
                if current is None or current.row != expected:
                    return None
                return target

            try:
                await self._update(user_id, change)
            except Exception:
                logger.exception("presence timeout for %s failed", user_id)
