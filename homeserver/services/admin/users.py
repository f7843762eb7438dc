"""Operator actions on local accounts: listing, details, create-or-modify, deactivation with
erasure, password resets, admin rights, and where a user's sessions come from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from federation.identifiers import get_domain, is_valid_user_id
from homeserver.http.errors import Codes, MatrixError
from homeserver.services.accounts import AccountService, validate_password
from homeserver.services.passwords import hash_password
from homeserver.services.profile import ProfileService
from homeserver.services.rooms import RoomService
from homeserver.storage.admin import AdminStore, UserRow
from homeserver.storage.devices import DeviceStore
from homeserver.storage.users import UserStore


def user_json(u: UserRow) -> dict[str, Any]:
    """A user as Synapse's admin API lists one."""
    return {
        "name": u.user_id,
        "user_type": None,
        "is_guest": u.is_guest,
        "admin": u.is_admin,
        "deactivated": u.deactivated,
        "erased": u.erased,
        "shadow_banned": False,
        "locked": False,
        "displayname": u.displayname,
        "avatar_url": u.avatar_url,
        "creation_ts": u.created_ts,
    }


@dataclass
class UserChanges:
    """The fields of PUT /_synapse/admin/v2/users/{userId}; None leaves a field as it is."""

    password: str | None = None
    logout_devices: bool = True
    displayname: str | None = None
    avatar_url: str | None = None
    admin: bool | None = None
    deactivated: bool | None = None


class UserAdmin:
    def __init__(self, *, server_name: str, bcrypt_rounds: int, store: AdminStore,
                 users: UserStore, devices: DeviceStore, accounts: AccountService,
                 profiles: ProfileService, rooms: RoomService, clock: Any) -> None:
        self.server_name = server_name
        self.bcrypt_rounds = bcrypt_rounds
        self.store = store
        self.users = users
        self.devices = devices
        self.accounts = accounts
        self.profiles = profiles
        self.rooms = rooms
        self.clock = clock

    def check_local(self, user_id: str) -> None:
        if not is_valid_user_id(user_id):
            raise MatrixError(400, Codes.INVALID_PARAM, f"Invalid user ID {user_id!r}")
        if get_domain(user_id) != self.server_name:
            raise MatrixError(400, Codes.INVALID_PARAM, "Can only manage local users")

    async def get(self, user_id: str) -> UserRow:
        self.check_local(user_id)
        row = await self.store.get_user(user_id)
        if row is None:
            raise MatrixError(404, Codes.NOT_FOUND, "User not found")
        return row

    async def details(self, user_id: str) -> dict[str, Any]:
        row = await self.get(user_id)
        devices = await self.devices.get_devices(user_id)
        last_seen = max((d.last_seen_ts or 0 for d in devices), default=0)
        media_count, media_length = await self.store.user_media_totals(user_id)
        return {
            **user_json(row),
            "threepids": [],
            "external_ids": [],
            "devices": len(devices),
            "joined_rooms": len(await self.rooms.joined_rooms(user_id)),
            "last_seen_ts": last_seen or None,
            # Not in Synapse's answer: what the user's uploads take up.
            "media_count": media_count,
            "media_length": media_length,
        }

    async def upsert(self, user_id: str, changes: UserChanges) -> bool:
        """Create the account or change it; True when it was created."""
        self.check_local(user_id)
        existing = await self.users.get(user_id)
        created = existing is None
        if existing is None:
            # The localpart rules of registration (lower case, allowed characters, length).
            self.accounts.validate_localpart(user_id[1:].split(":", 1)[0], for_client=False)
            if changes.deactivated:
                raise MatrixError(400, Codes.INVALID_PARAM,
                                  "A new account cannot be deactivated")
            await self.accounts.register(user_id, changes.password)
        elif changes.password is not None:
            await self.accounts.change_password(user_id, changes.password, None,
                                                changes.logout_devices)
        if changes.admin is not None:
            await self.users.set_admin(user_id, changes.admin)
        if existing is not None and changes.deactivated is not None \
                and changes.deactivated != existing.deactivated:
            if changes.deactivated:
                await self.accounts.deactivate(user_id)
            else:
                await self._reactivate(user_id, changes.password)
        for key, value in (("displayname", changes.displayname),
                           ("avatar_url", changes.avatar_url)):
            if value is not None:
                await self.profiles.set_field(user_id, key, value)
        return created

    async def _reactivate(self, user_id: str, password: str | None) -> None:
        if password is None:
            raise MatrixError(400, Codes.MISSING_PARAM,
                              "Reactivating an account needs a new password")
        validate_password(password)
        await self.store.reactivate(user_id, await hash_password(password, self.bcrypt_rounds))

    async def deactivate(self, user_id: str, erase: bool) -> None:
        row = await self.get(user_id)
        if not row.deactivated:
            await self.accounts.deactivate(user_id)
        if erase:
            await self.store.set_erased(user_id, self.clock.time_ms())

    async def reset_password(self, user_id: str, password: str, logout_devices: bool) -> None:
        row = await self.get(user_id)
        if row.deactivated:
            raise MatrixError(400, Codes.INVALID_PARAM, "The account is deactivated")
        await self.accounts.change_password(user_id, password, None, logout_devices)

    async def whois(self, user_id: str) -> dict[str, Any]:
        await self.get(user_id)
        devices: dict[str, Any] = {}
        for d in await self.devices.get_devices(user_id):
            connections = []
            if d.last_seen_ts is not None:
                connections.append({"ip": d.last_seen_ip, "last_seen": d.last_seen_ts,
                                    "user_agent": None})
            devices[d.device_id] = {"sessions": [{"connections": connections}]}
        return {"user_id": user_id, "devices": devices}
