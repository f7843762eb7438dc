"""The reads /sync makes. Every incremental read is bounded by the two stream positions of the
request ((since, to]) and served by an index that starts at ``since``, so a sync costs what
changed, never the length of the history."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from homeserver.storage.engine import Database, Txn
from homeserver.storage.events import _EVENT_COLUMNS, _EVENT_FROM, StoredEvent, _row_to_event
from homeserver.storage.sql import chunks, marks

MEMBER = "m.room.member"




@dataclass(frozen=True)
class MembershipChange:
    """One of the user's membership events."""

    room_id: str
    event_id: str
    membership: str
    stream_ordering: int
    prev_membership: str | None  # the membership it replaced in the room state
    sender: str


@dataclass(frozen=True)
class MemberCounts:
    joined: int
    invited: int


class SyncStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def positions(self) -> dict[str, int]:
        """The newest committed position of every persistent stream (one small read)."""

        def txn_fn(txn: Txn) -> dict[str, int]:
            rows = txn.execute("SELECT stream, position FROM stream_positions").fetchall()
            return {r[0]: int(r[1]) for r in rows}

        return await self.db.run("sync_positions", txn_fn)

    async def membership_changes(
        self, user_id: str, since: int, to: int
    ) -> list[MembershipChange]:
        """The user's accepted membership events in (since, to], oldest first."""

        def txn_fn(txn: Txn) -> list[MembershipChange]:
            rows = txn.execute(
                "SELECT e.room_id, n.event_id, e.membership, e.stream_ordering, p.membership,"
                " e.sender FROM events e JOIN event_nids n ON n.event_nid = e.event_nid"
                " LEFT JOIN events p ON p.event_nid = e.replaces"
                " WHERE e.state_key = ? AND e.membership IS NOT NULL"
                " AND e.stream_ordering > ? AND e.stream_ordering <= ? AND e.rejected IS NULL"
                " AND NOT e.soft_failed ORDER BY e.stream_ordering",
                (user_id, since, to),
            ).fetchall()
            return [MembershipChange(r[0], r[1], r[2], int(r[3]), r[4], r[5]) for r in rows]

        return await self.db.run("sync_membership_changes", txn_fn)

    async def rooms_with_events(
        self, room_ids: Sequence[str], since: int, to: int
    ) -> dict[str, int]:
        """room -> its newest stream position in (since, to], for the rooms with any."""

        def txn_fn(txn: Txn) -> dict[str, int]:
            out: dict[str, int] = {}
            for chunk in chunks(room_ids):
                rows = txn.execute(
                    "SELECT room_id, MAX(stream_ordering) FROM events"
                    " WHERE stream_ordering > ? AND stream_ordering <= ?"
                    f" AND room_id IN ({marks(len(chunk))}) GROUP BY room_id",
                    (since, to, *chunk),
                ).fetchall()
                out.update({r[0]: int(r[1]) for r in rows})
            return out

        if not room_ids or since >= to:
            return {}
        return await self.db.run("sync_rooms_with_events", txn_fn)

    async def room_events_before(
        self, room_id: str, lower: int, upper: int, limit: int
    ) -> list[StoredEvent]:
        """Up to ``limit`` accepted events of the room in (lower, upper], newest first
        (soft-failed events are never shown to clients)."""

        def txn_fn(txn: Txn) -> list[StoredEvent]:
            rows = txn.execute(
                f"SELECT {_EVENT_COLUMNS}{_EVENT_FROM} WHERE e.room_id = ?"
                " AND e.stream_ordering > ? AND e.stream_ordering <= ? AND e.rejected IS NULL"
                " AND NOT e.soft_failed ORDER BY e.stream_ordering DESC LIMIT ?",
                (room_id, lower, upper, limit),
            ).fetchall()
            return [_row_to_event(r) for r in rows]

        return await self.db.run("sync_room_events", txn_fn)

    async def state_group_at(self, room_id: str, position: int) -> int | None:
        """The state group after the room's last event at or before a stream position."""

        def txn_fn(txn: Txn) -> int | None:
            row = txn.execute(
                "SELECT state_group FROM events WHERE room_id = ? AND stream_ordering <= ?"
                " ORDER BY stream_ordering DESC LIMIT 1",
                (room_id, position),
            ).fetchone()
            return int(row[0]) if row else None

        return await self.db.run("sync_state_group_at", txn_fn)

    async def member_counts(self, room_id: str) -> MemberCounts:
        def txn_fn(txn: Txn) -> MemberCounts:
            rows = txn.execute(
                "SELECT membership, COUNT(*) FROM current_state WHERE room_id = ? AND type = ?"
                " AND membership IN (?, ?) GROUP BY membership",
                (room_id, MEMBER, "join", "invite"),
            ).fetchall()
            counts = {r[0]: int(r[1]) for r in rows}
            return MemberCounts(counts.get("join", 0), counts.get("invite", 0))

        return await self.db.run("sync_member_counts", txn_fn)

    async def heroes(self, room_id: str, exclude: str, limit: int = 5) -> list[str]:
        """The first members by stream ordering who are joined or invited (else those who
        left or were banned), without ``exclude``."""

        def txn_fn(txn: Txn) -> list[str]:
            out: list[str] = []
            for memberships in (("join", "invite"), ("leave", "ban")):
                rows = txn.execute(
                    "SELECT cs.state_key FROM current_state cs"
                    " JOIN event_nids n ON n.event_id = cs.event_id"
                    " JOIN events e ON e.event_nid = n.event_nid"
                    " WHERE cs.room_id = ? AND cs.type = ? AND cs.state_key <> ?"
                    " AND cs.membership IN (?, ?) ORDER BY e.stream_ordering LIMIT ?",
                    (room_id, MEMBER, exclude, *memberships, limit),
                ).fetchall()
                out = [r[0] for r in rows]
                if out:
                    break
            return out

        return await self.db.run("sync_heroes", txn_fn)

    async def account_data(
        self, user_id: str, since: int, to: int
    ) -> list[tuple[str, str, Any]]:
        """(room_id or '', type, content) of the user's account data changed in (since, to]."""

        def txn_fn(txn: Txn) -> list[tuple[str, str, Any]]:
            rows = txn.execute(
                "SELECT room_id, data_type, content FROM account_data"
                " WHERE user_id = ? AND stream_id > ? AND stream_id <= ? ORDER BY stream_id",
                (user_id, since, to),
            ).fetchall()
            return [(r[0], r[1], json.loads(r[2])) for r in rows]

        if since >= to:
            return []
        return await self.db.run("sync_account_data", txn_fn)

    async def device_list_candidates(self, since: int, to: int) -> list[tuple[str, str | None]]:
        """(user_id, only_for) of device-list changes in (since, to]."""

        def txn_fn(txn: Txn) -> list[tuple[str, str | None]]:
            rows = txn.execute(
                "SELECT DISTINCT user_id, only_for FROM device_list_changes"
                " WHERE stream_id > ? AND stream_id <= ?",
                (since, to),
            ).fetchall()
            return [(r[0], r[1]) for r in rows]

        if since >= to:
            return []
        return await self.db.run("sync_device_list_candidates", txn_fn)

    async def sharing_a_room(self, user_id: str, candidates: Collection[str]) -> set[str]:
        """The candidates joined to a room the user is joined to."""
        wanted = sorted(set(candidates))

        def txn_fn(txn: Txn) -> set[str]:
            out: set[str] = set()
            for chunk in chunks(wanted):
                rows = txn.execute(
                    "SELECT DISTINCT b.state_key FROM current_state a JOIN current_state b"
                    " ON b.room_id = a.room_id AND b.type = a.type"
                    " WHERE a.state_key = ? AND a.type = ? AND a.membership = ?"
                    f" AND b.membership = ? AND b.state_key IN ({marks(len(chunk))})",
                    (user_id, MEMBER, "join", "join", *chunk),
                ).fetchall()
                out.update(r[0] for r in rows)
            return out

        if not wanted:
            return set()
        return await self.db.run("sync_sharing_a_room", txn_fn)

    async def joined_members(self, room_ids: Sequence[str]) -> set[str]:
        """Everyone joined to any of these rooms."""

        def txn_fn(txn: Txn) -> set[str]:
            out: set[str] = set()
            for chunk in chunks(room_ids):
                rows = txn.execute(
                    "SELECT DISTINCT state_key FROM current_state WHERE type = ?"
                    f" AND membership = ? AND room_id IN ({marks(len(chunk))})",
                    (MEMBER, "join", *chunk),
                ).fetchall()
                out.update(r[0] for r in rows)
            return out

        if not room_ids:
            return set()
        return await self.db.run("sync_joined_members", txn_fn)

    async def member_changes_in_rooms(
        self, room_ids: Sequence[str], since: int, to: int
    ) -> list[tuple[str, str, str]]:
        """(room_id, user_id, membership) of membership events in these rooms in (since, to],
        oldest first (for device_lists: who joined or left rooms the user is in)."""

        def txn_fn(txn: Txn) -> list[tuple[str, str, str, int]]:
            out: list[tuple[str, str, str, int]] = []
            for chunk in chunks(room_ids):
                rows = txn.execute(
                    "SELECT room_id, state_key, membership, stream_ordering FROM events"
                    " WHERE stream_ordering > ? AND stream_ordering <= ?"
                    f" AND room_id IN ({marks(len(chunk))}) AND type = ?"
                    " AND membership IS NOT NULL AND rejected IS NULL AND NOT soft_failed",
                    (since, to, *chunk, MEMBER),
                ).fetchall()
                out.extend((r[0], r[1], r[2], int(r[3])) for r in rows)
            return out

        if not room_ids or since >= to:
            return []
        rows = await self.db.run("sync_member_changes_in_rooms", txn_fn)
        rows.sort(key=lambda r: r[3])
        return [(r[0], r[1], r[2]) for r in rows]
