"""Server name resolution (server-server "Resolving server names").

Turns a server name into the addresses to connect to, the ``Host`` header and the name the
TLS certificate must match. The procedure is written once, in ``ServerNameResolver``, over
two injected lookups — a ``.well-known`` fetch and an SRV query — so it can be driven by
fakes in tests and by real I/O (``federation.transport``, ``TwistedSrvLookup``) in a server.

Decision table (the spec's step numbers):

1. IP literal                      -> ip:(port or 8448); Host = server name
2. hostname:port                   -> hostname:port;     Host = server name
3. /.well-known gives m.server D   -> D resolved by the rules below; Host = D
   3.1 D is an IP literal          -> ip:(port or 8448)
   3.2 D has a port                -> D
   3.3 SRV _matrix-fed._tcp.D      -> its targets
   3.4 SRV _matrix._tcp.D          -> its targets (deprecated)
   3.5                             -> D:8448
4-6. no valid .well-known          -> like 3.3-3.5 for the hostname itself; Host = hostname

The certificate is checked against the host part of whatever the ``Host`` header names
(IP literals: against the address, and no SNI is sent). A target's hostname is resolved to
addresses (A/AAAA/CNAME) when connecting, so that address checks happen on real addresses.
"""

from __future__ import annotations

import email.utils
import ipaddress
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import CancelledError
from twisted.names import client as names_client
from twisted.names import dns
from twisted.names.error import DNSNameError, DNSNotImplementedError

from federation.canonical_json import decode_json
from federation.identifiers import InvalidIdentifier, ServerName, parse_server_name

logger = logging.getLogger(__name__)

DEFAULT_FEDERATION_PORT = 8448
WELL_KNOWN_PATH = "/.well-known/matrix/server"

# Caching of .well-known results; the numbers are the spec's recommendations, the details
# (jitter, minimum, shorter error caching after a good answer) Synapse's.
WELL_KNOWN_DEFAULT_CACHE_S = 24 * 3600
WELL_KNOWN_MAX_CACHE_S = 48 * 3600
# Below this a Cache-Control max-age is raised: refetching every few seconds helps no one.
WELL_KNOWN_MIN_CACHE_S = 5 * 60
WELL_KNOWN_ERROR_CACHE_S = 3600
# A domain that had a valid .well-known recently is probably just down: retry sooner.
WELL_KNOWN_DOWN_CACHE_S = 2 * 60
WELL_KNOWN_REMEMBER_VALID_S = 2 * 3600
# +-10% so that entries made at start-up do not all expire at the same moment.
WELL_KNOWN_JITTER = 0.1
WELL_KNOWN_MAX_SIZE = 50 * 1024
WELL_KNOWN_MAX_REDIRECTS = 5
WELL_KNOWN_CACHE_ENTRIES = 10_000

SRV_SERVICE = "_matrix-fed._tcp"
SRV_SERVICE_DEPRECATED = "_matrix._tcp"
SRV_CACHE_MAX_S = 24 * 3600


class DiscoveryError(Exception):
    """The server name cannot be resolved (invalid name, DNS failure, service refused)."""


@dataclass(frozen=True)
class Target:
    host: str  # a hostname, or an IP address without brackets
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Resolution:
    """Where to send requests for ``server_name`` and how to address them.

    ``targets`` are tried in order. ``host_header`` is the ``Host`` header value and
    ``tls_server_name`` the name (or IP address) the certificate must be valid for; it is
    also sent as SNI unless it is an IP address. ``delegated_to`` is the ``m.server`` of a
    .well-known delegation, and ``step`` names the rule that decided (for logs and tests).
    """

    server_name: str
    targets: tuple[Target, ...]
    host_header: str
    tls_server_name: str
    delegated_to: str | None = None
    step: str = ""


