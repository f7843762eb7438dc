"""Making sure every event this server's users send reaches the outbox, even across a crash.

Events are handed to the federation outbox (services/federation_in, then
services/federation_sender, which persists per destination) just after the pipeline commits
them. A cursor on the events stream records how far that has got: it moves past a batch
once the batch is queued and no earlier batch is still being queued (batches of different
rooms may be queued out of stream order). At start, events committed past the cursor are
queued again — those a crash caught between commit and queueing, and the few before them
that were queued already (receivers drop a PDU they have by its event ID). The cursor is
written at most once a second (not once per batch, which would add a transaction to every
send), so a restart re-queues at most about the last second's worth of our events.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable

from homeserver.storage.events import StoredEvent
from homeserver.storage.federation_out import FederationOutStore

# Events re-read per query at start.
CATCH_UP_BATCH = 500
# The cursor is written at most this often.
WRITE_INTERVAL_SECONDS = 1.0

SendOut = Callable[[str, list[StoredEvent]], Awaitable[None]]


class OutboxCursor:
    def __init__(self, store: FederationOutStore,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self._monotonic = monotonic
        self._in_flight: Counter[int] = Counter()  # first stream position of queued batches
        self._done = 0  # highest position of a batch queued
        self._written_at: float | None = None

    def begin(self, events: list[StoredEvent]) -> None:
        """A batch is about to be queued."""
        self._in_flight[min(e.stream_ordering for e in events)] += 1

    async def done(self, events: list[StoredEvent]) -> None:
        """A batch is in the outbox; move the cursor as far as is safe."""
        low = min(e.stream_ordering for e in events)
        self._in_flight[low] -= 1
        if self._in_flight[low] <= 0:
            del self._in_flight[low]
        self._done = max(self._done, max(e.stream_ordering for e in events))
        safe = self._done
        if self._in_flight:
            safe = min(safe, min(self._in_flight) - 1)
        now = self._monotonic()
        if safe > 0 and (self._written_at is None
                         or now - self._written_at >= WRITE_INTERVAL_SECONDS):
            self._written_at = now
            await self.store.advance(safe)

    async def catch_up(self, is_local: Callable[[str], bool], send_out: SendOut) -> int:
        """Queue this server's events committed past the cursor; returns how many."""
        position = await self.store.position()
        count = 0
        while True:
            events = await self.store.events_after(position, CATCH_UP_BATCH)
            if not events:
                return count
            by_room: dict[str, list[StoredEvent]] = {}
            for e in events:
                if is_local(e.event.sender):
                    by_room.setdefault(e.room_id, []).append(e)
            for room_id, local in by_room.items():
                await send_out(room_id, local)
                count += len(local)
            position = events[-1].stream_ordering
            await self.store.advance(position)
