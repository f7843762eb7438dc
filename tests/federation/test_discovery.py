from __future__ import annotations

import json
import random
from email.utils import formatdate
from typing import Any, cast

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.names import dns
from twisted.names.error import DNSNameError, DNSServerError

from federation.discovery import (
    WELL_KNOWN_DEFAULT_CACHE_S,
    WELL_KNOWN_DOWN_CACHE_S,
    WELL_KNOWN_ERROR_CACHE_S,
    WELL_KNOWN_MAX_CACHE_S,
    WELL_KNOWN_MIN_CACHE_S,
    DiscoveryError,
    Resolution,
    ServerNameResolver,
    SrvRecord,
    Target,
    TwistedSrvLookup,
    WellKnownFetchError,
    WellKnownResolver,
    WellKnownResponse,
    order_srv_records,
    parse_well_known,
    resolve_directly,
    well_known_cache_period,
)

HOUR = 3600.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class FakeWellKnown:
    """hostname -> response (or exception); unknown hosts answer 404."""

    def __init__(self, answers: dict[str, Any] | None = None):
        self.answers = answers or {}
        self.calls: list[str] = []

    async def __call__(self, hostname: str) -> WellKnownResponse:
        self.calls.append(hostname)
        answer = self.answers.get(hostname, WellKnownResponse(404, b"not found"))
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, WellKnownResponse)
        return answer


class FakeSrv:
    def __init__(self, records: dict[str, list[SrvRecord]] | None = None):
        self.records = records or {}
        self.calls: list[str] = []

    async def __call__(self, name: str) -> list[SrvRecord]:
        self.calls.append(name)
        return list(self.records.get(name, []))


def delegation(m_server: Any, **headers: list[str]) -> WellKnownResponse:
    return WellKnownResponse(200, json.dumps({"m.server": m_server}).encode(), headers)


def make(
    well_known: dict[str, Any] | None = None,
    srv: dict[str, list[SrvRecord]] | None = None,
    static_map: dict[str, str] | None = None,
) -> tuple[ServerNameResolver, FakeWellKnown, FakeSrv]:
    wk, fake_srv = FakeWellKnown(well_known), FakeSrv(srv)
    resolver = ServerNameResolver(
        WellKnownResolver(wk, clock=Clock()), fake_srv, static_map=static_map, rng=random.Random(1)
    )
    return resolver, wk, fake_srv


def srv(target: str, port: int, priority: int = 10, weight: int = 0) -> SrvRecord:
    return SrvRecord(priority, weight, port, target, ttl=300)


