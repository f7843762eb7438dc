"""Profiles: displayname, avatar_url, m.tz and custom fields (spec v1.16).

Changes are announced through ``on_change`` so the rooms service can update the user's
membership events without this module knowing about rooms.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from homeserver.http.errors import Codes, MatrixError
from homeserver.storage.profiles import ProfileStore

# The spec's keyName pattern: the known keys, or a namespaced identifier.
_KEY = re.compile(r"^(avatar_url|displayname|m\.tz|[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+)$")
MAX_PROFILE_BYTES = 64 * 1024
MAX_KEY_BYTES = 255
MAX_DISPLAYNAME = 256
_MXC = re.compile(r"^mxc://[A-Za-z0-9.\-:\[\]]+/[A-Za-z0-9_\-]+$")

ChangeHook = Callable[[str, str, Any], Awaitable[None]]


class ProfileService:
    def __init__(self, store: ProfileStore) -> None:
        self.store = store
        self.on_change: list[ChangeHook] = []

    async def get(self, user_id: str) -> dict[str, Any]:
        return await self.store.get_profile(user_id)

    async def set_field(self, user_id: str, key: str, value: Any) -> None:
        check_key(key)
        validate_value(key, value)
        if not await self.store.set_field(user_id, key, value, MAX_PROFILE_BYTES):
            raise MatrixError(400, "M_PROFILE_TOO_LARGE",
                              "The profile would be larger than 64 KiB")
        for hook in self.on_change:
            await hook(user_id, key, value)

    async def delete_field(self, user_id: str, key: str) -> None:
        check_key(key)
        await self.store.delete_field(user_id, key)
        for hook in self.on_change:
            await hook(user_id, key, None)


def check_key(key: str) -> None:
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise MatrixError(400, "M_KEY_TOO_LARGE", "Profile keys are at most 255 bytes")
    if not _KEY.match(key):
        raise MatrixError(400, Codes.INVALID_PARAM, "Invalid profile key")


def validate_value(key: str, value: Any) -> None:
    if key == "displayname":
        if value is not None and not isinstance(value, str):
            raise MatrixError(400, Codes.BAD_JSON, "displayname must be a string")
        if isinstance(value, str) and len(value) > MAX_DISPLAYNAME:
            raise MatrixError(400, Codes.BAD_JSON,
                              f"displayname is longer than {MAX_DISPLAYNAME} characters")
    elif key == "avatar_url":
        if value is not None and (not isinstance(value, str) or not _MXC.match(value)):
            raise MatrixError(400, Codes.BAD_JSON, "avatar_url must be an mxc:// URI")
    elif key == "m.tz":
        if not isinstance(value, str) or len(value) > 255:
            raise MatrixError(400, Codes.BAD_JSON, "m.tz must be a time zone name")
