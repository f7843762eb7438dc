"""Pushing events to one application service: ``PUT /_matrix/app/v1/transactions/{txnId}``.

One loop per service with a URL. It resends the stored unacknowledged transaction if there is
one; otherwise it scans the streams past the service's positions (events, and when asked
receipts, presence, to-device messages; typing from memory), keeps what the service is
interested in, and stores the transaction body with the new positions in one database
transaction before sending it. Transactions therefore go out in stream order, one at a time,
each with the same ID and body on every retry (backoff 1 s doubling to 5 minutes), and a
restart neither loses nor repeats one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from twisted.internet import defer, task

from homeserver.services.appservice.client import AppServiceClient, AppServiceUnreachable
from homeserver.services.appservice.registration import AppService
from homeserver.storage.appservice import AppServiceStore, Pending, Positions, Scan
from homeserver.storage.events import StoredEvent
from homeserver.storage.presence import PresenceRow
from homeserver.storage.receipts import READ_PRIVATE, Receipt

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]
Serializer = Callable[[Sequence[StoredEvent]], Any]  # async: events -> client format

MIN_BACKOFF_S = 1.0
MAX_BACKOFF_S = 300.0


# -- interest (pure) -----------------------------------------------------------------------------


def interested_in_room(
    svc: AppService, room_id: str, members: Iterable[str], aliases: Iterable[str]
) -> bool:
    """The room's ID or one of its aliases is in a namespace, or a local user of the service
    is joined to it."""
    return (
        svc.is_interested_in_room_id(room_id)
        or any(svc.is_interested_in_alias(a) for a in aliases)
        or any(svc.may_act_as(m) for m in members)
    )


def interested_in_event(
    svc: AppService, event: StoredEvent, members: Iterable[str], aliases: Iterable[str]
) -> bool:
    ev = event.event
    if svc.is_interested_in_user(ev.sender):
        return True
    if ev.type == "m.room.member" and ev.state_key and svc.is_interested_in_user(ev.state_key):
        return True  # an invite (or kick, ban) of one of its users
    return interested_in_room(svc, event.room_id, members, aliases)


def receipt_events(svc: AppService, receipts: Sequence[Receipt], scan: Scan) -> list[JsonDict]:
    """One ``m.receipt`` per room the service is interested in; private receipts only of its
    own users."""
    content: dict[str, JsonDict] = {}
    for r in receipts:
        if not interested_in_room(svc, r.room_id, scan.members.get(r.room_id, ()),
                                  scan.aliases.get(r.room_id, ())):
            continue
        if r.receipt_type == READ_PRIVATE and not svc.is_interested_in_user(r.user_id):
            continue
        data = dict(r.data)
        if r.thread_id:
            data["thread_id"] = r.thread_id
        room = content.setdefault(r.room_id, {})
        room.setdefault(r.event_id, {}).setdefault(r.receipt_type, {})[r.user_id] = data
    return [{"type": "m.receipt", "room_id": room_id, "content": c}
            for room_id, c in content.items()]


def presence_event(row: PresenceRow, now_ms: int) -> JsonDict:
    content: JsonDict = {
        "presence": row.state,
        "last_active_ago": max(0, now_ms - row.last_active_ts),
        "currently_active": row.currently_active,
    }
    if row.status_msg is not None:
        content["status_msg"] = row.status_msg
    return {"type": "m.presence", "sender": row.user_id, "content": content}


# -- the loop ------------------------------------------------------------------------------------


class AppServiceSender:
    def __init__(
        self,
        svc: AppService,
        *,
        store: AppServiceStore,
        client: AppServiceClient,
        serialize: Serializer,
        typing_users: Callable[[str], list[str]],
        time_ms: Callable[[], int],
        reactor: Any,
    ) -> None:
        self.svc = svc
        self.store = store
        self.client = client
        self.serialize = serialize
        self.typing_users = typing_users
        self.time_ms = time_ms
        self.reactor = reactor
        self.positions: Positions | None = None
        self.pending: Pending | None = None
        self.sent = 0  # transactions acknowledged by this process
        self._dirty = True
        self._typing_rooms: set[str] = set()
        self._running = False
        self._wait: defer.Deferred[None] | None = None  # idle until woken
        self._backoff: defer.Deferred[None] | None = None  # a retry's delay
        self._push: defer.Deferred[None] | None = None
        self._loop: defer.Deferred[None] | None = None
        self._last_attempt = 0.0  # reactor time of the last PUT

    async def start(self) -> None:
        self.positions, self.pending = await self.store.start(self.svc.id)
        self._running = True
        self._loop = defer.ensureDeferred(self._run())

    async def stop(self) -> None:
        self._running = False
        for d in (self._wait, self._backoff, self._push):
            if d is not None and not d.called:
                d.cancel()
        if self._loop is not None:
            await self._loop

    def wake(self) -> None:
        self._dirty = True
        if self._wait is not None and not self._wait.called:
            self._wait.callback(None)

    def retry_now(self) -> None:
        """The service is talking to us, so it is up: end a backoff early (at most once a
        second, so a busy bridge whose transaction endpoint fails is not hammered)."""
        if (self._backoff is not None and not self._backoff.called
                and self.reactor.seconds() - self._last_attempt >= MIN_BACKOFF_S):
            self._backoff.cancel()

    def typing_changed(self, room_id: str) -> None:
        if self.svc.receive_ephemeral:
            self._typing_rooms.add(room_id)
            self.wake()

    async def _run(self) -> None:
        backoff = 0.0
        while self._running:
            try:
                if self.pending is None:
                    if not self._dirty:
                        await self._idle()
                        continue
                    self._dirty = False
                    if not await self._build():
                        continue
                if not self._running:  # stopped while the transaction was built
                    return
                pending = self.pending
                assert pending is not None
                self._last_attempt = self.reactor.seconds()
                self._push = defer.ensureDeferred(
                    self.client.push(self.svc, pending.txn_id, pending.body)
                )
                await self._push
                await self.store.complete(self.svc.id, pending.txn_id)
                self.pending = None
                self.sent += 1
                backoff = 0.0
            except defer.CancelledError:
                if not self._running:
                    return
            except AppServiceUnreachable as e:
                backoff = min(MAX_BACKOFF_S, max(MIN_BACKOFF_S, backoff * 2))
                logger.warning("application service %s: transaction %s not delivered (%s); "
                               "retrying in %.0fs", self.svc.id,
                               self.pending.txn_id if self.pending else "?", e, backoff)
                await self._sleep(backoff)
            except Exception:
                logger.exception("application service %s: delivery failed", self.svc.id)
                backoff = min(MAX_BACKOFF_S, max(MIN_BACKOFF_S, backoff * 2))
                await self._sleep(backoff)
                await self._reload()
            finally:
                self._push = None

    async def _reload(self) -> None:
        """After a failure (database trouble, positions moved by another process), read the
        stored state again and look at the streams afresh."""
        self._dirty = True
        if not self._running:
            return
        try:
            self.positions, self.pending = await self.store.start(self.svc.id)
        except Exception:
            logger.exception("application service %s: cannot read its state", self.svc.id)

    async def _idle(self) -> None:
        self._wait = defer.Deferred()
        try:
            await self._wait
        except defer.CancelledError:
            pass
        finally:
            self._wait = None

    async def _sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or less if stopped (new events do not cut a backoff short)."""
        if not self._running:
            return
        self._backoff = task.deferLater(self.reactor, seconds, lambda: None)
        try:
            await self._backoff
        except defer.CancelledError:
            pass
        finally:
            self._backoff = None

    async def _build(self) -> bool:
        """Scan once and store what there is: True when a transaction is now pending."""
        svc = self.svc
        before = self.positions
        assert before is not None
        scan = await self.store.scan(
            before, ephemeral=svc.receive_ephemeral, to_device=svc.receive_to_device
        )
        events = [
            e for e in scan.events
            if interested_in_event(svc, e, scan.members_at.get(e.event_id, ()),
                                   scan.aliases.get(e.room_id, ()))
        ]
        body: JsonDict = {"events": await self.serialize(events) if events else []}
        if svc.receive_ephemeral:
            ephemeral = receipt_events(svc, scan.receipts, scan)
            ephemeral += await self._typing()
            ephemeral += await self._presence(scan.presence)
            if ephemeral:
                # The spec's key, and MSC2409's that mautrix and other bridges still read.
                body["ephemeral"] = ephemeral
                body["de.sorunome.msc2409.ephemeral"] = ephemeral
        if svc.receive_to_device:
            to_device = [
                {"type": m.type, "sender": m.sender, "content": m.content,
                 "to_user_id": m.user_id, "to_device_id": m.device_id}
                for m in scan.to_device if svc.may_act_as(m.user_id)
            ]
            if to_device:
                body["to_device"] = to_device
                body["de.sorunome.msc2409.to_device"] = to_device
        has_content = bool(body["events"]) or len(body) > 1
        moved = scan.to != before
        if not has_content and not moved:
            return False
        txn_id = await self.store.save_txn(svc.id, before, scan.to, body if has_content else None)
        self.positions = scan.to
        if moved:
            self._dirty = True  # the scan may have stopped at its row limit: look again
        if txn_id is None:
            return False
        self.pending = Pending(txn_id, body)
        return True

    async def _typing(self) -> list[JsonDict]:
        rooms, self._typing_rooms = sorted(self._typing_rooms), set()
        if not rooms:
            return []
        members, aliases = await self.store.room_info(rooms)
        return [
            {"type": "m.typing", "room_id": room_id,
             "content": {"user_ids": self.typing_users(room_id)}}
            for room_id in rooms
            if interested_in_room(self.svc, room_id, members[room_id], aliases[room_id])
        ]

    async def _presence(self, rows: Sequence[PresenceRow]) -> list[JsonDict]:
        """Presence of the service's users and of users sharing a room it is interested in."""
        if not rows:
            return []
        svc = self.svc
        others = [r.user_id for r in rows if not svc.is_interested_in_user(r.user_id)]
        rooms_of = await self.store.rooms_of_users(others) if others else {}
        all_rooms = sorted({room for rooms in rooms_of.values() for room in rooms})
        members, aliases = await self.store.room_info(all_rooms) if all_rooms else ({}, {})
        now = self.time_ms()
        return [
            presence_event(r, now) for r in rows
            if svc.is_interested_in_user(r.user_id) or any(
                interested_in_room(svc, room, members[room], aliases[room])
                for room in rooms_of.get(r.user_id, ())
            )
        ]
