"""Server-side key backups (client-server "Server-side key backups"): versions, and the
encrypted room keys in the current one, merged by the spec's rules."""

from __future__ import annotations

from typing import Any

from homeserver.http.errors import Codes, MatrixError
from homeserver.services.e2ee.validation import bad_json, invalid
from homeserver.storage.key_backup import (
    BackupVersion,
    KeyBackupStore,
    NoSuchVersion,
    RoomKey,
    WrongVersion,
)

JsonDict = dict[str, Any]

ALGORITHMS = ("m.megolm_backup.v1.curve25519-aes-sha2",)
WRONG_ROOM_KEYS_VERSION = "M_WRONG_ROOM_KEYS_VERSION"
MAX_KEYS_PER_REQUEST = 10_000
_MAX_INDEX = 2**53 - 1


def _unknown_version() -> MatrixError:
    return MatrixError(404, Codes.NOT_FOUND, "Unknown backup version")


def parse_version(raw: str | None) -> int:
    """A version from a path or query; anything that is not one of ours does not exist."""
    if raw is None:
        raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: version")
    if not raw.isdigit() or len(raw) > 18:
        raise _unknown_version()
    return int(raw)


def _version_json(v: BackupVersion) -> JsonDict:
    return {
        "algorithm": v.algorithm,
        "auth_data": v.auth_data,
        "count": v.count,
        "etag": str(v.etag),
        "version": str(v.version),
    }


def _check_info(body: JsonDict) -> tuple[str, JsonDict]:
    algorithm = body.get("algorithm")
    if not isinstance(algorithm, str):
        raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: algorithm")
    if algorithm not in ALGORITHMS:
        raise invalid(f"Unsupported backup algorithm {algorithm[:100]!r}")
    auth_data = body.get("auth_data")
    if not isinstance(auth_data, dict):
        raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: auth_data (an object)")
    return algorithm, auth_data


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_INDEX:
        raise bad_json(f"{what} must be a non-negative integer")
    return value


def parse_room_key(raw: Any, where: str) -> RoomKey:
    if not isinstance(raw, dict):
        raise bad_json(f"{where} must be an object")
    if not isinstance(raw.get("is_verified"), bool):
        raise bad_json(f"{where}.is_verified must be true or false")
    session_data = raw.get("session_data")
    if not isinstance(session_data, dict):
        raise bad_json(f"{where}.session_data must be an object")
    return RoomKey(
        first_message_index=_int(raw.get("first_message_index"), f"{where}.first_message_index"),
        forwarded_count=_int(raw.get("forwarded_count"), f"{where}.forwarded_count"),
        is_verified=raw["is_verified"],
        session_data=session_data,
    )


def parse_rooms(raw: Any) -> dict[str, dict[str, RoomKey]]:
    if not isinstance(raw, dict):
        raise bad_json("'rooms' must map room IDs to {'sessions': {...}}")
    out: dict[str, dict[str, RoomKey]] = {}
    total = 0
    for room_id, room in raw.items():
        sessions = room.get("sessions") if isinstance(room, dict) else None
        if not isinstance(sessions, dict):
            raise bad_json(f"rooms.{room_id[:300]}.sessions must be an object")
        total += len(sessions)
        if total > MAX_KEYS_PER_REQUEST:
            raise invalid(f"At most {MAX_KEYS_PER_REQUEST} keys per request")
        out[room_id] = {
            sid: parse_room_key(key, f"rooms.{room_id[:300]}.sessions.{sid[:300]}")
            for sid, key in sessions.items()
        }
    return out


class KeyBackupService:
    def __init__(self, store: KeyBackupStore) -> None:
        self.store = store

    async def create_version(self, user_id: str, body: JsonDict) -> JsonDict:
        algorithm, auth_data = _check_info(body)
        version = await self.store.create_version(user_id, algorithm, auth_data)
        return {"version": str(version)}

    async def get_version(self, user_id: str, version: str | None) -> JsonDict:
        number = None if version is None else parse_version(version)
        info = await self.store.get_version(user_id, number)
        if info is None:
            raise MatrixError(404, Codes.NOT_FOUND,
                              "No current backup version" if version is None
                              else "Unknown backup version")
        return _version_json(info)

    async def update_version(self, user_id: str, version: str, body: JsonDict) -> None:
        number = parse_version(version)
        body_version = body.get("version")
        if body_version is not None and body_version != version:
            raise invalid("The version in the body does not match the version in the path")
        algorithm, auth_data = _check_info(body)
        updated = await self.store.update_version(user_id, number, algorithm, auth_data)
        if updated is None:
            raise _unknown_version()
        if not updated:
            raise invalid("Algorithm does not match")

    async def delete_version(self, user_id: str, version: str) -> None:
        if not await self.store.delete_version(user_id, parse_version(version)):
            raise _unknown_version()

    async def put_keys(
        self, user_id: str, version: str | None, rooms: dict[str, dict[str, RoomKey]]
    ) -> JsonDict:
        number = parse_version(version)
        try:
            etag, count = await self.store.put_keys(user_id, number, rooms)
        except NoSuchVersion:
            raise _unknown_version() from None
        except WrongVersion as e:
            raise MatrixError(403, WRONG_ROOM_KEYS_VERSION, "Wrong backup version.",
                              current_version=str(e.current)) from None
        return {"etag": str(etag), "count": count}

    async def get_keys(
        self, user_id: str, version: str | None, room_id: str | None, session_id: str | None
    ) -> JsonDict:
        keys = await self.store.get_keys(user_id, parse_version(version), room_id, session_id)
        if keys is None:
            raise _unknown_version()
        if session_id is not None:
            assert room_id is not None
            key = keys.get(room_id, {}).get(session_id)
            if key is None:
                raise MatrixError(404, Codes.NOT_FOUND, "Key not found.")
            return key.json()
        rooms = {
            rid: {"sessions": {sid: k.json() for sid, k in sessions.items()}}
            for rid, sessions in keys.items()
        }
        if room_id is not None:
            return rooms.get(room_id, {"sessions": {}})
        return {"rooms": rooms}

    async def delete_keys(
        self, user_id: str, version: str | None, room_id: str | None, session_id: str | None
    ) -> JsonDict:
        result = await self.store.delete_keys(user_id, parse_version(version), room_id,
                                              session_id)
        if result is None:
            raise _unknown_version()
        etag, count = result
        return {"etag": str(etag), "count": count}

    async def on_deactivate(self, user_id: str) -> None:
        await self.store.delete_all_for_user(user_id)
