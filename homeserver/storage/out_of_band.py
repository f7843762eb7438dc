"""Out-of-band memberships: a local user's invite to (or rejection of) a room this server is
not in. Each row takes a position on the 'events' stream, so /sync orders it with the user's
other membership events."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from federation.events import Event, JsonDict
from federation.room_versions import get_room_version
from homeserver.storage.cache import LruCache
from homeserver.storage.engine import Database, Txn
from homeserver.storage.events import EVENTS_STREAM
from homeserver.storage.streams import advance

_COLUMNS = ("event_id, room_id, user_id, sender, membership, room_version, json,"
            " stripped_state, stream_ordering")


@dataclass(frozen=True)
class OutOfBandMembership:
    event_id: str
    room_id: str
    user_id: str
    sender: str
    membership: str
    event: Event
    stripped_state: list[JsonDict]
    stream_ordering: int


def _row(r: Any) -> OutOfBandMembership:
    rv = get_room_version(r[5])
    return OutOfBandMembership(r[0], r[1], r[2], r[3], r[4], Event(json.loads(r[6]), rv),
                               json.loads(r[7]), int(r[8]))


class OutOfBandStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        # user -> their newest row per room; every sync reads it, this process writes it.
        self._latest: LruCache[str, list[OutOfBandMembership]] = LruCache(100_000)
        self._writes = 0

    async def add(self, event: Event, stripped_state: list[JsonDict], now: int) -> int:
        """Store a membership event of a local user (its state_key); returns its position
        (the one already taken if the event was stored before)."""
        assert event.state_key is not None

        def txn_fn(txn: Txn) -> int:
            row = txn.execute(
                "SELECT stream_ordering FROM out_of_band_memberships WHERE event_id = ?",
                (event.event_id,)).fetchone()
            if row is not None:
                return int(row[0])
            position = advance(txn, EVENTS_STREAM)
            txn.execute(
                f"INSERT INTO out_of_band_memberships ({_COLUMNS}, received_ts)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (event.event_id, event.room_id, event.state_key, event.sender,
                 event.membership, event.room_version.identifier,
                 json.dumps(event.pdu_json()), json.dumps(stripped_state), position, now))
            return position

        self._writes += 1
        try:
            return await self.db.run("out_of_band_add", txn_fn)
        finally:
            self._writes += 1
            self._latest.pop(event.state_key)

    async def latest(self, user_id: str, room_id: str | None = None) -> list[OutOfBandMembership]:
        """The newest out-of-band membership of the user in each room (or in ``room_id``)."""
        cached = self._latest.get(user_id)
        if cached is None:
            writes = self._writes
            cached = await self._load_latest(user_id)
            if writes == self._writes:  # no add raced the read
                self._latest.set(user_id, cached)
        return [o for o in cached if room_id is None or o.room_id == room_id]

    async def _load_latest(self, user_id: str) -> list[OutOfBandMembership]:
        def txn_fn(txn: Txn) -> list[OutOfBandMembership]:
            sql = (f"SELECT {_COLUMNS} FROM out_of_band_memberships o WHERE user_id = ?"
                   " AND stream_ordering = (SELECT MAX(stream_ordering) FROM"
                   " out_of_band_memberships p WHERE p.user_id = o.user_id"
                   " AND p.room_id = o.room_id)")
            return [_row(r) for r in txn.execute(sql, (user_id,)).fetchall()]

        return await self.db.run("out_of_band_latest", txn_fn)

    async def changes(self, user_id: str, since: int, to: int) -> list[OutOfBandMembership]:
        """The user's out-of-band memberships in (since, to], oldest first."""

        def txn_fn(txn: Txn) -> list[OutOfBandMembership]:
            rows = txn.execute(
                f"SELECT {_COLUMNS} FROM out_of_band_memberships WHERE user_id = ?"
                " AND stream_ordering > ? AND stream_ordering <= ? ORDER BY stream_ordering",
                (user_id, since, to)).fetchall()
            return [_row(r) for r in rows]

        return await self.db.run("out_of_band_changes", txn_fn)
