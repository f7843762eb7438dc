"""The config's shape and its validation. ``template.py`` renders the documented YAML."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

from federation.room_versions import KNOWN_ROOM_VERSIONS
from homeserver.config.errors import ConfigError
from homeserver.config.reader import Section

RESOURCES = ("client", "federation", "keys", "media", "metrics", "admin")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


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
    # The key paths the reader knows, so tests can check the sample documents all of them.
    known_keys: frozenset[str] = frozenset()
    encryption: EncryptionConfig = EncryptionConfig()
    presence: PresenceConfig = PresenceConfig()
    push: PushConfig = PushConfig()

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
    )
    fed.done()

    lim = root.section("limits")
    max_json = lim.integer("max_json_body_bytes", 10 * 1024 * 1024, min=65536, max=1 << 30)
    lim.done()

    app_services = tuple(root.str_list("app_service_config_files", []))

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

    log = root.section("logging")
    log_level = log.choice("level", LOG_LEVELS, "INFO")
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
        app_service_config_files=app_services,
        media=media,
        log_level=log_level,
        source_path=source_path,
        known_keys=frozenset(root.known),
        encryption=encryption,
        presence=presence,
        push=push,
    )


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
