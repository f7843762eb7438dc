"""Typing notifications: in memory only, on a 'typing' stream of their own.

Each change (start, stop, expiry) moves the stream on and records the room's newest position,
so /sync sends a room's m.typing only when it changed since the client's token. Positions are
per process: a token from before a restart is treated as 0 (typing is ephemeral, so at worst
a client is told again who is typing).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from federation.events import JsonDict
from homeserver.clock import Clock
from homeserver.http.errors import Codes, MatrixError, forbidden
from homeserver.services.events import MEMBER, EventsService
from homeserver.services.notifier import Notifier
from homeserver.storage.events import StoredEvent
from homeserver.storage.state import StateFilter

logger = logging.getLogger(__name__)

TYPING_STREAM = "typing"
# Longer requests are cut to this; clients renew every 20-30 seconds anyway.
MAX_TIMEOUT_MS = 10 * 60 * 1000
DEFAULT_TIMEOUT_MS = 30_000


class TypingService:
    def __init__(
        self, *, pipeline: EventsService, notifier: Notifier, clock: Clock, reactor: Any
    ) -> None:
        self.pipeline = pipeline
        self.notifier = notifier
        self.clock = clock
        self.reactor = reactor
        self.position = 0
        # room -> user -> expiry (ms since the epoch)
        self._typing: dict[str, dict[str, int]] = {}
        self._room_pos: dict[str, int] = {}
        self._timers: dict[tuple[str, str], Any] = {}
        # Called with (room_id, user_id, typing) on every start (renewals too) and stop: the
        # federation sender's m.typing EDUs.
        self.on_change: list[Callable[[str, str, bool], None]] = []
        pipeline.on_persisted.append(self._on_persisted)

    async def set_typing(
        self, room_id: str, user_id: str, typing: bool, timeout_ms: int | None = None
    ) -> None:
        """PUT /rooms/{roomId}/typing/{userId}: the user must be joined to the room."""
        ids = await self.pipeline.current_state_ids(
            room_id, StateFilter.from_keys([(MEMBER, user_id)])
        )
        eid = ids.get((MEMBER, user_id))
        member = await self.pipeline.store.get_event(eid) if eid else None
        if member is None or member.event.membership != "join":
            raise forbidden(f"{user_id} is not in room {room_id}")
        if typing:
            timeout = DEFAULT_TIMEOUT_MS if timeout_ms is None else timeout_ms
            if timeout < 0:
                raise MatrixError(400, Codes.INVALID_PARAM, "timeout must not be negative")
            self.start(room_id, user_id, min(timeout, MAX_TIMEOUT_MS))
        else:
            self.stop(room_id, user_id)

    def start(self, room_id: str, user_id: str, timeout_ms: int) -> None:
        users = self._typing.setdefault(room_id, {})
        was_typing = user_id in users
        users[user_id] = self.clock.time_ms() + timeout_ms
        key = (room_id, user_id)
        timer = self._timers.pop(key, None)
        if timer is not None and timer.active():
            timer.cancel()
        self._timers[key] = self.reactor.callLater(
            timeout_ms / 1000.0, self._expire, room_id, user_id
        )
        if not was_typing:
            self._changed(room_id)
        self._tell(room_id, user_id, True)

    def stop(self, room_id: str, user_id: str) -> None:
        timer = self._timers.pop((room_id, user_id), None)
        if timer is not None and timer.active():
            timer.cancel()
        users = self._typing.get(room_id)
        if users is None or user_id not in users:
            return
        del users[user_id]
        if not users:
            del self._typing[room_id]
        self._changed(room_id)
        self._tell(room_id, user_id, False)

    def _tell(self, room_id: str, user_id: str, typing: bool) -> None:
        for hook in self.on_change:
            try:
                hook(room_id, user_id, typing)
            except Exception:
                logger.exception("typing hook failed for %s in %s", user_id, room_id)

    def _expire(self, room_id: str, user_id: str) -> None:
        self._timers.pop((room_id, user_id), None)
        users = self._typing.get(room_id, {})
        expiry = users.get(user_id)
        if expiry is not None and expiry <= self.clock.time_ms() + 5:
            self.stop(room_id, user_id)

    def _changed(self, room_id: str) -> None:
        self.position += 1
        self._room_pos[room_id] = self.position
        self.notifier.notify(TYPING_STREAM, self.position, rooms=[room_id])

    def _on_persisted(self, room_id: str, events: list[StoredEvent]) -> None:
        """Someone who leaves a room stops typing in it."""
        if room_id not in self._typing:
            return
        for e in events:
            ev = e.event
            if ev.type == MEMBER and ev.state_key and ev.membership != "join":
                self.stop(room_id, ev.state_key)

    # -- for sync ----------------------------------------------------------------------------
    def changed_rooms(self, rooms: Iterable[str], since: int) -> list[str]:
        """The rooms among ``rooms`` whose typing list changed after ``since``."""
        if since > self.position:
            since = 0  # a token from before a restart
        return [r for r in rooms if self._room_pos.get(r, 0) > since]

    def typing_users(self, room_id: str) -> list[str]:
        return sorted(self._typing.get(room_id, {}))

    def event(self, room_id: str, hidden: Iterable[str] = ()) -> JsonDict:
        skip = set(hidden)
        users = [u for u in self.typing_users(room_id) if u not in skip]
        return {"type": "m.typing", "content": {"user_ids": users}}

    def close(self) -> None:
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
