"""The federation client over real HTTPS on loopback, against a twisted.web server started
here with a self-signed certificate."""

from __future__ import annotations

import datetime
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import defer, ssl, task
from twisted.internet import reactor as _reactor
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.web import server
from twisted.web.resource import Resource
from zope.interface import implementer  # type: ignore[import-untyped]

from federation.discovery import Resolution, ServerNameResolver, Target, WellKnownFetchError
from federation.keys import generate_signing_key, verify_key_of
from federation.transport import (
    BlockedAddress,
    FederationClient,
    HttpResponseError,
    HttpWellKnownFetcher,
    InvalidResponse,
    NotRetryingDestination,
    RequestFailed,
    RequestTimedOut,
    ResponseTooLarge,
    TLSPolicy,
    TransportOptions,
)
from federation.transport.client import request_target
from federation.transport.net import AddressPolicy, is_private_address
from federation.x_matrix import XMatrixError, authenticate_request

reactor: Any = _reactor  # the global reactor; Any because its interfaces confuse mypy
ORIGIN = "origin.test"
REMOTE = "remote.test"
KEY = generate_signing_key("k1")


# -- a TLS server on loopback ---------------------------------------------------------------------


def self_signed(name: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


CERT_PEM, KEY_PEM = self_signed(REMOTE)


@dataclass
class Seen:
    method: str
    uri: str
    headers: dict[str, list[str]]
    body: bytes


@dataclass
class Server:
    port: int
    requests: list[Seen] = field(default_factory=list)
    sni: list[bytes | None] = field(default_factory=list)
    pending: list[server.Request] = field(default_factory=list)
    closed: defer.Deferred[None] = field(default_factory=defer.Deferred)


class Handler(Resource):
    isLeaf = True

    def __init__(self, state: Server):
        super().__init__()
        self.state = state

    def render(self, request: server.Request) -> Any:
        body = request.content.read() if request.content else b""
        headers = {
            k.decode().lower(): [v.decode() for v in vs]
            for k, vs in request.requestHeaders.getAllRawHeaders()
        }
        uri = request.uri.decode()
        self.state.requests.append(Seen(request.method.decode(), uri, headers, body))
        path = request.path.decode()
        if path.startswith("/_matrix/test/echo"):
            request.setHeader("Content-Type", "application/json")
            return json.dumps({"ok": True, "uri": uri}).encode()
        if path == "/_matrix/test/forbidden":
            request.setResponseCode(403)
            return b'{"errcode": "M_FORBIDDEN", "error": "go away"}'
        if path == "/_matrix/test/html":
            request.setResponseCode(502)
            return b"<html>bad gateway</html>"
        if path == "/_matrix/test/notjson":
            return b"hello"
        if path == "/_matrix/test/big":
            size = int(request.args[b"size"][0])
            if request.args.get(b"length"):
                request.setHeader("Content-Length", str(size))
            for _ in range(size // 1000):
                request.write(b"x" * 1000)
            request.finish()
            return server.NOT_DONE_YET
        if path == "/_matrix/test/endless":
            writer = task.LoopingCall(lambda: request.write(b"x" * 1000))
            writer.start(0.01)

            def hung_up(_: object) -> None:
                writer.stop()
                self.state.closed.callback(None)

            request.notifyFinish().addBoth(hung_up)
            return server.NOT_DONE_YET
        if path == "/_matrix/test/slow":
            self.state.pending.append(request)
            return server.NOT_DONE_YET
        if path == "/.well-known/matrix/server":
            request.setHeader("Cache-Control", "max-age=600")
            return b'{"m.server": "delegated.test:1234"}'
        if path == "/.well-known/redirect":
            request.redirect(b"/.well-known/matrix/server")
            return b""
        if path == "/.well-known/to-http":
            request.redirect(b"http://127.0.0.1/.well-known/matrix/server")
            return b""
        if path == "/.well-known/loop":
            request.redirect(b"/.well-known/loop")
            return b""
        if path == "/.well-known/big":
            return b'{"m.server": "x.test", "pad": "' + b"x" * 100_000 + b'"}'
        request.setResponseCode(404)
        return b'{"errcode": "M_UNRECOGNIZED", "error": "no"}'


@implementer(IOpenSSLContextFactory)
class ServerTLS:
    """Server context that records the SNI each client sent."""

    def __init__(self, state: Server):
        self._ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        self._ctx.use_certificate(x509.load_pem_x509_certificate(CERT_PEM))
        key: Any = serialization.load_pem_private_key(KEY_PEM, None)
        self._ctx.use_privatekey(key)

        def on_sni(conn: SSL.Connection) -> None:
            state.sni.append(conn.get_servername())

        self._ctx.set_tlsext_servername_callback(on_sni)

    def getContext(self) -> SSL.Context:
        return self._ctx


@pytest_twisted.async_yield_fixture
async def remote() -> AsyncIterator[Server]:
    state = Server(port=0)
    site = server.Site(Handler(state))
    port = reactor.listenSSL(0, site, ServerTLS(state), interface="127.0.0.1")
    state.port = port.getHost().port
    try:
        yield state
    finally:
        for request in state.pending:
            transport: Any = request.channel.transport if request.channel else None
            if transport is not None:
                transport.abortConnection()
        await port.stopListening()


def client(remote: Server, **options: Any) -> FederationClient:
    defaults: dict[str, Any] = {"static_map": {REMOTE: f"127.0.0.1:{remote.port}"}}
    defaults.update(options)
    return FederationClient(
        reactor, server_name=ORIGIN, signing_key=KEY, options=TransportOptions(**defaults)
    )


def dev_client(remote: Server, **options: Any) -> FederationClient:
    return client(remote, verify_tls=False, allow_private_addresses=True, **options)


def trust_our_cert() -> Any:
    return ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(CERT_PEM)])


