"""Application-service delivery state (schema ``0013_appservice.sql``).

A service's transaction is built from the streams past its positions, then written together
with the new positions in one transaction (``save_txn``): after a crash it is either not built
(the positions did not move, it is built again) or stored and resent with the same ID and body.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from homeserver.storage.engine import Database, Txn
from homeserver.storage.events import _EVENT_COLUMNS, _EVENT_FROM, StoredEvent, _row_to_event
from homeserver.storage.presence import _COLUMNS as _PRESENCE_COLUMNS
from homeserver.storage.presence import PresenceRow
from homeserver.storage.receipts import _COLUMNS as _RECEIPT_COLUMNS
from homeserver.storage.receipts import Receipt, _rows
from homeserver.storage.sql import chunks, marks
from homeserver.storage.state import StateFilter, load_group_txn

STREAMS = ("events", "receipts", "presence", "to_device")
# Rows read per stream and round: a service that fell behind catches up in several rounds.
EVENTS_PER_SCAN = 100
ROWS_PER_SCAN = 1000


@dataclass(frozen=True)
class Positions:
    events: int
    receipts: int
    presence: int
    to_device: int


@dataclass(frozen=True)
class Pending:
    txn_id: int
    body: dict[str, Any]


@dataclass(frozen=True)
class InboxMessage:
    user_id: str
    device_id: str
    sender: str
    type: str
    content: dict[str, Any]


@dataclass
class Scan:
    """What the streams hold past a service's positions, with what deciding interest needs:
    each room's joined local members (now, and after each event) and local aliases."""

    to: Positions
    events: list[StoredEvent] = field(default_factory=list)
    # Local users joined to the room in the state after each event (by event ID): a bridge
    # that was down still gets what its puppet saw before leaving.
    members_at: dict[str, frozenset[str]] = field(default_factory=dict)
    receipts: list[Receipt] = field(default_factory=list)
    presence: list[PresenceRow] = field(default_factory=list)
    to_device: list[InboxMessage] = field(default_factory=list)
    members: dict[str, list[str]] = field(default_factory=dict)
    aliases: dict[str, list[str]] = field(default_factory=dict)


def _current(txn: Txn) -> dict[str, int]:
    rows = txn.execute(
        f"SELECT stream, position FROM stream_positions WHERE stream IN ({marks(len(STREAMS))})",
        STREAMS,
    ).fetchall()
    found = {str(s): int(p) for s, p in rows}
    return {s: found.get(s, 0) for s in STREAMS}


def _bounded(
    txn: Txn, select: str, column: str, after: int, upto: int, limit: int
) -> tuple[list[tuple[Any, ...]], int]:
    """Rows of ``select`` with ``after`` < column <= ``upto`` in column order, at most about
    ``limit``, never splitting the rows of one position; and the position read up to."""
    rows = txn.execute(
        f"{select} AND {column} > ? AND {column} <= ? ORDER BY {column} LIMIT ?",
        (after, upto, limit + 1),
    ).fetchall()
    if len(rows) <= limit:
        return rows, upto
    last = int(rows[limit][-1])  # the position column comes last in every select here
    kept = [r for r in rows if int(r[-1]) < last]
    if kept:
        return kept, last - 1
    # Over ``limit`` rows at one position: take that position whole.
    return txn.execute(f"{select} AND {column} = ?", (last,)).fetchall(), last


