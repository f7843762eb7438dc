"""The outbound federation queue against a real TLS peer on loopback: batching limits,
order, backoff while the peer is down, nothing lost across a restart."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest_twisted
from twisted.internet import reactor, task
from twisted.web import resource, server

from homeserver import tls
from homeserver.config import DatabaseConfig
from homeserver.storage.federation_queue import FederationQueueStore
from tests.support.server import RunningServer, free_port, start_server


class Peer(resource.Resource):
    """A peer's /send endpoint that records transactions (or fails, when told to)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.transactions: list[dict[str, Any]] = []
        self.fail_with: int | None = None

    def render_PUT(self, request: server.Request) -> bytes:
        assert request.path.startswith(b"/_matrix/federation/v1/send/")
        assert request.getHeader("Authorization", ).startswith("X-Matrix ")  # type: ignore[union-attr]
        if self.fail_with is not None:
            request.setResponseCode(self.fail_with)
            return b'{"errcode": "M_UNKNOWN", "error": "down"}'
        assert request.content is not None
        self.transactions.append(json.loads(request.content.read()))
        return json.dumps({"pdus": {}}).encode()


def _listen_peer(tmp: str, port: int, peer: Peer) -> Any:
    cert, key = os.path.join(tmp, "peer.crt"), os.path.join(tmp, "peer.key")
    tls.ensure_certificate(cert, key, "peer.test")
    return reactor.listenSSL(port, server.Site(peer), tls.server_context(cert, key),  # type: ignore[attr-defined]
                             interface="127.0.0.1")


async def _start(tmp: str, db: DatabaseConfig, peer_port: int) -> RunningServer:
    return await start_server(tmp, db, federation={
        "static_servers": {"peer.test": f"127.0.0.1:{peer_port}"}})


async def _until(predicate: Any, timeout: float = 10.0) -> None:
    waited = 0.0
    while not predicate():
        if waited > timeout:
            raise AssertionError("condition not met in time")
        await task.deferLater(reactor, 0.05, lambda: None)
        waited += 0.05


@pytest_twisted.ensureDeferred
async def test_batches_in_order(db_config: DatabaseConfig, tmp_path: Any) -> None:
    peer = Peer()
    port = free_port("127.0.0.1")
    listening = _listen_peer(str(tmp_path), port, peer)
    hs = await _start(str(tmp_path), db_config, port)
    try:
        assert hs.hs.services is not None
        sender = hs.hs.services.federation_sender
        # Queue everything before the first send goes out, so batching shows.
        store = sender.store
        items = [("peer.test", "edu", {"edu_type": "m.typing", "content": {"n": i}})
                 for i in range(120)]
        items += [("peer.test", "pdu", {"event_id": f"$e{i}", "n": i}) for i in range(60)]
        await store.enqueue(items, 0)
        sender.wake("peer.test")
        await _until(lambda: sum(len(t["edus"]) for t in peer.transactions) == 120
                     and sum(len(t["pdus"]) for t in peer.transactions) == 60)
        assert all(len(t["pdus"]) <= 50 and len(t["edus"]) <= 100 for t in peer.transactions)
        edus = [e["content"]["n"] for t in peer.transactions for e in t["edus"]]
        pdus = [p["n"] for t in peer.transactions for p in t["pdus"]]
        assert edus == list(range(120)) and pdus == list(range(60))
        assert all(t["origin"] == "test.local" for t in peer.transactions)
        assert await store.pending("peer.test", 50, 100) == []
        # Our own name is never a destination.
        await sender.send_pdu({"test.local"}, {"event_id": "$self"})
        assert await store.destinations_with_pending() == []
    finally:
        await hs.stop()
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_peer_outage_backoff_and_restart(db_config: DatabaseConfig, tmp_path: Any) -> None:
    peer = Peer()
    peer.fail_with = 503
    port = free_port("127.0.0.1")
    listening = _listen_peer(str(tmp_path), port, peer)
    hs = await _start(str(tmp_path), db_config, port)
    try:
        assert hs.hs.services is not None
        sender = hs.hs.services.federation_sender
        for i in range(3):
            await sender.send_pdu({"peer.test", "other.test"}, {"event_id": f"$p{i}", "n": i})
        await _until(lambda: bool(sender._timers.get("peer.test")))
        backoff = await sender.store.get_backoff("peer.test")
        assert backoff is not None and backoff.retry_interval_ms >= 10_000
        assert peer.transactions == []
    finally:
        await hs.stop()
    # Restart on the same database: the queue is still there.
    peer.fail_with = None
    hs = await _start(str(tmp_path), db_config, port)
    try:
        assert hs.hs.services is not None
        sender = hs.hs.services.federation_sender
        store = FederationQueueStore(hs.hs.services.db)
        assert "peer.test" in await store.destinations_with_pending()
        # Still backing off after the restart: nothing sent yet.
        await task.deferLater(reactor, 0.3, lambda: None)
        assert peer.transactions == []
        # The peer contacts us: backoff reset, queue flushed in order.
        await sender.peer_is_back("peer.test")
        await _until(lambda: sum(len(t["pdus"]) for t in peer.transactions) == 3)
        assert [p["n"] for t in peer.transactions for p in t["pdus"]] == [0, 1, 2]
        assert await store.get_backoff("peer.test") is None
        # other.test never answered (nothing listens there): it keeps its own queue.
        assert "other.test" in await store.destinations_with_pending()
    finally:
        await hs.stop()
        await listening.stopListening()
