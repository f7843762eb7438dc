"""The config's shape and its validation. ``template.py`` renders the documented YAML."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

from federation.room_versions import KNOWN_ROOM_VERSIONS
from homeserver.config.client_extras import (
    SupportConfig,
    VoipConfig,
    parse_support,
    parse_voip,
)
from homeserver.config.errors import ConfigError
from homeserver.config.reader import Section

RESOURCES = ("client", "federation", "keys", "media", "metrics", "admin")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True)
class ListenerConfig:
    bind: str
    port: int
    tls: bool
    resources: tuple[str, ...]
    # Trust X-Forwarded-For from a reverse proxy in front of this listener.
    x_forwarded: bool = False


@dataclass(frozen=True)
class DatabaseConfig:
    url: str
    engine: str  # "sqlite" or "postgres"
    # SQLite: the file path; PostgreSQL: the libpq DSN (the URL itself).
    target: str
    pool_min: int = 1
    pool_max: int = 10
    connect_timeout: int = 10


@dataclass(frozen=True)
class TlsConfig:
    certificate_path: str
    private_key_path: str


@dataclass(frozen=True)
class OutboundConfig:
    accept_self_signed: bool = False
    allow_private_addresses: bool = False


@dataclass(frozen=True)
class TrustedKeyServer:
    server_name: str
    # key ID -> unpadded base64 verify key; empty: trust whatever it signs with (not advised)
    verify_keys: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class OldSigningKey:
    verify_key: str  # unpadded base64
    expired_ts: int


@dataclass(frozen=True)
class FederationConfig:
    static_servers: dict[str, str] = field(default_factory=dict)
    well_known_server: str | None = None
    trusted_key_servers: tuple[TrustedKeyServer, ...] = ()
    old_signing_keys: dict[str, OldSigningKey] = field(default_factory=dict)
    # Server names or glob patterns: None allows every server not blocked.
    allowed_servers: tuple[str, ...] | None = None
    blocked_servers: tuple[str, ...] = ()
    # Bounds on every outbound federation request: the whole exchange (connect, headers,
    # body) within this many seconds, a response body of at most this many bytes.
    request_timeout_seconds: int = 60
    max_response_bytes: int = 50 * 1024 * 1024
    # Requests in flight to one server; more wait for a free slot.
    max_concurrent_requests_per_destination: int = 16


@dataclass(frozen=True)
class RateLimit:
    per_second: float
    burst: int


@dataclass(frozen=True)
class RateLimitConfig:
    enabled: bool = True
    login_per_address: RateLimit = RateLimit(0.17, 5)
    login_failures_per_account: RateLimit = RateLimit(0.17, 3)
    registration_per_address: RateLimit = RateLimit(0.17, 3)
    messages_per_user: RateLimit = RateLimit(0.2, 10)
    media_uploads_per_user: RateLimit = RateLimit(1.0, 20)


@dataclass(frozen=True)
class RegistrationConfig:
    enabled: bool = False
    require_token: bool = False
    shared_secret: str | None = None
    reserved_localparts: tuple[str, ...] = ()


@dataclass(frozen=True)
class SessionConfig:
    # Lifetime of access tokens issued with a refresh token (clients that asked for one).
    refreshable_access_token_lifetime_ms: int = 5 * 60 * 1000
    # Lifetime of refresh tokens; None: until used or the device is removed.
    refresh_token_lifetime_ms: int | None = None
    login_token_lifetime_ms: int = 2 * 60 * 1000


@dataclass(frozen=True)
class ThumbnailSize:
    width: int
    height: int
    method: str  # "crop" or "scale"


# The sizes the spec recommends servers pre-generate.
DEFAULT_THUMBNAIL_SIZES = (
    ThumbnailSize(32, 32, "crop"),
    ThumbnailSize(96, 96, "crop"),
    ThumbnailSize(320, 240, "scale"),
    ThumbnailSize(640, 480, "scale"),
    ThumbnailSize(800, 600, "scale"),
)


@dataclass(frozen=True)
class UrlPreviewConfig:
    enabled: bool = False
    # CIDR ranges that may be fetched even though they are private or blocked.
    allowed_ip_ranges: tuple[str, ...] = ()
    # CIDR ranges refused on top of every non-public address.
    blocked_ip_ranges: tuple[str, ...] = ()
    max_page_bytes: int = 10 * 1024 * 1024
    timeout_seconds: int = 10


@dataclass(frozen=True)
class MediaConfig:
    store_path: str
    max_upload_bytes: int = 50 * 1024 * 1024
    # Images with more pixels than this are not thumbnailed (decompression bombs).
    max_image_pixels: int = 32_000_000
    thumbnail_sizes: tuple[ThumbnailSize, ...] = DEFAULT_THUMBNAIL_SIZES
    # False: the unauthenticated /_matrix/media/v3 download and thumbnail endpoints are frozen
    # and serve only media stored before the freeze.
    enable_legacy_unauthenticated_media: bool = False
    unused_upload_expiry_ms: int = 24 * 3600 * 1000
    max_pending_uploads_per_user: int = 5
    max_remote_bytes: int = 50 * 1024 * 1024
    max_concurrent_remote_fetches: int = 10
    url_preview: UrlPreviewConfig = UrlPreviewConfig()
    # Bytes of uploads a user may keep (None: no quota); past it, uploads get 403 M_FORBIDDEN.
    max_storage_bytes_per_user: int | None = None



ENCRYPTION_DEFAULTS = ("all", "private", "off")


@dataclass(frozen=True)
class EncryptionConfig:
    # Which new rooms get m.room.encryption at creation: every room, private chats and DMs
    # (not public rooms), or none. The rooms service applies it.
    by_default: str = "private"
    # Refuse plaintext m.room.message events from local users in encrypted rooms (403).
    require: bool = False


@dataclass(frozen=True)
class PresenceConfig:
    # false: the presence endpoints still answer, but nothing is stored or sent.
    enabled: bool = True
    # An online user with no activity for this long becomes unavailable.
    idle_timeout_ms: int = 5 * 60 * 1000
    # A user with no /sync in flight for this long after their last one becomes offline.
    offline_timeout_ms: int = 30 * 1000


@dataclass(frozen=True)
class PushConfig:
    # Send event content to push gateways (pushers with format event_id_only never get it).
    include_content: bool = True
    # Keep the body-based mention rules removed from the spec in v1.17.
    legacy_mention_rules: bool = True
    # The badge count: rooms with unread notifications instead of unread notifications.
    group_unread_count_by_room: bool = False
    # Notifications older than this are deleted.
    notification_retention_days: int = 30


@dataclass(frozen=True)
class EmailConfig:
    # Email addresses on accounts (validation, password reset, login) and email
    # notifications, sent through this SMTP server. Off: the email endpoints answer
    # M_THREEPID_MEDIUM_NOT_SUPPORTED.
    enabled: bool = False
    smtp_host: str = "localhost"
    smtp_port: int = 25
    # "starttls" (required), "tls" (implicit TLS, usually port 465) or "none".
    tls: str = "starttls"
    smtp_user: str | None = None
    smtp_password: str | None = None
    from_address: str = "Matrix <noreply@localhost>"
    app_name: str = "Matrix"
    validation_token_lifetime_ms: int = 3600 * 1000
    # The domains a requestToken's next_link may point at (lower case); others are refused.
    # None: any domain, but the validated page only shows the link (no automatic redirect).
    next_link_domain_whitelist: tuple[str, ...] | None = None
    # Send email notifications (email pushers) at all, and how long a notification waits
    # unread before it is mailed (others arriving meanwhile join the same email).
    enable_notifications: bool = True
    notification_delay_ms: int = 10 * 60 * 1000


@dataclass(frozen=True)
class ServerNoticesConfig:
    # The localpart of the user that sends server notices; None: server notices are off.
    system_mxid_localpart: str | None = None
    system_mxid_display_name: str = "Server Notices"
    system_mxid_avatar_url: str | None = None
    room_name: str = "Server Notices"


@dataclass(frozen=True)
class RetentionConfig:
    # Purge message events older than their room's max_lifetime (services/retention.py).
    enabled: bool = False
    # The policy of rooms without m.room.retention (None: kept for ever).
    default_min_lifetime_ms: int | None = None
    default_max_lifetime_ms: int | None = None
    # A room's max_lifetime outside these bounds is clamped to them.
    allowed_lifetime_min_ms: int | None = None
    allowed_lifetime_max_ms: int | None = None
    purge_interval_ms: int = 12 * 3600 * 1000


@dataclass(frozen=True)
class CacheConfig:
    # Every in-memory cache's size is multiplied by this; ``sizes`` sets one cache by name.
    global_factor: float = 1.0
    sizes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    server_name: str
    data_dir: str
    public_baseurl: str
    signing_key_path: str
    default_room_version: str
    database: DatabaseConfig
    listeners: tuple[ListenerConfig, ...]
    tls: TlsConfig
    registration: RegistrationConfig
    rate_limiting: RateLimitConfig
    sessions: SessionConfig
    guest_access: bool
    room_directory_publish_by_anyone: bool
    bcrypt_rounds: int
    outbound: OutboundConfig
    federation: FederationConfig
    max_json_body_bytes: int
    app_service_config_files: tuple[str, ...]
    media: MediaConfig
    log_level: str
    source_path: str | None = None
    # Application-service URLs may be on loopback/private addresses (bridges beside us).
    app_service_allow_private_addresses: bool = False

    @property
    def app_services_may_use_private_addresses(self) -> bool:
        """Registration files are the operator's: their URLs may be private when the
        operator says so for them alone, or for all outbound requests (--dev-federation)."""
        return self.app_service_allow_private_addresses or \
            self.outbound.allow_private_addresses
    # The key paths the reader knows, so tests can check the sample documents all of them.
    known_keys: frozenset[str] = frozenset()
    encryption: EncryptionConfig = EncryptionConfig()
    presence: PresenceConfig = PresenceConfig()
    push: PushConfig = PushConfig()
    email: EmailConfig = EmailConfig()
    server_notices: ServerNoticesConfig = ServerNoticesConfig()
    retention: RetentionConfig = RetentionConfig()
    # Serve our public room directory to other servers (off by default, as in Synapse).
    public_rooms_over_federation: bool = False
    # Log to this file (reopened when log rotation moves it) instead of stderr; "text" lines
    # or one JSON object per line.
    log_file: str | None = None
    log_format: str = "text"

    # Requests in flight per access token; more get 429.
    max_concurrent_requests_per_client: int = 100
    caches: CacheConfig = CacheConfig()
    # A device's to-device inbox keeps this many of its newest messages.
    max_to_device_messages_per_device: int = 10_000
    # /.well-known/matrix/support and /voip/turnServer.
    support: SupportConfig = field(default_factory=SupportConfig)
    voip: VoipConfig = field(default_factory=VoipConfig)

    def listener_for(self, resource: str) -> ListenerConfig | None:
        for listener in self.listeners:
            if resource in listener.resources:
                return listener
        return None


def load_config(path: str) -> Config:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return parse_config(data, source_path=path)


def parse_config(data: Any, source_path: str | None = None) -> Config:
    root = Section("", data)
    server_name = root.string("server_name")
    _check_server_name(root, server_name)

    data_dir = os.path.abspath(root.string("data_dir"))
    signing_key_path = root.string("signing_key_path", os.path.join(data_dir, "signing.key"))
    default_room_version = str(root._raw("default_room_version", "12"))
    if default_room_version not in KNOWN_ROOM_VERSIONS:
        raise root.error(
            "default_room_version",
            f"expected one of {', '.join(KNOWN_ROOM_VERSIONS)}, got {default_room_version!r}",
        )

    database = _database(root.section("database"), data_dir)
    listeners = tuple(_listener(s) for s in root.sections("listeners"))
    if not listeners:
        raise root.error("listeners", "expected at least one listener")
    seen_addr: set[tuple[str, int]] = set()
    for i, listener in enumerate(listeners):
        if listener.port and (listener.bind, listener.port) in seen_addr:
            raise ConfigError(
                f"listeners[{i}]: {listener.bind}:{listener.port} is used by two listeners; "
                "list every resource on one listener instead"
            )
        seen_addr.add((listener.bind, listener.port))

    tls_s = root.section("tls")
    tls = TlsConfig(
        certificate_path=tls_s.string("certificate_path", os.path.join(data_dir, "tls.crt")),
        private_key_path=tls_s.string("private_key_path", os.path.join(data_dir, "tls.key")),
    )
    tls_s.done()

    reg = root.section("registration")
    registration = RegistrationConfig(
        enabled=reg.boolean("enabled", False),
        require_token=reg.boolean("require_token", False),
        shared_secret=reg.string("shared_secret", None),
        reserved_localparts=tuple(reg.str_list("reserved_localparts", [])),
    )
    reg.done()

    rl = root.section("rate_limiting")
    defaults = RateLimitConfig()
    rate_limiting = RateLimitConfig(
        enabled=rl.boolean("enabled", True),
        login_per_address=_rate(rl, "login_per_address", defaults.login_per_address),
        login_failures_per_account=_rate(
            rl, "login_failures_per_account", defaults.login_failures_per_account
        ),
        registration_per_address=_rate(
            rl, "registration_per_address", defaults.registration_per_address
        ),
        messages_per_user=_rate(rl, "messages_per_user", defaults.messages_per_user),
        media_uploads_per_user=_rate(
            rl, "media_uploads_per_user", defaults.media_uploads_per_user
        ),
    )
    rl.done()

    ses = root.section("sessions")
    day = 24 * 3600 * 1000
    sessions = SessionConfig(
        refreshable_access_token_lifetime_ms=ses.integer(
            "refreshable_access_token_lifetime_ms", 5 * 60 * 1000, min=1000, max=day
        ),
        refresh_token_lifetime_ms=ses.integer(
            "refresh_token_lifetime_ms", None, min=60_000, max=365 * day
        ),
        login_token_lifetime_ms=ses.integer(
            "login_token_lifetime_ms", 2 * 60 * 1000, min=1000, max=3600 * 1000
        ),
    )
    ses.done()

    rd = root.section("room_directory")
    publish_by_anyone = rd.boolean("publish_by_anyone", False)
    public_rooms_over_federation = rd.boolean("allow_public_rooms_over_federation", False)
    rd.done()

    ph = root.section("password_hashing")
    bcrypt_rounds = ph.integer("bcrypt_rounds", 12, min=4, max=31)
    ph.done()

    ob = root.section("outbound_requests")
    outbound = OutboundConfig(
        accept_self_signed=ob.boolean("accept_self_signed", False),
        allow_private_addresses=ob.boolean("allow_private_addresses", False),
    )
    ob.done()

    fed = root.section("federation")
    static = fed.str_map("static_servers")
    for name, target in static.items():
        _check_host_port(fed, f"static_servers.{name}", target)
    # Unset (or null) allows every server; an empty list allows none.
    allowed_given = fed.data.get("allowed_servers") is not None
    allowed = tuple(fed.str_list("allowed_servers", []))
    federation = FederationConfig(
        static_servers=static,
        well_known_server=fed.string("well_known_server", None),
        trusted_key_servers=tuple(_trusted(t) for t in fed.sections("trusted_key_servers", [])),
        old_signing_keys=_old_keys(fed.section("old_signing_keys")),
        allowed_servers=allowed if allowed_given else None,
        blocked_servers=tuple(fed.str_list("blocked_servers", [])),
        request_timeout_seconds=fed.integer("request_timeout_seconds", 60, min=1, max=3600),
        max_response_bytes=fed.integer("max_response_bytes", 50 * 1024 * 1024,
                                       min=65536, max=1 << 34),
        max_concurrent_requests_per_destination=fed.integer(
            "max_concurrent_requests_per_destination", 16, min=1, max=10_000),
    )
    fed.done()

    lim = root.section("limits")
    max_json = lim.integer("max_json_body_bytes", 10 * 1024 * 1024, min=65536, max=1 << 30)
    max_concurrent = lim.integer("max_concurrent_requests_per_client", 100, min=1,
                                 max=1_000_000)
    caches = _caches(lim.section("caches"))
    max_to_device = lim.integer("max_to_device_messages_per_device", 10_000, min=100,
                                max=10_000_000)
    lim.done()

    app_services = tuple(root.str_list("app_service_config_files", []))
    app_service_private = root.boolean("app_service_allow_private_addresses", False)

    media = _media(root.section("media"), data_dir)

    enc = root.section("encryption")
    by_default = enc._raw("by_default", "private")
    if by_default is False:
        by_default = "off"  # YAML 1.1 reads a bare `off` as false
    if by_default not in ENCRYPTION_DEFAULTS:
        raise enc.error(
            "by_default",
            f"expected one of {', '.join(ENCRYPTION_DEFAULTS)}, got {by_default!r}",
        )
    encryption = EncryptionConfig(
        by_default=by_default,
        require=enc.boolean("require", False),
    )
    enc.done()

    pres = root.section("presence")
    presence = PresenceConfig(
        enabled=pres.boolean("enabled", True),
        idle_timeout_ms=pres.integer("idle_timeout_ms", 5 * 60 * 1000, min=100,
                                     max=24 * 3600 * 1000),
        offline_timeout_ms=pres.integer("offline_timeout_ms", 30 * 1000, min=100,
                                        max=24 * 3600 * 1000),
    )
    pres.done()

    ps = root.section("push")
    push = PushConfig(
        include_content=ps.boolean("include_content", True),
        legacy_mention_rules=ps.boolean("legacy_mention_rules", True),
        group_unread_count_by_room=ps.boolean("group_unread_count_by_room", False),
        notification_retention_days=ps.integer("notification_retention_days", 30, min=1,
                                               max=3650),
    )
    ps.done()
    email = _email(root.section("email"), server_name)

    sn = root.section("server_notices")
    server_notices = ServerNoticesConfig(
        system_mxid_localpart=sn.string("system_mxid_localpart", None),
        system_mxid_display_name=sn.string("system_mxid_display_name", "Server Notices"),
        system_mxid_avatar_url=sn.string("system_mxid_avatar_url", None),
        room_name=sn.string("room_name", "Server Notices"),
    )
    sn.done()
    retention = _retention(root.section("retention"))
    support = parse_support(root.section("support"))
    voip = parse_voip(root.section("voip"))

    log = root.section("logging")
    log_level = log.choice("level", LOG_LEVELS, "INFO")
    log_format = log.choice("format", LOG_FORMATS, "text")
    log_file = log.string("file", None)
    if log_file is not None:
        log_file = os.path.join(data_dir, log_file)  # relative paths: in the data dir
    log.done()

    client = next((lst for lst in listeners if "client" in lst.resources), None)
    default_base = ""
    if client is not None:
        host = "127.0.0.1" if client.bind in ("0.0.0.0", "::") else client.bind
        host = f"[{host}]" if ":" in host else host
        default_base = f"{'https' if client.tls else 'http'}://{host}:{client.port}/"
    public_baseurl = root.string("public_baseurl", default_base)
    if public_baseurl and not public_baseurl.endswith("/"):
        public_baseurl += "/"

    guest_access = root.boolean("guest_access", False)
    root.done()

    return Config(
        server_name=server_name,
        data_dir=data_dir,
        public_baseurl=public_baseurl,
        signing_key_path=signing_key_path,
        default_room_version=default_room_version,
        database=database,
        listeners=listeners,
        tls=tls,
        registration=registration,
        rate_limiting=rate_limiting,
        sessions=sessions,
        guest_access=guest_access,
        room_directory_publish_by_anyone=publish_by_anyone,
        bcrypt_rounds=bcrypt_rounds,
        outbound=outbound,
        federation=federation,
        max_json_body_bytes=max_json,
        max_concurrent_requests_per_client=max_concurrent,
        caches=caches,
        max_to_device_messages_per_device=max_to_device,
        app_service_config_files=app_services,
        app_service_allow_private_addresses=app_service_private,
        media=media,
        log_level=log_level,
        log_file=log_file,
        log_format=log_format,
        source_path=source_path,
        known_keys=frozenset(root.known),
        encryption=encryption,
        presence=presence,
        push=push,
        email=email,
        server_notices=server_notices,
        retention=retention,
        public_rooms_over_federation=public_rooms_over_federation,
        support=support,
        voip=voip,
    )


_DURATION_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000,
                   "w": 7 * 86_400_000, "y": 365 * 86_400_000}


def _duration(s: Section, key: str, default: int | None) -> int | None:
    """Milliseconds, given as an integer or as a number with a unit ("30d", "12h", "500ms")."""
    v = s._raw(key, default)
    if v is default:
        return default
    if isinstance(v, int) and not isinstance(v, bool) and v > 0:
        return v
    m = re.fullmatch(r"([0-9]+)(ms|s|m|h|d|w|y)", v.strip()) if isinstance(v, str) else None
    if m is None or int(m.group(1)) == 0:
        raise s.error(key, f"expected a positive duration such as 30d, 12h or 1000 (ms), "
                           f"got {v!r}")
    return int(m.group(1)) * _DURATION_UNITS[m.group(2)]


def _email(s: Section, server_name: str) -> EmailConfig:
    user = s.string("smtp_user", None)
    config = EmailConfig(
        enabled=s.boolean("enabled", False),
        smtp_host=s.string("smtp_host", "localhost"),
        smtp_port=s.integer("smtp_port", 25, min=1, max=65535),
        tls=s.choice("tls", ("starttls", "tls", "none"), "starttls"),
        smtp_user=user,
        smtp_password=s.string("smtp_password", None),
        from_address=s.string("from", f"Matrix <noreply@{server_name}>"),
        app_name=s.string("app_name", "Matrix"),
        validation_token_lifetime_ms=_duration(s, "validation_token_lifetime", 3_600_000)
        or 0,
        next_link_domain_whitelist=None if s._raw("next_link_domain_whitelist", None) is None
        else tuple(d.lower() for d in s.str_list("next_link_domain_whitelist")),
        enable_notifications=s.boolean("enable_notifications", True),
        notification_delay_ms=s.integer("notification_delay_ms", 10 * 60 * 1000, min=0,
                                        max=7 * 86_400_000),
    )
    s.done()
    if (user is None) != (config.smtp_password is None):
        raise s.error("smtp_user", "smtp_user and smtp_password go together")
    if config.enabled and "@" not in config.from_address:
        raise s.error("from", "must contain an email address")
    return config


def _retention(s: Section) -> RetentionConfig:
    policy = s.section("default_policy")
    config = RetentionConfig(
        enabled=s.boolean("enabled", False),
        default_min_lifetime_ms=_duration(policy, "min_lifetime", None),
        default_max_lifetime_ms=_duration(policy, "max_lifetime", None),
        allowed_lifetime_min_ms=_duration(s, "allowed_lifetime_min", None),
        allowed_lifetime_max_ms=_duration(s, "allowed_lifetime_max", None),
        purge_interval_ms=_duration(s, "purge_interval", 12 * 3_600_000) or 0,
    )
    policy.done()
    s.done()
    low, high = config.allowed_lifetime_min_ms, config.allowed_lifetime_max_ms
    if low is not None and high is not None and low > high:
        raise s.error("allowed_lifetime_min", "is larger than allowed_lifetime_max")
    return config


def _caches(s: Section) -> CacheConfig:
    factor = s._raw("global_factor", 1.0)
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) \
            or not 0.01 <= factor <= 100:
        raise s.error("global_factor", f"expected a number from 0.01 to 100, got {factor!r}")
    sz = s.section("sizes")
    sizes = {str(name): sz.integer(str(name), min=1, max=100_000_000) for name in sz.data}
    sz.done()
    s.done()
    return CacheConfig(global_factor=float(factor), sizes=sizes)


def parse_database_url(url: str, data_dir: str | None = None) -> tuple[str, str]:
    """``sqlite:///path`` → ("sqlite", path); ``postgresql://…`` → ("postgres", url)."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        if parts.netloc not in ("", "localhost"):
            raise ValueError("a sqlite URL has no host: write sqlite:///absolute/path.db")
        # sqlite:///abs/path.db names an absolute path; SQLAlchemy's sqlite:////abs works too.
        path = unquote(parts.path)
        if path.startswith("//"):
            path = path[1:]
        if path and not os.path.isabs(path):
            path = os.path.join(data_dir or os.getcwd(), path)
        if not path or path.endswith("/"):
            raise ValueError("the sqlite URL names no file")
        return "sqlite", path
    if parts.scheme in ("postgresql", "postgres"):
        return "postgres", url
    raise ValueError("expected a sqlite:/// URL or a postgresql:// DSN")


