"""Resource bounds and rate limits under load (issue #13; every bound is in docs/limits.md).

- Requests in flight per access token (``limits.max_concurrent_requests_per_client``): past it,
  429 ``M_LIMIT_EXCEEDED`` with ``retry_after_ms``; other clients unaffected; a slot is given
  back when a request ends, also when its client hangs up.
- Requests in flight per federation destination
  (``federation.max_concurrent_requests_per_destination``): more wait, never more run.
- Cache sizes (``limits.caches``): scaled by ``global_factor`` or set by name.
- A device's to-device inbox (``limits.max_to_device_messages_per_device``): the newest kept.
- Rate limits on login, failed logins, registration and sending hit all at once by many
  concurrent requests: 429 with ``retry_after_ms`` and ``Retry-After``, never a 500, and no
  more requests let through than the bucket holds.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.internet.protocol import Factory, Protocol

from homeserver import tls
from homeserver.config import DatabaseConfig
from tests.support.client import Client, User, q
from tests.support.http import Response
from tests.support.server import RunningServer, free_port, start_server

RATE_LIMITS = {
    "enabled": True,
    "login_per_address": {"per_second": 0.1, "burst": 5},
    "login_failures_per_account": {"per_second": 0.1, "burst": 3},
    "registration_per_address": {"per_second": 0.1, "burst": 4},
    "messages_per_user": {"per_second": 0.1, "burst": 10},
}


async def _start(db: DatabaseConfig, tmp: Any, **overrides: Any) -> RunningServer:
    return await start_server(str(tmp), db, **overrides)


def _limited(r: Response) -> bool:
    if r.status != 429:
        return False
    body = r.json()
    assert body["errcode"] == "M_LIMIT_EXCEEDED", body
    assert isinstance(body["retry_after_ms"], int) and body["retry_after_ms"] > 0, body
    assert r.header("Retry-After") is not None
    return True


async def _all(calls: list[Any]) -> list[Response]:
    return list(await defer.gatherResults([defer.ensureDeferred(c) for c in calls],
                                          consumeErrors=True))


@pytest_twisted.ensureDeferred
async def test_concurrent_requests_per_client(db_config: DatabaseConfig, tmp_path: Any) -> None:
    hs = await _start(db_config, tmp_path, limits={"max_concurrent_requests_per_client": 3})
    try:
        c = Client(hs.client_url)
        alice, bob = await c.register("alice"), await c.register("bob")
        first = (await c.call("GET", "/sync?timeout=0", token=alice.access_token)).json()
        since = first["next_batch"]
        # Three long polls hold alice's three slots.
        polls = [defer.ensureDeferred(c.call("GET", f"/sync?since={since}&timeout=2000",
                                             token=alice.access_token)) for _ in range(3)]
        await task.deferLater(reactor, 0.3, lambda: None)
        r = await c.call("GET", "/account/whoami", token=alice.access_token)
        assert _limited(r)
        # Someone else is not held up by alice.
        r = await c.call("GET", "/account/whoami", token=bob.access_token)
        assert r.status == 200
        assert [p.status for p in await defer.gatherResults(polls)] == [200, 200, 200]
        # The slots came back.
        r = await c.call("GET", "/account/whoami", token=alice.access_token)
        assert r.status == 200

        # A client that hangs up gives its slot back too.
        from twisted.web.client import Agent
        from twisted.web.http_headers import Headers

        hung = [Agent(reactor).request(
            b"GET", f"{hs.client_url}/_matrix/client/v3/sync?since={since}&timeout=30000"
            .encode(), Headers({"Authorization": [f"Bearer {alice.access_token}"]}))
            for _ in range(3)]
        await task.deferLater(reactor, 0.3, lambda: None)
        assert _limited(await c.call("GET", "/account/whoami", token=alice.access_token))
        for d in hung:
            d.cancel()
        await defer.DeferredList(hung, consumeErrors=True)
        await task.deferLater(reactor, 0.3, lambda: None)
        assert (await c.call("GET", "/account/whoami", token=alice.access_token)).status == 200
    finally:
        await hs.stop()


class _Silent(Protocol):
    """A peer that accepts requests and never answers."""

    def connectionMade(self) -> None:
        self.factory.open += 1  # type: ignore[attr-defined]
        self.factory.peak = max(self.factory.peak, self.factory.open)  # type: ignore[attr-defined]

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.open -= 1  # type: ignore[attr-defined]


@pytest_twisted.ensureDeferred
async def test_federation_requests_in_flight_per_destination(
    db_config: DatabaseConfig, tmp_path: Any,
) -> None:
    cert, key = str(tmp_path / "peer.crt"), str(tmp_path / "peer.key")
    tls.ensure_certificate(cert, key, "slow.test")
    factory = Factory.forProtocol(_Silent)
    factory.open = 0  # type: ignore[attr-defined]
    factory.peak = 0  # type: ignore[attr-defined]
    port = free_port("127.0.0.1")
    listening = reactor.listenSSL(  # type: ignore[attr-defined]
        port, factory, tls.server_context(cert, key), interface="127.0.0.1")
    hs = await _start(db_config, tmp_path, federation={
        "static_servers": {"slow.test": f"127.0.0.1:{port}"},
        "request_timeout_seconds": 1, "max_concurrent_requests_per_destination": 2})
    try:
        assert hs.hs.services is not None
        client = hs.hs.services.federation_client
        peak = 0

        async def one(i: int) -> str:
            try:
                await client.get_json("slow.test", f"/_matrix/federation/v1/event/%24e{i}")
            except Exception as e:
                return type(e).__name__
            return "answered"

        calls = [defer.ensureDeferred(one(i)) for i in range(6)]
        started = time.monotonic()
        while not all(c.called for c in calls):
            peak = max(peak, client.in_flight("slow.test"))
            assert time.monotonic() - started < 10
            await task.deferLater(reactor, 0.05, lambda: None)
        results = [c.result for c in calls]
        # Six requests, two at a time, each cut off after a second: about three seconds.
        assert results == ["RequestTimedOut"] * 6
        # (The peer may see one more: a connection we cut off can close on its side just
        # after the next one opened.)
        assert peak == 2 and factory.peak <= 3  # type: ignore[attr-defined]
        assert time.monotonic() - started >= 2.5
        assert client.in_flight("slow.test") == 0
    finally:
        await hs.stop()
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_cache_sizes_are_configurable(db_config: DatabaseConfig, tmp_path: Any) -> None:
    hs = await _start(db_config, tmp_path, limits={
        "caches": {"global_factor": 0.5, "sizes": {"events": 123}}})
    try:
        s = hs.hs.services
        assert s is not None
        assert s.events._events.max_size == 123  # set by name
        assert s.pipeline._heads.max_size == 10_000  # 20,000 by default, halved
    finally:
        await hs.stop()
    # Back to the defaults for whatever runs next in this process.
    hs = await _start(db_config, tmp_path / "again")
    try:
        assert hs.hs.services is not None
        assert hs.hs.services.events._events.max_size == 50_000
    finally:
        await hs.stop()


@pytest_twisted.ensureDeferred
async def test_to_device_inbox_is_bounded(db_config: DatabaseConfig, tmp_path: Any) -> None:
    hs = await _start(db_config, tmp_path, limits={"max_to_device_messages_per_device": 100})
    try:
        c = Client(hs.client_url)
        alice, bob = await c.register("alice"), await c.register("bob")
        since = (await c.call("GET", "/sync?timeout=0", token=bob.access_token)).json()[
            "next_batch"]
        for i in range(130):
            r = await c.call("PUT", f"/sendToDevice/m.test/t{i}", {
                "messages": {bob.user_id: {bob.device_id: {"n": i}}}}, alice.access_token)
            assert r.status == 200, r.body
        got: list[int] = []
        for _ in range(5):
            r = await c.call("GET", f"/sync?timeout=0&since={since}", token=bob.access_token)
            body = r.json()
            events = body.get("to_device", {}).get("events", [])
            if not events:
                break
            got += [e["content"]["n"] for e in events]
            since = body["next_batch"]
        # The newest 100 are kept, in order; the 30 oldest made room for them.
        assert got == list(range(30, 130))
    finally:
        await hs.stop()


@pytest_twisted.ensureDeferred
async def test_rate_limits_under_concurrent_load(db_config: DatabaseConfig,
                                                 tmp_path: Any) -> None:
    hs = await _start(db_config, tmp_path, rate_limiting=RATE_LIMITS)
    try:
        c = Client(hs.client_url)
        # Registration: 12 at once from one address, at most the burst get through.
        regs = await _all([c.call("POST", "/register", {
            "username": f"u{i}", "password": "a-good-password",
            "auth": {"type": "m.login.dummy"}}) for i in range(12)])
        assert all(r.status in (200, 429) for r in regs), [r.status for r in regs]
        ok = [r for r in regs if r.status == 200]
        assert 1 <= len(ok) <= 4 and all(_limited(r) for r in regs if r.status == 429)
        body = ok[0].json()
        user = User(body["user_id"], body["access_token"], body["device_id"],
                    "a-good-password")
        localpart = user.user_id.split(":")[0][1:]

        # Failed logins for one account, all at once: 403 up to the burst, then 429.
        fails = await _all([c.login(localpart, f"wrong-{i}") for i in range(10)])
        statuses = [r.status for r in fails]
        assert set(statuses) <= {403, 429} and 0 < statuses.count(403) <= 3, statuses
        assert all(_limited(r) for r in fails if r.status == 429)

        # Sending: 30 at once by one user; the bucket holds 10.
        r = await c.call("POST", "/createRoom", {}, user.access_token)
        assert r.status == 200, r.body
        room = r.json()["room_id"]
        sends = await _all([c.call("PUT", f"/rooms/{q(room)}/send/m.room.message/t{i}",
                                   {"msgtype": "m.text", "body": str(i)}, user.access_token)
                            for i in range(30)])
        statuses = [r.status for r in sends]
        assert set(statuses) <= {200, 429}, statuses
        assert 1 <= statuses.count(200) <= 11, statuses
        assert all(_limited(r) for r in sends if r.status == 429)
        # The address's login bucket was drained by the failures above: a correct password
        # is throttled too, with a wait that says when to come back.
        r = await c.login(localpart, "a-good-password")
        assert r.status == 200 or _limited(r)
    finally:
        await hs.stop()


def test_limits_are_documented() -> None:
    """docs/limits.md names every configurable bound with its config key."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, "docs", "limits.md"), encoding="utf-8") as f:
        doc = f.read()
    for key in ("limits.max_json_body_bytes", "limits.max_concurrent_requests_per_client",
                "limits.caches.global_factor", "limits.caches.sizes",
                "limits.max_to_device_messages_per_device",
                "federation.request_timeout_seconds", "federation.max_response_bytes",
                "federation.max_concurrent_requests_per_destination",
                "database.connect_timeout", "database.pool_max",
                "media.max_upload_bytes", "rate_limiting.messages_per_user"):
        assert f"`{key}`" in doc, key
