"""Push: users' push rules, notifications (``event_push_actions``), the implicit read marks
of users' own events, and pushers.

Unread counts are computed, not kept: a notification row counts while its event is past both
the user's read receipt for its thread (the receipts table of ``storage.receipts``: the
furthest ``m.read``/``m.read.private``, unthreaded or for that thread) and the user's own
latest event in that thread (sending an event marks everything before it read). One query
with an index range per (user, room) gives every thread's counts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from homeserver.storage import streams
from homeserver.storage.engine import Database, Txn
from homeserver.storage.sql import chunks, marks

MAIN_THREAD = "main"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# -- push rules -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredRule:
    kind: str
    rule_id: str
    priority: int
    conditions: list[Any] | None
    pattern: str | None
    actions: list[Any]
    enabled: bool


@dataclass(frozen=True)
class DefaultSetting:
    """A user's change to a server-default rule; None keeps the default."""

    enabled: bool | None
    actions: list[Any] | None


@dataclass
class UserRules:
    rules: list[StoredRule]
    defaults: dict[str, DefaultSetting]


class RuleNotFound(Exception):
    """The ``before``/``after`` rule does not exist."""


def load_rules_txn(txn: Txn, user_ids: Sequence[str]) -> dict[str, UserRules]:
    out = {u: UserRules([], {}) for u in user_ids}
    for chunk in chunks(user_ids):
        for r in txn.execute(
            "SELECT user_id, kind, rule_id, priority, conditions, pattern, actions, enabled"
            f" FROM push_rules WHERE user_id IN ({marks(len(chunk))}) ORDER BY priority DESC",
            chunk,
        ).fetchall():
            out[r[0]].rules.append(StoredRule(
                kind=r[1], rule_id=r[2], priority=int(r[3]),
                conditions=json.loads(r[4]) if r[4] is not None else None,
                pattern=r[5], actions=json.loads(r[6]), enabled=bool(r[7]),
            ))
        for r in txn.execute(
            "SELECT user_id, rule_id, enabled, actions FROM push_rule_defaults"
            f" WHERE user_id IN ({marks(len(chunk))})",
            chunk,
        ).fetchall():
            out[r[0]].defaults[r[1]] = DefaultSetting(
                None if r[2] is None else bool(r[2]),
                json.loads(r[3]) if r[3] is not None else None,
            )
    return out


def put_rule_txn(
    txn: Txn,
    user_id: str,
    kind: str,
    rule_id: str,
    conditions: list[Any] | None,
    pattern: str | None,
    actions: list[Any],
    before: str | None,
    after: str | None,
) -> None:
    """Add or update one of the user's rules. ``before``/``after`` place it just above/below
    another of the user's rules of the kind (``before`` wins); a new rule without either goes
    first among the user's rules; an updated one keeps its place and its enabled flag."""
    rows = txn.execute(
        "SELECT rule_id, priority FROM push_rules WHERE user_id = ? AND kind = ?"
        " ORDER BY priority DESC",
        (user_id, kind),
    ).fetchall()
    order = [r[0] for r in rows]
    priorities = {r[0]: int(r[1]) for r in rows}
    exists = rule_id in priorities
    relative = before if before is not None else after
    if relative is not None:
        order = [r for r in order if r != rule_id]
        if relative not in order:
            raise RuleNotFound(relative)
        at = order.index(relative) + (0 if before is not None else 1)
        order.insert(at, rule_id)
        wanted = {rid: len(order) - i for i, rid in enumerate(order)}
        changed = [(p, user_id, kind, rid) for rid, p in wanted.items()
                   if rid != rule_id and priorities.get(rid) != p]
        txn.executemany(
            "UPDATE push_rules SET priority = ? WHERE user_id = ? AND kind = ? AND rule_id = ?",
            changed,
        )
        priority = wanted[rule_id]
    elif exists:
        priority = priorities[rule_id]
    else:
        priority = (max(priorities.values()) + 1) if priorities else 1
    encoded_conditions = _json(conditions) if conditions is not None else None
    txn.execute(
        "INSERT INTO push_rules (user_id, kind, rule_id, priority, conditions, pattern,"
        " actions, enabled) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (user_id, kind, rule_id) DO UPDATE SET priority = excluded.priority,"
        " conditions = excluded.conditions, pattern = excluded.pattern,"
        " actions = excluded.actions",
        (user_id, kind, rule_id, priority, encoded_conditions, pattern, _json(actions), True),
    )


def delete_rule_txn(txn: Txn, user_id: str, kind: str, rule_id: str) -> bool:
    txn.execute(
        "DELETE FROM push_rules WHERE user_id = ? AND kind = ? AND rule_id = ?",
        (user_id, kind, rule_id),
    )
    return txn.rowcount > 0


