"""The config's shape and its validation. ``template.py`` renders the documented YAML."""

from __future__ import annotations

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
class FederationConfig:
    static_servers: dict[str, str] = field(default_factory=dict)
    well_known_server: str | None = None


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
    log_level: str
    source_path: str | None = None
    # The key paths the reader knows, so tests can check the sample documents all of them.
    known_keys: frozenset[str] = frozenset()

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
    federation = FederationConfig(
        static_servers=static, well_known_server=fed.string("well_known_server", None)
    )
    fed.done()

    lim = root.section("limits")
    max_json = lim.integer("max_json_body_bytes", 10 * 1024 * 1024, min=65536, max=1 << 30)
    lim.done()

    app_services = tuple(root.str_list("app_service_config_files", []))

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
        log_level=log_level,
        source_path=source_path,
        known_keys=frozenset(root.known),
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