# -- TLS ------------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_default_mode_refuses_self_signed_certificate(remote: Server) -> None:
    c = client(remote, allow_private_addresses=True)
    assert c.options.verify_tls
    with pytest.raises(RequestFailed, match="certificate verify failed") as info:
        await c.get_json(REMOTE, "/_matrix/test/echo")
    assert not isinstance(info.value, BlockedAddress)
    # The handshake failed before any HTTP request was sent.
    assert remote.requests == []
    await c.close()


@pytest_twisted.ensureDeferred
async def test_dev_mode_accepts_self_signed_certificate_and_sends_sni(remote: Server) -> None:
    c = dev_client(remote)
    assert await c.get_json(REMOTE, "/_matrix/test/echo") == {
        "ok": True,
        "uri": "/_matrix/test/echo",
    }
    assert remote.sni == [REMOTE.encode()]
    await c.close()


@pytest_twisted.ensureDeferred
async def test_verification_checks_the_name_discovery_gave(remote: Server) -> None:
    # With our certificate trusted, the name it is for passes and another name does not.
    c = client(
        remote,
        allow_private_addresses=True,
        trust_root=trust_our_cert(),
        static_map={REMOTE: f"127.0.0.1:{remote.port}", "other.test": f"127.0.0.1:{remote.port}"},
    )
    assert (await c.get_json(REMOTE, "/_matrix/test/echo"))["ok"] is True
    with pytest.raises(RequestFailed, match=r"other\.test"):
        await c.get_json("other.test", "/_matrix/test/echo")
    assert len(remote.requests) == 1
    await c.close()


def test_tls_policy_caches_creators_and_skips_sni_for_ips() -> None:
    policy = TLSPolicy(verify=False)
    assert policy.creator_for("a.test") is policy.creator_for("a.test")
    assert policy.creator_for("a.test") is not policy.creator_for("b.test")
    assert policy.creator_for("127.0.0.1")._sni is None
    assert policy.creator_for("a.test")._sni == b"a.test"


