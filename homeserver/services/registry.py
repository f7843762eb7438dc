"""Every service and store of one running server, built once by the app and handed to the
HTTP layer. Endpoints take what they need from here; they hold no state of their own."""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.clock import Clock
from homeserver.config import Config
from homeserver.config.model import RateLimit
from homeserver.services.accounts import AccountService
from homeserver.services.auth import AuthService
from homeserver.services.profile import ProfileService
from homeserver.services.ratelimit import Ratelimiter
from homeserver.services.uia import UiaService
from homeserver.storage import Database
from homeserver.storage.account_data import AccountDataStore
from homeserver.storage.devices import DeviceStore
from homeserver.storage.filters import FilterStore
from homeserver.storage.profiles import ProfileStore
from homeserver.storage.uia import RegistrationTokenStore, UiaStore
from homeserver.storage.users import UserStore


@dataclass
class RateLimiters:
    login_per_address: Ratelimiter
    login_failures_per_account: Ratelimiter
    registration_per_address: Ratelimiter
    messages_per_user: Ratelimiter


@dataclass
class Services:
    config: Config
    clock: Clock
    db: Database
    users: UserStore
    devices: DeviceStore
    registration_tokens: RegistrationTokenStore
    account_data: AccountDataStore
    filters: FilterStore
    auth: AuthService
    accounts: AccountService
    uia: UiaService
    profiles: ProfileService
    ratelimits: RateLimiters


def build_services(config: Config, db: Database, clock: Clock | None = None) -> Services:
    the_clock = clock or Clock()
    users = UserStore(db)
    devices = DeviceStore(db)
    registration_tokens = RegistrationTokenStore(db)
    rl = config.rate_limiting

    def limiter(limit: RateLimit) -> Ratelimiter:
        return Ratelimiter(limit, rl.enabled, the_clock)

    return Services(
        config=config,
        clock=the_clock,
        db=db,
        users=users,
        devices=devices,
        registration_tokens=registration_tokens,
        account_data=AccountDataStore(db),
        filters=FilterStore(db),
        auth=AuthService(config, devices, the_clock),
        accounts=AccountService(config, users, devices, the_clock),
        uia=UiaService(UiaStore(db), users, registration_tokens, the_clock, config.server_name),
        profiles=ProfileService(ProfileStore(db)),
        ratelimits=RateLimiters(
            login_per_address=limiter(rl.login_per_address),
            login_failures_per_account=limiter(rl.login_failures_per_account),
            registration_per_address=limiter(rl.registration_per_address),
            messages_per_user=limiter(rl.messages_per_user),
        ),
    )
