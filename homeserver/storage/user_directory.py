"""User directory search: local users, plus anyone (local or remote) who shares a joined room
with the searcher, matched on user ID or display name."""

from __future__ import annotations

import json
from dataclasses import dataclass

from homeserver.storage.engine import Database, Txn


@dataclass(frozen=True)
class DirectoryEntry:
    user_id: str
    display_name: str | None
    avatar_url: str | None


def _like(term: str) -> str:
    escaped = term.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class UserDirectoryStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def search(self, searcher: str, term: str, limit: int) -> list[DirectoryEntry]:
        like = _like(term)

        def txn_fn(txn: Txn) -> list[DirectoryEntry]:
            found: dict[str, DirectoryEntry] = {}
            # Room members first: their room display names are what the searcher sees.
            rows = txn.execute(
                "SELECT DISTINCT cs.state_key, e.json FROM current_state mine"
                " JOIN current_state cs ON cs.room_id = mine.room_id"
                "  AND cs.type = 'm.room.member' AND cs.membership = 'join'"
                " JOIN event_nids n ON n.event_id = cs.event_id"
                " JOIN events e ON e.event_nid = n.event_nid"
                " WHERE mine.type = 'm.room.member' AND mine.state_key = ?"
                " AND mine.membership = 'join'",
                (searcher,),
            ).fetchall()
            needle = term.lower()
            for user_id, pdu_json in rows:
                content = json.loads(pdu_json).get("content", {})
                name = content.get("displayname")
                avatar = content.get("avatar_url")
                name = name if isinstance(name, str) else None
                if needle in user_id.lower() or (name and needle in name.lower()):
                    found.setdefault(user_id, DirectoryEntry(
                        user_id, name, avatar if isinstance(avatar, str) else None))
            rows = txn.execute(
                "SELECT u.user_id, d.value, a.value FROM users u"
                " LEFT JOIN profiles d ON d.user_id = u.user_id AND d.field = 'displayname'"
                " LEFT JOIN profiles a ON a.user_id = u.user_id AND a.field = 'avatar_url'"
                " WHERE u.deactivated = ? AND u.is_guest = ?"
                " AND (LOWER(u.user_id) LIKE ? ESCAPE '\\' OR LOWER(d.value) LIKE ? ESCAPE '\\')"
                " ORDER BY u.user_id LIMIT ?",
                (False, False, like, like, limit + 1),
            ).fetchall()
            for user_id, name_json, avatar_json in rows:
                found.setdefault(user_id, DirectoryEntry(
                    user_id,
                    json.loads(name_json) if name_json else None,
                    json.loads(avatar_json) if avatar_json else None,
                ))
            return sorted(found.values(), key=lambda e: e.user_id)[: limit + 1]

        return await self.db.run("user_directory_search", txn_fn)