# -- signing --------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_request_carries_a_valid_x_matrix_signature(remote: Server) -> None:
    c = dev_client(remote)
    content = {"pdus": [], "edus": [], "text": "h\u00e9llo"}
    await c.put_json(REMOTE, "/_matrix/test/echo/txn%2F1", content, {"b": "x y", "a": ["1", "2"]})
    seen = remote.requests[-1]
    assert seen.method == "PUT"
    assert seen.uri == "/_matrix/test/echo/txn%2F1?b=x%20y&a=1&a=2"
    assert seen.headers["host"] == [REMOTE]
    assert seen.headers["content-type"] == ["application/json"]
    [header] = seen.headers["authorization"]
    assert header.startswith(f'X-Matrix origin="{ORIGIN}",destination="{REMOTE}",key="ed25519:k1"')

    def lookup(server_name: str, key_id: str) -> Any:
        return verify_key_of(KEY) if (server_name, key_id) == (ORIGIN, "ed25519:k1") else None

    received = json.loads(seen.body)
    assert received == content
    verified = authenticate_request(
        seen.headers["authorization"],
        method=seen.method,
        uri=seen.uri,
        content=received,
        our_server_name=REMOTE,
        key_lookup=lookup,
        now_ms=0,
    )
    assert verified == ORIGIN
    # The receiver would notice any change, e.g. to the query string.
    with pytest.raises(XMatrixError):
        authenticate_request(
            seen.headers["authorization"],
            method=seen.method,
            uri=seen.uri.replace("a=2", "a=3"),
            content=received,
            our_server_name=REMOTE,
            key_lookup=lookup,
            now_ms=0,
        )
    await c.close()


@pytest_twisted.ensureDeferred
async def test_get_has_no_body_and_post_has_one(remote: Server) -> None:
    c = dev_client(remote)
    await c.get_json(REMOTE, "/_matrix/test/echo")
    await c.post_json(REMOTE, "/_matrix/test/echo", {})
    get, post = remote.requests
    assert (get.method, get.body, "content-type" in get.headers) == ("GET", b"", False)
    assert (post.method, post.body) == ("POST", b"{}")
    await c.close()


def test_request_target_validation() -> None:
    assert request_target("/_matrix/x", {"k": "a/b"}) == "/_matrix/x?k=a%2Fb"
    for bad in ("_matrix/x", "/_matrix/x?y=1", "/_matrix/x y", "/_matrix/\u00e9"):
        with pytest.raises(ValueError):
            request_target(bad)


# -- the address guard ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_private_address_refused_unless_allowed(remote: Server) -> None:
    c = client(remote, verify_tls=False)  # TLS would pass; the address must not
    with pytest.raises(BlockedAddress, match=r"127\.0\.0\.1"):
        await c.get_json(REMOTE, "/_matrix/test/echo")
    assert remote.requests == []
    allowed = client(remote, verify_tls=False, address_allowlist=("127.0.0.0/8",))
    assert (await allowed.get_json(REMOTE, "/_matrix/test/echo"))["ok"] is True
    await c.close()
    await allowed.close()


@pytest_twisted.ensureDeferred
async def test_hostname_resolving_to_loopback_is_refused(remote: Server) -> None:
    # The guard sits in name resolution, so it sees what "localhost" resolves to.
    c = client(remote, verify_tls=False, static_map={REMOTE: f"localhost:{remote.port}"})
    with pytest.raises(BlockedAddress, match="localhost resolves to"):
        await c.get_json(REMOTE, "/_matrix/test/echo")
    assert remote.requests == []
    ok = dev_client(remote, static_map={REMOTE: f"localhost:{remote.port}"})
    assert (await ok.get_json(REMOTE, "/_matrix/test/echo"))["ok"] is True
    await ok.close()


