"""A real application service for tests: a small twisted.web server on a free loopback port
that checks the homeserver's ``hs_token``, records every transaction (retries included),
answers user and alias queries through a callback, third-party lookups and pings."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import yaml
from twisted.internet import defer, reactor, task
from twisted.web import resource, server

JsonDict = dict[str, Any]
Query = Callable[[str], Awaitable[bool]]


@dataclass
class Registration:
    id: str
    as_token: str
    hs_token: str
    sender_localpart: str
    users: list[tuple[str, bool]]  # (regex, exclusive)
    aliases: list[tuple[str, bool]] = field(default_factory=list)
    rooms: list[tuple[str, bool]] = field(default_factory=list)
    protocols: list[str] = field(default_factory=list)
    receive_ephemeral: bool = False
    rate_limited: bool = False
    extra: JsonDict = field(default_factory=dict)  # more keys for the YAML file

    @staticmethod
    def make(as_id: str, prefix: str, server_name: str, **kw: Any) -> Registration:
        return Registration(
            id=as_id, as_token=secrets.token_hex(16), hs_token=secrets.token_hex(16),
            sender_localpart=f"{prefix}bot",
            users=[(rf"@{prefix}_.*:{server_name.replace('.', chr(92) + '.')}$", True)], **kw,
        )

    def to_yaml(self, url: str | None) -> str:
        def ns(items: list[tuple[str, bool]]) -> list[JsonDict]:
            return [{"regex": r, "exclusive": e} for r, e in items]

        return yaml.safe_dump({
            "id": self.id, "url": url, "as_token": self.as_token, "hs_token": self.hs_token,
            "sender_localpart": self.sender_localpart, "rate_limited": self.rate_limited,
            "receive_ephemeral": self.receive_ephemeral, "protocols": self.protocols,
            "namespaces": {"users": ns(self.users), "aliases": ns(self.aliases),
                           "rooms": ns(self.rooms)},
            **self.extra,
        })


class _Handler(resource.Resource):
    isLeaf = True

    def __init__(self, app: FakeAppService) -> None:
        super().__init__()
        self.app = app

    def render(self, request: server.Request) -> Any:
        d = defer.ensureDeferred(self.app.handle(request))

        def done(result: tuple[int, Any]) -> None:
            status, body = result
            request.setResponseCode(status)
            request.setHeader(b"Content-Type", b"application/json")
            request.write(json.dumps(body).encode())
            request.finish()

        d.addCallback(done)
        d.addErrback(lambda f: (request.setResponseCode(500), request.finish()))
        return server.NOT_DONE_YET


class FakeAppService:
    def __init__(self, reg: Registration) -> None:
        self.reg = reg
        self.port: Any = None
        # Every PUT as received, retries included: (txn_id, body).
        self.received: list[tuple[str, JsonDict]] = []
        # Transactions processed once each, in arrival order (the spec's dedup by txn ID).
        self.transactions: dict[str, JsonDict] = {}
        self.fail_with: int | None = None  # answer transactions with this status instead
        self.on_user_query: Query | None = None
        self.on_alias_query: Query | None = None
        self.user_queries: list[str] = []
        self.alias_queries: list[str] = []
        self.pings: list[JsonDict] = []
        self.thirdparty_requests: list[str] = []
        self.scheme = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port.getHost().port}"

    def start(self, port: int = 0, tls_dir: str | None = None) -> None:
        """Listen on loopback; over TLS with a self-signed certificate made in ``tls_dir``."""
        site = server.Site(_Handler(self))
        if tls_dir is None:
            self.port = reactor.listenTCP(port, site, interface="127.0.0.1")
            return
        from homeserver import tls

        cert, key = f"{tls_dir}/as.crt", f"{tls_dir}/as.key"
        tls.ensure_certificate(cert, key, "127.0.0.1")
        self.scheme = "https"
        self.port = reactor.listenSSL(port, site, tls.server_context(cert, key),
                                      interface="127.0.0.1")

    async def stop(self) -> None:
        if self.port is not None:
            await self.port.stopListening()
            self.port = None

    # -- what arrived ------------------------------------------------------------------------
    def events(self) -> list[JsonDict]:
        return [e for body in self.transactions.values() for e in body.get("events", [])]

    def ephemeral(self) -> list[JsonDict]:
        return [e for body in self.transactions.values() for e in body.get("ephemeral", [])]

    def to_device(self) -> list[JsonDict]:
        return [e for body in self.transactions.values() for e in body.get("to_device", [])]

    async def wait_for(self, check: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; transactions: {self.transactions}")
            await task.deferLater(reactor, 0.02, lambda: None)

    # -- the API -------------------------------------------------------------------------------
    async def handle(self, request: server.Request) -> tuple[int, Any]:
        auth = request.getHeader(b"authorization")
        if auth != f"Bearer {self.reg.hs_token}".encode():
            return 403, {"errcode": "M_FORBIDDEN", "error": "bad hs_token"}
        method = request.method.decode()
        path = request.path.decode()
        raw = request.content.read() if request.content else b""
        body = json.loads(raw) if raw else None
        prefix = "/_matrix/app/v1"
        if not path.startswith(prefix):
            return 404, {"errcode": "M_UNRECOGNIZED"}
        rest = path[len(prefix):]
        if method == "PUT" and rest.startswith("/transactions/"):
            txn_id = unquote(rest[len("/transactions/"):])
            self.received.append((txn_id, body))
            if self.fail_with is not None:
                return self.fail_with, {"errcode": "M_UNKNOWN", "error": "down for the test"}
            if txn_id in self.transactions:
                assert self.transactions[txn_id] == body, "a retry changed the transaction"
            else:
                self.transactions[txn_id] = body
            return 200, {}
        if method == "GET" and rest.startswith("/users/"):
            user_id = unquote(rest[len("/users/"):])
            self.user_queries.append(user_id)
            ok = self.on_user_query is not None and await self.on_user_query(user_id)
            return (200, {}) if ok else (404, {"errcode": "M_NOT_FOUND"})
        if method == "GET" and rest.startswith("/rooms/"):
            alias = unquote(rest[len("/rooms/"):])
            self.alias_queries.append(alias)
            ok = self.on_alias_query is not None and await self.on_alias_query(alias)
            return (200, {}) if ok else (404, {"errcode": "M_NOT_FOUND"})
        if method == "POST" and rest == "/ping":
            self.pings.append(body or {})
            return 200, {}
        if method == "GET" and rest.startswith("/thirdparty/"):
            self.thirdparty_requests.append(request.uri.decode())
            return self._thirdparty(rest[len("/thirdparty/"):], request.args)
        return 404, {"errcode": "M_UNRECOGNIZED"}

    def _thirdparty(self, rest: str, args: dict[bytes, list[bytes]]) -> tuple[int, Any]:
        fields = {k.decode(): v[0].decode() for k, v in args.items()}
        kind, _, protocol = rest.partition("/")
        if kind == "protocol" and protocol in self.reg.protocols:
            return 200, {
                "user_fields": ["username"], "location_fields": ["channel"],
                "icon": "mxc://example.org/icon", "field_types": {
                    "username": {"regexp": "[a-z]+", "placeholder": "alice"},
                    "channel": {"regexp": "#[a-z]+", "placeholder": "#chat"}},
                "instances": [{"network_id": "net1", "desc": "Network one",
                               "fields": {}}],
            }
        if kind == "user" and (protocol in self.reg.protocols or not protocol):
            name = fields.get("username", "someone")
            return 200, [{"userid": f"@{self.reg.sender_localpart[:-3]}_{name}:test.local",
                          "protocol": protocol or self.reg.protocols[0],
                          "fields": {"username": name}}]
        if kind == "location" and (protocol in self.reg.protocols or not protocol):
            return 200, [{"alias": "#chat:test.local", "protocol": protocol or "x",
                          "fields": fields}]
        return 404, {"errcode": "M_NOT_FOUND"}
