"""End-to-end encryption keys: device keys, one-time and fallback keys, cross-signing keys and
signatures, and the device_lists stream that tells clients whose keys changed.

The services in ``homeserver/services/e2ee/`` validate and verify everything; this store only
keeps what they accepted, each change in one transaction.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from federation.canonical_json import encode_canonical_json
from homeserver.storage import streams
from homeserver.storage.engine import Database, Txn
from homeserver.storage.state import joined_rooms_txn

JsonDict = dict[str, Any]

DEVICE_LISTS = "device_lists"
CROSS_SIGNING_TYPES = ("master", "self_signing", "user_signing")

# Claims that lose a race for the same key try again this often before giving up on it.
_CLAIM_ATTEMPTS = 1000


def canonical(obj: Any) -> str:
    return encode_canonical_json(obj).decode("utf-8")


class OneTimeKeyConflict(Exception):
    """A one-time key ID is already stored with different content."""

    def __init__(self, key_id: str) -> None:
        super().__init__(key_id)
        self.key_id = key_id


class DeviceKeysConflict(Exception):
    """The device already has identity keys and the upload has different ones."""


class DeviceGone(Exception):
    """The device was deleted (e.g. logged out) while its keys were being uploaded."""


@dataclass(frozen=True)
class NewKey:
    algorithm: str
    key_id: str
    key: Any  # a string, or a signed key object

    @property
    def full_id(self) -> str:
        return f"{self.algorithm}:{self.key_id}"


@dataclass(frozen=True)
class Signature:
    signer_user_id: str
    signer_key_id: str
    target_user_id: str
    target_key_id: str
    signature: str


def _strip(obj: JsonDict) -> JsonDict:
    return {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}


def note_device_list_change(
    txn: Txn, user_ids: Iterable[str], only_for: str | None = None
) -> int:
    """Put users on the device_lists stream (inside the caller's transaction)."""
    position = streams.advance(txn, DEVICE_LISTS)
    txn.executemany(
        "INSERT INTO device_list_changes (stream_id, user_id, only_for) VALUES (?, ?, ?)",
        [(position, u, only_for) for u in sorted(set(user_ids))],
    )
    # Sync wakes whoever shares a room with these users (or only ``only_for``).
    if only_for is not None:
        txn.note(DEVICE_LISTS, position, users=[only_for])
    else:
        users = sorted(set(user_ids))
        txn.note(DEVICE_LISTS, position, users=users, rooms=joined_rooms_txn(txn, users))
    return position


def delete_device_keys_txn(txn: Txn, user_id: str, device_ids: list[str] | None) -> None:
    """Everything E2EE of these devices (``None``: all of the user's devices): identity keys,
    one-time and fallback keys, waiting to-device messages, transaction IDs and signatures of
    them. Called where devices are deleted, in the same transaction. If a deleted device had
    published keys, the user goes on the device_lists stream so others drop it."""
    if device_ids is None:
        had_keys = txn.execute(
            "SELECT 1 FROM e2e_device_keys WHERE user_id = ? LIMIT 1", (user_id,)
        ).fetchone() is not None
        for table in ("e2e_device_keys", "e2e_one_time_keys", "e2e_fallback_keys",
                      "to_device_inbox", "to_device_txns"):
            txn.execute(f"DELETE FROM {table} WHERE user_id = ?", (user_id,))
        # Signatures of the user's devices; those of cross-signing keys go with the keys.
        txn.execute(
            "DELETE FROM e2e_cross_signing_signatures WHERE target_user_id = ?"
            " AND target_key_id NOT IN"
            " (SELECT public_key FROM e2e_cross_signing_keys WHERE user_id = ?)",
            (user_id, user_id),
        )
    else:
        if not device_ids:
            return
        had_keys = False
        for device_id in device_ids:
            if txn.execute(
                "SELECT 1 FROM e2e_device_keys WHERE user_id = ? AND device_id = ?",
                (user_id, device_id),
            ).fetchone():
                had_keys = True
        rows = [(user_id, d) for d in device_ids]
        for table in ("e2e_device_keys", "e2e_one_time_keys", "e2e_fallback_keys",
                      "to_device_inbox", "to_device_txns"):
            txn.executemany(f"DELETE FROM {table} WHERE user_id = ? AND device_id = ?", rows)
        txn.executemany(
            "DELETE FROM e2e_cross_signing_signatures"
            " WHERE target_user_id = ? AND target_key_id = ?",
            rows,
        )
    if had_keys:
        note_device_list_change(txn, [user_id])


class E2eKeyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- uploads ---------------------------------------------------------------------------

    async def get_device_keys_json(self, user_id: str, device_id: str) -> JsonDict | None:
        def txn_fn(txn: Txn) -> JsonDict | None:
            row = txn.execute(
                "SELECT key_json FROM e2e_device_keys WHERE user_id = ? AND device_id = ?",
                (user_id, device_id),
            ).fetchone()
            return json.loads(row[0]) if row else None

        return await self.db.run("get_device_keys", txn_fn)

    async def upload(
        self,
        user_id: str,
        device_id: str,
        device_keys: JsonDict | None,
        one_time_keys: list[NewKey],
        fallback_keys: list[NewKey],
        now: int,
        max_one_time_keys: int,
    ) -> dict[str, int]:
        """Store an upload as a whole or not at all; returns the one-time key counts.

        Raises DeviceKeysConflict, OneTimeKeyConflict, TooManyKeys or DeviceGone, having
        stored nothing.
        """

        def txn_fn(txn: Txn) -> dict[str, int]:
            if txn.execute(
                "SELECT 1 FROM devices WHERE user_id = ? AND device_id = ?",
                (user_id, device_id),
            ).fetchone() is None:
                raise DeviceGone()
            if device_keys is not None:
                _store_device_keys(txn, user_id, device_id, device_keys, now)
            if one_time_keys:
                _store_one_time_keys(txn, user_id, device_id, one_time_keys, now,
                                     max_one_time_keys)
            for key in fallback_keys:
                _store_fallback_key(txn, user_id, device_id, key)
            return _otk_counts(txn, user_id, device_id)

        return await self.db.run("upload_e2e_keys", txn_fn)

    # -- counts for sync -------------------------------------------------------------------

    async def one_time_key_counts(self, user_id: str, device_id: str) -> dict[str, int]:
        return await self.db.run("otk_counts", _otk_counts, user_id, device_id)

    async def unused_fallback_key_types(self, user_id: str, device_id: str) -> list[str]:
        return await self.db.run("unused_fallback_key_types", _unused_fallback_types, user_id,
                                 device_id)

    async def sync_key_counts(self, user_id: str, device_id: str
                              ) -> tuple[dict[str, int], list[str]]:
        """Both of the above in one transaction (every /sync response carries them)."""

        def txn_fn(txn: Txn) -> tuple[dict[str, int], list[str]]:
            return (_otk_counts(txn, user_id, device_id),
                    _unused_fallback_types(txn, user_id, device_id))

        return await self.db.run("sync_key_counts", txn_fn)

    # -- queries ---------------------------------------------------------------------------

    async def query_devices(
        self, query: dict[str, list[str]]
    ) -> dict[str, dict[str, JsonDict]]:
        """Device keys of local users (an empty list: all devices), with the signatures
        uploaded for them and the device's display name in ``unsigned``."""

        def txn_fn(txn: Txn) -> dict[str, dict[str, JsonDict]]:
            result: dict[str, dict[str, JsonDict]] = {}
            for user_id, device_ids in query.items():
                rows = txn.execute(
                    "SELECT k.device_id, k.key_json, d.display_name"
                    " FROM e2e_device_keys k JOIN devices d"
                    " ON d.user_id = k.user_id AND d.device_id = k.device_id"
                    " WHERE k.user_id = ?",
                    (user_id,),
                ).fetchall()
                wanted = set(device_ids)
                devices: dict[str, JsonDict] = {}
                for device_id, key_json, display_name in rows:
                    if wanted and device_id not in wanted:
                        continue
                    keys: JsonDict = json.loads(key_json)
                    unsigned: JsonDict = {}
                    if display_name is not None:
                        unsigned["device_display_name"] = display_name
                    keys["unsigned"] = unsigned
                    devices[device_id] = keys
                if devices:
                    _attach_signatures(txn, user_id, devices, viewer=None)
                result[user_id] = devices
            return result

        return await self.db.run("query_device_keys", txn_fn)

    async def get_cross_signing_keys(
        self, user_ids: Collection[str], viewer: str | None
    ) -> dict[str, dict[str, JsonDict]]:
        """user -> key type -> key, with the signatures ``viewer`` may see (None: only
        those the owner made, as for federation). User-signing keys only of the viewer."""

        def txn_fn(txn: Txn) -> dict[str, dict[str, JsonDict]]:
            result: dict[str, dict[str, JsonDict]] = {}
            for user_id in user_ids:
                rows = txn.execute(
                    "SELECT key_type, public_key, key_json FROM e2e_cross_signing_keys"
                    " WHERE user_id = ?",
                    (user_id,),
                ).fetchall()
                by_key: dict[str, JsonDict] = {}
                types: dict[str, JsonDict] = {}
                for key_type, public_key, key_json in rows:
                    if key_type == "user_signing" and viewer != user_id:
                        continue
                    key = json.loads(key_json)
                    types[key_type] = key
                    by_key[public_key] = key
                if by_key:
                    _attach_signatures(txn, user_id, by_key, viewer=viewer)
                if types:
                    result[user_id] = types
            return result

        return await self.db.run("get_cross_signing_keys", txn_fn)

    async def get_cross_signing_key(self, user_id: str, key_type: str) -> JsonDict | None:
        """The stored key as uploaded (signatures uploaded later not merged in)."""

        def txn_fn(txn: Txn) -> JsonDict | None:
            row = txn.execute(
                "SELECT key_json FROM e2e_cross_signing_keys WHERE user_id = ? AND key_type = ?",
                (user_id, key_type),
            ).fetchone()
            return json.loads(row[0]) if row else None

        return await self.db.run("get_cross_signing_key", txn_fn)

    async def is_cross_signing_key(self, user_id: str, public_key: str) -> bool:
        def txn_fn(txn: Txn) -> bool:
            return txn.execute(
                "SELECT 1 FROM e2e_cross_signing_keys WHERE user_id = ? AND public_key = ?",
                (user_id, public_key),
            ).fetchone() is not None

        return await self.db.run("is_cross_signing_key", txn_fn)

    async def has_device(self, user_id: str, device_id: str) -> bool:
        def txn_fn(txn: Txn) -> bool:
            return txn.execute(
                "SELECT 1 FROM devices WHERE user_id = ? AND device_id = ?",
                (user_id, device_id),
            ).fetchone() is not None

        return await self.db.run("has_device", txn_fn)

    async def all_device_keys(self, user_id: str) -> dict[str, JsonDict]:
        """device ID -> the device keys as uploaded (no signatures merged in)."""

        def txn_fn(txn: Txn) -> dict[str, JsonDict]:
            rows = txn.execute(
                "SELECT device_id, key_json FROM e2e_device_keys WHERE user_id = ?", (user_id,)
            ).fetchall()
            return {r[0]: json.loads(r[1]) for r in rows}

        return await self.db.run("all_device_keys", txn_fn)

    async def stored_signatures(
        self, target_user_id: str, target_key_id: str
    ) -> set[tuple[str, str]]:
        def txn_fn(txn: Txn) -> set[tuple[str, str]]:
            rows = txn.execute(
                "SELECT signer_user_id, signer_key_id FROM e2e_cross_signing_signatures"
                " WHERE target_user_id = ? AND target_key_id = ?",
                (target_user_id, target_key_id),
            ).fetchall()
            return {(r[0], r[1]) for r in rows}

        return await self.db.run("stored_signatures", txn_fn)

    # -- claims ----------------------------------------------------------------------------

    async def claim(
        self, claims: list[tuple[str, str, str]]
    ) -> dict[str, dict[str, JsonDict]]:
        """For each (user, device, algorithm): a one-time key, removed in the same statement
        that reads it; or, when none is left, the fallback key, then marked used."""

        def txn_fn(txn: Txn) -> dict[str, dict[str, JsonDict]]:
            result: dict[str, dict[str, JsonDict]] = {}
            for user_id, device_id, algorithm in claims:
                found = _claim_one_time_key(txn, user_id, device_id, algorithm)
                if found is None:
                    found = _claim_fallback_key(txn, user_id, device_id, algorithm)
                if found is not None:
                    key_id, key = found
                    result.setdefault(user_id, {}).setdefault(device_id, {})[
                        f"{algorithm}:{key_id}"
                    ] = key
            return result

        return await self.db.run("claim_one_time_keys", txn_fn)

    # -- cross-signing ---------------------------------------------------------------------

    async def set_cross_signing_keys(
        self, user_id: str, keys: dict[str, tuple[str, JsonDict]], now: int
    ) -> None:
        """key type -> (public key, key JSON). Master and self-signing changes are told to
        everyone tracking the user; a user-signing change only to the user."""

        def txn_fn(txn: Txn) -> None:
            public_change = False
            private_change = False
            for key_type, (public_key, key) in keys.items():
                encoded = canonical(key)
                row = txn.execute(
                    "SELECT key_json FROM e2e_cross_signing_keys"
                    " WHERE user_id = ? AND key_type = ?",
                    (user_id, key_type),
                ).fetchone()
                if row is not None and row[0] == encoded:
                    continue
                txn.execute(
                    "DELETE FROM e2e_cross_signing_keys WHERE user_id = ? AND key_type = ?",
                    (user_id, key_type),
                )
                txn.execute(
                    "INSERT INTO e2e_cross_signing_keys"
                    " (user_id, key_type, public_key, key_json, added_ts) VALUES (?, ?, ?, ?, ?)",
                    (user_id, key_type, public_key, encoded, now),
                )
                if key_type == "user_signing":
                    private_change = True
                else:
                    public_change = True
            if public_change:
                note_device_list_change(txn, [user_id])
            if private_change:
                note_device_list_change(txn, [user_id], only_for=user_id)

        await self.db.run("set_cross_signing_keys", txn_fn)

    async def add_signatures(self, uploader: str, signatures: list[Signature]) -> None:
        """Store verified signatures; the targets go on the device_lists stream (signatures of
        other users' keys only for the uploader, who alone may see them)."""

        def txn_fn(txn: Txn) -> None:
            for s in signatures:
                txn.execute(
                    "DELETE FROM e2e_cross_signing_signatures WHERE target_user_id = ?"
                    " AND target_key_id = ? AND signer_user_id = ? AND signer_key_id = ?",
                    (s.target_user_id, s.target_key_id, s.signer_user_id, s.signer_key_id),
                )
                txn.execute(
                    "INSERT INTO e2e_cross_signing_signatures (signer_user_id, signer_key_id,"
                    " target_user_id, target_key_id, signature) VALUES (?, ?, ?, ?, ?)",
                    (s.signer_user_id, s.signer_key_id, s.target_user_id, s.target_key_id,
                     s.signature),
                )
            own = {s.target_user_id for s in signatures if s.target_user_id == uploader}
            others = {s.target_user_id for s in signatures if s.target_user_id != uploader}
            if own:
                note_device_list_change(txn, own)
            if others:
                note_device_list_change(txn, others, only_for=uploader)

        await self.db.run("add_cross_signing_signatures", txn_fn)

    async def delete_all_for_user(self, user_id: str) -> None:
        """Deactivation: cross-signing keys, the signatures they made and got, and whatever
        device keys are left."""

        def txn_fn(txn: Txn) -> None:
            had = txn.execute(
                "SELECT 1 FROM e2e_cross_signing_keys WHERE user_id = ? LIMIT 1", (user_id,)
            ).fetchone() is not None
            delete_device_keys_txn(txn, user_id, None)
            txn.execute("DELETE FROM e2e_cross_signing_keys WHERE user_id = ?", (user_id,))
            txn.execute(
                "DELETE FROM e2e_cross_signing_signatures"
                " WHERE target_user_id = ? OR signer_user_id = ?",
                (user_id, user_id),
            )
            if had:
                note_device_list_change(txn, [user_id])

        await self.db.run("delete_e2e_keys_for_user", txn_fn)

    # -- device_lists stream ---------------------------------------------------------------

    async def current_device_list_position(self) -> int:
        return await streams.current_position(self.db, DEVICE_LISTS)

    async def changed_users(
        self, viewer: str, from_pos: int, to_pos: int | None, users: Collection[str]
    ) -> set[str]:
        """Users among ``users`` (and the viewer) with changes in (from_pos, to_pos] that
        the viewer may be told of, plus users whose changes only the viewer may see."""

        def txn_fn(txn: Txn) -> set[str]:
            upper = to_pos if to_pos is not None else streams.current(txn, DEVICE_LISTS)
            if upper <= from_pos:
                return set()
            rows = txn.execute(
                "SELECT DISTINCT user_id, only_for FROM device_list_changes"
                " WHERE stream_id > ? AND stream_id <= ?",
                (from_pos, upper),
            ).fetchall()
            wanted = set(users) | {viewer}
            changed: set[str] = set()
            for user_id, only_for in rows:
                if (only_for is None and user_id in wanted) or only_for == viewer:
                    changed.add(user_id)
            return changed

        return await self.db.run("device_list_changed_users", txn_fn)


# -- transaction helpers -------------------------------------------------------------------


class TooManyKeys(Exception):
    def __init__(self, algorithm: str, total: int, limit: int) -> None:
        super().__init__(algorithm)
        self.algorithm = algorithm
        self.total = total
        self.limit = limit


def _store_device_keys(
    txn: Txn, user_id: str, device_id: str, device_keys: JsonDict, now: int
) -> None:
    encoded = canonical(device_keys)
    row = txn.execute(
        "SELECT key_json FROM e2e_device_keys WHERE user_id = ? AND device_id = ?",
        (user_id, device_id),
    ).fetchone()
    if row is not None:
        if row[0] == encoded:
            return
        old = json.loads(row[0])
        if old.get("keys") != device_keys.get("keys"):
            raise DeviceKeysConflict()
        txn.execute(
            "UPDATE e2e_device_keys SET key_json = ? WHERE user_id = ? AND device_id = ?",
            (encoded, user_id, device_id),
        )
        if _strip(old) == _strip(device_keys):
            return  # only the device's own signatures changed: nobody needs to re-query
    else:
        txn.execute(
            "INSERT INTO e2e_device_keys (user_id, device_id, key_json, added_ts)"
            " VALUES (?, ?, ?, ?)",
            (user_id, device_id, encoded, now),
        )
    note_device_list_change(txn, [user_id])


def _store_one_time_keys(
    txn: Txn, user_id: str, device_id: str, keys: list[NewKey], now: int, limit: int
) -> None:
    fresh: list[NewKey] = []
    for key in keys:
        row = txn.execute(
            "SELECT key_json FROM e2e_one_time_keys"
            " WHERE user_id = ? AND device_id = ? AND algorithm = ? AND key_id = ?",
            (user_id, device_id, key.algorithm, key.key_id),
        ).fetchone()
        if row is None:
            fresh.append(key)
            continue
        old = json.loads(row[0])
        # Signatures may differ between attempts; the key itself may not.
        same = (
            _strip(old) == _strip(key.key)
            if isinstance(old, dict) and isinstance(key.key, dict)
            else old == key.key
        )
        if not same:
            raise OneTimeKeyConflict(key.full_id)
    counts = _otk_counts(txn, user_id, device_id)
    added: dict[str, int] = {}
    for key in fresh:
        added[key.algorithm] = added.get(key.algorithm, 0) + 1
    for algorithm, n in added.items():
        total = counts.get(algorithm, 0) + n
        if total > limit:
            raise TooManyKeys(algorithm, total, limit)
    txn.executemany(
        "INSERT INTO e2e_one_time_keys (user_id, device_id, algorithm, key_id, key_json,"
        " added_ts) VALUES (?, ?, ?, ?, ?, ?)",
        [(user_id, device_id, k.algorithm, k.key_id, canonical(k.key), now) for k in fresh],
    )


def _store_fallback_key(txn: Txn, user_id: str, device_id: str, key: NewKey) -> None:
    encoded = canonical(key.key)
    row = txn.execute(
        "SELECT key_id, key_json FROM e2e_fallback_keys"
        " WHERE user_id = ? AND device_id = ? AND algorithm = ?",
        (user_id, device_id, key.algorithm),
    ).fetchone()
    if row is not None and row[0] == key.key_id and row[1] == encoded:
        return  # the same key again: a used key stays used
    txn.execute(
        "DELETE FROM e2e_fallback_keys WHERE user_id = ? AND device_id = ? AND algorithm = ?",
        (user_id, device_id, key.algorithm),
    )
    txn.execute(
        "INSERT INTO e2e_fallback_keys (user_id, device_id, algorithm, key_id, key_json, used)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (user_id, device_id, key.algorithm, key.key_id, encoded, False),
    )


def _unused_fallback_types(txn: Txn, user_id: str, device_id: str) -> list[str]:
    rows = txn.execute(
        "SELECT algorithm FROM e2e_fallback_keys"
        " WHERE user_id = ? AND device_id = ? AND used = ? ORDER BY algorithm",
        (user_id, device_id, False),
    ).fetchall()
    return [r[0] for r in rows]


def _otk_counts(txn: Txn, user_id: str, device_id: str) -> dict[str, int]:
    rows = txn.execute(
        "SELECT algorithm, COUNT(*) FROM e2e_one_time_keys"
        " WHERE user_id = ? AND device_id = ? GROUP BY algorithm",
        (user_id, device_id),
    ).fetchall()
    return {r[0]: int(r[1]) for r in rows}


def _claim_one_time_key(
    txn: Txn, user_id: str, device_id: str, algorithm: str
) -> tuple[str, Any] | None:
    """Delete-and-return the oldest key in one statement. Two concurrent claims may pick the
    same row: the one that waited deletes nothing and tries again (each statement sees what
    the other committed), so no key is ever returned twice. On PostgreSQL the first attempt
    skips rows other claims hold, so concurrent claims rarely wait on each other at all."""
    where = "user_id = ? AND device_id = ? AND algorithm = ?"
    args = (user_id, device_id, algorithm)
    for attempt in range(_CLAIM_ATTEMPTS):
        skip_locked = " FOR UPDATE SKIP LOCKED" if txn.engine == "postgres" and attempt == 0 else ""
        row = txn.execute(
            f"DELETE FROM e2e_one_time_keys WHERE {where} AND key_id ="
            f" (SELECT key_id FROM e2e_one_time_keys WHERE {where}"
            f" ORDER BY added_ts, key_id LIMIT 1{skip_locked})"
            " RETURNING key_id, key_json",
            args + args,
        ).fetchone()
        if row is not None:
            return str(row[0]), json.loads(row[1])
        if txn.execute(
            f"SELECT 1 FROM e2e_one_time_keys WHERE {where} LIMIT 1", args
        ).fetchone() is None:
            return None
    return None


def _claim_fallback_key(
    txn: Txn, user_id: str, device_id: str, algorithm: str
) -> tuple[str, Any] | None:
    row = txn.execute(
        "UPDATE e2e_fallback_keys SET used = ?"
        " WHERE user_id = ? AND device_id = ? AND algorithm = ?"
        " RETURNING key_id, key_json",
        (True, user_id, device_id, algorithm),
    ).fetchone()
    if row is None:
        return None
    return str(row[0]), json.loads(row[1])


def _attach_signatures(
    txn: Txn, owner: str, targets: dict[str, JsonDict], viewer: str | None
) -> None:
    """Merge uploaded signatures of the owner's keys (target key ID -> key JSON) into them:
    those made by the owner, which everyone may see, and those the viewer made."""
    for target_key_id, obj in targets.items():
        rows = txn.execute(
            "SELECT signer_user_id, signer_key_id, signature FROM e2e_cross_signing_signatures"
            " WHERE target_user_id = ? AND target_key_id = ?",
            (owner, target_key_id),
        ).fetchall()
        for signer, signer_key_id, signature in rows:
            if signer != owner and signer != viewer:
                continue
            sigs = obj.setdefault("signatures", {})
            sigs.setdefault(signer, {})[signer_key_id] = signature