@pytest.mark.parametrize(
    ("address", "private"),
    [
        ("127.0.0.1", True),
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("192.168.1.1", True),
        ("169.254.1.1", True),
        ("100.64.0.1", True),
        ("0.0.0.0", True),
        ("224.0.0.1", True),
        ("::1", True),
        ("fe80::1", True),
        ("fc00::1", True),
        ("::ffff:127.0.0.1", True),
        ("8.8.8.8", False),
        ("2606:4700::1111", False),
    ],
)
def test_private_addresses(address: str, private: bool) -> None:
    import ipaddress

    assert is_private_address(ipaddress.ip_address(address)) is private
    assert AddressPolicy().permits(address) is not private
    assert AddressPolicy(allow_private=True).permits(address)


# -- responses, errors and limits -----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_error_responses_are_typed(remote: Server) -> None:
    c = dev_client(remote)
    with pytest.raises(HttpResponseError) as info:
        await c.get_json(REMOTE, "/_matrix/test/forbidden")
    assert (info.value.status, info.value.errcode, info.value.error) == (
        403,
        "M_FORBIDDEN",
        "go away",
    )
    with pytest.raises(HttpResponseError) as info:
        await c.get_json(REMOTE, "/_matrix/test/html")
    assert (info.value.status, info.value.errcode, info.value.body) == (502, None, None)
    assert info.value.raw == b"<html>bad gateway</html>"
    with pytest.raises(InvalidResponse, match="not JSON"):
        await c.get_json(REMOTE, "/_matrix/test/notjson")
    await c.close()


@pytest.mark.parametrize("declared", [False, True])
@pytest_twisted.ensureDeferred
async def test_oversized_response_is_cut_off(remote: Server, declared: bool) -> None:
    c = dev_client(remote, max_response_size=10_000)
    args = {"size": "1000000", **({"length": "1"} if declared else {})}
    with pytest.raises(ResponseTooLarge) as info:
        await c.get_json(REMOTE, "/_matrix/test/big", args)
    assert info.value.limit == 10_000
    # Within the limit the same endpoint works (and is not JSON).
    with pytest.raises(InvalidResponse) as small:
        await c.get_json(REMOTE, "/_matrix/test/big", {"size": "5000"})
    assert not isinstance(small.value, ResponseTooLarge)
    # Per-request override.
    with pytest.raises(ResponseTooLarge):
        await c.get_json(REMOTE, "/_matrix/test/big", {"size": "5000"}, max_response_size=4000)
    await c.close()


@pytest_twisted.ensureDeferred
async def test_oversized_response_drops_the_connection(remote: Server) -> None:
    # The server would stream forever; past the limit we must hang up, not keep reading.
    c = dev_client(remote, max_response_size=5000, timeout_s=10)
    with pytest.raises(ResponseTooLarge):
        await c.get_json(REMOTE, "/_matrix/test/endless")
    remote.closed.addTimeout(2, reactor)
    await remote.closed  # the server saw the connection close
    await c.close()


@pytest_twisted.ensureDeferred
async def test_timeout(remote: Server) -> None:
    c = dev_client(remote, timeout_s=0.3)
    start = reactor.seconds()
    with pytest.raises(RequestTimedOut):
        await c.get_json(REMOTE, "/_matrix/test/slow")
    assert reactor.seconds() - start < 5
    assert len(remote.pending) == 1  # it did reach the server
    # The per-request timeout overrides the default.
    with pytest.raises(RequestTimedOut):
        await c.get_json(REMOTE, "/_matrix/test/slow", timeout_s=0.1)
    await c.close()


@pytest_twisted.ensureDeferred
async def test_connection_refused_is_request_failed(remote: Server) -> None:
    unused = reactor.listenTCP(0, server.Site(Resource()), interface="127.0.0.1")
    port = unused.getHost().port
    await unused.stopListening()
    c = dev_client(remote, static_map={REMOTE: f"127.0.0.1:{port}"})
    with pytest.raises(RequestFailed, match="refused"):
        await c.get_json(REMOTE, "/_matrix/test/echo")
    await c.close()


