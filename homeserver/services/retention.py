"""Message retention: a background job purges message events older than their room's
``max_lifetime`` (the room's ``m.room.retention``, clamped to the configured bounds, else the
server's default policy). It uses the same purge as the admin API (storage/purge.py): state
events and forward extremities stay, so the room's DAG stays whole. See docs/retention.md."""

from __future__ import annotations

import json
import logging
from typing import Any

from twisted.internet import defer, task

from homeserver.clock import Clock
from homeserver.config.model import RetentionConfig
from homeserver.services.admin.rooms import RoomAdmin
from homeserver.storage.engine import Database, Txn
from homeserver.storage.purge import PurgePoint

logger = logging.getLogger(__name__)


def _lifetime(content: Any, key: str) -> int | None:
    value = content.get(key) if isinstance(content, dict) else None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return value


def effective_max_lifetime(room_policy: Any, config: RetentionConfig) -> int | None:
    """How long a room's messages are kept, in ms (None: for ever). A room without a usable
    ``max_lifetime`` gets the default policy's; a room's value is clamped to the bounds."""
    value = _lifetime(room_policy, "max_lifetime")
    if value is None:
        return config.default_max_lifetime_ms
    if config.allowed_lifetime_min_ms is not None:
        value = max(value, config.allowed_lifetime_min_ms)
    if config.allowed_lifetime_max_ms is not None:
        value = min(value, config.allowed_lifetime_max_ms)
    return value


def _room_policies_txn(txn: Txn) -> dict[str, Any]:
    """Every room, with the content of its m.room.retention (None when it has none)."""
    policies: dict[str, Any] = {r[0]: None for r in txn.execute(
        "SELECT room_id FROM rooms").fetchall()}
    rows = txn.execute(
        "SELECT c.room_id, e.json FROM current_state c JOIN event_nids n"
        " ON n.event_id = c.event_id JOIN events e ON e.event_nid = n.event_nid"
        " WHERE c.type = 'm.room.retention' AND c.state_key = ''"
    ).fetchall()
    for room_id, raw in rows:
        policies[room_id] = json.loads(raw).get("content")
    return policies


class RetentionService:
    def __init__(self, *, config: RetentionConfig, db: Database, rooms: RoomAdmin,
                 clock: Clock, reactor: Any) -> None:
        self.config = config
        self.db = db
        self.rooms = rooms
        self.clock = clock
        self.reactor = reactor
        self._loop: task.LoopingCall | None = None
        self.runs = 0

    def start(self) -> None:
        if not self.config.enabled or self._loop is not None:
            return
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self.reactor
        self._loop.start(self.config.purge_interval_ms / 1000, now=False)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    async def _tick_async(self) -> None:
        try:
            await self.run_once()
        except Exception:
            logger.exception("the retention purge job failed")

    def _tick(self) -> Any:
        return defer.ensureDeferred(self._tick_async())

    async def run_once(self) -> dict[str, int]:
        """Purge every room's expired messages now; returns events purged per room."""
        now = self.clock.time_ms()
        policies = await self.db.run("retention_policies", _room_policies_txn)
        purged: dict[str, int] = {}
        for room_id, policy in sorted(policies.items()):
            lifetime = effective_max_lifetime(policy, self.config)
            if lifetime is None:
                continue
            n = await self.rooms.purge_history(
                room_id, PurgePoint(before_ts=now - lifetime), delete_local=True
            )
            if n:
                purged[room_id] = n
        self.runs += 1
        if purged:
            logger.info("retention purged %d events in %d rooms", sum(purged.values()),
                        len(purged))
        return purged
