"""Push: rules, notification counts, /notifications and pushers (``Services.push``).

- ``default_rules`` — the spec's server-default rules (plus the legacy mention rules).
- ``evaluator`` — pure: globs, conditions, compiled rulesets, ``evaluate``.
- ``rules`` — the /pushrules API's logic, validation, the per-user compiled-rules cache.
- ``counts`` — every new event evaluated for every local member; unread counts.
- ``pushers`` — /pushers and delivery to push gateways; ``gateway`` — the HTTP client.

For /sync: ``unread_counts(user_id, room_id)`` and ``counts_for_rooms(user_id, rooms)``
(which wait for the evaluation of events already persisted in those rooms, so a new event
and its count arrive together). Receipts move counts by themselves (they are read at count
time); ``on_receipt`` additionally sends the new badge count to the user's push gateways.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, task

from homeserver.clock import Clock
from homeserver.services.events import EventsService
from homeserver.services.push.counts import PushEvaluator, RoomCounts
from homeserver.services.push.email import EmailPushers
from homeserver.services.push.gateway import PushGatewayClient
from homeserver.services.push.pushers import PusherPool
from homeserver.services.push.rules import PushRules
from homeserver.storage.account_data import AccountDataStore
from homeserver.storage.push import NotificationRow, PushStore

logger = logging.getLogger(__name__)

PRUNE_INTERVAL_S = 3600.0


@dataclass(frozen=True)
class PushSettings:
    include_content: bool = True
    legacy_mention_rules: bool = True
    badge_counts_rooms: bool = False
    notification_retention_ms: int = 30 * 24 * 3600 * 1000
    verify_tls: bool = True
    allow_private_addresses: bool = False


class PushService:
    def __init__(
        self,
        *,
        store: PushStore,
        pipeline: EventsService,
        account_data: AccountDataStore,
        clock: Clock,
        reactor: Any,
        server_name: str,
        settings: PushSettings,
    ) -> None:
        self.store = store
        self.clock = clock
        self.reactor = reactor
        self.settings = settings
        self.rules = PushRules(store, account_data, clock, legacy=settings.legacy_mention_rules)
        self.evaluator = PushEvaluator(
            store=store, rules=self.rules, events=pipeline.store,
            state_store=pipeline.state_store, clock=clock, server_name=server_name,
            reactor=reactor,
        )
        self.gateway = PushGatewayClient(
            reactor, verify_tls=settings.verify_tls,
            allow_private=settings.allow_private_addresses,
        )
        self.pushers = PusherPool(
            store=store, gateway=self.gateway, pipeline=pipeline, clock=clock, reactor=reactor,
            include_content=settings.include_content,
            badge_counts_rooms=settings.badge_counts_rooms,
        )
        self.evaluator.on_notified.append(self.pushers.on_notified)
        pipeline.on_persisted.append(self.evaluator.on_persisted)
        self._pruner: task.LoopingCall | None = None
        # Email pushers, when email is configured (set by the registry; push/email.py).
        self.email: EmailPushers | None = None

    def set_email(self, email: EmailPushers) -> None:
        self.email = email
        self.evaluator.on_notified.append(email.on_notified)

    async def start(self) -> None:
        await self.pushers.start()
        if self.email is not None:
            await self.email.start()
        self._pruner = task.LoopingCall(lambda: defer.ensureDeferred(self._prune()))
        self._pruner.clock = self.reactor
        self._pruner.start(PRUNE_INTERVAL_S, now=False)

    async def stop(self) -> None:
        self.evaluator.stop()
        self.pushers.stop()
        if self.email is not None:
            self.email.stop()
        if self._pruner is not None and self._pruner.running:
            self._pruner.stop()
        await self.gateway.close()

    async def _prune(self) -> None:
        try:
            cutoff = self.clock.time_ms() - self.settings.notification_retention_ms
            removed = await self.store.prune(cutoff)
            if removed:
                logger.info("pruned %d notifications older than the retention period", removed)
        except Exception:
            logger.exception("pruning notifications failed")

    # -- for sync ----------------------------------------------------------------------------------
    async def unread_counts(
        self, user_id: str, room_id: str
    ) -> tuple[int, int, dict[str, tuple[int, int]]]:
        """(notification_count, highlight_count) for the whole room, and per thread root
        (threads with nothing unread left out; the main timeline's counts are the totals
        minus the threads')."""
        c = (await self.evaluator.counts_for_rooms(user_id, [room_id]))[room_id]
        return c.notifications, c.highlights, dict(c.threads)

    async def counts_for_rooms(
        self, user_id: str, room_ids: Sequence[str]
    ) -> dict[str, RoomCounts]:
        """Counts for many rooms in one query (``RoomCounts``: totals, main timeline, threads)."""
        return await self.evaluator.counts_for_rooms(user_id, room_ids)

    def on_receipt(self, user_id: str, room_id: str, *args: Any) -> None:
        """ReceiptService hook (user, room, event, type, thread): counts need nothing (they
        read receipts when asked); the user's push gateways are sent the new badge count,
        in the background so the receipt's request does not wait for them."""
        if self.pushers.has_pushers(user_id):
            defer.ensureDeferred(self._send_badge(user_id, room_id))

    async def _send_badge(self, user_id: str, room_id: str) -> None:
        try:
            await self.evaluator.settled([room_id])
            await self.pushers.send_badge(user_id)
        except Exception:
            logger.exception("sending the badge count of %s failed", user_id)

    async def on_deactivate(self, user_id: str) -> None:
        await self.pushers.on_deactivate(user_id)

    # -- GET /notifications ------------------------------------------------------------------------
    async def notifications(
        self, user_id: str, before: int | None, limit: int, only_highlight: bool
    ) -> list[NotificationRow]:
        # Events already persisted are included (evaluation is quick; rooms are few).
        await self.evaluator.settled(self.evaluator.busy_rooms())
        return await self.store.notifications(user_id, before, limit, only_highlight)