def set_rule_field_txn(
    txn: Txn, user_id: str, kind: str, rule_id: str, *, is_default: bool,
    enabled: bool | None = None, actions: list[Any] | None = None,
) -> bool:
    """Set ``enabled`` or ``actions`` of a user rule (False if it does not exist) or record
    it as the user's setting of a server-default rule."""
    if is_default:
        txn.execute(
            "INSERT INTO push_rule_defaults (user_id, rule_id, enabled, actions)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (user_id, rule_id) DO UPDATE SET"
            + (" enabled = excluded.enabled" if enabled is not None
               else " actions = excluded.actions"),
            (user_id, rule_id, enabled, _json(actions) if actions is not None else None),
        )
        return True
    if enabled is not None:
        txn.execute(
            "UPDATE push_rules SET enabled = ? WHERE user_id = ? AND kind = ? AND rule_id = ?",
            (enabled, user_id, kind, rule_id),
        )
    else:
        txn.execute(
            "UPDATE push_rules SET actions = ? WHERE user_id = ? AND kind = ? AND rule_id = ?",
            (_json(actions), user_id, kind, rule_id),
        )
    return txn.rowcount > 0


def delete_user_rules_txn(txn: Txn, user_id: str) -> None:
    for table in ("push_rules", "push_rule_defaults"):
        txn.execute(f"DELETE FROM {table} WHERE user_id = ?", (user_id,))


