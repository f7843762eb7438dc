"""Message retention on both engines, with a clock the test moves (no sleeping): each room's
max_lifetime (m.room.retention, clamped to the configured bounds, else the default policy)
purges exactly the expired message events; state events, the DAG and the newest event stay,
and the room keeps working. The job runs on its configured interval."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from federation.keys import generate_signing_key
from homeserver.clock import Clock
from homeserver.config import ConfigError, DatabaseConfig, parse_config
from homeserver.config.model import RetentionConfig
from homeserver.services.admin import rooms as admin_rooms
from homeserver.services.registry import Services, build_services
from homeserver.services.retention import RetentionService, effective_max_lifetime
from homeserver.storage import Txn, open_database
from homeserver.storage.schema import migrate
from tests.support.server import make_config_dict

HOUR = 3_600_000
DAY = 24 * HOUR
T0 = 1_700_000_000_000


class MovableClock(Clock):
    def __init__(self, now: int) -> None:
        self.now = now

    def time_ms(self) -> int:
        return self.now


@asynccontextmanager
async def _services(db_config: DatabaseConfig, data_dir: str,
                    clock: Clock) -> AsyncIterator[Services]:
    config = parse_config(make_config_dict(data_dir, db_config, retention={
        "enabled": True, "default_policy": {"max_lifetime": "30d"},
        "allowed_lifetime_min": "1d", "allowed_lifetime_max": "60d", "purge_interval": "1h",
    }))
    db = open_database(db_config, reactor)
    try:
        await migrate(db)
        yield build_services(config, db, reactor=reactor, signing_key=generate_signing_key(),
                             clock=clock)
    finally:
        await db.close()


async def _messages(s: Services, room: str) -> list[str]:
    """Message bodies a history read returns, oldest first."""
    events = await s.events.paginate(room, None, None, True, 1000)
    return [e.event.content["body"] for e in reversed(events) if e.event.type == "m.room.message"]


async def _counts(s: Services, room: str) -> dict[str, int]:
    def txn_fn(txn: Txn) -> dict[str, int]:
        def one(sql: str) -> int:
            return int(txn.execute(sql, (room,)).fetchone()[0])

        return {
            "state": one("SELECT COUNT(*) FROM events WHERE room_id = ? AND state_key IS NOT NULL"),
            "edges": one("SELECT COUNT(*) FROM event_edges g JOIN events e"
                         " ON e.event_nid = g.event_nid WHERE e.room_id = ?"
                         " AND e.state_key IS NOT NULL"),
        }

    return await s.db.run("counts", txn_fn)


@pytest_twisted.ensureDeferred
async def test_retention_purges_expired_messages_only(db_config: DatabaseConfig,
                                                      tmp_path: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # One event per transaction, so the batching is exercised too.
    monkeypatch.setattr(admin_rooms, "PURGE_BATCH", 1)
    clock = MovableClock(T0)
    async with _services(db_config, str(tmp_path), clock) as s:
        alice = "@alice:test.local"
        await s.accounts.register(alice, None)
        rooms = {}
        # short: 1 hour, clamped up to the 1 day minimum; default: 30 days; long: 1 year,
        # clamped down to 60 days.
        for name, policy in (("short", HOUR), ("default", None), ("long", 365 * DAY)):
            clock.now += 1  # distinct create events, so distinct rooms
            created = await s.rooms.create_room(alice, name=name)
            rooms[name] = created.room_id
            if policy is not None:
                await s.rooms.send_event(created.room_id, alice, "m.room.retention",
                                         {"max_lifetime": policy}, "")
        for room in rooms.values():
            await s.rooms.send_event(room, alice, "m.room.message", {"body": "m1"})
        clock.now = T0 + 2 * DAY
        for room in rooms.values():
            await s.rooms.send_event(room, alice, "m.room.message", {"body": "m2"})
        clock.now = T0 + 2 * DAY + HOUR
        for room in rooms.values():
            await s.rooms.send_event(room, alice, "m.room.message", {"body": "m3"})
        before = {name: await _counts(s, room) for name, room in rooms.items()}

        clock.now = T0 + 2 * DAY + 2 * HOUR
        purged = await s.admin.retention.run_once()
        assert purged == {rooms["short"]: 1}
        assert await _messages(s, rooms["short"]) == ["m2", "m3"]
        assert await _messages(s, rooms["default"]) == ["m1", "m2", "m3"]
        assert await _messages(s, rooms["long"]) == ["m1", "m2", "m3"]

        # 40 days on: everything expired in 'short' and 'default' but the newest event,
        # the room's forward extremity, which the next event will point at.
        clock.now = T0 + 40 * DAY
        purged = await s.admin.retention.run_once()
        assert purged == {rooms["short"]: 1, rooms["default"]: 2}
        assert await _messages(s, rooms["short"]) == ["m3"]
        assert await _messages(s, rooms["default"]) == ["m3"]
        assert await _messages(s, rooms["long"]) == ["m1", "m2", "m3"]
        assert await s.admin.retention.run_once() == {}
        # State and the DAG between state events are untouched.
        for name, room in rooms.items():
            assert await _counts(s, room) == before[name], name
            head = await s.pipeline.current_state_ids(room)
            assert ("m.room.name", "") in head and ("m.room.create", "") in head

        # The rooms work on.
        for room in rooms.values():
            await s.rooms.send_event(room, alice, "m.room.message", {"body": "m4"})
        assert await _messages(s, rooms["short"]) == ["m3", "m4"]
        page = await s.rooms.paginate(rooms["default"], alice, limit=100)
        assert [e["content"].get("body") for e in page.chunk
                if e["type"] == "m.room.message"] == ["m4", "m3"]


@pytest_twisted.ensureDeferred
async def test_retention_job_runs_on_its_interval(db_config: DatabaseConfig,
                                                  tmp_path: Any) -> None:
    async with _services(db_config, str(tmp_path), MovableClock(T0)) as s:
        fake_reactor = task.Clock()
        job = RetentionService(config=s.config.retention, db=s.db, rooms=s.admin.rooms,
                               clock=s.clock, reactor=fake_reactor)
        job.start()
        fake_reactor.advance(HOUR / 1000 - 1)
        assert job.runs == 0
        fake_reactor.advance(1)
        for _ in range(100):
            if job.runs:
                break
            await task.deferLater(reactor, 0.01, lambda: None)
        assert job.runs == 1
        job.stop()
        off = RetentionService(config=RetentionConfig(enabled=False), db=s.db,
                               rooms=s.admin.rooms, clock=s.clock, reactor=fake_reactor)
        off.start()
        assert fake_reactor.getDelayedCalls() == []


@pytest.mark.parametrize("policy,expected", [
    (None, 30 * DAY),                       # no policy: the default
    ({"max_lifetime": HOUR}, DAY),          # below the minimum: clamped up
    ({"max_lifetime": 2 * DAY}, 2 * DAY),
    ({"max_lifetime": 999 * DAY}, 60 * DAY),  # above the maximum: clamped down
    ({"max_lifetime": "1d"}, 30 * DAY),     # not an integer: ignored
    ({"max_lifetime": True}, 30 * DAY),
    ({"max_lifetime": -5}, 30 * DAY),
    ({"min_lifetime": DAY}, 30 * DAY),
])
def test_effective_max_lifetime(policy: Any, expected: int) -> None:
    config = RetentionConfig(enabled=True, default_max_lifetime_ms=30 * DAY,
                             allowed_lifetime_min_ms=DAY, allowed_lifetime_max_ms=60 * DAY)
    assert effective_max_lifetime(policy, config) == expected


def test_no_default_keeps_rooms_without_policy() -> None:
    assert effective_max_lifetime(None, RetentionConfig(enabled=True)) is None
    assert effective_max_lifetime({"max_lifetime": DAY}, RetentionConfig(enabled=True)) == DAY


def _config(retention: Any) -> Any:
    return parse_config(make_config_dict("/tmp/unused", DatabaseConfig(
        url="sqlite:///tmp/unused.db", engine="sqlite", target="/tmp/unused.db"),
        retention=retention))


def test_retention_config_durations() -> None:
    r = _config({"enabled": True, "default_policy": {"min_lifetime": "12h",
                                                      "max_lifetime": 86_400_000},
                 "allowed_lifetime_max": "2w", "purge_interval": "90s"}).retention
    assert (r.default_min_lifetime_ms, r.default_max_lifetime_ms) == (12 * HOUR, DAY)
    assert (r.allowed_lifetime_min_ms, r.allowed_lifetime_max_ms) == (None, 14 * DAY)
    assert r.purge_interval_ms == 90_000
    assert _config(None).retention == RetentionConfig()
    for bad in ({"purge_interval": "soon"}, {"purge_interval": 0},
                {"default_policy": {"max_lifetime": "-1d"}},
                {"allowed_lifetime_min": "2d", "allowed_lifetime_max": "1d"},
                {"unknown_key": True}):
        with pytest.raises(ConfigError):
            _config(bad)
