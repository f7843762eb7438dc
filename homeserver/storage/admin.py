"""What the admin API reads and writes beyond the other stores: user and room listings,
room blocks, background admin tasks, server-notice rooms, erased accounts and federation
destinations' activity."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from homeserver.storage.engine import Database, Txn
from homeserver.storage.room_reports import EventReport

# order_by values of GET /_synapse/admin/v2/users and the columns they sort on.
USER_ORDER = {
    "name": "u.user_id",
    "is_guest": "u.is_guest",
    "admin": "u.is_admin",
    "deactivated": "u.deactivated",
    "creation_ts": "u.created_ts",
    "displayname": "d.value",
}

# order_by values of GET /_synapse/admin/v1/statistics/users/media.
MEDIA_USAGE_ORDER = {
    "user_id": "m.user_id",
    "displayname": "MAX(d.value)",
    "media_count": "COUNT(*)",
    "media_length": "SUM(m.media_length)",
}


def like_pattern(text: str) -> str:
    """A LIKE pattern matching ``text`` anywhere, with LIKE's wildcards taken literally."""
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


@dataclass(frozen=True)
class UserRow:
    user_id: str
    is_admin: bool
    is_guest: bool
    deactivated: bool
    created_ts: int
    displayname: str | None
    avatar_url: str | None
    erased: bool


@dataclass(frozen=True)
class AdminTask:
    task_id: str
    kind: str
    room_id: str
    status: str
    error: str | None
    result: dict[str, Any]
    created_ts: int
    updated_ts: int


@dataclass(frozen=True)
class Destination:
    destination: str
    failure_ts: int | None
    retry_last_ts: int
    retry_interval_ms: int
    last_successful_ts: int | None
    queued_pdus: int
    queued_edus: int


def _json_str(raw: str | None) -> str | None:
    if raw is None:
        return None
    value = json.loads(raw)
    return value if isinstance(value, str) else None


_USER_SELECT = (
    "SELECT u.user_id, u.is_admin, u.is_guest, u.deactivated, u.created_ts, d.value, a.value,"
    " x.erased_ts FROM users u"
    " LEFT JOIN profiles d ON d.user_id = u.user_id AND d.field = 'displayname'"
    " LEFT JOIN profiles a ON a.user_id = u.user_id AND a.field = 'avatar_url'"
    " LEFT JOIN erased_users x ON x.user_id = u.user_id"
)


def _user_row(r: Any) -> UserRow:
    return UserRow(r[0], bool(r[1]), bool(r[2]), bool(r[3]), int(r[4]), _json_str(r[5]),
                   _json_str(r[6]), r[7] is not None)


def _task_row(r: Any) -> AdminTask:
    return AdminTask(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]) if r[5] else {},
                     int(r[6]), int(r[7]))


_TASK_SELECT = (
    "SELECT task_id, kind, room_id, status, error, result, created_ts, updated_ts"
    " FROM admin_tasks"
)


def _mxc_uris(content: dict[str, Any]) -> list[str]:
    raw_info = content.get("info")
    info: dict[str, Any] = raw_info if isinstance(raw_info, dict) else {}
    out = [content.get("url"), info.get("thumbnail_url")]
    for file in (content.get("file"), info.get("thumbnail_file")):
        if isinstance(file, dict):
            out.append(file.get("url"))
    return [u for u in out if isinstance(u, str) and u.startswith("mxc://")]


class AdminStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- users ------------------------------------------------------------------------------
    async def list_users(
        self, *, offset: int, limit: int, name: str | None, user_id: str | None,
        guests: bool, deactivated: bool, admins: bool | None, order_by: str, descending: bool,
    ) -> tuple[list[UserRow], int]:
        clauses: list[str] = []
        params: list[Any] = []
        if name:
            clauses.append("(LOWER(u.user_id) LIKE ? ESCAPE '\\' OR LOWER(d.value) LIKE ?"
                           " ESCAPE '\\')")
            params += [like_pattern(name)] * 2
        if user_id:
            clauses.append("LOWER(u.user_id) LIKE ? ESCAPE '\\'")
            params.append(like_pattern(user_id))
        if not guests:
            clauses.append("u.is_guest = ?")
            params.append(False)
        if not deactivated:
            clauses.append("u.deactivated = ?")
            params.append(False)
        if admins is not None:
            clauses.append("u.is_admin = ?")
            params.append(admins)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        direction = "DESC" if descending else "ASC"
        order = f"{USER_ORDER[order_by]} {direction}, u.user_id {direction}"

        def txn_fn(txn: Txn) -> tuple[list[UserRow], int]:
            total = txn.execute(
                "SELECT COUNT(*) FROM users u LEFT JOIN profiles d ON d.user_id = u.user_id"
                f" AND d.field = 'displayname'{where}", params
            ).fetchone()
            rows = txn.execute(
                f"{_USER_SELECT}{where} ORDER BY {order} LIMIT ? OFFSET ?",
                [*params, limit, offset],
            ).fetchall()
            return [_user_row(r) for r in rows], int(total[0]) if total else 0

        return await self.db.run("admin_list_users", txn_fn)

    async def get_user(self, user_id: str) -> UserRow | None:
        def txn_fn(txn: Txn) -> UserRow | None:
            row = txn.execute(f"{_USER_SELECT} WHERE u.user_id = ?", (user_id,)).fetchone()
            return _user_row(row) if row else None

        return await self.db.run("admin_get_user", txn_fn)

    async def set_erased(self, user_id: str, now: int) -> None:
        await self.db.run(
            "admin_set_erased",
            lambda txn: txn.execute(
                "INSERT INTO erased_users (user_id, erased_ts) VALUES (?, ?)"
                " ON CONFLICT (user_id) DO NOTHING", (user_id, now),
            ),
        )

    async def reactivate(self, user_id: str, password_hash: str | None) -> None:
        def txn_fn(txn: Txn) -> None:
            txn.execute(
                "UPDATE users SET deactivated = ?, password_hash = ? WHERE user_id = ?",
                (False, password_hash, user_id),
            )
            txn.execute("DELETE FROM erased_users WHERE user_id = ?", (user_id,))

        await self.db.run("admin_reactivate", txn_fn)

    # -- media use --------------------------------------------------------------------------
    async def media_usage(
        self, *, offset: int, limit: int, order_by: str, descending: bool,
        search: str | None, from_ts: int, until_ts: int | None,
    ) -> tuple[list[dict[str, Any]], int]:
        """Per local user: how many files they uploaded and their total size."""
        clauses = ["m.user_id IS NOT NULL", "m.sha256 IS NOT NULL", "m.created_ts >= ?"]
        params: list[Any] = [from_ts]
        if until_ts is not None:
            clauses.append("m.created_ts < ?")
            params.append(until_ts)
        if search:
            clauses.append("(LOWER(m.user_id) LIKE ? ESCAPE '\\' OR LOWER(d.value) LIKE ?"
                           " ESCAPE '\\')")
            params += [like_pattern(search)] * 2
        where = " AND ".join(clauses)
        direction = "DESC" if descending else "ASC"
        base = (
            "FROM media m LEFT JOIN profiles d ON d.user_id = m.user_id"
            f" AND d.field = 'displayname' WHERE {where}"
        )

        def txn_fn(txn: Txn) -> tuple[list[dict[str, Any]], int]:
            total = txn.execute(f"SELECT COUNT(DISTINCT m.user_id) {base}", params).fetchone()
            rows = txn.execute(
                f"SELECT m.user_id, MAX(d.value), COUNT(*) AS media_count,"
                f" SUM(m.media_length) AS media_length {base} GROUP BY m.user_id"
                f" ORDER BY {MEDIA_USAGE_ORDER[order_by]} {direction}, m.user_id {direction}"
                " LIMIT ? OFFSET ?",
                [*params, limit, offset],
            ).fetchall()
            users = [{"user_id": r[0], "displayname": _json_str(r[1]),
                      "media_count": int(r[2]), "media_length": int(r[3] or 0)} for r in rows]
            return users, int(total[0]) if total else 0

        return await self.db.run("admin_media_usage", txn_fn)

    async def user_media_totals(self, user_id: str) -> tuple[int, int]:
        """(number of files, total bytes) a user uploaded."""

        def txn_fn(txn: Txn) -> tuple[int, int]:
            row = txn.execute(
                "SELECT COUNT(*), SUM(media_length) FROM media"
                " WHERE user_id = ? AND sha256 IS NOT NULL", (user_id,),
            ).fetchone()
            return (int(row[0]), int(row[1] or 0)) if row else (0, 0)

        return await self.db.run("admin_user_media_totals", txn_fn)

    # -- rooms ------------------------------------------------------------------------------
    async def room_ids(self) -> list[str]:
        def txn_fn(txn: Txn) -> list[str]:
            return [r[0] for r in txn.execute("SELECT room_id FROM rooms").fetchall()]

        return await self.db.run("admin_room_ids", txn_fn)

    async def room_facts(self, room_ids: list[str], server_name: str) -> dict[str, dict[str, Any]]:
        """Per room: version, creator, public flag, member counts, number of state events and
        the content of the state events a listing shows (name, alias, rules, encryption)."""
        shown = ("m.room.name", "m.room.canonical_alias", "m.room.join_rules",
                 "m.room.guest_access", "m.room.history_visibility", "m.room.encryption",
                 "m.room.create", "m.room.topic", "m.room.avatar", "m.room.retention")
        suffix = f":{server_name}"

        def txn_fn(txn: Txn) -> dict[str, dict[str, Any]]:
            out: dict[str, dict[str, Any]] = {}
            for room_id in room_ids:
                row = txn.execute(
                    "SELECT room_version, creator, is_public FROM rooms WHERE room_id = ?",
                    (room_id,),
                ).fetchone()
                if row is None:
                    continue
                members = txn.execute(
                    "SELECT state_key, membership FROM current_state"
                    " WHERE room_id = ? AND type = 'm.room.member'", (room_id,),
                ).fetchall()
                joined = [m[0] for m in members if m[1] == "join"]
                count = txn.execute(
                    "SELECT COUNT(*) FROM current_state WHERE room_id = ?", (room_id,)
                ).fetchone()
                contents: dict[str, Any] = {}
                rows = txn.execute(
                    "SELECT c.type, e.json FROM current_state c JOIN event_nids n"
                    " ON n.event_id = c.event_id JOIN events e ON e.event_nid = n.event_nid"
                    f" WHERE c.room_id = ? AND c.state_key = '' AND c.type IN"
                    f" ({','.join('?' * len(shown))})",
                    (room_id, *shown),
                ).fetchall()
                for t, raw in rows:
                    content = json.loads(raw).get("content")
                    contents[t] = content if isinstance(content, dict) else {}
                out[room_id] = {
                    "version": row[0], "creator": row[1], "public": bool(row[2]),
                    "joined_members": len(joined),
                    "joined_local_members": sum(1 for u in joined if u.endswith(suffix)),
                    "local_users": sorted(m[0] for m in members if m[0].endswith(suffix)
                                          and m[1] in ("join", "invite", "knock")),
                    "state_events": int(count[0]) if count else 0,
                    "state": contents,
                }
            return out

        return await self.db.run("admin_room_facts", txn_fn)

    async def room_media(self, room_id: str) -> list[str]:
        """The mxc:// URIs the room's unredacted events refer to (content.url, file.url and
        their thumbnails), as Synapse finds them."""

        def txn_fn(txn: Txn) -> list[str]:
            found: set[str] = set()
            rows = txn.execute(
                "SELECT json FROM events WHERE room_id = ? AND redacted_by IS NULL"
                " AND rejected IS NULL", (room_id,),
            ).fetchall()
            for (raw,) in rows:
                content = json.loads(raw).get("content")
                if isinstance(content, dict):
                    found.update(_mxc_uris(content))
            return sorted(found)

        return await self.db.run("admin_room_media", txn_fn)

    async def rooms_with_server(self, server_name: str) -> list[str]:
        """Rooms in which a user of ``server_name`` is joined."""
        pattern = "%:" + server_name.replace("\\", "\\\\").replace("%", "\\%").replace(
            "_", "\\_")

        def txn_fn(txn: Txn) -> list[str]:
            rows = txn.execute(
                "SELECT DISTINCT room_id, state_key FROM current_state"
                " WHERE type = 'm.room.member' AND membership = 'join'"
                " AND state_key LIKE ? ESCAPE '\\'", (pattern,),
            ).fetchall()
            return sorted({r[0] for r in rows if r[1].split(":", 1)[1] == server_name})

        return await self.db.run("admin_rooms_with_server", txn_fn)

    # -- content reports --------------------------------------------------------------------
    async def get_report(self, report_id: int) -> EventReport | None:
        def txn_fn(txn: Txn) -> EventReport | None:
            r = txn.execute(
                "SELECT id, received_ts, room_id, event_id, user_id, reason, score"
                " FROM event_reports WHERE id = ?", (report_id,),
            ).fetchone()
            if r is None:
                return None
            return EventReport(int(r[0]), int(r[1]), r[2], r[3], r[4], r[5],
                               int(r[6]) if r[6] is not None else None)

        return await self.db.run("admin_get_report", txn_fn)

    async def delete_report(self, report_id: int) -> bool:
        def txn_fn(txn: Txn) -> bool:
            txn.execute("DELETE FROM event_reports WHERE id = ?", (report_id,))
            return txn.rowcount > 0

        return await self.db.run("admin_delete_report", txn_fn)

    # -- blocks -----------------------------------------------------------------------------
    async def block_room(self, room_id: str, by: str, now: int) -> None:
        await self.db.run(
            "admin_block_room",
            lambda txn: txn.execute(
                "INSERT INTO room_blocks (room_id, blocked_by, blocked_ts) VALUES (?, ?, ?)"
                " ON CONFLICT (room_id) DO NOTHING", (room_id, by, now),
            ),
        )

    async def unblock_room(self, room_id: str) -> None:
        await self.db.run(
            "admin_unblock_room",
            lambda txn: txn.execute("DELETE FROM room_blocks WHERE room_id = ?", (room_id,)),
        )

    async def room_block(self, room_id: str) -> str | None:
        """Who blocked the room, or None when it is not blocked."""

        def txn_fn(txn: Txn) -> str | None:
            row = txn.execute(
                "SELECT blocked_by FROM room_blocks WHERE room_id = ?", (room_id,)
            ).fetchone()
            return str(row[0]) if row else None

        return await self.db.run("admin_room_block", txn_fn)

    # -- tasks ------------------------------------------------------------------------------
    async def add_task(self, task_id: str, kind: str, room_id: str, now: int) -> None:
        await self.db.run(
            "admin_add_task",
            lambda txn: txn.execute(
                "INSERT INTO admin_tasks (task_id, kind, room_id, status, created_ts,"
                " updated_ts) VALUES (?, ?, ?, 'scheduled', ?, ?)",
                (task_id, kind, room_id, now, now),
            ),
        )

    async def update_task(self, task_id: str, status: str, now: int, *,
                          error: str | None = None,
                          result: dict[str, Any] | None = None) -> None:
        await self.db.run(
            "admin_update_task",
            lambda txn: txn.execute(
                "UPDATE admin_tasks SET status = ?, error = ?, result = ?, updated_ts = ?"
                " WHERE task_id = ?",
                (status, error, json.dumps(result) if result is not None else None, now,
                 task_id),
            ),
        )

    async def get_task(self, task_id: str) -> AdminTask | None:
        def txn_fn(txn: Txn) -> AdminTask | None:
            row = txn.execute(f"{_TASK_SELECT} WHERE task_id = ?", (task_id,)).fetchone()
            return _task_row(row) if row else None

        return await self.db.run("admin_get_task", txn_fn)

    async def room_tasks(self, room_id: str, kind: str) -> list[AdminTask]:
        def txn_fn(txn: Txn) -> list[AdminTask]:
            rows = txn.execute(
                f"{_TASK_SELECT} WHERE room_id = ? AND kind = ? ORDER BY created_ts, task_id",
                (room_id, kind),
            ).fetchall()
            return [_task_row(r) for r in rows]

        return await self.db.run("admin_room_tasks", txn_fn)

    async def fail_interrupted_tasks(self, now: int) -> int:
        def txn_fn(txn: Txn) -> int:
            txn.execute(
                "UPDATE admin_tasks SET status = 'failed', error = ?, updated_ts = ?"
                " WHERE status IN ('scheduled', 'active')",
                ("interrupted by a server restart", now),
            )
            return txn.rowcount

        return await self.db.run("admin_fail_interrupted", txn_fn)

    # -- server notices ---------------------------------------------------------------------
    async def notice_room(self, user_id: str) -> str | None:
        def txn_fn(txn: Txn) -> str | None:
            row = txn.execute(
                "SELECT room_id FROM server_notice_rooms WHERE user_id = ?", (user_id,)
            ).fetchone()
            return str(row[0]) if row else None

        return await self.db.run("admin_notice_room", txn_fn)

    async def set_notice_room(self, user_id: str, room_id: str) -> None:
        def txn_fn(txn: Txn) -> None:
            txn.execute("DELETE FROM server_notice_rooms WHERE user_id = ?", (user_id,))
            txn.execute("INSERT INTO server_notice_rooms (user_id, room_id) VALUES (?, ?)",
                        (user_id, room_id))

        await self.db.run("admin_set_notice_room", txn_fn)

    # -- federation -------------------------------------------------------------------------
    async def destinations(self) -> list[Destination]:
        """Every destination we queued for, failed with or succeeded with."""

        def txn_fn(txn: Txn) -> list[Destination]:
            queued: dict[str, dict[str, int]] = {}
            for dest, kind, n in txn.execute(
                "SELECT destination, kind, COUNT(*) FROM federation_outbox"
                " GROUP BY destination, kind"
            ).fetchall():
                queued.setdefault(dest, {})[kind] = int(n)
            backoff = {r[0]: r[1:] for r in txn.execute(
                "SELECT destination, failure_ts, retry_last_ts, retry_interval_ms"
                " FROM federation_destinations"
            ).fetchall()}
            success = {r[0]: int(r[1]) for r in txn.execute(
                "SELECT destination, last_successful_ts FROM federation_destination_activity"
            ).fetchall()}
            out = []
            for dest in sorted(set(queued) | set(backoff) | set(success)):
                b = backoff.get(dest)
                q = queued.get(dest, {})
                out.append(Destination(
                    dest,
                    int(b[0]) if b and b[0] is not None else None,
                    int(b[1]) if b else 0,
                    int(b[2]) if b else 0,
                    success.get(dest),
                    q.get("pdu", 0),
                    q.get("edu", 0),
                ))
            return out

        return await self.db.run("admin_destinations", txn_fn)