def _database(s: Section, data_dir: str) -> DatabaseConfig:
    url = s.string("url", f"sqlite://{os.path.join(data_dir, 'homeserver.db')}")
    try:
        engine, target = parse_database_url(url, data_dir)
    except ValueError as e:
        raise s.error("url", f"{e}, got {url!r}") from None
    pool_min = s.integer("pool_min", 1, min=1, max=100)
    pool_max = s.integer("pool_max", 10, min=1, max=200)
    if pool_max < pool_min:
        raise s.error("pool_max", f"must be at least pool_min ({pool_min}), got {pool_max}")
    timeout = s.integer("connect_timeout", 10, min=1, max=300)
    s.done()
    return DatabaseConfig(url, engine, target, pool_min, pool_max, timeout)


def _trusted(s: Section) -> TrustedKeyServer:
    name = s.string("server_name")
    keys = s.str_map("verify_keys")
    s.done()
    return TrustedKeyServer(name, keys)


def _old_keys(s: Section) -> dict[str, OldSigningKey]:
    out: dict[str, OldSigningKey] = {}
    for key_id in list(s.data):
        entry = s.section(str(key_id))
        out[str(key_id)] = OldSigningKey(
            entry.string("key"), entry.integer("expired_ts", min=0)
        )
        entry.done()
    s.done()
    return out


