"""Every service and store of one running server, built once by the app and handed to the
HTTP layer. Endpoints take what they need from here; they hold no state of their own."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from federation.keys import SigningKey
from federation.transport.client import FederationClient, TransportOptions
from homeserver.clock import Clock
from homeserver.config import Config
from homeserver.config.model import RateLimit
from homeserver.services.accounts import AccountService
from homeserver.services.admin import AdminServices, build_admin
from homeserver.services.appservice.client import AppServiceClient
from homeserver.services.appservice.registration import load_registrations
from homeserver.services.appservice.service import AppServices
from homeserver.services.auth import AuthService
from homeserver.services.directory import DirectoryService
from homeserver.services.e2ee import E2eeServices, build_e2ee
from homeserver.services.events import EventsService
from homeserver.services.federation_directory import FederationDirectory
from homeserver.services.federation_in import FederationRooms
from homeserver.services.federation_policy import outbound_gate
from homeserver.services.federation_sender import FederationSender
from homeserver.services.hierarchy import HierarchyService
from homeserver.services.keyring import Keyring
from homeserver.services.media import MediaService
from homeserver.services.media.fetcher import FederationMediaFetcher
from homeserver.services.notifier import InProcessNotifier, Notifier
from homeserver.services.openid import OpenIdService
from homeserver.services.presence import PresenceService
from homeserver.services.profile import ProfileService
from homeserver.services.push import PushService, PushSettings
from homeserver.services.ratelimit import Ratelimiter
from homeserver.services.receipts import ReceiptService
from homeserver.services.relations import RelationsService
from homeserver.services.room_reports import RoomReportService
from homeserver.services.room_summary import RoomSummaryService
from homeserver.services.rooms import RoomService
from homeserver.services.search import SearchService
from homeserver.services.state import StateService
from homeserver.services.sync import SyncService
from homeserver.services.threepid import EMAIL_IDENTITY, ThreepidService
from homeserver.services.typing import TypingService
from homeserver.services.uia import UiaService
from homeserver.services.upgrade import UpgradeService
from homeserver.storage import Database
from homeserver.storage.account_data import AccountDataStore
from homeserver.storage.appservice import AppServiceStore
from homeserver.storage.cache import configure as configure_caches
from homeserver.storage.devices import DeviceStore
from homeserver.storage.engine import StreamNote
from homeserver.storage.events import EventStore
from homeserver.storage.federation_queue import FederationQueueStore
from homeserver.storage.filters import FilterStore
from homeserver.storage.media import MediaStore
from homeserver.storage.openid import OpenIdStore
from homeserver.storage.presence import PresenceStore
from homeserver.storage.profiles import ProfileStore
from homeserver.storage.push import PushStore
from homeserver.storage.receipts import ReceiptStore
from homeserver.storage.relations import RelationStore
from homeserver.storage.room_reports import RoomReportStore
from homeserver.storage.search import SearchStore
from homeserver.storage.server_keys import ServerKeyStore
from homeserver.storage.state import StateStore
from homeserver.storage.sync import SyncStore
from homeserver.storage.uia import RegistrationTokenStore, UiaStore
from homeserver.storage.user_directory import UserDirectoryStore
from homeserver.storage.users import UserStore


@dataclass
class RateLimiters:
    login_per_address: Ratelimiter
    login_failures_per_account: Ratelimiter
    registration_per_address: Ratelimiter
    messages_per_user: Ratelimiter
    media_uploads_per_user: Ratelimiter


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
    e2ee: E2eeServices
    profiles: ProfileService
    ratelimits: RateLimiters
    federation_client: FederationClient
    keyring: Keyring
    federation_sender: FederationSender
    user_directory: UserDirectoryStore
    media: MediaService
    # Rooms and the event pipeline.
    events: EventStore
    state_store: StateStore
    notifier: Notifier
    pipeline: EventsService
    state: StateService
    rooms: RoomService
    # Push rules, notification counts, pushers.
    push: PushService
    # Sync and ephemeral events (set up by ``_build_sync`` once the rest exists).
    typing: TypingService = field(init=False)
    receipts: ReceiptService = field(init=False)
    presence: PresenceService = field(init=False)
    sync: SyncService = field(init=False)
    # Rooms over federation (set up once the rest exists).
    federation: FederationRooms = field(init=False)
    # The public room directory.
    directory: DirectoryService = field(init=False)
    # Relations, threads and bundled aggregations.
    relations: RelationsService = field(init=False)
    # Room upgrades.
    upgrades: UpgradeService = field(init=False)
    # Content reports and /timestamp_to_event.
    room_reports: RoomReportService = field(init=False)
    # Full-text search of room events.
    search: SearchService = field(init=False)
    # Space hierarchies, and room summaries (previews) built on the same access rules.
    hierarchy: HierarchyService = field(init=False)
    room_summary: RoomSummaryService = field(init=False)
    # Public rooms and hierarchies to and from other servers; OpenID tokens.
    federation_directory: FederationDirectory = field(init=False)
    openid: OpenIdService = field(init=False)
    # Email addresses on accounts (and the mailer behind email pushers).
    threepids: ThreepidService = field(init=False)
    # Application services (bridges, bots): registrations, delivery, queries.
    appservices: AppServices = field(init=False)
    # The admin API's services, server notices and the retention job.
    admin: AdminServices = field(init=False)


def build_services(
    config: Config,
    db: Database,
    *,
    reactor: Any,
    signing_key: SigningKey,
    clock: Clock | None = None,
) -> Services:
    the_clock = clock or Clock()
    # Before any store or service makes its caches.
    configure_caches(config.caches.global_factor, config.caches.sizes)
    federation_client = FederationClient(
        reactor,
        server_name=config.server_name,
        signing_key=signing_key,
        options=TransportOptions(
            verify_tls=not config.outbound.accept_self_signed,
            allow_private_addresses=config.outbound.allow_private_addresses,
            static_map=config.federation.static_servers,
            timeout_s=float(config.federation.request_timeout_seconds),
            max_response_size=config.federation.max_response_bytes,
            max_concurrent_per_destination=(
                config.federation.max_concurrent_requests_per_destination),
        ),
        gate=outbound_gate(config),
    )
    users = UserStore(db)
    devices = DeviceStore(db)
    registration_tokens = RegistrationTokenStore(db)
    rl = config.rate_limiting
    profiles = ProfileService(ProfileStore(db))
    event_store = EventStore(db)
    state_store = StateStore(db)
    notifier = InProcessNotifier(reactor)
    pipeline = EventsService(
        db=db, store=event_store, state_store=state_store, notifier=notifier, clock=the_clock,
        server_name=config.server_name, signing_key=signing_key,
    )
    state = StateService(db, event_store, state_store)

    def limiter(limit: RateLimit) -> Ratelimiter:
        return Ratelimiter(limit, rl.enabled, the_clock)

    services = Services(
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
        e2ee=build_e2ee(config, db, the_clock),
        uia=UiaService(UiaStore(db), users, registration_tokens, the_clock, config.server_name),
        profiles=profiles,
        ratelimits=RateLimiters(
            login_per_address=limiter(rl.login_per_address),
            login_failures_per_account=limiter(rl.login_failures_per_account),
            registration_per_address=limiter(rl.registration_per_address),
            messages_per_user=limiter(rl.messages_per_user),
            media_uploads_per_user=limiter(rl.media_uploads_per_user),
        ),
        federation_client=federation_client,
        keyring=Keyring(config, ServerKeyStore(db), federation_client, signing_key, the_clock),
        user_directory=UserDirectoryStore(db),
        federation_sender=FederationSender(
            config.server_name, FederationQueueStore(db), federation_client, the_clock, reactor
        ),
        media=MediaService(config, MediaStore(db), the_clock, reactor),
        events=event_store,
        state_store=state_store,
        notifier=notifier,
        pipeline=pipeline,
        state=state,
        rooms=RoomService(
            config=config, clock=the_clock, pipeline=pipeline, state=state, profiles=profiles
        ),
        push=PushService(
            store=PushStore(db), pipeline=pipeline, account_data=AccountDataStore(db),
            clock=the_clock, reactor=reactor, server_name=config.server_name,
            settings=PushSettings(
                include_content=config.push.include_content,
                legacy_mention_rules=config.push.legacy_mention_rules,
                badge_counts_rooms=config.push.group_unread_count_by_room,
                notification_retention_ms=config.push.notification_retention_days * 86_400_000,
                verify_tls=not config.outbound.accept_self_signed,
                allow_private_addresses=config.outbound.allow_private_addresses,
            ),
        ),
    )
    services.media.set_remote_fetcher(FederationMediaFetcher(federation_client))
    services.accounts.on_deactivate.append(services.e2ee.on_deactivate)
    services.accounts.on_deactivate.append(services.rooms.on_deactivate)
    services.accounts.on_deactivate.append(services.push.on_deactivate)
    services.profiles.on_change.append(services.rooms.on_profile_change)
    services.directory = DirectoryService(
        config=config, pipeline=services.pipeline, users=services.users
    )
    services.relations = RelationsService(rooms=services.rooms, store=RelationStore(db))
    services.rooms.bundler = services.relations.bundle
    services.upgrades = UpgradeService(rooms=services.rooms)
    services.room_reports = RoomReportService(rooms=services.rooms, store=RoomReportStore(db))
    services.search = SearchService(rooms=services.rooms, store=SearchStore(db))
    services.hierarchy = HierarchyService(
        pipeline=services.pipeline, directory=services.directory
    )
    services.room_summary = RoomSummaryService(
        pipeline=services.pipeline, directory=services.directory, hierarchy=services.hierarchy
    )
    _build_sync(services, reactor)
    services.federation = FederationRooms(services)
    services.federation_directory = FederationDirectory(services)
    services.openid = OpenIdService(OpenIdStore(db), the_clock, config.server_name)
    services.admin = build_admin(services, reactor)
    services.receipts.on_receipt.append(services.push.on_receipt)
    _build_email(services, reactor)
    _build_appservices(services, reactor)
    return services


def _build_appservices(services: Services, reactor: Any) -> None:
    """Load the registration files (a bad one is a ConfigError naming file and field) and
    wire delivery: new events, ephemeral streams and typing wake the senders."""
    config = services.config
    services.appservices = AppServices(
        load_registrations(
            config.app_service_config_files, config.server_name,
            allow_private=config.app_services_may_use_private_addresses,
        ),
        store=AppServiceStore(services.db, config.server_name), users=services.users,
        events=services.events,
        client=AppServiceClient(
            reactor, verify_tls=not config.outbound.accept_self_signed,
            allow_private=config.app_services_may_use_private_addresses,
        ),
        time_ms=services.clock.time_ms, reactor=reactor,
    )
    if services.appservices.all:
        services.auth.appservices = services.appservices
        services.pipeline.on_persisted.append(services.appservices.on_persisted)
        services.db.on_commit.append(services.appservices.on_commit)
        services.typing.on_change.append(services.appservices.on_typing)


def _build_sync(services: Services, reactor: Any) -> None:
    """Typing, receipts, presence and /sync; wake waiting syncs when streams move."""
    s = services
    s.typing = TypingService(
        pipeline=s.pipeline, notifier=s.notifier, clock=s.clock, reactor=reactor
    )
    s.receipts = ReceiptService(
        store=ReceiptStore(s.db), account_data=s.account_data, pipeline=s.pipeline,
        clock=s.clock,
    )
    s.presence = PresenceService(
        config=s.config.presence, server_name=s.config.server_name,
        store=PresenceStore(s.db), state_store=s.state_store, pipeline=s.pipeline,
        clock=s.clock, reactor=reactor,
    )
    s.sync = SyncService(
        clock=s.clock, rooms=s.rooms, pipeline=s.pipeline, state=s.state,
        state_store=s.state_store, events=s.events, store=SyncStore(s.db),
        notifier=s.notifier, typing=s.typing, receipts=s.receipts, presence=s.presence,
        account_data=s.account_data, e2ee=s.e2ee,
        # The push service supplies unread counts once it exists.
        push_source=lambda: getattr(s, "push", None),
    )
    notifier = s.notifier

    def wake(notes: list[StreamNote]) -> None:
        for note in notes:
            notifier.notify(note.stream, note.position, rooms=note.rooms, users=note.users)

    s.db.on_commit.append(wake)


def _build_email(services: Services, reactor: Any) -> None:
    """Email addresses on accounts and email pushers, when ``email`` is configured."""
    from homeserver.services.email.mailer import Mailer
    from homeserver.services.push.email import EmailPushers
    from homeserver.storage.threepids import ThreepidStore

    config = services.config
    mailer = Mailer(config.email, reactor) if config.email.enabled else None
    services.threepids = ThreepidService(config, ThreepidStore(services.db), mailer,
                                         services.clock)
    services.accounts.on_deactivate.append(services.threepids.on_deactivate)
    if mailer is None:
        return
    services.uia.stage_hooks[EMAIL_IDENTITY] = services.threepids.uia_stage
    if config.email.enable_notifications:
        services.push.set_email(EmailPushers(
            store=services.push.store, pipeline=services.pipeline, mailer=mailer,
            clock=services.clock, reactor=reactor,
            delay_ms=config.email.notification_delay_ms, app_name=config.email.app_name,
            include_content=config.push.include_content,
        ))