def memberships_txn(txn: Txn, event_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """event ID -> (state_key, membership) of member events."""
    out: dict[str, tuple[str, str]] = {}
    for chunk in chunks(event_ids):
        for r in txn.execute(
            "SELECT n.event_id, e.state_key, e.membership FROM events e"
            " JOIN event_nids n ON n.event_nid = e.event_nid"
            f" WHERE n.event_id IN ({marks(len(chunk))})",
            chunk,
        ).fetchall():
            if r[1] is not None and r[2] is not None:
                out[r[0]] = (r[1], r[2])
    return out


# -- notifications ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PushAction:
    user_id: str
    room_id: str
    thread_id: str
    stream_ordering: int
    event_id: str
    actions: list[Any]
    highlight: bool
    ts: int


@dataclass(frozen=True)
class OwnEvent:
    """A user's own event: an implicit read receipt for its thread."""

    user_id: str
    room_id: str
    thread_id: str
    stream_ordering: int


def add_push_actions_txn(
    txn: Txn, actions: Sequence[PushAction], own: Sequence[OwnEvent]
) -> None:
    # In key order: a batch holds a row per member per event, and inserting them sorted by
    # (user, position) keeps neighbouring inserts on the same index pages (on SQLite a big
    # room's batch otherwise touches a page per row).
    txn.executemany(
        "INSERT INTO event_push_actions (user_id, room_id, thread_id, stream_ordering,"
        " event_id, actions, highlight, ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (user_id, stream_ordering) DO NOTHING",
        [(a.user_id, a.room_id, a.thread_id, a.stream_ordering, a.event_id, _json(a.actions),
          a.highlight, a.ts)
         for a in sorted(actions, key=lambda a: (a.user_id, a.stream_ordering))],
    )
    txn.executemany(
        "INSERT INTO push_own_events (user_id, room_id, thread_id, stream_ordering)"
        " VALUES (?, ?, ?, ?) ON CONFLICT (user_id, room_id, thread_id) DO UPDATE SET"
        " stream_ordering = excluded.stream_ordering"
        " WHERE push_own_events.stream_ordering < excluded.stream_ordering",
        [(o.user_id, o.room_id, o.thread_id, o.stream_ordering) for o in own],
    )


# A notification row is unread while its event is past the user's read receipt for its
# thread (unthreaded or that thread's, m.read or m.read.private) and past the user's own
# latest event in the thread.
_UNREAD = (
    " a.stream_ordering > COALESCE((SELECT MAX(r.event_stream) FROM receipts r"
    "   WHERE r.room_id = a.room_id AND r.user_id = a.user_id"
    "   AND r.receipt_type IN ('m.read', 'm.read.private')"
    "   AND r.thread_id IN ('', a.thread_id)), 0)"
    " AND a.stream_ordering > COALESCE((SELECT o.stream_ordering FROM push_own_events o"
    "   WHERE o.user_id = a.user_id AND o.room_id = a.room_id"
    "   AND o.thread_id = a.thread_id), 0)"
)


def unread_counts_txn(
    txn: Txn, user_id: str, room_ids: Sequence[str] | None
) -> dict[str, dict[str, tuple[int, int]]]:
    """room -> thread ('main' or a root) -> (notifications, highlights), unread only; rooms
    and threads with nothing unread are left out. ``room_ids`` None: every room."""
    sql = (
        "SELECT a.room_id, a.thread_id, COUNT(*),"
        " SUM(CASE WHEN a.highlight THEN 1 ELSE 0 END) FROM event_push_actions a"
        " WHERE a.user_id = ?{rooms} AND" + _UNREAD + " GROUP BY a.room_id, a.thread_id"
    )
    out: dict[str, dict[str, tuple[int, int]]] = {}

    def collect(rows: Iterable[Sequence[Any]]) -> None:
        for room, thread, n, h in rows:
            out.setdefault(room, {})[thread] = (int(n), int(h or 0))

    if room_ids is None:
        collect(txn.execute(sql.format(rooms=""), (user_id,)).fetchall())
        return out
    for chunk in chunks(room_ids):
        rooms = f" AND a.room_id IN ({marks(len(chunk))})"
        collect(txn.execute(sql.format(rooms=rooms), (user_id, *chunk)).fetchall())
    return out


def total_unread_txn(txn: Txn, user_id: str) -> tuple[int, int]:
    """(unread notifications, rooms with unread notifications) over all the user's rooms."""
    counts = unread_counts_txn(txn, user_id, None)
    total = sum(n for threads in counts.values() for n, _ in threads.values())
    return total, len(counts)


@dataclass(frozen=True)
class NotificationRow:
    room_id: str
    thread_id: str
    stream_ordering: int
    event_id: str
    actions: list[Any]
    highlight: bool
    ts: int
    read: bool


def notifications_txn(
    txn: Txn, user_id: str, before: int | None, limit: int, only_highlight: bool
) -> list[NotificationRow]:
    """The user's notifications, newest first, with stream ordering below ``before``."""
    rows = txn.execute(
        "SELECT a.room_id, a.thread_id, a.stream_ordering, a.event_id, a.actions, a.highlight,"
        " a.ts, CASE WHEN" + _UNREAD + " THEN 0 ELSE 1 END FROM event_push_actions a"
        " WHERE a.user_id = ? AND a.stream_ordering < ?"
        + (" AND a.highlight = ?" if only_highlight else "")
        + " ORDER BY a.stream_ordering DESC LIMIT ?",
        (user_id, before if before is not None else 2**62,
         *([True] if only_highlight else []), limit),
    ).fetchall()
    return [
        NotificationRow(r[0], r[1], int(r[2]), r[3], json.loads(r[4]), bool(r[5]), int(r[6]),
                        bool(r[7]))
        for r in rows
    ]


def pending_for_pusher_txn(txn: Txn, user_id: str, after: int, limit: int) -> list[PushAction]:
    """Notifications after ``after`` still unread (read ones need no push), oldest first."""
    rows = txn.execute(
        "SELECT a.room_id, a.thread_id, a.stream_ordering, a.event_id, a.actions, a.highlight,"
        " a.ts FROM event_push_actions a WHERE a.user_id = ? AND a.stream_ordering > ? AND"
        + _UNREAD + " ORDER BY a.stream_ordering LIMIT ?",
        (user_id, after, limit),
    ).fetchall()
    return [
        PushAction(user_id, r[0], r[1], int(r[2]), r[3], json.loads(r[4]), bool(r[5]), int(r[6]))
        for r in rows
    ]


def prune_push_actions_txn(txn: Txn, older_than_ts: int) -> int:
    txn.execute("DELETE FROM event_push_actions WHERE ts < ?", (older_than_ts,))
    return txn.rowcount


# -- pushers --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pusher:
    user_id: str
    app_id: str
    pushkey: str
    kind: str
    app_display_name: str
    device_display_name: str
    profile_tag: str | None
    lang: str
    data: dict[str, Any]
    device_id: str | None
    pushkey_ts: int
    # The stream ordering of the last notification handled (sent or given up on).
    last_stream_ordering: int
    # When delivery started failing (ms), None while it works.
    failing_since: int | None

    @property
    def key(self) -> tuple[str, str, str]:
        return self.user_id, self.app_id, self.pushkey


_PUSHER_COLUMNS = (
    "p.user_id, p.app_id, p.pushkey, p.kind, p.app_display_name, p.device_display_name,"
    " p.profile_tag, p.lang, p.data, p.device_id, p.pushkey_ts, p.last_stream_ordering,"
    " p.failing_since"
)
# Pushers die with the device that made them (logout, device deletion).
_LIVE_PUSHERS = (
    f"SELECT {_PUSHER_COLUMNS} FROM pushers p JOIN devices d"
    " ON d.user_id = p.user_id AND d.device_id = p.device_id"
)


def _pusher(r: Sequence[Any]) -> Pusher:
    return Pusher(
        user_id=r[0], app_id=r[1], pushkey=r[2], kind=r[3], app_display_name=r[4],
        device_display_name=r[5], profile_tag=r[6], lang=r[7], data=json.loads(r[8]),
        device_id=r[9], pushkey_ts=int(r[10]), last_stream_ordering=int(r[11]),
        failing_since=int(r[12]) if r[12] is not None else None,
    )


def _delete_orphans_txn(txn: Txn, user_id: str | None) -> list[tuple[str, str, str]]:
    """Delete pushers whose device is gone; their keys."""
    where = " AND p.user_id = ?" if user_id is not None else ""
    rows = txn.execute(
        "SELECT p.user_id, p.app_id, p.pushkey FROM pushers p LEFT JOIN devices d"
        " ON d.user_id = p.user_id AND d.device_id = p.device_id"
        " WHERE d.device_id IS NULL" + where,
        (user_id,) if user_id is not None else (),
    ).fetchall()
    txn.executemany(
        "DELETE FROM pushers WHERE user_id = ? AND app_id = ? AND pushkey = ?",
        [tuple(r) for r in rows],
    )
    return [(r[0], r[1], r[2]) for r in rows]


class PushStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # rules
    async def load_rules(self, user_ids: Sequence[str]) -> dict[str, UserRules]:
        return await self.db.run("push_load_rules", load_rules_txn, list(user_ids))

    async def put_rule(
        self, user_id: str, kind: str, rule_id: str, conditions: list[Any] | None,
        pattern: str | None, actions: list[Any], before: str | None, after: str | None,
    ) -> None:
        await self.db.run("push_put_rule", put_rule_txn, user_id, kind, rule_id, conditions,
                          pattern, actions, before, after)

    async def delete_rule(self, user_id: str, kind: str, rule_id: str) -> bool:
        return await self.db.run("push_delete_rule", delete_rule_txn, user_id, kind, rule_id)

    async def set_enabled(self, user_id: str, kind: str, rule_id: str, enabled: bool,
                          *, is_default: bool) -> bool:
        return await self.db.run("push_set_enabled", lambda t: set_rule_field_txn(
            t, user_id, kind, rule_id, is_default=is_default, enabled=enabled))

    async def set_actions(self, user_id: str, kind: str, rule_id: str, actions: list[Any],
                          *, is_default: bool) -> bool:
        return await self.db.run("push_set_actions", lambda t: set_rule_field_txn(
            t, user_id, kind, rule_id, is_default=is_default, actions=actions))

    async def memberships(self, event_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        if not event_ids:
            return {}
        return await self.db.run("push_memberships", memberships_txn, list(event_ids))

    # notifications
    async def add_push_actions(
        self, actions: Sequence[PushAction], own: Sequence[OwnEvent]
    ) -> None:
        if actions or own:
            await self.db.run("push_add_actions", add_push_actions_txn, actions, own)

    async def unread_counts(
        self, user_id: str, room_ids: Sequence[str] | None
    ) -> dict[str, dict[str, tuple[int, int]]]:
        return await self.db.run("push_unread_counts", unread_counts_txn, user_id,
                                 None if room_ids is None else list(room_ids))

    async def total_unread(self, user_id: str) -> tuple[int, int]:
        return await self.db.run("push_total_unread", total_unread_txn, user_id)

    async def notifications(
        self, user_id: str, before: int | None, limit: int, only_highlight: bool
    ) -> list[NotificationRow]:
        return await self.db.run("push_notifications", notifications_txn, user_id, before,
                                 limit, only_highlight)

    async def pending_for_pusher(self, user_id: str, after: int, limit: int) -> list[PushAction]:
        return await self.db.run("push_pending", pending_for_pusher_txn, user_id, after, limit)

    async def prune(self, older_than_ts: int) -> int:
        return await self.db.run("push_prune", prune_push_actions_txn, older_than_ts)

    # pushers
    async def set_pusher(self, p: Pusher, append: bool) -> list[tuple[str, str, str]]:
        """Create or update a pusher (a new one starts after the newest event); unless
        ``append``, other users' pushers with the same app ID and pushkey go. Returns the
        keys of the pushers removed."""

        def txn_fn(txn: Txn) -> list[tuple[str, str, str]]:
            removed: list[tuple[str, str, str]] = []
            if not append:
                rows = txn.execute(
                    "SELECT user_id FROM pushers WHERE app_id = ? AND pushkey = ?"
                    " AND user_id <> ?",
                    (p.app_id, p.pushkey, p.user_id),
                ).fetchall()
                removed = [(r[0], p.app_id, p.pushkey) for r in rows]
                txn.execute(
                    "DELETE FROM pushers WHERE app_id = ? AND pushkey = ? AND user_id <> ?",
                    (p.app_id, p.pushkey, p.user_id),
                )
            start = streams.current(txn, "events")
            txn.execute(
                "INSERT INTO pushers (user_id, app_id, pushkey, kind, app_display_name,"
                " device_display_name, profile_tag, lang, data, device_id, pushkey_ts,"
                " last_stream_ordering, failing_since)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)"
                " ON CONFLICT (user_id, app_id, pushkey) DO UPDATE SET kind = excluded.kind,"
                " app_display_name = excluded.app_display_name,"
                " device_display_name = excluded.device_display_name,"
                " profile_tag = excluded.profile_tag, lang = excluded.lang,"
                " data = excluded.data, device_id = excluded.device_id,"
                " pushkey_ts = excluded.pushkey_ts",
                (p.user_id, p.app_id, p.pushkey, p.kind, p.app_display_name,
                 p.device_display_name, p.profile_tag, p.lang, _json(p.data), p.device_id,
                 p.pushkey_ts, start),
            )
            return removed

        return await self.db.run("push_set_pusher", txn_fn)

    async def delete_pusher(self, user_id: str, app_id: str, pushkey: str) -> bool:
        def txn_fn(txn: Txn) -> bool:
            txn.execute(
                "DELETE FROM pushers WHERE user_id = ? AND app_id = ? AND pushkey = ?",
                (user_id, app_id, pushkey),
            )
            return txn.rowcount > 0

        return await self.db.run("push_delete_pusher", txn_fn)

    async def delete_user_pushers(self, user_id: str) -> None:
        await self.db.run("push_delete_user_pushers", lambda t: t.execute(
            "DELETE FROM pushers WHERE user_id = ?", (user_id,)))

    async def pushers_for_user(
        self, user_id: str
    ) -> tuple[list[Pusher], list[tuple[str, str, str]]]:
        """The user's live pushers, and the keys of dead ones (device gone) just removed."""

        def txn_fn(txn: Txn) -> tuple[list[Pusher], list[tuple[str, str, str]]]:
            removed = _delete_orphans_txn(txn, user_id)
            rows = txn.execute(
                _LIVE_PUSHERS + " WHERE p.user_id = ? ORDER BY p.app_id, p.pushkey",
                (user_id,),
            ).fetchall()
            return [_pusher(r) for r in rows], removed

        return await self.db.run("push_pushers_for_user", txn_fn)

    async def get_pusher(self, user_id: str, app_id: str, pushkey: str) -> Pusher | None:
        """The pusher if it exists and its device does."""

        def txn_fn(txn: Txn) -> Pusher | None:
            row = txn.execute(
                _LIVE_PUSHERS + " WHERE p.user_id = ? AND p.app_id = ? AND p.pushkey = ?",
                (user_id, app_id, pushkey),
            ).fetchone()
            return _pusher(row) if row else None

        return await self.db.run("push_get_pusher", txn_fn)

    async def all_pushers(self) -> list[Pusher]:
        def txn_fn(txn: Txn) -> list[Pusher]:
            _delete_orphans_txn(txn, None)
            return [_pusher(r) for r in txn.execute(_LIVE_PUSHERS).fetchall()]

        return await self.db.run("push_all_pushers", txn_fn)

    async def update_pusher_progress(
        self, key: tuple[str, str, str], last_stream_ordering: int, failing_since: int | None
    ) -> None:
        await self.db.run("push_pusher_progress", lambda t: t.execute(
            "UPDATE pushers SET last_stream_ordering = ?, failing_since = ?"
            " WHERE user_id = ? AND app_id = ? AND pushkey = ?",
            (last_stream_ordering, failing_since, *key)))

    async def delete_pushers_by_pushkey(
        self, app_id: str, pushkeys: Iterable[str], user_id: str
    ) -> int:
        keys = list(pushkeys)

        def txn_fn(txn: Txn) -> int:
            n = 0
            for key in keys:
                txn.execute(
                    "DELETE FROM pushers WHERE user_id = ? AND app_id = ? AND pushkey = ?",
                    (user_id, app_id, key),
                )
                n += txn.rowcount
            return n

        return await self.db.run("push_delete_rejected", txn_fn)
