"""Peers that are down, slow or hostile cannot stall the server (issue #13).

Raw TLS servers started here play the bad peers, each under its own server name: one that
accepts and never answers, one that dribbles its headers a byte at a time (slowloris), one
whose body never ends, one that answers invalid JSON, one whose response is far larger than
``federation.max_response_bytes``, one that speaks no HTTP at all, and one where nothing
listens. A well-behaved peer gets the same transactions. The bounds under test:
``federation.request_timeout_seconds`` (the whole exchange) and
``federation.max_response_bytes`` (the body); one sending loop per destination.

A peer that was down and comes back gets its queue in order once its backoff runs out, and
the backoff is cleared. (The queue surviving a restart of the sender, and the backoff reset
when a peer contacts us, are in test_federation_sender.py; a stopped real server catching up
in order is in test_federation_rooms.py.)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.protocol import Factory, Protocol
from twisted.web import resource, server

from homeserver import tls
from homeserver.config import DatabaseConfig
from tests.support.http import request
from tests.support.server import free_port, start_server

TIMEOUT_S = 2
MAX_RESPONSE = 65536


class Hostile(Protocol):
    """Reads the request, then misbehaves as its factory's ``mode`` says."""

    def connectionMade(self) -> None:
        factory: HostileFactory = self.factory  # type: ignore[assignment]
        self.f = factory
        self.started = False
        self.calls: list[Any] = []
        self.made = time.monotonic()
        factory.connections += 1

    def dataReceived(self, data: bytes) -> None:
        if self.started:
            return
        self.started = True
        mode = self.f.mode
        if mode == "silent":
            return
        if mode == "not_http":
            self.transport.write(os.urandom(4096))  # type: ignore[union-attr]
            return
        if mode == "slowloris":
            self._drip(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Slow: ")
            return
        if mode == "garbage":
            body = b'{"pdus": {"$x": not json'
            self._write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            return
        if mode == "huge":
            self._write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 1073741824\r\n\r\n" + b"[" * 1)
            self._flood()
            return
        if mode == "endless":
            self._write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        b"Transfer-Encoding: chunked\r\n\r\n")
            self._trickle()
            return
        raise AssertionError(mode)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and self.connected:
            self.transport.write(data)
            self.f.sent += len(data)

    def _later(self, delay: float, fn: Callable[[], None]) -> None:
        self.calls.append(reactor.callLater(delay, fn))  # type: ignore[attr-defined]

    def _drip(self, rest: bytes) -> None:
        if not rest or not self.connected:
            return
        self._write(rest[:1])
        self._later(0.2, lambda: self._drip(rest[1:] or b"a"))

    def _flood(self) -> None:
        if self.connected:
            self._write(b"1," * 32768)
            self._later(0.01, self._flood)

    def _trickle(self) -> None:
        if self.connected:
            self._write(b"1\r\n \r\n")
            self._later(0.1, self._trickle)

    def connectionLost(self, reason: Any = None) -> None:
        self.f.closed += 1
        self.f.lifetimes.append(time.monotonic() - self.made)
        for call in self.calls:
            if call.active():
                call.cancel()


class HostileFactory(Factory):
    protocol = Hostile

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.connections = 0
        self.closed = 0
        self.sent = 0
        self.lifetimes: list[float] = []


class GoodPeer(resource.Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.pdus: list[int] = []
        self.at: list[float] = []

    def render_PUT(self, request: server.Request) -> bytes:
        assert request.content is not None
        body = json.loads(request.content.read())
        self.pdus += [p["n"] for p in body["pdus"]]
        self.at.append(time.monotonic())
        return b'{"pdus": {}}'


async def _until(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, what
        await task.deferLater(reactor, 0.05, lambda: None)


HOSTILE = ("silent", "slowloris", "endless", "garbage", "huge", "not_http")


@pytest_twisted.ensureDeferred
async def test_bad_peers_cannot_stall_the_server(db_config: DatabaseConfig,
                                                 tmp_path: Any) -> None:
    cert, key = str(tmp_path / "peer.crt"), str(tmp_path / "peer.key")
    tls.ensure_certificate(cert, key, "peer.test")
    context = tls.server_context(cert, key)
    listening = []
    static: dict[str, str] = {}
    factories: dict[str, HostileFactory] = {}
    for mode in HOSTILE:
        port = free_port("127.0.0.1")
        factories[mode] = HostileFactory(mode)
        listening.append(reactor.listenSSL(  # type: ignore[attr-defined]
            port, factories[mode], context, interface="127.0.0.1"))
        static[f"{mode}.test"] = f"127.0.0.1:{port}"
    static["down.test"] = f"127.0.0.1:{free_port('127.0.0.1')}"  # nothing listens
    good = GoodPeer()
    good_port = free_port("127.0.0.1")
    listening.append(reactor.listenSSL(  # type: ignore[attr-defined]
        good_port, server.Site(good), context, interface="127.0.0.1"))
    static["good.test"] = f"127.0.0.1:{good_port}"

    hs = await start_server(str(tmp_path), db_config, federation={
        "static_servers": static, "request_timeout_seconds": TIMEOUT_S,
        "max_response_bytes": MAX_RESPONSE})
    try:
        assert hs.hs.services is not None
        sender = hs.hs.services.federation_sender
        store = sender.store
        bad = {f"{m}.test" for m in HOSTILE} | {"down.test"}
        start = time.monotonic()
        for n in range(3):
            await sender.send_pdu(bad | {"good.test"}, {"event_id": f"$e{n}", "n": n})

        # The good peer gets everything, in order, long before the bad ones time out.
        async def delivered() -> bool:
            return good.pdus == [0, 1, 2]

        await _until(delivered, TIMEOUT_S, "the good peer waited for the bad ones")
        # The client API answers meanwhile.
        t0 = time.monotonic()
        r = await request("GET", f"{hs.client_url}/_matrix/client/versions")
        assert r.status == 200 and time.monotonic() - t0 < 1.0

        # Every bad peer is given up on within the timeout and backed off; its queue is kept.
        async def all_backed_off() -> bool:
            return all([await store.get_backoff(d) is not None for d in sorted(bad)])

        await _until(all_backed_off, TIMEOUT_S + 3, "a bad peer stalled its sender")
        elapsed = time.monotonic() - start
        assert elapsed < TIMEOUT_S + 3
        for d in sorted(bad):
            pending = await store.pending(d, 50, 100)
            assert [i.payload["n"] for i in pending] == [0, 1, 2], d
        # Each connection to a peer that never finished was dropped by us (timeout or size
        # bound), and the huge one was cut off near the size bound, not read to its end.
        for mode in ("silent", "slowloris", "endless", "huge"):
            f = factories[mode]
            assert f.connections >= 1 and f.closed == f.connections, mode
        # The huge one is cut off by the size bound, long before the timeout.
        assert min(factories["huge"].lifetimes) < TIMEOUT_S / 2
        assert factories["huge"].sent < 64 * MAX_RESPONSE
        assert await store.pending("good.test", 50, 100) == []
        assert await store.get_backoff("good.test") is None

        # More for the good peer while the bad ones back off: sent at once.
        await sender.send_pdu(bad | {"good.test"}, {"event_id": "$e3", "n": 3})
        await _until(lambda: _true(good.pdus == [0, 1, 2, 3]), 2.0, "the good peer stalled")

        # The peer that was down comes back (without contacting us): when its backoff
        # (10 s) runs out, everything is delivered in order and the backoff is cleared.
        back = GoodPeer()
        down_port = int(static["down.test"].rsplit(":", 1)[1])
        listening.append(reactor.listenSSL(  # type: ignore[attr-defined]
            down_port, server.Site(back), context, interface="127.0.0.1"))
        await _until(lambda: _true(back.pdus == [0, 1, 2, 3]), 15.0,
                     "delivery did not resume after the backoff")
        assert back.at[0] - start >= 9.0  # it waited out its backoff

        async def cleared() -> bool:
            return await store.get_backoff("down.test") is None

        await _until(cleared, 2.0, "the backoff was not reset")
        assert await store.pending("down.test", 50, 100) == []
    finally:
        await hs.stop()
        for lst in listening:
            await lst.stopListening()


async def _true(value: bool) -> bool:
    return value
