"""Accounts: usernames, registration, passwords, deactivation.

Other services hook into deactivation (leave every room, drop E2EE keys) through
``on_deactivate`` so this module need not know them.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Awaitable, Callable

from homeserver.clock import Clock
from homeserver.config import Config
from homeserver.http.errors import Codes, MatrixError
from homeserver.services.passwords import check_password, hash_password
from homeserver.storage.devices import DeviceStore
from homeserver.storage.users import UserExists, UserStore

logger = logging.getLogger(__name__)

# The current user ID grammar: lowercase letters, digits and ._=-/+ (appendices).
_LOCALPART = re.compile(r"^[a-z0-9._=\-/+]+$")
MAX_USER_ID_BYTES = 255
MAX_PASSWORD_LENGTH = 512

DeactivateHook = Callable[[str], Awaitable[None]]


class AccountService:
    def __init__(self, config: Config, users: UserStore, devices: DeviceStore,
                 clock: Clock) -> None:
        self.config = config
        self.users = users
        self.devices = devices
        self.clock = clock
        self.on_deactivate: list[DeactivateHook] = []
        self._dummy_hash: str | None = None

    def user_id_for(self, localpart: str) -> str:
        return f"@{localpart}:{self.config.server_name}"

    def validate_localpart(self, localpart: str, *, for_client: bool = True) -> str:
        """The user ID for a requested username, or 400 M_INVALID_USERNAME."""
        if not localpart or not _LOCALPART.match(localpart):
            raise MatrixError(
                400, Codes.INVALID_USERNAME,
                "Usernames may contain only a-z, 0-9 and . _ = - / +",
            )
        user_id = self.user_id_for(localpart)
        if len(user_id.encode("utf-8")) > MAX_USER_ID_BYTES:
            raise MatrixError(400, Codes.INVALID_USERNAME, "Username is too long")
        if for_client:
            if localpart.startswith("_"):
                raise MatrixError(400, Codes.INVALID_USERNAME,
                                  "Usernames starting with _ are reserved for bridges")
            if localpart.isdigit():
                raise MatrixError(400, Codes.INVALID_USERNAME,
                                  "Numeric usernames are reserved for guests")
            if localpart in self.config.registration.reserved_localparts:
                raise MatrixError(400, Codes.INVALID_USERNAME, "This username is reserved")
        return user_id

    async def check_available(self, localpart: str) -> str:
        user_id = self.validate_localpart(localpart)
        if await self.users.exists(user_id):
            raise MatrixError(400, Codes.USER_IN_USE, "User ID already taken")
        return user_id

    async def register(
        self,
        user_id: str,
        password: str | None,
        *,
        is_guest: bool = False,
        registration_token: str | None = None,
    ) -> None:
        password_hash = None
        if password is not None:
            validate_password(password)
            password_hash = await hash_password(password, self.config.bcrypt_rounds)
        try:
            await self.users.create_with_device(
                user_id,
                password_hash,
                is_guest=is_guest,
                created_ts=self.clock.time_ms(),
                registration_token=registration_token,
            )
        except UserExists:
            raise MatrixError(400, Codes.USER_IN_USE, "User ID already taken") from None
        logger.info("registered %s%s", user_id, " (guest)" if is_guest else "")

    async def register_guest(self) -> str:
        # Guests get numeric localparts, which ordinary registration refuses.
        while True:
            user_id = self.user_id_for(str(secrets.randbelow(10**12)))
            if not await self.users.exists(user_id):
                await self.register(user_id, None, is_guest=True)
                return user_id

    async def check_login_password(self, user_id: str, password: str) -> bool:
        user = await self.users.get(user_id)
        if user is None or user.deactivated or user.password_hash is None:
            # Same work as a real check, so timing does not reveal which accounts exist.
            if self._dummy_hash is None:
                self._dummy_hash = await hash_password(
                    secrets.token_hex(16), self.config.bcrypt_rounds
                )
            await check_password(password, self._dummy_hash)
            return False
        return await check_password(password, user.password_hash)

    async def change_password(
        self, user_id: str, new_password: str, keep_device: str | None, logout_devices: bool
    ) -> None:
        validate_password(new_password)
        await self.users.set_password_hash(
            user_id, await hash_password(new_password, self.config.bcrypt_rounds)
        )
        if logout_devices:
            devices = [d.device_id for d in await self.devices.get_devices(user_id)]
            await self.devices.delete_devices(user_id, [d for d in devices if d != keep_device])

    async def deactivate(self, user_id: str) -> None:
        await self.users.deactivate(user_id)
        for hook in self.on_deactivate:
            await hook(user_id)
        logger.info("deactivated %s", user_id)


def validate_password(password: str) -> None:
    if not password:
        raise MatrixError(400, "M_WEAK_PASSWORD", "Password must not be empty")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise MatrixError(400, Codes.BAD_JSON, f"Password is longer than {MAX_PASSWORD_LENGTH}")