@pytest_twisted.ensureDeferred
async def test_targets_are_tried_in_order(remote: Server) -> None:
    unused = reactor.listenTCP(0, server.Site(Resource()), interface="127.0.0.1")
    closed = unused.getHost().port
    await unused.stopListening()

    class TwoTargets(ServerNameResolver):
        def __init__(self) -> None:
            pass

        async def resolve(self, server_name: str) -> Resolution:
            targets = (Target("127.0.0.1", closed), Target("127.0.0.1", remote.port))
            return Resolution(server_name, targets, "delegated.test", REMOTE)

    c = FederationClient(
        reactor,
        server_name=ORIGIN,
        signing_key=KEY,
        options=TransportOptions.dev(),
        resolver=TwoTargets(),
    )
    assert (await c.get_json(REMOTE, "/_matrix/test/echo"))["ok"] is True
    assert remote.requests[-1].headers["host"] == ["delegated.test"]
    await c.close()


@pytest_twisted.ensureDeferred
async def test_unresolvable_destination(remote: Server) -> None:
    c = dev_client(remote)
    with pytest.raises(RequestFailed, match="cannot resolve"):
        await c.get_json("bad name", "/_matrix/test/echo")


@pytest_twisted.ensureDeferred
async def test_gate_can_refuse(remote: Server) -> None:
    async def gate(destination: str) -> None:
        if destination == REMOTE:
            raise NotRetryingDestination(destination, retry_at_ms=123)

    c = FederationClient(
        reactor,
        server_name=ORIGIN,
        signing_key=KEY,
        options=TransportOptions.dev(static_map={REMOTE: f"127.0.0.1:{remote.port}"}),
        gate=gate,
    )
    with pytest.raises(NotRetryingDestination) as info:
        await c.get_json(REMOTE, "/_matrix/test/echo")
    assert info.value.retry_at_ms == 123
    assert remote.requests == []


@pytest_twisted.ensureDeferred
async def test_connections_are_reused(remote: Server) -> None:
    c = dev_client(remote)
    for _ in range(3):
        await c.get_json(REMOTE, "/_matrix/test/echo")
    assert len(remote.requests) == 3
    assert len(remote.sni) == 1  # one TLS handshake
    await c.close()


# -- .well-known over HTTPS -----------------------------------------------------------------------


def fetcher(remote: Server, path: str, **kwargs: Any) -> HttpWellKnownFetcher:
    return HttpWellKnownFetcher(
        reactor,
        TLSPolicy(verify=False),
        kwargs.pop("addresses", AddressPolicy(allow_private=True)),
        url_for=lambda host: f"https://127.0.0.1:{remote.port}{path}",
        **kwargs,
    )


@pytest_twisted.ensureDeferred
async def test_well_known_fetch_follows_redirects(remote: Server) -> None:
    response = await fetcher(remote, "/.well-known/redirect")("example.test")
    assert response.status == 200
    assert json.loads(response.body) == {"m.server": "delegated.test:1234"}
    assert response.headers["cache-control"] == ["max-age=600"]
    assert [r.uri for r in remote.requests] == [
        "/.well-known/redirect",
        "/.well-known/matrix/server",
    ]


@pytest.mark.parametrize(
    ("path", "match"),
    [
        ("/.well-known/to-http", "non-https"),
        ("/.well-known/loop", "more than 5 redirects"),
        ("/.well-known/big", "larger than"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_well_known_fetch_failures(remote: Server, path: str, match: str) -> None:
    with pytest.raises(WellKnownFetchError, match=match):
        await fetcher(remote, path)("example.test")


@pytest_twisted.ensureDeferred
async def test_well_known_fetch_timeout(remote: Server) -> None:
    with pytest.raises(WellKnownFetchError, match="no answer"):
        await fetcher(remote, "/_matrix/test/slow", timeout_s=0.2)("example.test")
    assert len(remote.pending) == 1


@pytest_twisted.ensureDeferred
async def test_well_known_fetch_respects_the_address_guard(remote: Server) -> None:
    with pytest.raises(WellKnownFetchError, match="private"):
        await fetcher(remote, "/.well-known/matrix/server", addresses=AddressPolicy())(
            "example.test"
        )
    assert remote.requests == []