def _scan_txn(
    txn: Txn, start: Positions, ephemeral: bool, to_device: bool, server_name: str
) -> Scan:
    now = _current(txn)
    event_rows, events_to = _bounded(
        txn,
        f"SELECT {_EVENT_COLUMNS}, e.stream_ordering{_EVENT_FROM}"
        " WHERE e.rejected IS NULL AND NOT e.soft_failed",
        "e.stream_ordering", start.events, now["events"], EVENTS_PER_SCAN,
    )
    scan = Scan(to=Positions(events_to, start.receipts, start.presence, start.to_device))
    scan.events = [_row_to_event(r[:-1]) for r in event_rows]
    if ephemeral:
        rows, receipts_to = _bounded(
            txn, f"SELECT {_RECEIPT_COLUMNS}, stream_id FROM receipts WHERE 1 = 1",
            "stream_id", start.receipts, now["receipts"], ROWS_PER_SCAN,
        )
        scan.receipts = _rows([r[:-1] for r in rows])
        presence_rows = txn.execute(
            f"SELECT {_PRESENCE_COLUMNS} FROM presence WHERE stream_id > ? AND stream_id <= ?"
            " ORDER BY stream_id",
            (start.presence, now["presence"]),
        ).fetchall()
        scan.presence = [
            PresenceRow(r[0], r[1], r[2], int(r[3]), int(r[4]), bool(r[5]), int(r[6]))
            for r in presence_rows
        ]
        scan.to = Positions(events_to, receipts_to, now["presence"], start.to_device)
    if to_device:
        rows, to_device_to = _bounded(
            txn,
            "SELECT user_id, device_id, sender, event_type, content, stream_id"
            " FROM to_device_inbox WHERE 1 = 1",
            "stream_id", start.to_device, now["to_device"], ROWS_PER_SCAN,
        )
        scan.to_device = [
            InboxMessage(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows
        ]
        scan.to = Positions(scan.to.events, scan.to.receipts, scan.to.presence, to_device_to)
    rooms = sorted({e.room_id for e in scan.events} | {r.room_id for r in scan.receipts})
    _room_info_txn(txn, rooms, server_name, scan.members, scan.aliases)
    _members_at_events_txn(txn, scan, server_name)
    return scan


def _members_at_events_txn(txn: Txn, scan: Scan, server_name: str) -> None:
    """Joined local members after each event: read once per room at its first event's
    state group, then moved on by the batch's membership events (in stream order, which is
    the room's order for the linear rooms this server writes)."""
    suffix = ":" + server_name
    current: dict[str, frozenset[str]] = {}
    for ev in scan.events:
        room_id = ev.room_id
        members = current.get(room_id)
        if members is None:
            members = frozenset(_joined_at_group_txn(txn, ev.state_group, suffix))
        else:
            target = ev.event.state_key
            if ev.event.type == "m.room.member" and target and target.endswith(suffix):
                joined = ev.event.content.get("membership") == "join"
                if joined != (target in members):
                    members = members | {target} if joined else members - {target}
        current[room_id] = members
        scan.members_at[ev.event_id] = members


def _joined_at_group_txn(txn: Txn, group: int, suffix: str) -> set[str]:
    state = load_group_txn(txn, group, StateFilter.from_types(["m.room.member"]))
    local = {event_id: key[1] for key, event_id in state.items() if key[1].endswith(suffix)}
    joined: set[str] = set()
    ids = list(local)
    for chunk in chunks(ids):
        for (event_id,) in txn.execute(
            "SELECT n.event_id FROM events e JOIN event_nids n ON n.event_nid = e.event_nid"
            f" WHERE n.event_id IN ({marks(len(chunk))}) AND e.membership = 'join'",
            chunk,
        ).fetchall():
            joined.add(local[event_id])
    return joined


def _room_info_txn(
    txn: Txn, rooms: Sequence[str], server_name: str, members: dict[str, list[str]],
    aliases: dict[str, list[str]],
) -> None:
    """Joined members of this server (only they count for a service's interest: a large
    federated room costs its local members, not all of them) and aliases of ``rooms``."""
    for room_id in rooms:
        members.setdefault(room_id, [])
        aliases.setdefault(room_id, [])
    for chunk in chunks(rooms):
        for room_id, user_id in txn.execute(
            "SELECT room_id, state_key FROM current_state WHERE type = 'm.room.member'"
            f" AND membership = 'join' AND room_id IN ({marks(len(chunk))})"
            " AND state_key LIKE ?",
            [*chunk, f"%:{server_name}"],
        ).fetchall():
            members[room_id].append(user_id)
        for room_id, alias in txn.execute(
            f"SELECT room_id, room_alias FROM room_aliases WHERE room_id IN ({marks(len(chunk))})",
            chunk,
        ).fetchall():
            aliases[room_id].append(alias)


class AppServiceStore:
    def __init__(self, db: Database, server_name: str) -> None:
        self.db = db
        self.server_name = server_name

    async def start(self, as_id: str) -> tuple[Positions, Pending | None]:
        """The service's positions (made at the current ones the first time) and its
        unacknowledged transaction, if any."""

        def txn_fn(txn: Txn) -> tuple[Positions, Pending | None]:
            row = txn.execute(
                "SELECT events_position, receipts_position, presence_position,"
                " to_device_position FROM appservice_state WHERE as_id = ?",
                (as_id,),
            ).fetchone()
            if row is None:
                now = _current(txn)
                txn.execute(
                    "INSERT INTO appservice_state (as_id, events_position, receipts_position,"
                    " presence_position, to_device_position, next_txn_id)"
                    " VALUES (?, ?, ?, ?, ?, 1)",
                    (as_id, now["events"], now["receipts"], now["presence"], now["to_device"]),
                )
                row = (now["events"], now["receipts"], now["presence"], now["to_device"])
            pending = txn.execute(
                "SELECT txn_id, body FROM appservice_txns WHERE as_id = ?", (as_id,)
            ).fetchone()
            return (
                Positions(*(int(x) for x in row)),
                Pending(int(pending[0]), json.loads(pending[1])) if pending else None,
            )

        return await self.db.run("appservice_start", txn_fn)

    async def scan(self, start: Positions, *, ephemeral: bool, to_device: bool) -> Scan:
        return await self.db.run("appservice_scan", _scan_txn, start, ephemeral, to_device,
                                 self.server_name)

    async def room_info(
        self, rooms: Sequence[str]
    ) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """Joined local members and local aliases of ``rooms`` (typing, presence)."""

        def txn_fn(txn: Txn) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
            members: dict[str, list[str]] = {}
            aliases: dict[str, list[str]] = {}
            _room_info_txn(txn, list(rooms), self.server_name, members, aliases)
            return members, aliases

        return await self.db.run("appservice_room_info", txn_fn)

    async def rooms_of_users(self, users: Sequence[str]) -> dict[str, list[str]]:
        """The rooms each of ``users`` is joined to (presence goes to rooms' services)."""

        def txn_fn(txn: Txn) -> dict[str, list[str]]:
            out: dict[str, list[str]] = {u: [] for u in users}
            for chunk in chunks(list(users)):
                for user_id, room_id in txn.execute(
                    "SELECT state_key, room_id FROM current_state WHERE type = 'm.room.member'"
                    f" AND membership = 'join' AND state_key IN ({marks(len(chunk))})",
                    chunk,
                ).fetchall():
                    out[user_id].append(room_id)
            return out

        return await self.db.run("appservice_rooms_of_users", txn_fn)

    async def save_txn(
        self, as_id: str, before: Positions, after: Positions, body: dict[str, Any] | None
    ) -> int | None:
        """Move the positions from ``before`` to ``after``, storing ``body`` as the next
        transaction (its ID returned) when there is one. Raises if another writer moved them."""

        def txn_fn(txn: Txn) -> int | None:
            row = txn.execute(
                "SELECT next_txn_id FROM appservice_state WHERE as_id = ? AND events_position = ?"
                " AND receipts_position = ? AND presence_position = ? AND to_device_position = ?",
                (as_id, before.events, before.receipts, before.presence, before.to_device),
            ).fetchone()
            if row is None:
                raise RuntimeError(f"application service {as_id}: positions moved under us")
            txn_id = int(row[0]) if body is not None else None
            txn.execute(
                "UPDATE appservice_state SET events_position = ?, receipts_position = ?,"
                " presence_position = ?, to_device_position = ?, next_txn_id = ?"
                " WHERE as_id = ?",
                (after.events, after.receipts, after.presence, after.to_device,
                 int(row[0]) + (1 if body is not None else 0), as_id),
            )
            if body is not None:
                txn.execute(
                    "INSERT INTO appservice_txns (as_id, txn_id, body) VALUES (?, ?, ?)",
                    (as_id, txn_id, json.dumps(body, ensure_ascii=False)),
                )
            return txn_id

        return await self.db.run("appservice_save_txn", txn_fn)

    async def complete(self, as_id: str, txn_id: int) -> None:
        await self.db.run(
            "appservice_complete",
            lambda txn: txn.execute(
                "DELETE FROM appservice_txns WHERE as_id = ? AND txn_id = ?", (as_id, txn_id)
            ),
        )

    # -- third-party network room lists -----------------------------------------------------
    async def set_listed(self, as_id: str, network_id: str, room_id: str, listed: bool) -> None:
        def txn_fn(txn: Txn) -> None:
            txn.execute(
                "DELETE FROM appservice_room_list WHERE as_id = ? AND network_id = ?"
                " AND room_id = ?",
                (as_id, network_id, room_id),
            )
            if listed:
                txn.execute(
                    "INSERT INTO appservice_room_list (as_id, network_id, room_id)"
                    " VALUES (?, ?, ?)",
                    (as_id, network_id, room_id),
                )

        await self.db.run("appservice_set_listed", txn_fn)

    async def listed_rooms(
        self, network: tuple[str, str] | None
    ) -> list[str]:
        """Rooms listed for one (service, network), or for every network when None."""

        def txn_fn(txn: Txn) -> list[str]:
            if network is None:
                rows = txn.execute(
                    "SELECT DISTINCT room_id FROM appservice_room_list"
                ).fetchall()
            else:
                rows = txn.execute(
                    "SELECT room_id FROM appservice_room_list WHERE as_id = ? AND network_id = ?",
                    network,
                ).fetchall()
            return sorted(str(r[0]) for r in rows)

        return await self.db.run("appservice_listed_rooms", txn_fn)
