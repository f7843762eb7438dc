"""The federation admin API on both engines: destinations with their backoff, queue depth
and last success; resetting a destination's backoff sends its queue at once; the federation
policy; the server version."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest_twisted
from twisted.internet import reactor, task
from twisted.web import resource, server

from homeserver import tls
from homeserver.config import DatabaseConfig
from tests.support.admin import admin_and_user, call
from tests.support.client import Client, q
from tests.support.databases import fresh_database
from tests.support.server import RunningServer, free_port, start_pair, start_server
from tests.support.sync import create_room

BASE = "/_synapse/admin/v1/federation"


class Peer(resource.Resource):
    """A peer's /send endpoint on real TLS, recording the transactions it accepts."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.transactions: list[dict[str, Any]] = []

    def render_PUT(self, request: server.Request) -> bytes:
        assert request.content is not None
        self.transactions.append(json.loads(request.content.read()))
        return b'{"pdus": {}}'


async def _until(hs: RunningServer, path: str, token: str, check: Any) -> dict[str, Any]:
    for _ in range(200):
        status, body = await call(hs, "GET", path, token)
        if status == 200 and check(body):
            return dict(body)
        await task.deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"{path}: condition not met; last answer {status} {body}")


@pytest_twisted.ensureDeferred
async def test_destinations_and_reset_connection(db_config: DatabaseConfig,
                                                 tmp_path: Any) -> None:
    port = free_port("127.0.0.1")
    hs = await start_server(str(tmp_path), db_config, federation={
        "static_servers": {"peer.test": f"127.0.0.1:{port}"},
        "blocked_servers": ["*.evil.test"],
    })
    listening = None
    try:
        admin, alice = await admin_and_user(hs)
        tok = admin.access_token
        # Alice writes to a user on a server that is down: the EDU waits and backs off.
        r = await call(hs, "PUT", "/_matrix/client/v3/sendToDevice/m.test/t1",
                       alice.access_token, {"messages": {"@bob:peer.test": {"*": {"a": 1}}}})
        assert r[0] == 200
        body = await _until(hs, f"{BASE}/destinations/peer.test", tok,
                            lambda b: b["retry_interval"] > 0)
        assert body["queued_edus"] == 1 and body["failure_ts"] is not None
        assert body["last_successful_ts"] is None
        status, listing = await call(hs, "GET", f"{BASE}/destinations", tok)
        assert [d["destination"] for d in listing["destinations"]] == ["peer.test"]
        assert listing["total"] == 1

        # The peer comes back; its backoff would last 10 s more, a reset sends at once.
        peer = Peer()
        cert, key = os.path.join(tmp_path, "peer.crt"), os.path.join(tmp_path, "peer.key")
        tls.ensure_certificate(cert, key, "peer.test")
        listening = reactor.listenSSL(  # type: ignore[attr-defined]
            port, server.Site(peer), tls.server_context(cert, key), interface="127.0.0.1")
        status, body = await call(hs, "POST", f"{BASE}/destinations/peer.test/reset_connection",
                                  tok)
        assert (status, body) == (200, {})
        body = await _until(hs, f"{BASE}/destinations/peer.test", tok,
                            lambda b: b["queued_edus"] == 0)
        assert body["retry_interval"] == 0 and body["failure_ts"] is None
        assert body["last_successful_ts"] is not None
        edus = [e for t in peer.transactions for e in t["edus"]]
        assert [e["edu_type"] for e in edus] == ["m.direct_to_device"]

        status, body = await call(hs, "GET", f"{BASE}/destinations/peer.test/rooms", tok)
        assert (status, body) == (200, {"rooms": [], "total": 0})
        for method, path, code, errcode in (
            ("GET", f"{BASE}/destinations/unknown.test/rooms", 404, "M_NOT_FOUND"),
            ("GET", f"{BASE}/destinations/unknown.test", 404, "M_NOT_FOUND"),
            ("POST", f"{BASE}/destinations/unknown.test/reset_connection", 404, "M_NOT_FOUND"),
            ("GET", f"{BASE}/destinations/bad%20name", 400, "M_INVALID_PARAM"),
            ("GET", f"{BASE}/destinations?order_by=nope", 400, "M_INVALID_PARAM"),
            ("GET", f"{BASE}/policy?server=bad%20name", 400, "M_INVALID_PARAM"),
        ):
            status, body = await call(hs, method, path, tok)
            assert (status, body["errcode"]) == (code, errcode), path

        status, body = await call(hs, "GET", f"{BASE}/policy", tok)
        assert body == {"mode": "deny_list", "allowed_servers": None,
                        "blocked_servers": ["*.evil.test"]}
        status, body = await call(hs, "GET", f"{BASE}/policy?server=www.evil.test", tok)
        assert body["allowed"] is False
        status, body = await call(hs, "GET", f"{BASE}/policy?server=peer.test", tok)
        assert body["allowed"] is True

        status, body = await call(hs, "GET", "/_synapse/admin/v1/server_version", tok)
        assert status == 200 and isinstance(body["server_version"], str)
    finally:
        if listening is not None:
            await listening.stopListening()
        await hs.stop()


@pytest_twisted.ensureDeferred
async def test_blocked_room_refuses_remote_joins(engine: str, tmp_path: Any) -> None:
    with fresh_database(engine, str(tmp_path / "dba")) as db_a, \
            fresh_database(engine, str(tmp_path / "dbb")) as db_b:
        a, b = await start_pair(str(tmp_path), db_a, db_b)
        try:
            admin, alice = await admin_and_user(a)
            bob = await Client(b.client_url).register("bob")
            room = await create_room(Client(a.client_url), alice, preset="public_chat")
            block = f"/_synapse/admin/v1/rooms/{q(room)}/block"
            assert await call(a, "PUT", block, admin.access_token, {"block": True}) == (
                200, {"block": True})
            join = f"/_matrix/client/v3/join/{q(room)}?server_name=a.test"
            status, body = await call(b, "POST", join, bob.access_token)
            assert status >= 400, body
            members = await a.hs.services.admin.rooms.members(room)
            assert members == [alice.user_id]
            # Unblocked, the same join works: the block was the reason.
            await call(a, "PUT", block, admin.access_token, {"block": False})
            status, body = await call(b, "POST", join, bob.access_token)
            assert status == 200, body
            assert bob.user_id in await a.hs.services.admin.rooms.members(room)
        finally:
            await b.stop()
            await a.stop()