def _rate(parent: Section, key: str, default: RateLimit) -> RateLimit:
    s = parent.section(key)
    per_second = s._raw("per_second", default.per_second)
    if isinstance(per_second, bool) or not isinstance(per_second, (int, float)) or per_second <= 0:
        raise s.error("per_second", f"expected a positive number, got {per_second!r}")
    burst = s.integer("burst", default.burst, min=1, max=1_000_000)
    s.done()
    return RateLimit(float(per_second), burst)


def _listener(s: Section) -> ListenerConfig:
    bind = s.string("bind", "127.0.0.1")
    # 0 picks a free port (tests); the log line says which.
    port = s.integer("port", min=0, max=65535)
    tls = s.boolean("tls", False)
    resources = s.str_list("resources")
    if not resources:
        raise s.error("resources", f"expected at least one of {', '.join(RESOURCES)}")
    for i, r in enumerate(resources):
        if r not in RESOURCES:
            raise ConfigError(
                f"{s.path}.resources[{i}]: expected one of {', '.join(RESOURCES)}, got {r!r}"
            )
    x_forwarded = s.boolean("x_forwarded", False)
    s.done()
    return ListenerConfig(bind, port, tls, tuple(dict.fromkeys(resources)), x_forwarded)


def _check_server_name(s: Section, name: str) -> None:
    from federation.identifiers import is_valid_server_name

    if not is_valid_server_name(name):
        raise s.error(
            "server_name",
            f"expected a DNS name or IP literal with an optional port, got {name!r}",
        )


