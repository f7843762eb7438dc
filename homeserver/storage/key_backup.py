"""Server-side key backups: versions per user and the encrypted room keys in each.

Writes to one backup take its version row's lock first, so concurrent uploads of the same
session compare against each other's result instead of racing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from homeserver.storage.engine import Database, Txn

JsonDict = dict[str, Any]


@dataclass(frozen=True)
class BackupVersion:
    version: int
    algorithm: str
    auth_data: JsonDict
    etag: int
    count: int


@dataclass(frozen=True)
class RoomKey:
    first_message_index: int
    forwarded_count: int
    is_verified: bool
    session_data: JsonDict

    def json(self) -> JsonDict:
        return {
            "first_message_index": self.first_message_index,
            "forwarded_count": self.forwarded_count,
            "is_verified": self.is_verified,
            "session_data": self.session_data,
        }

    def better_than(self, other: RoomKey) -> bool:
        """The spec's rule for keeping one of two keys for the same session: a verified key
        wins; then the lower first_message_index; then the lower forwarded_count."""
        if self.is_verified != other.is_verified:
            return self.is_verified
        if self.first_message_index != other.first_message_index:
            return self.first_message_index < other.first_message_index
        return self.forwarded_count < other.forwarded_count


class NoSuchVersion(Exception):
    pass


class WrongVersion(Exception):
    def __init__(self, current: int) -> None:
        super().__init__(current)
        self.current = current


class KeyBackupStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create_version(self, user_id: str, algorithm: str, auth_data: JsonDict) -> int:
        def txn_fn(txn: Txn) -> int:
            # Concurrent creations: a loser's insert does nothing once the winner commits,
            # and its next attempt sees the winner's version.
            for _ in range(100):
                row = txn.execute(
                    "SELECT COALESCE(MAX(version), 0) FROM e2e_room_keys_versions"
                    " WHERE user_id = ?",
                    (user_id,),
                ).fetchone()
                version = int(row[0] if row else 0) + 1
                txn.execute(
                    "INSERT INTO e2e_room_keys_versions (user_id, version, algorithm,"
                    " auth_data, etag, deleted) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (user_id, version, algorithm, json.dumps(auth_data, ensure_ascii=False),
                     0, False),
                )
                if txn.rowcount == 1:
                    return version
            raise RuntimeError("could not allocate a backup version")

        return await self.db.run("create_backup_version", txn_fn)

    async def get_version(self, user_id: str, version: int | None) -> BackupVersion | None:
        """A live version (``None``: the current one, the newest not deleted)."""

        def txn_fn(txn: Txn) -> BackupVersion | None:
            return _get_version(txn, user_id, version)

        return await self.db.run("get_backup_version", txn_fn)

    async def update_version(
        self, user_id: str, version: int, algorithm: str, auth_data: JsonDict
    ) -> bool | None:
        """None: no such live version; False: the algorithm differs; True: updated."""

        def txn_fn(txn: Txn) -> bool | None:
            info = _get_version(txn, user_id, version, lock=True)
            if info is None:
                return None
            if info.algorithm != algorithm:
                return False
            txn.execute(
                "UPDATE e2e_room_keys_versions SET auth_data = ? WHERE user_id = ? AND version = ?",
                (json.dumps(auth_data, ensure_ascii=False), user_id, version),
            )
            return True

        return await self.db.run("update_backup_version", txn_fn)

    async def delete_version(self, user_id: str, version: int) -> bool:
        """False if the version never existed; deleting a deleted version succeeds."""

        def txn_fn(txn: Txn) -> bool:
            row = txn.execute(
                "SELECT 1 FROM e2e_room_keys_versions WHERE user_id = ? AND version = ?",
                (user_id, version),
            ).fetchone()
            if row is None:
                return False
            txn.execute(
                "UPDATE e2e_room_keys_versions SET deleted = ? WHERE user_id = ? AND version = ?",
                (True, user_id, version),
            )
            txn.execute(
                "DELETE FROM e2e_room_keys WHERE user_id = ? AND version = ?", (user_id, version)
            )
            return True

        return await self.db.run("delete_backup_version", txn_fn)

    async def get_keys(
        self, user_id: str, version: int, room_id: str | None, session_id: str | None
    ) -> dict[str, dict[str, RoomKey]] | None:
        """room -> session -> key; None if the version does not exist (or was deleted)."""

        def txn_fn(txn: Txn) -> dict[str, dict[str, RoomKey]] | None:
            if _get_version(txn, user_id, version) is None:
                return None
            sql = (
                "SELECT room_id, session_id, first_message_index, forwarded_count,"
                " is_verified, session_data FROM e2e_room_keys WHERE user_id = ? AND version = ?"
            )
            args: list[Any] = [user_id, version]
            if room_id is not None:
                sql += " AND room_id = ?"
                args.append(room_id)
            if session_id is not None:
                sql += " AND session_id = ?"
                args.append(session_id)
            rows = txn.execute(sql + " ORDER BY room_id, session_id", args).fetchall()
            out: dict[str, dict[str, RoomKey]] = {}
            for r in rows:
                out.setdefault(r[0], {})[r[1]] = RoomKey(
                    int(r[2]), int(r[3]), bool(r[4]), json.loads(r[5])
                )
            return out

        return await self.db.run("get_room_keys", txn_fn)

    async def put_keys(
        self, user_id: str, version: int, keys: dict[str, dict[str, RoomKey]]
    ) -> tuple[int, int]:
        """Merge keys into the current backup by the spec's rules; returns (etag, count).
        Raises NoSuchVersion, or WrongVersion when ``version`` is not the current one."""

        def txn_fn(txn: Txn) -> tuple[int, int]:
            current = _get_version(txn, user_id, None, lock=True)
            if current is None or current.version != version:
                if _get_version(txn, user_id, version) is None:
                    raise NoSuchVersion()
                assert current is not None
                raise WrongVersion(current.version)
            changed = False
            for room_id, sessions in keys.items():
                for session_id, key in sessions.items():
                    row = txn.execute(
                        "SELECT first_message_index, forwarded_count, is_verified, session_data"
                        " FROM e2e_room_keys WHERE user_id = ? AND version = ? AND room_id = ?"
                        " AND session_id = ?",
                        (user_id, version, room_id, session_id),
                    ).fetchone()
                    if row is not None:
                        old = RoomKey(int(row[0]), int(row[1]), bool(row[2]), json.loads(row[3]))
                        if not key.better_than(old):
                            continue
                        txn.execute(
                            "DELETE FROM e2e_room_keys WHERE user_id = ? AND version = ?"
                            " AND room_id = ? AND session_id = ?",
                            (user_id, version, room_id, session_id),
                        )
                    txn.execute(
                        "INSERT INTO e2e_room_keys (user_id, version, room_id, session_id,"
                        " first_message_index, forwarded_count, is_verified, session_data)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (user_id, version, room_id, session_id, key.first_message_index,
                         key.forwarded_count, key.is_verified,
                         json.dumps(key.session_data, ensure_ascii=False)),
                    )
                    changed = True
            etag = current.etag + 1 if changed else current.etag
            if changed:
                _set_etag(txn, user_id, version, etag)
            return etag, _count(txn, user_id, version)

        return await self.db.run("put_room_keys", txn_fn)

    async def delete_keys(
        self, user_id: str, version: int, room_id: str | None, session_id: str | None
    ) -> tuple[int, int] | None:
        """(etag, count) after deleting; None if the version does not exist."""

        def txn_fn(txn: Txn) -> tuple[int, int] | None:
            info = _get_version(txn, user_id, version, lock=True)
            if info is None:
                return None
            sql = "DELETE FROM e2e_room_keys WHERE user_id = ? AND version = ?"
            args: list[Any] = [user_id, version]
            if room_id is not None:
                sql += " AND room_id = ?"
                args.append(room_id)
            if session_id is not None:
                sql += " AND session_id = ?"
                args.append(session_id)
            txn.execute(sql, args)
            etag = info.etag
            if txn.rowcount > 0:
                etag += 1
                _set_etag(txn, user_id, version, etag)
            return etag, _count(txn, user_id, version)

        return await self.db.run("delete_room_keys", txn_fn)

    async def delete_all_for_user(self, user_id: str) -> None:
        def txn_fn(txn: Txn) -> None:
            txn.execute("DELETE FROM e2e_room_keys WHERE user_id = ?", (user_id,))
            txn.execute(
                "UPDATE e2e_room_keys_versions SET deleted = ? WHERE user_id = ?",
                (True, user_id),
            )

        await self.db.run("delete_backups_for_user", txn_fn)


def _get_version(
    txn: Txn, user_id: str, version: int | None, *, lock: bool = False
) -> BackupVersion | None:
    sql = (
        "SELECT version, algorithm, auth_data, etag FROM e2e_room_keys_versions"
        " WHERE user_id = ? AND deleted = ?"
    )
    args: list[Any] = [user_id, False]
    if version is not None:
        sql += " AND version = ?"
        args.append(version)
    sql += " ORDER BY version DESC LIMIT 1"
    if lock and txn.engine == "postgres":
        sql += " FOR UPDATE"
    row = txn.execute(sql, args).fetchone()
    if row is None:
        return None
    v = int(row[0])
    return BackupVersion(v, row[1], json.loads(row[2]), int(row[3]), _count(txn, user_id, v))


def _count(txn: Txn, user_id: str, version: int) -> int:
    row = txn.execute(
        "SELECT COUNT(*) FROM e2e_room_keys WHERE user_id = ? AND version = ?",
        (user_id, version),
    ).fetchone()
    return int(row[0]) if row else 0


def _set_etag(txn: Txn, user_id: str, version: int, etag: int) -> None:
    txn.execute(
        "UPDATE e2e_room_keys_versions SET etag = ? WHERE user_id = ? AND version = ?",
        (etag, user_id, version),
    )
