"""Read receipts and read markers.

``post_receipt`` stores m.read / m.read.private receipts (unthreaded, 'main' or per thread);
/sync delivers them as m.receipt ephemeral events, private ones to their owner only.
``set_read_markers`` moves the m.fully_read room account data (forward only) and stores any
receipts given with it. ``on_receipt`` hooks (the push engineer's notification counts, the
federation sender) run after each stored receipt.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from federation.events import JsonDict
from homeserver.clock import Clock
from homeserver.http.errors import Codes, MatrixError, forbidden, not_found
from homeserver.services.events import MEMBER, EventsService
from homeserver.storage.account_data import AccountDataStore
from homeserver.storage.events import StoredEvent
from homeserver.storage.receipts import READ, READ_PRIVATE, UNTHREADED, Receipt, ReceiptStore
from homeserver.storage.state import StateFilter

logger = logging.getLogger(__name__)

FULLY_READ = "m.fully_read"
RECEIPT_TYPES = (READ, READ_PRIVATE, FULLY_READ)
MAIN_THREAD = "main"

# (user_id, room_id, event_id, receipt_type, thread_id or None)
ReceiptHook = Callable[[str, str, str, str, "str | None"], "Awaitable[None] | None"]


def _bad(message: str) -> MatrixError:
    return MatrixError(400, Codes.INVALID_PARAM, message)


def thread_of(event: StoredEvent) -> str | None:
    """The thread root the event belongs to through a direct m.thread relation, if any."""
    rel = event.event.content.get("m.relates_to")
    if isinstance(rel, dict) and rel.get("rel_type") == "m.thread":
        root = rel.get("event_id")
        return root if isinstance(root, str) else None
    return None


class ReceiptService:
    def __init__(
        self,
        *,
        store: ReceiptStore,
        account_data: AccountDataStore,
        pipeline: EventsService,
        clock: Clock,
    ) -> None:
        self.store = store
        self.account_data = account_data
        self.pipeline = pipeline
        self.events = pipeline.store
        self.clock = clock
        self.on_receipt: list[ReceiptHook] = []

    async def _joined(self, room_id: str, user_id: str) -> None:
        if not await self.pipeline.room_exists(room_id):
            raise not_found(f"Unknown room {room_id}")
        ids = await self.pipeline.current_state_ids(
            room_id, StateFilter.from_keys([(MEMBER, user_id)])
        )
        eid = ids.get((MEMBER, user_id))
        member = await self.events.get_event(eid) if eid else None
        if member is None or member.event.membership != "join":
            raise forbidden(f"{user_id} is not in room {room_id}")

    async def _event_in_room(self, room_id: str, event_id: str) -> StoredEvent:
        if not isinstance(event_id, str) or not event_id.startswith("$"):
            raise _bad(f"Invalid event ID {str(event_id)[:300]!r}")
        ev = await self.events.get_event(event_id)
        if ev is None or ev.room_id != room_id or ev.rejected is not None:
            raise not_found(f"Unknown event {event_id} in room {room_id}")
        return ev

    async def post_receipt(
        self, room_id: str, user_id: str, receipt_type: str, event_id: str,
        thread_id: Any = None,
    ) -> None:
        """POST /rooms/{roomId}/receipt/{receiptType}/{eventId}."""
        if receipt_type not in RECEIPT_TYPES:
            raise _bad(f"Unknown receipt type {receipt_type[:100]!r}")
        if thread_id is not None and (not isinstance(thread_id, str) or not thread_id):
            raise _bad("thread_id field must be a non-empty string")
        if receipt_type == FULLY_READ:
            if thread_id is not None:
                raise _bad("thread_id is not allowed for m.fully_read")
            await self.set_read_markers(room_id, user_id, {FULLY_READ: event_id})
            return
        await self._joined(room_id, user_id)
        ev = await self._event_in_room(room_id, event_id)
        if thread_id is not None:
            root = thread_of(ev)
            if thread_id == MAIN_THREAD and root is not None:
                raise _bad(f"{event_id} is in thread {root}, not the main timeline")
            if thread_id != MAIN_THREAD and event_id != thread_id and root != thread_id:
                raise _bad(f"{event_id} is not in thread {thread_id}")
        await self._store(room_id, user_id, receipt_type, ev, thread_id)

    async def receive_remote(
        self, room_id: str, user_id: str, receipt_type: str, event_id: str,
        thread_id: str | None = None,
    ) -> bool:
        """A receipt from another server (m.receipt EDU) for a user of that server, who must
        be joined. Returns whether it was stored."""
        if receipt_type not in RECEIPT_TYPES or receipt_type == FULLY_READ:
            return False
        try:
            await self._joined(room_id, user_id)
            ev = await self._event_in_room(room_id, event_id)
        except MatrixError:
            return False
        await self._store(room_id, user_id, receipt_type, ev, thread_id)
        return True

    async def _store(
        self, room_id: str, user_id: str, receipt_type: str, ev: StoredEvent,
        thread_id: str | None,
    ) -> None:
        data: dict[str, Any] = {"ts": self.clock.time_ms()}
        if thread_id is not None:
            data["thread_id"] = thread_id
        stored = await self.store.insert(
            room_id, receipt_type, user_id, thread_id or UNTHREADED, ev.event_id,
            ev.stream_ordering, data,
        )
        if stored is None:
            return
        for hook in self.on_receipt:
            try:
                result = hook(user_id, room_id, ev.event_id, receipt_type, thread_id)
                if result is not None:
                    await result
            except Exception:
                logger.exception("on_receipt hook failed for %s in %s", user_id, room_id)

    async def set_read_markers(self, room_id: str, user_id: str, body: JsonDict) -> None:
        """POST /rooms/{roomId}/read_markers."""
        for key in (FULLY_READ, READ, READ_PRIVATE):
            value = body.get(key)
            if value is not None and not isinstance(value, str):
                raise _bad(f"{key} must be an event ID")
        await self._joined(room_id, user_id)
        events = {
            key: await self._event_in_room(room_id, body[key])
            for key in (FULLY_READ, READ, READ_PRIVATE)
            if body.get(key) is not None
        }
        marker = events.get(FULLY_READ)
        if marker is not None:
            current = await self.account_data.get(user_id, room_id, FULLY_READ)
            current_ev = None
            if isinstance(current, dict) and isinstance(current.get("event_id"), str):
                current_ev = await self.events.get_event(current["event_id"])
            # The marker only moves forward (a stale tab cannot move it back).
            if current_ev is None or current_ev.room_id != room_id or (
                (marker.depth, marker.stream_ordering)
                > (current_ev.depth, current_ev.stream_ordering)
            ):
                await self.account_data.put(
                    user_id, room_id, FULLY_READ, {"event_id": marker.event_id}
                )
        for key in (READ, READ_PRIVATE):
            if key in events:
                await self._store(room_id, user_id, key, events[key], None)

    # -- for sync ------------------------------------------------------------------------------
    async def for_rooms(self, room_ids: list[str], since: int, to: int) -> list[Receipt]:
        return await self.store.for_rooms(room_ids, since, to)

    async def current_position(self) -> int:
        return await self.store.current_position()


def receipt_events(
    receipts: Iterable[Receipt], viewer: str, hidden: Iterable[str] = ()
) -> dict[str, JsonDict]:
    """room_id -> one m.receipt event for the viewer (others' private receipts left out)."""
    skip = set(hidden)
    by_room: dict[str, dict[str, dict[str, dict[str, Any]]]] = defaultdict(dict)
    for r in receipts:
        if r.receipt_type == READ_PRIVATE and r.user_id != viewer:
            continue
        if r.user_id in skip:
            continue
        content = by_room[r.room_id]
        content.setdefault(r.event_id, {}).setdefault(r.receipt_type, {})[r.user_id] = r.data
    return {
        room: {"type": "m.receipt", "content": content}
        for room, content in by_room.items()
        if content
    }