def _check_host_port(s: Section, key: str, value: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise s.error(key, f"expected HOST:PORT, got {value!r}")


def _media(s: Section, data_dir: str) -> MediaConfig:
    defaults = MediaConfig(store_path="")
    store_path = os.path.abspath(s.string("store_path", os.path.join(data_dir, "media")))
    max_upload = s.integer("max_upload_bytes", defaults.max_upload_bytes, min=1, max=1 << 40)
    max_pixels = s.integer("max_image_pixels", defaults.max_image_pixels, min=1, max=1 << 32)
    sizes: tuple[ThumbnailSize, ...] = defaults.thumbnail_sizes
    if "thumbnail_sizes" in s.data and s.data["thumbnail_sizes"] is not None:
        parsed = []
        for item in s.sections("thumbnail_sizes"):
            parsed.append(
                ThumbnailSize(
                    width=item.integer("width", min=1, max=4096),
                    height=item.integer("height", min=1, max=4096),
                    method=item.choice("method", ("crop", "scale")),
                )
            )
            item.done()
        sizes = tuple(parsed)
    else:
        s.items("thumbnail_sizes", [])  # known key, default sizes
    legacy = s.boolean(
        "enable_legacy_unauthenticated_media", defaults.enable_legacy_unauthenticated_media
    )
    day = 24 * 3600 * 1000
    expiry = s.integer(
        "unused_upload_expiry_ms", defaults.unused_upload_expiry_ms, min=60_000, max=30 * day
    )
    pending = s.integer(
        "max_pending_uploads_per_user", defaults.max_pending_uploads_per_user, min=1, max=10_000
    )
    max_remote = s.integer("max_remote_bytes", defaults.max_remote_bytes, min=1, max=1 << 40)
    concurrent = s.integer(
        "max_concurrent_remote_fetches", defaults.max_concurrent_remote_fetches, min=1, max=1000
    )
    quota = s.integer("max_storage_bytes_per_user", None, min=1, max=1 << 50)

    up = s.section("url_preview")
    preview = UrlPreviewConfig(
        enabled=up.boolean("enabled", False),
        allowed_ip_ranges=_ip_ranges(up, "allowed_ip_ranges"),
        blocked_ip_ranges=_ip_ranges(up, "blocked_ip_ranges"),
        max_page_bytes=up.integer(
            "max_page_bytes", UrlPreviewConfig.max_page_bytes, min=1024, max=1 << 30
        ),
        timeout_seconds=up.integer(
            "timeout_seconds", UrlPreviewConfig.timeout_seconds, min=1, max=300
        ),
    )
    up.done()
    s.done()
    return MediaConfig(
        store_path=store_path,
        max_upload_bytes=max_upload,
        max_image_pixels=max_pixels,
        thumbnail_sizes=sizes,
        enable_legacy_unauthenticated_media=legacy,
        unused_upload_expiry_ms=expiry,
        max_pending_uploads_per_user=pending,
        max_remote_bytes=max_remote,
        max_concurrent_remote_fetches=concurrent,
        url_preview=preview,
        max_storage_bytes_per_user=quota,
    )


def _ip_ranges(s: Section, key: str) -> tuple[str, ...]:
    ranges = s.str_list(key, [])
    for i, r in enumerate(ranges):
        try:
            ipaddress.ip_network(r, strict=False)
        except ValueError:
            raise ConfigError(
                f"{s.path}.{key}[{i}]: expected an IP address range such as 10.0.0.0/8, "
                f"got {r!r}"
            ) from None
    return tuple(ranges)
