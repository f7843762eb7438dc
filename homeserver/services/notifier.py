"""Wake waiting /sync requests the moment something they care about is persisted.

``Notifier`` is the interface: writers call ``notify(stream, position, rooms=..., users=...)``
after their transaction commits; a reader calls ``wait_for(...)`` with the user, the rooms it
is in and the position it has already seen, and is woken (or times out) when a newer position
concerns one of them. ``InProcessNotifier`` serves one process; a multi-process deployment can
back the same interface with Redis pub/sub (publish in ``notify``, fan out on receipt).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge
from twisted.internet import defer

SYNC_WAITING = Gauge("homeserver_sync_long_polls", "Requests waiting for something new (/sync)")
SYNC_WAKEUPS = Counter(
    "homeserver_sync_wakeups", "Waiting requests woken, by why", ["reason"]
)


class Notifier(ABC):
    @abstractmethod
    def notify(
        self, stream: str, position: int, *, rooms: Iterable[str] = (), users: Iterable[str] = ()
    ) -> None:
        """Something at ``position`` on ``stream`` concerns these rooms and users."""

    @abstractmethod
    async def wait_for(
        self,
        user_id: str,
        rooms: Iterable[str],
        since: dict[str, int],
        timeout_ms: int,
    ) -> dict[str, int]:
        """Wait until a stream has a position past ``since[stream]`` that concerns the user or
        one of the rooms, or the timeout; returns the positions seen (``since`` if none)."""

    @abstractmethod
    def position(self, stream: str) -> int:
        """The newest position notified on ``stream`` in this process."""

    @abstractmethod
    @abstractmethod
    def wake_all(self) -> None:
        """Release every waiting request now (at shutdown: they answer with what they have)."""


@dataclass(eq=False)
class _Waiter:
    user_id: str
    rooms: frozenset[str]
    since: dict[str, int]
    deferred: defer.Deferred[dict[str, int]]
    woken: dict[str, int] = field(default_factory=dict)


class InProcessNotifier(Notifier):
    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._positions: dict[str, int] = {}
        # The newest position per stream that concerned each room / user.
        self._room_pos: dict[tuple[str, str], int] = {}
        self._user_pos: dict[tuple[str, str], int] = {}
        self._by_room: dict[str, set[_Waiter]] = {}
        self._by_user: dict[str, set[_Waiter]] = {}

    def position(self, stream: str) -> int:
        return self._positions.get(stream, 0)

    def notify(
        self, stream: str, position: int, *, rooms: Iterable[str] = (), users: Iterable[str] = ()
    ) -> None:
        if position > self._positions.get(stream, 0):
            self._positions[stream] = position
        woken: set[_Waiter] = set()
        for room in rooms:
            key = (stream, room)
            if position > self._room_pos.get(key, 0):
                self._room_pos[key] = position
            woken.update(self._by_room.get(room, ()))
        for user in users:
            key = (stream, user)
            if position > self._user_pos.get(key, 0):
                self._user_pos[key] = position
            woken.update(self._by_user.get(user, ()))
        for waiter in woken:
            if position > waiter.since.get(stream, 0):
                waiter.woken[stream] = max(position, waiter.woken.get(stream, 0))
                if not waiter.deferred.called:
                    SYNC_WAKEUPS.labels("notified").inc()
                self._wake(waiter)

    def _pending(self, user_id: str, rooms: Iterable[str], since: dict[str, int]) -> dict[str, int]:
        """Positions newer than ``since`` already notified for the user or the rooms."""
        found: dict[str, int] = {}
        for stream, seen in since.items():
            best = self._user_pos.get((stream, user_id), 0)
            for room in rooms:
                best = max(best, self._room_pos.get((stream, room), 0))
            if best > seen:
                found[stream] = best
        return found

    async def wait_for(
        self,
        user_id: str,
        rooms: Iterable[str],
        since: dict[str, int],
        timeout_ms: int,
    ) -> dict[str, int]:
        rooms = frozenset(rooms)
        pending = self._pending(user_id, rooms, since)
        if pending or timeout_ms <= 0:
            return {**since, **pending}
        waiter = _Waiter(user_id, rooms, dict(since), defer.Deferred())
        self._by_user.setdefault(user_id, set()).add(waiter)
        for room in rooms:
            self._by_room.setdefault(room, set()).add(waiter)
        timer = self._reactor.callLater(timeout_ms / 1000.0, self._timed_out, waiter)
        SYNC_WAITING.inc()
        try:
            return await waiter.deferred
        finally:
            SYNC_WAITING.dec()
            if timer.active():
                timer.cancel()
            self._forget(waiter)

    def _timed_out(self, waiter: _Waiter) -> None:
        if not waiter.deferred.called:
            SYNC_WAKEUPS.labels("timeout").inc()
        self._wake(waiter)

    def _wake(self, waiter: _Waiter) -> None:
        self._forget(waiter)
        if not waiter.deferred.called:
            waiter.deferred.callback({**waiter.since, **waiter.woken})

    def _forget(self, waiter: _Waiter) -> None:
        users = self._by_user.get(waiter.user_id)
        if users is not None:
            users.discard(waiter)
            if not users:
                del self._by_user[waiter.user_id]
        for room in waiter.rooms:
            waiters = self._by_room.get(room)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._by_room[room]

    def wake_all(self) -> None:
        for waiter in {w for ws in self._by_user.values() for w in ws}:
            self._wake(waiter)

    def waiting(self) -> int:
        """How many requests are waiting (for tests and metrics)."""
        return len({w for ws in self._by_user.values() for w in ws})