# -- steps 1 and 2: no lookups --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "target", "host_header", "tls"),
    [
        ("1.2.3.4", Target("1.2.3.4", 8448), "1.2.3.4", "1.2.3.4"),
        ("1.2.3.4:1234", Target("1.2.3.4", 1234), "1.2.3.4:1234", "1.2.3.4"),
        ("[2001:db8::1]", Target("2001:db8::1", 8448), "[2001:db8::1]", "2001:db8::1"),
        ("[2001:db8::1]:443", Target("2001:db8::1", 443), "[2001:db8::1]:443", "2001:db8::1"),
        ("example.com:1234", Target("example.com", 1234), "example.com:1234", "example.com"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_ip_literals_and_explicit_ports_need_no_lookup(
    name: str, target: Target, host_header: str, tls: str
) -> None:
    resolver, wk, fake_srv = make(
        well_known={"example.com": delegation("elsewhere.example")},
        srv={"_matrix-fed._tcp.example.com": [srv("srv.example", 1)]},
    )
    resolution = await resolver.resolve(name)
    assert resolution.targets == (target,)
    assert (resolution.host_header, resolution.tls_server_name) == (host_header, tls)
    assert resolution.delegated_to is None
    assert wk.calls == [] and fake_srv.calls == []
    assert resolve_directly(name) == resolution


# -- step 3: .well-known delegation ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("m_server", "target", "host_header", "tls", "step"),
    [
        # 3.1 IP literal, with and without port
        ("5.6.7.8", Target("5.6.7.8", 8448), "5.6.7.8", "5.6.7.8", "well_known_ip_literal"),
        ("5.6.7.8:99", Target("5.6.7.8", 99), "5.6.7.8:99", "5.6.7.8", "well_known_ip_literal"),
        ("[::2]:99", Target("::2", 99), "[::2]:99", "::2", "well_known_ip_literal"),
        # 3.2 hostname with port
        (
            "delegated.example:4321",
            Target("delegated.example", 4321),
            "delegated.example:4321",
            "delegated.example",
            "well_known_explicit_port",
        ),
        # 3.5 hostname, no SRV records
        (
            "delegated.example",
            Target("delegated.example", 8448),
            "delegated.example",
            "delegated.example",
            "well_known_default_port",
        ),
    ],
)
@pytest_twisted.ensureDeferred
async def test_well_known_delegation(
    m_server: str, target: Target, host_header: str, tls: str, step: str
) -> None:
    resolver, wk, fake_srv = make(
        well_known={"example.com": delegation(m_server)},
        # The original hostname's SRV records must not be used once delegated.
        srv={"_matrix-fed._tcp.example.com": [srv("wrong.example", 1)]},
    )
    resolution = await resolver.resolve("example.com")
    assert resolution == Resolution("example.com", (target,), host_header, tls, m_server, step)
    assert wk.calls == ["example.com"]
    if step == "well_known_default_port":
        assert fake_srv.calls == [
            "_matrix-fed._tcp.delegated.example",
            "_matrix._tcp.delegated.example",
        ]
    else:
        assert fake_srv.calls == []


@pytest_twisted.ensureDeferred
async def test_well_known_then_srv() -> None:  # 3.3
    resolver, _, fake_srv = make(
        well_known={"example.com": delegation("delegated.example")},
        srv={
            "_matrix-fed._tcp.delegated.example": [srv("fed.example", 8000)],
            "_matrix._tcp.delegated.example": [srv("old.example", 9000)],
        },
    )
    resolution = await resolver.resolve("example.com")
    assert resolution.targets == (Target("fed.example", 8000),)
    # Host and certificate are the delegated name, not the SRV target.
    assert resolution.host_header == resolution.tls_server_name == "delegated.example"
    assert resolution.step == "well_known_srv"
    assert fake_srv.calls == ["_matrix-fed._tcp.delegated.example"]


@pytest_twisted.ensureDeferred
async def test_well_known_then_deprecated_srv() -> None:  # 3.4
    resolver, _, fake_srv = make(
        well_known={"example.com": delegation("delegated.example")},
        srv={"_matrix._tcp.delegated.example": [srv("old.example", 9000)]},
    )
    resolution = await resolver.resolve("example.com")
    assert resolution.targets == (Target("old.example", 9000),)
    assert resolution.host_header == resolution.tls_server_name == "delegated.example"
    assert resolution.step == "well_known_srv_deprecated"
    assert fake_srv.calls == [
        "_matrix-fed._tcp.delegated.example",
        "_matrix._tcp.delegated.example",
    ]


# -- steps 4-6: no delegation ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_srv_without_well_known() -> None:  # 4
    resolver, wk, _ = make(
        srv={
            "_matrix-fed._tcp.example.com": [srv("fed.example", 8000)],
            "_matrix._tcp.example.com": [srv("old.example", 9000)],
        }
    )
    resolution = await resolver.resolve("example.com")
    assert resolution == Resolution(
        "example.com", (Target("fed.example", 8000),), "example.com", "example.com", None, "srv"
    )
    assert wk.calls == ["example.com"]


@pytest_twisted.ensureDeferred
async def test_deprecated_srv_without_well_known() -> None:  # 5
    resolver, _, _ = make(srv={"_matrix._tcp.example.com": [srv("old.example", 9000)]})
    resolution = await resolver.resolve("example.com")
    assert resolution.targets == (Target("old.example", 9000),)
    assert resolution.host_header == resolution.tls_server_name == "example.com"
    assert resolution.step == "srv_deprecated"


@pytest_twisted.ensureDeferred
async def test_fallback_to_8448() -> None:  # 6
    resolver, _, fake_srv = make()
    resolution = await resolver.resolve("example.com")
    assert resolution == Resolution(
        "example.com", (Target("example.com", 8448),), "example.com", "example.com", None,
        "default_port",
    )  # fmt: skip
    assert fake_srv.calls == ["_matrix-fed._tcp.example.com", "_matrix._tcp.example.com"]


@pytest.mark.parametrize(
    "answer",
    [
        WellKnownResponse(404, b'{"m.server": "delegated.example"}'),
        WellKnownResponse(500, b'{"m.server": "delegated.example"}'),
        WellKnownResponse(200, b"not json"),
        WellKnownResponse(200, b'{"m.server": NaN}'),
        WellKnownResponse(200, b'["m.server"]'),
        WellKnownResponse(200, b"{}"),
        WellKnownResponse(200, b'{"m.server": 5}'),
        WellKnownResponse(200, b'{"m.server": "bad name!"}'),
        WellKnownResponse(200, b'{"m.server": "host:99999999"}'),
        WellKnownResponse(200, b"\xff\xfe"),
        WellKnownFetchError("connection refused"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_invalid_well_known_means_no_delegation(answer: Any) -> None:
    resolver, _, _ = make(well_known={"example.com": answer})
    resolution = await resolver.resolve("example.com")
    assert resolution.delegated_to is None
    assert resolution.targets == (Target("example.com", 8448),)


def test_well_known_body_is_json_whatever_the_content_type() -> None:
    response = WellKnownResponse(
        200, b'{"m.server": "d.example:443"}', {"content-type": ["text/plain"]}
    )
    assert parse_well_known(response) == "d.example:443"


# -- SRV details, errors, static map --------------------------------------------------------------


def test_srv_order_is_by_priority_then_weight() -> None:
    records = [
        srv("c.example", 3, priority=20),
        srv("a.example", 1, priority=10, weight=0),
        srv("b.example", 2, priority=10, weight=100),
    ]
    # Weight 100 vs 0: the weighted one comes first whatever the seed.
    for seed in range(20):
        ordered = order_srv_records(records, random.Random(seed))
        assert ordered == [Target("b.example", 2), Target("a.example", 1), Target("c.example", 3)]
    # Equal weights: both orders happen.
    equal = [srv("x.example", 1, weight=1), srv("y.example", 2, weight=1)]
    firsts = {order_srv_records(equal, random.Random(s))[0].host for s in range(50)}
    assert firsts == {"x.example", "y.example"}


@pytest_twisted.ensureDeferred
async def test_srv_dot_target_means_no_service() -> None:
    resolver, _, _ = make(srv={"_matrix-fed._tcp.example.com": [srv(".", 0)]})
    with pytest.raises(DiscoveryError, match="not available"):
        await resolver.resolve("example.com")


@pytest.mark.parametrize("name", ["", "bad name", "host:port", "[::1", "1.2.3.4:99999999"])
@pytest_twisted.ensureDeferred
async def test_invalid_server_names(name: str) -> None:
    resolver, wk, _ = make()
    with pytest.raises(DiscoveryError, match="invalid server name"):
        await resolver.resolve(name)
    assert wk.calls == []


@pytest_twisted.ensureDeferred
async def test_static_map_overrides_discovery() -> None:
    resolver, wk, fake_srv = make(
        well_known={"hs1.test": delegation("elsewhere.example")},
        static_map={"hs1.test": "127.0.0.1:9999", "hs2.test": "[::1]", "hs3.test": "lan-host"},
    )
    assert await resolver.resolve("hs1.test") == Resolution(
        "hs1.test", (Target("127.0.0.1", 9999),), "hs1.test", "hs1.test", None, "static"
    )
    assert (await resolver.resolve("hs2.test")).targets == (Target("::1", 8448),)
    assert (await resolver.resolve("hs3.test")).targets == (Target("lan-host", 8448),)
    assert wk.calls == [] and fake_srv.calls == []
    # Names not in the map are discovered as usual.
    assert (await resolver.resolve("other.test")).step == "default_port"


# -- .well-known caching ------------------------------------------------------------------------


def test_cache_period_from_headers() -> None:
    now = 1_700_000_000.0
    assert well_known_cache_period({}, now) is None
    assert well_known_cache_period({"cache-control": ["public, max-age=600"]}, now) == 600
    assert well_known_cache_period({"cache-control": ["public", "Max-Age=60"]}, now) == 60
    assert well_known_cache_period({"cache-control": ["max-age=600, no-store"]}, now) == 0
    assert well_known_cache_period({"cache-control": ["max-age=soon"]}, now) is None
    expires = formatdate(now + 1234, usegmt=True)
    assert well_known_cache_period({"expires": [expires]}, now) == pytest.approx(1234, abs=1)
    # max-age wins over Expires; an invalid Expires means already expired.
    assert well_known_cache_period({"cache-control": ["max-age=5"], "expires": [expires]}, now) == 5
    assert well_known_cache_period({"expires": ["0"]}, now) == 0
    assert well_known_cache_period({"expires": [formatdate(now - 50, usegmt=True)]}, now) == 0


class CacheFixture:
    def __init__(self, answer: Any):
        self.clock = Clock()
        self.fetch = FakeWellKnown({"example.com": answer})
        self.resolver = WellKnownResolver(self.fetch, clock=self.clock, rng=random.Random(7))

    async def get_after(self, seconds: float) -> str | None:
        self.clock.now += seconds
        return await self.resolver.get("example.com")

    @property
    def fetches(self) -> int:
        return len(self.fetch.calls)


@pytest_twisted.ensureDeferred
async def test_valid_answer_cached_24h_by_default() -> None:
    c = CacheFixture(delegation("d.example"))
    assert await c.get_after(0) == "d.example"
    assert await c.get_after(WELL_KNOWN_DEFAULT_CACHE_S * 0.89) == "d.example"
    assert c.fetches == 1
    # Jitter is at most 10%: by 110% it has been refetched.
    c.clock.now -= WELL_KNOWN_DEFAULT_CACHE_S * 0.89
    await c.get_after(WELL_KNOWN_DEFAULT_CACHE_S * 1.11)
    assert c.fetches == 2


@pytest.mark.parametrize(
    ("cache_control", "period"),
    [
        ("max-age=3600", 3600),
        ("max-age=604800", WELL_KNOWN_MAX_CACHE_S),  # a week is capped at 48h
        ("max-age=10", WELL_KNOWN_MIN_CACHE_S),  # seconds are raised to 5 minutes
        ("no-store", WELL_KNOWN_MIN_CACHE_S),
    ],
)
@pytest_twisted.ensureDeferred
async def test_valid_answer_cached_per_headers(cache_control: str, period: float) -> None:
    c = CacheFixture(delegation("d.example", **{"cache-control": [cache_control]}))
    await c.get_after(0)
    await c.get_after(period - 1)
    assert c.fetches == 1
    await c.get_after(2)
    assert c.fetches == 2


@pytest_twisted.ensureDeferred
async def test_errors_cached_about_an_hour() -> None:
    c = CacheFixture(WellKnownResponse(404, b""))
    assert await c.get_after(0) is None
    assert await c.get_after(WELL_KNOWN_ERROR_CACHE_S * 0.89) is None
    assert c.fetches == 1
    await c.get_after(WELL_KNOWN_ERROR_CACHE_S * 0.22)
    assert c.fetches == 2


@pytest_twisted.ensureDeferred
async def test_temporary_failure_without_history_cached_an_hour() -> None:
    c = CacheFixture(WellKnownFetchError("timeout"))
    assert await c.get_after(0) is None
    await c.get_after(WELL_KNOWN_ERROR_CACHE_S * 0.89)
    assert c.fetches == 1


@pytest.mark.parametrize("down", [WellKnownFetchError("refused"), WellKnownResponse(503, b"")])
@pytest_twisted.ensureDeferred
async def test_recently_valid_domain_keeps_delegation_through_a_blip(down: Any) -> None:
    c = CacheFixture(delegation("d.example", **{"cache-control": ["max-age=600"]}))
    assert await c.get_after(0) == "d.example"
    # The server stops answering after the entry expired: keep the delegation, retry soon.
    c.fetch.answers["example.com"] = down
    assert await c.get_after(601) == "d.example"
    assert await c.get_after(WELL_KNOWN_DOWN_CACHE_S - 1) == "d.example"
    assert c.fetches == 2
    assert await c.get_after(2) == "d.example"
    assert c.fetches == 3
    # Hours later the memory of the valid answer is gone: no delegation.
    assert await c.get_after(3 * HOUR) is None


@pytest_twisted.ensureDeferred
async def test_recently_valid_domain_that_turns_invalid_is_retried_soon() -> None:
    c = CacheFixture(delegation("d.example", **{"cache-control": ["max-age=600"]}))
    await c.get_after(0)
    c.fetch.answers["example.com"] = WellKnownResponse(404, b"")
    assert await c.get_after(601) is None  # an answer, not a blip: delegation dropped
    await c.get_after(WELL_KNOWN_DOWN_CACHE_S * 1.11)
    assert c.fetches == 3


@pytest_twisted.ensureDeferred
async def test_cache_size_is_bounded() -> None:
    clock = Clock()
    fetch = FakeWellKnown()
    resolver = WellKnownResolver(fetch, clock=clock, max_entries=3)
    for i in range(5):
        await resolver.get(f"h{i}.example")
    assert len(resolver._cache) == 3
    await resolver.get("h4.example")  # newest entries stay cached
    await resolver.get("h0.example")  # the oldest was evicted
    assert fetch.calls[5:] == ["h0.example"]


# -- DNS over twisted.names ------------------------------------------------------------------------


class FakeDns:
    def __init__(self) -> None:
        self.answers: dict[str, Any] = {}
        self.calls: list[str] = []

    def lookupService(self, name: str) -> defer.Deferred[Any]:
        self.calls.append(name)
        answer = self.answers.get(name)
        if isinstance(answer, Exception):
            return defer.fail(answer)
        return defer.succeed((answer or [], [], []))


def srv_rr(name: str, target: str, port: int, ttl: int = 300, priority: int = 10) -> Any:
    payload: Any = dns.Record_SRV(priority=priority, weight=0, port=port, target=target.encode())
    return dns.RRHeader(name=name.encode(), type=dns.SRV, ttl=ttl, payload=payload)


@pytest_twisted.ensureDeferred
async def test_twisted_srv_lookup_parses_and_caches_per_ttl() -> None:
    name = "_matrix-fed._tcp.example.com"
    fake, clock = FakeDns(), Clock()
    fake.answers[name] = [
        srv_rr(name, "a.example", 8000, ttl=100),
        srv_rr(name, "b.example", 8001, ttl=300, priority=20),
        dns.RRHeader(name=name.encode(), type=dns.A, payload=cast(Any, dns.Record_A("1.2.3.4"))),
    ]
    lookup = TwistedSrvLookup(fake, clock=clock)
    records = await lookup(name)
    assert records == [
        SrvRecord(10, 0, 8000, "a.example", 100),
        SrvRecord(20, 0, 8001, "b.example", 300),
    ]
    clock.now += 99
    assert await lookup(name) == records
    assert fake.calls == [name]
    clock.now += 2  # past the smallest TTL
    await lookup(name)
    assert fake.calls == [name, name]


@pytest_twisted.ensureDeferred
async def test_twisted_srv_lookup_errors() -> None:
    fake, clock = FakeDns(), Clock()
    lookup = TwistedSrvLookup(fake, clock=clock)
    fake.answers["_matrix-fed._tcp.nx.example"] = DNSNameError("nxdomain")
    assert await lookup("_matrix-fed._tcp.nx.example") == []
    assert await lookup("_matrix-fed._tcp.empty.example") == []
    fake.answers["_matrix-fed._tcp.broken.example"] = DNSServerError("servfail")
    with pytest.raises(DiscoveryError, match="SRV lookup"):
        await lookup("_matrix-fed._tcp.broken.example")
    # With an earlier answer, a failing server falls back to it.
    name = "_matrix-fed._tcp.example.com"
    fake.answers[name] = [srv_rr(name, "a.example", 8000, ttl=10)]
    first = await lookup(name)
    clock.now += 11
    fake.answers[name] = DNSServerError("servfail")
    assert await lookup(name) == first
    # The root target "." survives as "." (service refused).
    fake.answers["_matrix-fed._tcp.none.example"] = [srv_rr("x", "", 0)]
    assert (await lookup("_matrix-fed._tcp.none.example"))[0].target == "."
