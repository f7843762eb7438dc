"""The media tables: which media IDs (local uploads and cached remote media) and which
thumbnails point at which file. Files themselves live on disk, named by their SHA-256."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from homeserver.storage.engine import Database, Txn

_MEDIA_COLUMNS = (
    "origin, media_id, user_id, created_ts, sha256, media_length, media_type, upload_name,"
    " unused_expires_ts, authenticated, quarantined_by, last_access_ts, thumbnail_state"
)
_THUMB_COLUMNS = "width, height, method, animated, media_type, sha256, media_length"

# Columns the admin API may sort a user's media by.
USER_MEDIA_ORDER = (
    "media_id", "upload_name", "created_ts", "last_access_ts", "media_length", "media_type",
    "quarantined_by",
)


@dataclass(frozen=True)
class Media:
    origin: str
    media_id: str
    user_id: str | None
    created_ts: int
    sha256: str | None
    media_length: int | None
    media_type: str | None
    upload_name: str | None
    unused_expires_ts: int | None
    authenticated: bool
    quarantined_by: str | None
    last_access_ts: int | None
    thumbnail_state: str | None

    @property
    def uploaded(self) -> bool:
        return self.sha256 is not None

    def expired(self, now_ms: int) -> bool:
        """A reserved ID nobody uploaded to in time."""
        return (
            self.sha256 is None
            and self.unused_expires_ts is not None
            and self.unused_expires_ts <= now_ms
        )


@dataclass(frozen=True)
class Thumbnail:
    width: int
    height: int
    method: str
    animated: bool
    media_type: str
    sha256: str
    media_length: int


def _media(row: Sequence[Any]) -> Media:
    return Media(
        origin=row[0],
        media_id=row[1],
        user_id=row[2],
        created_ts=int(row[3]),
        sha256=row[4],
        media_length=None if row[5] is None else int(row[5]),
        media_type=row[6],
        upload_name=row[7],
        unused_expires_ts=None if row[8] is None else int(row[8]),
        authenticated=bool(row[9]),
        quarantined_by=row[10],
        last_access_ts=None if row[11] is None else int(row[11]),
        thumbnail_state=row[12],
    )


def _thumb(row: Sequence[Any]) -> Thumbnail:
    return Thumbnail(int(row[0]), int(row[1]), row[2], bool(row[3]), row[4], row[5], int(row[6]))


def _get(txn: Txn, origin: str, media_id: str) -> Media | None:
    row = txn.execute(
        f"SELECT {_MEDIA_COLUMNS} FROM media WHERE origin = ? AND media_id = ?",
        (origin, media_id),
    ).fetchone()
    return _media(row) if row else None


def _usage(txn: Txn, user_id: str) -> int:
    row = txn.execute(
        "SELECT COALESCE(SUM(media_length), 0) FROM media WHERE user_id = ?", (user_id,)
    ).fetchone()
    return int(row[0]) if row is not None else 0


def _referenced(txn: Txn, sha256: str) -> bool:
    if txn.execute("SELECT 1 FROM media WHERE sha256 = ? LIMIT 1", (sha256,)).fetchone():
        return True
    return (
        txn.execute(
            "SELECT 1 FROM media_thumbnails WHERE sha256 = ? LIMIT 1", (sha256,)
        ).fetchone()
        is not None
    )


class MediaStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, origin: str, media_id: str) -> Media | None:
        return await self.db.run("get_media", _get, origin, media_id)

    async def insert(self, media: Media, quota: int | None = None) -> bool:
        """A new local upload (or reserved ID); the caller picked a fresh random ID. With a
        ``quota``, nothing is stored (False) if the user's uploads would then exceed it."""

        def txn_fn(txn: Txn) -> bool:
            if quota is not None and media.user_id is not None and \
                    _usage(txn, media.user_id) + (media.media_length or 0) > quota:
                return False
            txn.execute(
                f"INSERT INTO media ({_MEDIA_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    media.origin, media.media_id, media.user_id, media.created_ts,
                    media.sha256, media.media_length, media.media_type, media.upload_name,
                    media.unused_expires_ts, media.authenticated, media.quarantined_by,
                    media.last_access_ts, media.thumbnail_state,
                ),
            )
            return True

        return await self.db.run("insert_media", txn_fn)

    async def usage(self, user_id: str) -> int:
        """Bytes of the user's uploads (each upload counted, even of identical content)."""
        return await self.db.run("media_usage", _usage, user_id)

    async def reserve(self, media: Media, now_ms: int, max_pending: int) -> bool:
        """Reserve an ID for a later upload, unless the user already holds ``max_pending``
        reserved IDs that have neither been uploaded to nor expired."""

        def txn_fn(txn: Txn) -> bool:
            row = txn.execute(
                "SELECT COUNT(*) FROM media WHERE user_id = ? AND sha256 IS NULL"
                " AND unused_expires_ts > ?",
                (media.user_id, now_ms),
            ).fetchone()
            if row is not None and int(row[0]) >= max_pending:
                return False
            txn.execute(
                "INSERT INTO media (origin, media_id, user_id, created_ts, unused_expires_ts,"
                " authenticated) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    media.origin, media.media_id, media.user_id, media.created_ts,
                    media.unused_expires_ts, media.authenticated,
                ),
            )
            return True

        return await self.db.run("reserve_media", txn_fn)

    async def fill_reserved(
        self,
        origin: str,
        media_id: str,
        user_id: str,
        now_ms: int,
        sha256: str,
        length: int,
        media_type: str | None,
        upload_name: str | None,
        quota: int | None = None,
    ) -> str:
        """Attach uploaded bytes to a reserved ID. Returns "ok", or why not: "not_found"
        (never reserved, or expired), "forbidden" (reserved by someone else), "exists"
        (already uploaded to) or "quota" (the user's uploads would exceed ``quota``)."""

        def txn_fn(txn: Txn) -> str:
            media = _get(txn, origin, media_id)
            if media is None or media.user_id is None or media.expired(now_ms):
                return "not_found"
            if media.user_id != user_id:
                return "forbidden"
            if media.uploaded:
                return "exists"
            if quota is not None and _usage(txn, user_id) + length > quota:
                return "quota"
            txn.execute(
                "UPDATE media SET sha256 = ?, media_length = ?, media_type = ?,"
                " upload_name = ?, unused_expires_ts = NULL"
                " WHERE origin = ? AND media_id = ? AND sha256 IS NULL",
                (sha256, length, media_type, upload_name, origin, media_id),
            )
            return "ok" if txn.rowcount == 1 else "exists"

        return await self.db.run("fill_reserved_media", txn_fn)

    async def ensure_placeholder(
        self, origin: str, media_id: str, now_ms: int, authenticated: bool
    ) -> None:
        """A row without a file for remote media too large to fetch, to hold the thumbnails
        its origin sent (replaced by ``store_remote`` if the file is ever fetched)."""

        def txn_fn(txn: Txn) -> None:
            txn.execute(
                "INSERT INTO media (origin, media_id, created_ts, authenticated,"
                " last_access_ts, thumbnail_state) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                (origin, media_id, now_ms, authenticated, now_ms, "origin"),
            )

        await self.db.run("media_placeholder", txn_fn)

    async def store_remote(self, media: Media) -> None:
        """Record a fetched copy of remote media (replacing a previous record of it)."""

        def txn_fn(txn: Txn) -> None:
            txn.execute(
                "DELETE FROM media WHERE origin = ? AND media_id = ?",
                (media.origin, media.media_id),
            )
            txn.execute(
                f"INSERT INTO media ({_MEDIA_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    media.origin, media.media_id, None, media.created_ts, media.sha256,
                    media.media_length, media.media_type, media.upload_name, None,
                    media.authenticated, media.quarantined_by, media.last_access_ts, None,
                ),
            )

        await self.db.run("store_remote_media", txn_fn)

    async def touch(self, origin: str, media_id: str, now_ms: int) -> None:
        await self.db.run(
            "touch_media",
            lambda txn: txn.execute(
                "UPDATE media SET last_access_ts = ? WHERE origin = ? AND media_id = ?",
                (now_ms, origin, media_id),
            ),
        )

    async def set_thumbnail_state(self, origin: str, media_id: str, state: str) -> None:
        await self.db.run(
            "set_thumbnail_state",
            lambda txn: txn.execute(
                "UPDATE media SET thumbnail_state = ? WHERE origin = ? AND media_id = ?",
                (state, origin, media_id),
            ),
        )

    async def add_thumbnails(
        self, origin: str, media_id: str, thumbnails: Sequence[Thumbnail], state: str
    ) -> bool:
        """Record thumbnails (duplicates of a size are ignored) and the thumbnail state, if
        the media still exists. Returns whether it did."""

        def txn_fn(txn: Txn) -> bool:
            if _get(txn, origin, media_id) is None:
                return False
            for t in thumbnails:
                txn.execute(
                    f"INSERT INTO media_thumbnails (origin, media_id, {_THUMB_COLUMNS})"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (origin, media_id, t.width, t.height, t.method, t.animated, t.media_type,
                     t.sha256, t.media_length),
                )
            txn.execute(
                "UPDATE media SET thumbnail_state = ? WHERE origin = ? AND media_id = ?",
                (state, origin, media_id),
            )
            return True

        return await self.db.run("add_thumbnails", txn_fn)

    async def thumbnails(self, origin: str, media_id: str) -> list[Thumbnail]:
        def txn_fn(txn: Txn) -> list[Thumbnail]:
            rows = txn.execute(
                f"SELECT {_THUMB_COLUMNS} FROM media_thumbnails WHERE origin = ? AND media_id = ?"
                " ORDER BY width, height, method, animated",
                (origin, media_id),
            ).fetchall()
            return [_thumb(r) for r in rows]

        return await self.db.run("get_thumbnails", txn_fn)

    async def set_quarantine(self, origin: str, media_id: str, by: str | None) -> bool:
        def txn_fn(txn: Txn) -> bool:
            txn.execute(
                "UPDATE media SET quarantined_by = ? WHERE origin = ? AND media_id = ?",
                (by, origin, media_id),
            )
            return txn.rowcount > 0

        return await self.db.run("set_media_quarantine", txn_fn)

    async def quarantine_user_media(self, user_id: str, by: str) -> int:
        def txn_fn(txn: Txn) -> int:
            txn.execute(
                "UPDATE media SET quarantined_by = ? WHERE user_id = ? AND quarantined_by IS NULL",
                (by, user_id),
            )
            return txn.rowcount

        return await self.db.run("quarantine_user_media", txn_fn)

    async def delete(self, origin: str, media_id: str) -> tuple[bool, list[str]]:
        """Forget a media ID and its thumbnails. Returns whether it existed, and the file
        hashes nothing refers to any more (the caller removes those files)."""

        def txn_fn(txn: Txn) -> tuple[bool, list[str]]:
            media = _get(txn, origin, media_id)
            if media is None:
                return False, []
            hashes = {media.sha256} if media.sha256 else set()
            for row in txn.execute(
                "SELECT sha256 FROM media_thumbnails WHERE origin = ? AND media_id = ?",
                (origin, media_id),
            ).fetchall():
                hashes.add(row[0])
            txn.execute(
                "DELETE FROM media_thumbnails WHERE origin = ? AND media_id = ?",
                (origin, media_id),
            )
            txn.execute(
                "DELETE FROM media WHERE origin = ? AND media_id = ?", (origin, media_id)
            )
            return True, sorted(h for h in hashes if not _referenced(txn, h))

        return await self.db.run("delete_media", txn_fn)

    async def is_referenced(self, sha256: str) -> bool:
        return await self.db.run("media_file_referenced", _referenced, sha256)

    async def user_media(
        self, user_id: str, offset: int, limit: int, order_by: str, descending: bool
    ) -> tuple[list[Media], int]:
        """One page of a user's uploads (reserved IDs not uploaded to are left out), and
        how many there are in all."""
        if order_by not in USER_MEDIA_ORDER:
            raise ValueError(order_by)
        direction = "DESC" if descending else "ASC"

        def txn_fn(txn: Txn) -> tuple[list[Media], int]:
            row = txn.execute(
                "SELECT COUNT(*) FROM media WHERE user_id = ? AND sha256 IS NOT NULL",
                (user_id,),
            ).fetchone()
            total = int(row[0]) if row else 0
            rows = txn.execute(
                f"SELECT {_MEDIA_COLUMNS} FROM media WHERE user_id = ? AND sha256 IS NOT NULL"
                f" ORDER BY {order_by} {direction}, media_id {direction} LIMIT ? OFFSET ?",
                (user_id, limit, offset),
            ).fetchall()
            return [_media(r) for r in rows], total

        return await self.db.run("get_user_media", txn_fn)

    async def user_media_ids(self, user_id: str) -> list[tuple[str, str]]:
        def txn_fn(txn: Txn) -> list[tuple[str, str]]:
            rows = txn.execute(
                "SELECT origin, media_id FROM media WHERE user_id = ? ORDER BY created_ts",
                (user_id,),
            ).fetchall()
            return [(r[0], r[1]) for r in rows]

        return await self.db.run("get_user_media_ids", txn_fn)

    async def delete_expired_reservations(self, now_ms: int) -> int:
        def txn_fn(txn: Txn) -> int:
            txn.execute(
                "DELETE FROM media WHERE sha256 IS NULL AND unused_expires_ts IS NOT NULL"
                " AND unused_expires_ts <= ?",
                (now_ms,),
            )
            return txn.rowcount

        return await self.db.run("delete_expired_media_reservations", txn_fn)

    async def remote_media_before(self, local_origin: str, before_ts: int) -> list[tuple[str, str]]:
        """Cached remote media last used (or fetched) before ``before_ts``."""

        def txn_fn(txn: Txn) -> list[tuple[str, str]]:
            rows = txn.execute(
                "SELECT origin, media_id FROM media WHERE origin <> ? AND user_id IS NULL"
                " AND COALESCE(last_access_ts, created_ts) < ?",
                (local_origin, before_ts),
            ).fetchall()
            return [(r[0], r[1]) for r in rows]

        return await self.db.run("get_old_remote_media", txn_fn)