@dataclass(frozen=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str  # "." (or "") means "service decidedly not available" (RFC 2782)
    ttl: int = 0


@dataclass(frozen=True)
class WellKnownResponse:
    """The outcome of ``GET https://<hostname>/.well-known/matrix/server`` after redirects."""

    status: int
    body: bytes
    # Lower-case header name -> values.
    headers: Mapping[str, Sequence[str]] = field(default_factory=dict)


class WellKnownFetchError(Exception):
    """The .well-known request failed without a response (connection, TLS, timeout, size).

    These count as temporary: a still-fresh cached answer is kept.
    """


WellKnownFetch = Callable[[str], Awaitable[WellKnownResponse]]
# Name like "_matrix-fed._tcp.example.com" -> records (empty when there are none); raise
# DiscoveryError when DNS fails in a way that does not mean "no records".
SrvLookup = Callable[[str], Awaitable[list[SrvRecord]]]


# -- pure parts ---------------------------------------------------------------------------------


def is_ip_literal(host: str) -> bool:
    """Whether a host (brackets allowed around IPv6) is an IP address."""
    try:
        ipaddress.ip_address(strip_brackets(host))
    except ValueError:
        return False
    return True


def strip_brackets(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _parse(server_name: str) -> ServerName:
    try:
        return parse_server_name(server_name)
    except InvalidIdentifier as e:
        raise DiscoveryError(f"invalid server name {server_name!r}: {e}") from None


def resolve_directly(server_name: str) -> Resolution | None:
    """Steps 1 and 2, which need no lookup: IP literal, or hostname with explicit port.

    None means the name needs the .well-known/SRV steps.
    """
    name = _parse(server_name)
    if is_ip_literal(name.host):
        ip = strip_brackets(name.host)
        port = name.port or DEFAULT_FEDERATION_PORT
        return Resolution(server_name, (Target(ip, port),), server_name, ip, step="ip_literal")
    if name.port is not None:
        return Resolution(
            server_name,
            (Target(name.host, name.port),),
            server_name,
            name.host,
            step="explicit_port",
        )
    return None


def parse_well_known(response: WellKnownResponse) -> str | None:
    """The delegated server name of a .well-known answer, or None when it is not valid.

    Anything but a 200 with a JSON object whose ``m.server`` is a server name counts as
    "no delegation" (the spec's "skip to step 4"); the body is parsed as JSON whatever its
    Content-Type, as the spec asks.
    """
    if response.status != 200:
        return None
    try:
        body = decode_json(response.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(body, dict):
        return None
    delegated = body.get("m.server")
    if not isinstance(delegated, str):
        return None
    try:
        parse_server_name(delegated)
    except InvalidIdentifier:
        return None
    return delegated


def well_known_cache_period(headers: Mapping[str, Sequence[str]], now: float) -> float | None:
    """Seconds to cache a response per its Cache-Control / Expires, or None if unspecified.

    ``no-store`` and unparseable Expires (RFC 9111: "already expired") give 0. Callers clamp
    the result (WELL_KNOWN_MIN_CACHE_S..WELL_KNOWN_MAX_CACHE_S).
    """
    directives: dict[str, str | None] = {}
    for value in headers.get("cache-control", ()):
        for directive in value.split(","):
            name, sep, arg = directive.partition("=")
            directives[name.strip().lower()] = arg.strip().strip('"') if sep else None
    if "no-store" in directives:
        return 0
    max_age = directives.get("max-age")
    if max_age is not None:
        try:
            return max(0, int(max_age))
        except ValueError:
            pass
    expires = headers.get("expires")
    if expires:
        try:
            when = email.utils.parsedate_to_datetime(expires[-1])
        except (TypeError, ValueError, IndexError):
            return 0
        if when.tzinfo is None:  # "-0000" dates parse naive; HTTP dates are GMT
            return 0
        return max(0.0, when.timestamp() - now)
    return None


def order_srv_records(records: Sequence[SrvRecord], rng: random.Random) -> list[Target]:
    """RFC 2782 order: ascending priority, weighted-random within a priority."""
    by_priority: dict[int, list[SrvRecord]] = {}
    for r in records:
        by_priority.setdefault(r.priority, []).append(r)
    out: list[Target] = []
    for priority in sorted(by_priority):
        pending = list(by_priority[priority])
        while pending:
            total = sum(r.weight for r in pending)
            if total == 0:
                # Only zero weights left: RFC 2782 gives them no order.
                rng.shuffle(pending)
                out.extend(Target(r.target, r.port) for r in pending)
                break
            pick = rng.randint(1, total)
            for i, r in enumerate(pending):
                pick -= r.weight
                if pick <= 0:
                    out.append(Target(r.target, r.port))
                    del pending[i]
                    break
    return out


# -- the .well-known cache ---------------------------------------------------------------------


@dataclass
class _CacheEntry:
    delegated_to: str | None
    expires_at: float


class WellKnownResolver:
    """Fetches and caches .well-known delegations.

    Valid answers are cached per their headers (clamped to 5 minutes..48 hours, default 24
    hours); invalid answers (non-200, bad JSON, ...) for an hour, or two minutes if the
    domain had a valid answer recently. A temporary failure (no response at all, or a 5xx)
    within two hours of a valid answer's expiry keeps that delegation, retried every two
    minutes, rather than forgetting it because of a blip. Concurrent lookups of the same
    name are not merged.
    """

    def __init__(
        self,
        fetch: WellKnownFetch,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        max_entries: int = WELL_KNOWN_CACHE_ENTRIES,
    ):
        self._fetch = fetch
        self._clock = clock
        self._rng = rng or random.Random()
        self._max_entries = max_entries
        self._cache: dict[str, _CacheEntry] = {}
        self._had_valid: dict[str, float] = {}  # hostname -> until when we remember it

    async def get(self, hostname: str) -> str | None:
        """The ``m.server`` delegation of ``hostname``, or None."""
        now = self._clock()
        entry = self._cache.get(hostname)
        if entry is not None and now < entry.expires_at:
            return entry.delegated_to

        try:
            response = await self._fetch(hostname)
        except WellKnownFetchError as e:
            logger.info("fetching .well-known of %s failed: %s", hostname, e)
            return self._on_failure(hostname, entry, now, temporary=True)
        if 500 <= response.status < 600:
            logger.info(".well-known of %s: HTTP %d", hostname, response.status)
            return self._on_failure(hostname, entry, now, temporary=True)
        delegated = parse_well_known(response)
        if delegated is None:
            logger.info(".well-known of %s is not valid (HTTP %d)", hostname, response.status)
            return self._on_failure(hostname, entry, now, temporary=False)

        period = well_known_cache_period(response.headers, now)
        if period is None:
            period = WELL_KNOWN_DEFAULT_CACHE_S * self._jitter()
        else:
            period = min(max(period, WELL_KNOWN_MIN_CACHE_S), WELL_KNOWN_MAX_CACHE_S)
        self._store(hostname, _CacheEntry(delegated, now + period))
        self._had_valid[hostname] = now + period + WELL_KNOWN_REMEMBER_VALID_S
        return delegated

    def _on_failure(
        self, hostname: str, previous: _CacheEntry | None, now: float, *, temporary: bool
    ) -> str | None:
        recently_valid = now < self._had_valid.get(hostname, 0)
        if temporary and recently_valid and previous is not None and previous.delegated_to:
            # The host had a valid delegation until recently and now fails to answer at all:
            # most likely a blip, so keep the delegation and retry soon.
            self._store(hostname, _CacheEntry(previous.delegated_to, now + WELL_KNOWN_DOWN_CACHE_S))
            return previous.delegated_to
        period = WELL_KNOWN_DOWN_CACHE_S if recently_valid else WELL_KNOWN_ERROR_CACHE_S
        self._store(hostname, _CacheEntry(None, now + period * self._jitter()))
        return None

    def _jitter(self) -> float:
        return self._rng.uniform(1 - WELL_KNOWN_JITTER, 1 + WELL_KNOWN_JITTER)

    def _store(self, hostname: str, entry: _CacheEntry) -> None:
        self._cache.pop(hostname, None)
        self._cache[hostname] = entry
        if len(self._cache) > self._max_entries:
            now = self._clock()
            for name in [n for n, e in self._cache.items() if e.expires_at <= now]:
                del self._cache[name]
            while len(self._cache) > self._max_entries:
                # Oldest insertion first (dicts keep insertion order).
                del self._cache[next(iter(self._cache))]
        if len(self._had_valid) > self._max_entries:
            now = self._clock()
            self._had_valid = {n: t for n, t in self._had_valid.items() if t > now}

    def invalidate(self, hostname: str) -> None:
        self._cache.pop(hostname, None)


# -- the resolver ----------------------------------------------------------------------------


class ServerNameResolver:
    """The whole procedure, with an optional static map in front.

    ``static_map`` maps a server name to ``host[:port]`` (default port 8448) for tests and
    closed deployments; such names skip discovery. Host header and certificate name stay
    those of the server name, so the peer's certificate for its name keeps working.
    """

    def __init__(
        self,
        well_known: WellKnownResolver | WellKnownFetch,
        srv_lookup: SrvLookup,
        *,
        static_map: Mapping[str, str] | None = None,
        rng: random.Random | None = None,
    ):
        self._well_known = (
            well_known
            if isinstance(well_known, WellKnownResolver)
            else WellKnownResolver(well_known)
        )
        self._srv_lookup = srv_lookup
        self._rng = rng or random.Random()
        self._static: dict[str, Target] = {}
        for name, address in (static_map or {}).items():
            parsed = _parse(address)
            self._static[name] = Target(
                strip_brackets(parsed.host), parsed.port or DEFAULT_FEDERATION_PORT
            )

    async def resolve(self, server_name: str) -> Resolution:
        static = self._static.get(server_name)
        if static is not None:
            host = strip_brackets(_parse(server_name).host)
            return Resolution(server_name, (static,), server_name, host, step="static")

        direct = resolve_directly(server_name)  # steps 1, 2
        if direct is not None:
            return direct

        hostname = _parse(server_name).host
        delegated = await self._well_known.get(hostname)  # step 3
        if delegated is None:  # steps 4-6
            targets, step = await self._srv_or_default(hostname)
            return Resolution(server_name, targets, hostname, hostname, step=step)

        direct = resolve_directly(delegated)  # steps 3.1, 3.2
        if direct is not None:
            return Resolution(
                server_name,
                direct.targets,
                delegated,
                direct.tls_server_name,
                delegated_to=delegated,
                step="well_known_" + direct.step,
            )
        targets, step = await self._srv_or_default(delegated)  # steps 3.3-3.5
        return Resolution(
            server_name,
            targets,
            delegated,
            delegated,
            delegated_to=delegated,
            step="well_known_" + step,
        )

    async def _srv_or_default(self, hostname: str) -> tuple[tuple[Target, ...], str]:
        for service, step in ((SRV_SERVICE, "srv"), (SRV_SERVICE_DEPRECATED, "srv_deprecated")):
            records = await self._srv_lookup(f"{service}.{hostname}")
            if not records:
                continue
            if len(records) == 1 and records[0].target in ("", "."):
                raise DiscoveryError(f"{service}.{hostname} says the service is not available")
            usable = [r for r in records if r.target not in ("", ".")]
            return tuple(order_srv_records(usable, self._rng)), step
        return (Target(hostname, DEFAULT_FEDERATION_PORT),), "default_port"


# -- DNS SRV over twisted.names ------------------------------------------------------------------


class TwistedSrvLookup:
    """SRV lookups with ``twisted.names`` (whose resolvers do not cache), cached per TTL.

    NXDOMAIN, empty answers and "not implemented" (e.g. .onion) mean no records; other DNS
    failures raise DiscoveryError unless a previous answer is cached, which is then used.
    """

    def __init__(self, resolver: Any = None, *, clock: Callable[[], float] = time.time):
        self._resolver = resolver  # an IResolver; None: twisted's, created on first use
        self._clock = clock
        self._cache: dict[str, tuple[float, list[SrvRecord]]] = {}

    async def __call__(self, name: str) -> list[SrvRecord]:
        now = self._clock()
        cached = self._cache.get(name)
        if cached is not None and now < cached[0]:
            return list(cached[1])
        if self._resolver is None:
            self._resolver = names_client.getResolver()
        try:
            answers, _authority, _additional = await self._resolver.lookupService(name)
        except (DNSNameError, DNSNotImplementedError):
            return []
        except CancelledError:
            raise
        except Exception as e:  # SERVFAIL, refused, timeout (not a DomainError), ...
            if cached is not None:
                logger.warning("SRV lookup of %s failed (%s); using the expired answer", name, e)
                return list(cached[1])
            raise DiscoveryError(f"SRV lookup of {name} failed: {e!r}") from None
        records: list[SrvRecord] = []
        for answer in answers:
            if answer.type != dns.SRV or answer.payload is None:
                continue
            payload = answer.payload
            target = payload.target.name.decode("ascii", "replace").rstrip(".") or "."
            records.append(
                SrvRecord(payload.priority, payload.weight, payload.port, target, answer.ttl)
            )
        if records:
            ttl = min(min(r.ttl for r in records), SRV_CACHE_MAX_S)
            self._cache[name] = (now + ttl, records)
        return records
