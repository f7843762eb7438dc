"""Who is calling: access tokens in, a ``Requester`` out; and issuing, refreshing and ending
sessions.

Tokens are random (256 bits) and stored only as SHA-256 digests. A token is looked up by its
digest, so the comparison the database makes is on a hash the caller cannot steer: timing
tells an attacker nothing about stored tokens, and a database leak hands out no sessions.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import string
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from homeserver.clock import Clock
from homeserver.config import Config
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.storage.devices import DeviceStore

if TYPE_CHECKING:
    from homeserver.services.appservice.registration import AppService
    from homeserver.services.appservice.service import AppServices

logger = logging.getLogger(__name__)

# Device last-seen times are written at most this often per device.
_SEEN_INTERVAL_MS = 5 * 60 * 1000


@dataclass(frozen=True)
class Requester:
    user_id: str
    device_id: str
    is_guest: bool
    token_hash: str
    # Set when an application service makes the request (as its sender or a masqueraded user).
    app_service: AppService | None = None

    @property
    def rate_limited(self) -> bool:
        """Application services' senders are never rate-limited; the users they act as are
        unless the registration says ``rate_limited: false``."""
        svc = self.app_service
        if svc is None:
            return True
        return svc.rate_limited and self.user_id != svc.sender


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def new_device_id() -> str:
    return "".join(secrets.choice(string.ascii_uppercase) for _ in range(10))


def token_from_request(request: HomeserverRequest) -> str | None:
    header = request.getHeader("Authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise MatrixError(401, Codes.MISSING_TOKEN, "Authorization header must be Bearer")
        return value.strip()
    # Deprecated but still used by some clients and tools.
    return request.query_param("access_token")


class AuthService:
    def __init__(self, config: Config, devices: DeviceStore, clock: Clock) -> None:
        self.config = config
        self.devices = devices
        self.clock = clock
        self._last_seen: dict[tuple[str, str], int] = {}
        # Installed by the registry when application services are configured.
        self.appservices: AppServices | None = None

    async def authenticate(
        self, request: HomeserverRequest, *, allow_guest: bool = False
    ) -> Requester:
        token = token_from_request(request)
        if not token:
            raise MatrixError(401, Codes.MISSING_TOKEN, "Missing access token")
        if self.appservices is not None:
            svc = self.appservices.by_token(token)
            if svc is not None:
                return await self._as_requester(svc, request)
        digest = hash_token(token)
        owner = await self.devices.token_owner(digest)
        if owner is None or owner.deactivated:
            raise MatrixError(401, Codes.UNKNOWN_TOKEN, "Unknown access token", soft_logout=False)
        now = self.clock.time_ms()
        if owner.expires_ts is not None and owner.expires_ts <= now:
            # Soft logout: the client keeps its device and refreshes or logs in again.
            raise MatrixError(401, Codes.UNKNOWN_TOKEN, "Access token has expired",
                              soft_logout=True)
        if owner.is_guest and not allow_guest:
            raise MatrixError(403, "M_GUEST_ACCESS_FORBIDDEN", "Guest access not allowed")
        await self._note_seen(owner.user_id, owner.device_id, request, now)
        return Requester(owner.user_id, owner.device_id, owner.is_guest, digest)

    async def _as_requester(self, svc: AppService, request: HomeserverRequest) -> Requester:
        """Identity assertion: the service's sender, or ``user_id=`` in its namespace, with
        ``device_id=`` (spec v1.17; MSC3202's name too) when it names one of that user's
        devices."""
        assert self.appservices is not None
        self.appservices.service_is_back(svc)
        user_id = request.query_param("user_id") or svc.sender
        if not svc.may_act_as(user_id):
            raise MatrixError(403, Codes.FORBIDDEN,
                              "Application service cannot masquerade as this user")
        user = await self.appservices.users.get(user_id)
        if user is None:
            raise MatrixError(403, Codes.FORBIDDEN,
                              "Application service has not registered this user")
        if user.deactivated:
            raise MatrixError(403, "M_USER_DEACTIVATED", "This account has been deactivated")
        device_id = (request.query_param("device_id")
                     or request.query_param("org.matrix.msc3202.device_id") or "")
        if device_id and await self.devices.get_device(user_id, device_id) is None:
            raise MatrixError(400, "M_UNKNOWN_DEVICE", "No such device for this user")
        return Requester(user_id, device_id, False, f"appservice:{svc.id}", app_service=svc)

    async def _note_seen(
        self, user_id: str, device_id: str, request: HomeserverRequest, now: int
    ) -> None:
        key = (user_id, device_id)
        if now - self._last_seen.get(key, 0) < _SEEN_INTERVAL_MS:
            return
        self._last_seen[key] = now
        await self.devices.record_seen(user_id, device_id, request.client_ip, now)

    async def issue_session(
        self,
        user_id: str,
        device_id: str | None,
        display_name: str | None,
        *,
        refreshable: bool,
    ) -> dict[str, Any]:
        """A new access token (and refresh token if asked) for a new or existing device."""
        now = self.clock.time_ms()
        device_id = device_id or new_device_id()
        access = new_token("mat")
        refresh = new_token("mar") if refreshable else None
        sessions = self.config.sessions
        access_expires = now + sessions.refreshable_access_token_lifetime_ms if refresh else None
        refresh_expires = (
            now + sessions.refresh_token_lifetime_ms
            if refresh and sessions.refresh_token_lifetime_ms
            else None
        )
        await self.devices.add_login(
            user_id,
            device_id,
            display_name,
            hash_token(access),
            access_expires,
            hash_token(refresh) if refresh else None,
            refresh_expires,
            now,
        )
        result: dict[str, Any] = {
            "user_id": user_id,
            "access_token": access,
            "device_id": device_id,
            "home_server": self.config.server_name,
        }
        if refresh:
            result["refresh_token"] = refresh
            result["expires_in_ms"] = sessions.refreshable_access_token_lifetime_ms
        return result

    async def refresh(self, refresh_token: str) -> dict[str, Any]:
        now = self.clock.time_ms()
        sessions = self.config.sessions
        access, refresh = new_token("mat"), new_token("mar")
        rotated = await self.devices.rotate_refresh_token(
            hash_token(refresh_token),
            now,
            hash_token(access),
            now + sessions.refreshable_access_token_lifetime_ms,
            hash_token(refresh),
            (now + sessions.refresh_token_lifetime_ms)
            if sessions.refresh_token_lifetime_ms
            else None,
        )
        if rotated is None:
            raise MatrixError(401, Codes.UNKNOWN_TOKEN, "Unknown refresh token", soft_logout=True)
        return {
            "access_token": access,
            "refresh_token": refresh,
            "expires_in_ms": sessions.refreshable_access_token_lifetime_ms,
        }

    async def create_login_token(self, user_id: str) -> tuple[str, int]:
        token = new_token("mal")
        lifetime = self.config.sessions.login_token_lifetime_ms
        await self.devices.add_login_token(hash_token(token), user_id,
                                           self.clock.time_ms() + lifetime)
        return token, lifetime

    async def consume_login_token(self, token: str) -> str | None:
        return await self.devices.consume_login_token(hash_token(token), self.clock.time_ms())
