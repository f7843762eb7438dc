"""The outbound federation HTTP client: signed JSON requests to other homeservers.

Each request: resolve the destination (``federation.discovery``), connect to its targets in
order over TLS checked against the name discovery gave (refusing private addresses unless
allowed), send JSON with an ``X-Matrix`` signature, read at most ``max_response_size`` bytes
of JSON back, all within one timeout. Failures are typed (see ``FederationClientError``).

Retry/backoff per destination and queueing are policy and live in the homeserver; the
``gate`` hook lets it refuse a request up front with NotRetryingDestination.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from signedjson.types import SigningKey
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IProtocol, IProtocolFactory
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import URI, Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgentEndpointFactory, IBodyProducer
from zope.interface import implementer  # type: ignore[import-untyped]

from federation.canonical_json import decode_json, encode_canonical_json
from federation.discovery import (
    WELL_KNOWN_MAX_REDIRECTS,
    WELL_KNOWN_MAX_SIZE,
    WELL_KNOWN_PATH,
    DiscoveryError,
    Resolution,
    ServerNameResolver,
    TwistedSrvLookup,
    WellKnownFetchError,
    WellKnownResolver,
    WellKnownResponse,
)
from federation.transport.net import AddressPolicy, TLSPolicy, guarded_reactor
from federation.x_matrix import authorization_header

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

DEFAULT_MAX_RESPONSE_SIZE = 50 * 1024 * 1024
DEFAULT_TIMEOUT_S = 60.0
WELL_KNOWN_TIMEOUT_S = 30.0
# HTTP statuses RedirectAgent would follow; we follow them ourselves to insist on https.
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

QueryArgs = Mapping[str, str | Sequence[str]]
# Streamed answers: called with the status and headers (names lower-cased) of a 2xx answer,
# returns what receives the body's bytes.
BodyStart = Callable[[int, Mapping[str, list[str]]], Callable[[bytes], object]]
MAX_ERROR_BODY = 64 * 1024
# Called with the destination before anything is sent; raises NotRetryingDestination to
# refuse (the homeserver's backoff policy).
DestinationGate = Callable[[str], Awaitable[None]]


# -- errors -------------------------------------------------------------------------------------


class FederationClientError(Exception):
    def __init__(self, destination: str, message: str):
        super().__init__(f"{destination}: {message}")
        self.destination = destination


class RequestFailed(FederationClientError):
    """No response: resolution, connection, TLS or transmission failed."""


class BlockedAddress(RequestFailed):
    """Every address of the destination is one the address policy refuses."""


class RequestTimedOut(RequestFailed):
    """No complete response within the timeout."""


class NotRetryingDestination(FederationClientError):
    """The gate refused: we are backing off from this destination."""

    def __init__(self, destination: str, retry_at_ms: int | None = None):
        super().__init__(destination, f"not retrying until {retry_at_ms}")
        self.retry_at_ms = retry_at_ms


class HttpResponseError(FederationClientError):
    """The server answered with a non-2xx status; ``errcode``/``error`` if it sent a Matrix
    error body, ``body`` the parsed JSON (None if the body was not JSON)."""

    def __init__(self, destination: str, status: int, body: Any, raw: bytes):
        self.status = status
        self.body = body
        self.errcode: str | None = None
        self.error: str | None = None
        if isinstance(body, dict):
            errcode, error = body.get("errcode"), body.get("error")
            self.errcode = errcode if isinstance(errcode, str) else None
            self.error = error if isinstance(error, str) else None
        self.raw = raw
        detail = f" {self.errcode}: {self.error}" if self.errcode else ""
        super().__init__(destination, f"HTTP {status}{detail}")


class InvalidResponse(FederationClientError):
    """A 2xx response whose body is not JSON."""


class ResponseTooLarge(InvalidResponse):
    def __init__(self, destination: str, limit: int):
        super().__init__(destination, f"response body exceeds {limit} bytes")
        self.limit = limit


# -- options ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TransportOptions:
    """Knobs of the client. ``dev()`` gives the development set-up: self-signed certificates
    and private addresses accepted (never for a server on the internet)."""

    verify_tls: bool = True
    allow_private_addresses: bool = False
    address_allowlist: tuple[str, ...] = ()  # CIDR networks always reachable
    trust_root: Any = None  # IOpenSSLTrustRoot; None means the system CA store
    max_response_size: int = DEFAULT_MAX_RESPONSE_SIZE
    # Requests in flight to one destination; more wait their turn (a slow peer holds at most
    # this many connections and callers, whatever asks it for what).
    max_concurrent_per_destination: int = 16
    timeout_s: float = DEFAULT_TIMEOUT_S
    user_agent: str = "homeserver"
    static_map: Mapping[str, str] = field(default_factory=dict)  # server name -> host:port

    @classmethod
    def dev(cls, **overrides: Any) -> TransportOptions:
        return cls(**{"verify_tls": False, "allow_private_addresses": True, **overrides})

    def address_policy(self) -> AddressPolicy:
        return AddressPolicy.with_allowlist(self.address_allowlist, self.allow_private_addresses)


# -- the client ---------------------------------------------------------------------------------


class FederationClient:
    """Signed JSON requests from ``server_name`` to other homeservers.

    ``path`` arguments are the request path from ``/_matrix/...`` with each variable part
    already percent-encoded (``urllib.parse.quote(x, safe="")``); ``args`` become the query
    string. The exact bytes sent are the ones signed.
    """

    def __init__(
        self,
        reactor: Any,
        *,
        server_name: str,
        signing_key: SigningKey,
        options: TransportOptions | None = None,
        resolver: ServerNameResolver | None = None,
        gate: DestinationGate | None = None,
    ):
        self._reactor = reactor
        self._server_name = server_name
        self._signing_key = signing_key
        self.options = options or TransportOptions()
        self._tls = TLSPolicy(self.options.verify_tls, self.options.trust_root)
        self._addresses = self.options.address_policy()
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._gate = gate
        self._slots: dict[str, DeferredSemaphore] = {}
        # For URLs other servers point us to (media Location parts), made on first use.
        self._plain_agent: Agent | None = None
        if resolver is None:
            fetcher = HttpWellKnownFetcher(
                reactor, self._tls, self._addresses, user_agent=self.options.user_agent
            )
            resolver = ServerNameResolver(
                WellKnownResolver(fetcher),
                TwistedSrvLookup(),
                static_map=self.options.static_map,
            )
        self.resolver = resolver

    async def get_json(
        self,
        destination: str,
        path: str,
        args: QueryArgs | None = None,
        *,
        timeout_s: float | None = None,
        max_response_size: int | None = None,
    ) -> Any:
        return await self.request_json(
            "GET", destination, path, None, args,
            timeout_s=timeout_s, max_response_size=max_response_size,
        )  # fmt: skip

    async def put_json(
        self,
        destination: str,
        path: str,
        content: Any,
        args: QueryArgs | None = None,
        *,
        timeout_s: float | None = None,
        max_response_size: int | None = None,
    ) -> Any:
        return await self.request_json(
            "PUT", destination, path, content, args,
            timeout_s=timeout_s, max_response_size=max_response_size,
        )  # fmt: skip

    async def post_json(
        self,
        destination: str,
        path: str,
        content: Any,
        args: QueryArgs | None = None,
        *,
        timeout_s: float | None = None,
        max_response_size: int | None = None,
    ) -> Any:
        return await self.request_json(
            "POST", destination, path, content, args,
            timeout_s=timeout_s, max_response_size=max_response_size,
        )  # fmt: skip

    async def request_json(
        self,
        method: str,
        destination: str,
        path: str,
        content: Any = None,
        args: QueryArgs | None = None,
        *,
        timeout_s: float | None = None,
        max_response_size: int | None = None,
    ) -> Any:
        """Send one signed request and return the parsed JSON of a 2xx response."""
        uri = request_target(path, args)
        if self._gate is not None:
            await self._gate(destination)
        timeout = self.options.timeout_s if timeout_s is None else timeout_s
        limit = self.options.max_response_size if max_response_size is None else max_response_size
        async with self._slot(destination):
            return await self._timed_request(method, destination, uri, content, limit, timeout)

    @asynccontextmanager
    async def _slot(self, destination: str) -> AsyncIterator[None]:
        slot = self._slots.get(destination)
        if slot is None:
            slot = DeferredSemaphore(self.options.max_concurrent_per_destination)
            self._slots[destination] = slot
        await slot.acquire()
        try:
            yield
        finally:
            slot.release()
            if slot.tokens == slot.limit and not slot.waiting:
                # Idle: forget it, so the map holds only destinations in use.
                self._slots.pop(destination, None)

    def in_flight(self, destination: str) -> int:
        """Requests to ``destination`` running now (not those waiting for a slot)."""
        slot = self._slots.get(destination)
        return 0 if slot is None else slot.limit - slot.tokens

    async def _timed_request(self, method: str, destination: str, uri: str, content: Any,
                             limit: int, timeout: float) -> Any:
        d = Deferred.fromCoroutine(self._request(method, destination, uri, content, limit))
        try:
            return await _with_timeout(d, timeout, self._reactor)
        except _TimedOut:
            raise RequestTimedOut(destination, f"no response within {timeout}s") from None

    async def get_stream(
        self,
        destination: str,
        path: str,
        args: QueryArgs | None,
        start: BodyStart,
        *,
        timeout_s: float | None = None,
    ) -> None:
        """A signed GET whose 2xx body is streamed: ``start(code, headers)`` is called when
        the headers are in and returns the callback that gets the body's bytes as they
        arrive. An exception from either stops the transfer (the connection is dropped) and
        propagates. A non-2xx answer raises HttpResponseError (its body read up to
        ``MAX_ERROR_BODY``). ``timeout_s`` bounds the whole exchange, body included."""
        uri = request_target(path, args)
        if self._gate is not None:
            await self._gate(destination)
        timeout = self.options.timeout_s if timeout_s is None else timeout_s
        async with self._slot(destination):
            d = Deferred.fromCoroutine(self._stream(destination, uri, start))
            try:
                await _with_timeout(d, timeout, self._reactor)
            except _TimedOut:
                raise RequestTimedOut(
                    destination, f"no complete response within {timeout}s") from None

    async def get_url_stream(
        self,
        url: str,
        start: BodyStart,
        *,
        timeout_s: float | None = None,
        max_redirects: int = 5,
    ) -> None:
        """An unsigned GET of an https URL another server pointed us to (a media
        ``Location``), streamed like ``get_stream``; redirects followed by hand, https only,
        every address checked by the address policy. Errors carry the URL's host."""
        timeout = self.options.timeout_s if timeout_s is None else timeout_s
        d = Deferred.fromCoroutine(self._stream_url(url, start, max_redirects))
        host = urllib.parse.urlsplit(url).hostname or url
        try:
            await _with_timeout(d, timeout, self._reactor)
        except _TimedOut:
            raise RequestTimedOut(host, f"no complete response within {timeout}s") from None

    async def _stream(self, destination: str, uri: str, start: BodyStart) -> None:
        try:
            resolution = await self.resolver.resolve(destination)
        except DiscoveryError as e:
            raise RequestFailed(destination, f"cannot resolve: {e}") from e
        headers = Headers()
        headers.addRawHeader(b"Host", resolution.host_header.encode("ascii"))
        headers.addRawHeader(b"User-Agent", self.options.user_agent.encode("utf-8"))
        auth = authorization_header(
            self._signing_key, self._server_name, destination, "GET", uri, None
        )
        headers.addRawHeader(b"Authorization", auth.encode("utf-8"))
        agent = Agent.usingEndpointFactory(
            self._reactor, _ResolvedEndpointFactory(self, resolution), pool=self._pool
        )
        url = b"matrix-federation://" + destination.encode("utf-8").hex().encode() + uri.encode()
        try:
            response = await agent.request(b"GET", url, headers, None)
        except FederationClientError:
            raise
        except Exception as e:
            if _cancelled(e):
                raise CancelledError() from e
            raise RequestFailed(destination, f"GET {uri} failed: {_describe(e)}") from e
        await _deliver(destination, response, start)

    async def _stream_url(self, url: str, start: BodyStart, max_redirects: int) -> None:
        if self._plain_agent is None:
            guarded, _ = guarded_reactor(self._reactor, self._addresses)
            self._plain_agent = Agent(guarded, contextFactory=self._tls, pool=self._pool)
        for _ in range(max_redirects + 1):
            parts = urllib.parse.urlsplit(url)
            host = parts.hostname or ""
            if parts.scheme != "https" or not host:
                raise RequestFailed(host or url, f"refusing to fetch non-https URL {url!r}")
            if not self._addresses.permits(host):
                raise BlockedAddress(host, f"{host} is a private address")
            headers = Headers({b"User-Agent": [self.options.user_agent.encode("utf-8")]})
            try:
                response = await self._plain_agent.request(b"GET", url.encode("ascii"), headers)
            except Exception as e:
                if _cancelled(e):
                    raise CancelledError() from e
                raise RequestFailed(host, f"GET {url} failed: {_describe(e)}") from e
            location = response.headers.getRawHeaders(b"location")
            if response.code in _REDIRECT_STATUSES and location:
                await _discard(response)
                url = urllib.parse.urljoin(url, location[-1].decode("ascii", "replace"))
                continue
            await _deliver(host, response, start)
            return
        raise RequestFailed(urllib.parse.urlsplit(url).hostname or url,
                            f"more than {max_redirects} redirects")

    async def close(self) -> None:
        """Close pooled connections (e.g. at shutdown, or between tests)."""
        await self._pool.closeCachedConnections()

    async def _request(
        self, method: str, destination: str, uri: str, content: Any, limit: int
    ) -> Any:
        try:
            resolution = await self.resolver.resolve(destination)
        except DiscoveryError as e:
            raise RequestFailed(destination, f"cannot resolve: {e}") from e

        body = encode_canonical_json(content) if content is not None else None
        headers = Headers()
        headers.addRawHeader(b"Host", resolution.host_header.encode("ascii"))
        headers.addRawHeader(b"User-Agent", self.options.user_agent.encode("utf-8"))
        auth = authorization_header(
            self._signing_key, self._server_name, destination, method, uri, content
        )
        headers.addRawHeader(b"Authorization", auth.encode("utf-8"))
        if body is not None:
            headers.addRawHeader(b"Content-Type", b"application/json")

        agent = Agent.usingEndpointFactory(
            self._reactor, _ResolvedEndpointFactory(self, resolution), pool=self._pool
        )
        # The URI's host is only the connection pool's key: one pool slot per destination,
        # so two server names never share a connection. Routing comes from `resolution`.
        url = b"matrix-federation://" + destination.encode("utf-8").hex().encode() + uri.encode()
        try:
            response = await agent.request(
                method.encode("ascii"),
                url,
                headers,
                _BytesProducer(body) if body is not None else None,
            )
        except FederationClientError:
            raise
        except Exception as e:
            if _cancelled(e):
                raise CancelledError() from e
            raise RequestFailed(destination, f"{method} {uri} failed: {_describe(e)}") from e

        try:
            raw = await read_body(response, limit)
        except _TooLarge:
            raise ResponseTooLarge(destination, limit) from None
        except Exception as e:
            if _cancelled(e):
                raise CancelledError() from e
            raise RequestFailed(destination, f"reading the response failed: {_describe(e)}") from e

        if 200 <= response.code < 300:
            try:
                return decode_json(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError):
                raise InvalidResponse(destination, "response is not JSON") from None
        try:
            parsed: Any = decode_json(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            parsed = None
        raise HttpResponseError(destination, response.code, parsed, raw)

    # -- connecting ----------------------------------------------------------------------------

    async def _connect(
        self, resolution: Resolution, protocol_factory: IProtocolFactory
    ) -> IProtocol:
        """Try the targets in order; the first failure is reported (usually the telling one)."""
        creator = self._tls.creator_for(resolution.tls_server_name)
        errors: list[Exception] = []
        for target in resolution.targets:
            if not self._addresses.permits(target.host):
                errors.append(
                    BlockedAddress(resolution.server_name, f"{target.host} is a private address")
                )
                continue
            reactor, guard = guarded_reactor(self._reactor, self._addresses)
            tcp: Any = HostnameEndpoint(reactor, target.host, target.port)
            endpoint: Any = wrapClientTLS(creator, tcp)
            try:
                protocol: IProtocol = await endpoint.connect(protocol_factory)
                return protocol
            except Exception as e:
                if _cancelled(e):
                    raise
                error = e
            if guard.blocked:
                addresses = ", ".join(address for _, address in guard.blocked)
                error = BlockedAddress(
                    resolution.server_name, f"{target.host} resolves to {addresses}"
                )
            logger.info("connecting to %s for %s failed: %s", target, resolution.server_name, error)
            errors.append(error)
        if errors:
            raise errors[0]
        raise RequestFailed(resolution.server_name, "no addresses to connect to")


@implementer(IAgentEndpointFactory)
class _ResolvedEndpointFactory:
    def __init__(self, client: FederationClient, resolution: Resolution):
        self._client = client
        self._resolution = resolution

    def endpointForURI(self, uri: URI) -> _ResolvedEndpoint:
        return _ResolvedEndpoint(self._client, self._resolution)


class _ResolvedEndpoint:
    """An IStreamClientEndpoint over the targets of one resolution."""

    def __init__(self, client: FederationClient, resolution: Resolution):
        self._client = client
        self._resolution = resolution

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        return Deferred.fromCoroutine(self._client._connect(self._resolution, protocolFactory))


def request_target(path: str, args: QueryArgs | None = None) -> str:
    """The request target (what X-Matrix signs as ``uri``): path plus encoded query."""
    if not path.startswith("/") or not path.isascii() or any(c in path for c in " ?#\r\n\t"):
        raise ValueError(f"path {path!r} must be an absolute, percent-encoded path")
    if not args:
        return path
    return path + "?" + urllib.parse.urlencode(
        {k: [v] if isinstance(v, str) else list(v) for k, v in args.items()}, doseq=True,
        quote_via=urllib.parse.quote,
    )  # fmt: skip


class _TimedOut(Exception):
    pass


async def _with_timeout(d: Deferred[_T], timeout_s: float, reactor: Any) -> _T:
    """Wait for ``d``, cancelling it after ``timeout_s`` and then raising _TimedOut.

    Not Deferred.addTimeout: cancelling a request makes Twisted fail it with its own
    wrapped errors (ResponseNeverReceived...), which addTimeout does not see as a timeout.
    """
    timed_out = False

    def expire() -> None:
        nonlocal timed_out
        timed_out = True
        d.cancel()

    call = reactor.callLater(timeout_s, expire)
    try:
        return await d
    except Exception:
        if timed_out:
            raise _TimedOut() from None
        raise
    finally:
        if call.active():
            call.cancel()


def _cancelled(e: BaseException) -> bool:
    """Whether ``e`` is, or wraps, a cancellation."""
    if isinstance(e, CancelledError):
        return True
    reasons = getattr(e, "reasons", None) or []
    return any(isinstance(r, Failure) and r.check(CancelledError) for r in reasons)


def _describe(e: BaseException) -> str:
    # Twisted wraps the real causes (TLS verification, refused connections) in lists of
    # Failures; show those.
    reasons = getattr(e, "reasons", None)
    if reasons:
        return "; ".join(
            _describe(r.value) if isinstance(r, Failure) and r.value else str(r) for r in reasons
        )
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


# -- bodies -------------------------------------------------------------------------------------


@implementer(IBodyProducer)
class _BytesProducer:
    def __init__(self, body: bytes):
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        consumer.write(self._body)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class _TooLarge(Exception):
    pass


class _LimitedBodyReader(Protocol):
    """Collects a response body, failing with _TooLarge past ``limit`` bytes.

    Past the limit (or on cancellation) the connection is dropped: the rest of the body
    would be discarded anyway, and the connection cannot be reused mid-body.
    """

    def __init__(self, finished: Deferred[bytes], limit: int, declared_length: int | None):
        self._finished = finished
        self._limit = limit
        self._declared_length = declared_length
        self._chunks: list[bytes] = []
        self._size = 0
        self.done = False

    def connectionMade(self) -> None:
        if self._declared_length is not None and self._declared_length > self._limit:
            self._fail(Failure(_TooLarge()))

    def dataReceived(self, data: bytes) -> None:
        if self.done:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._fail(Failure(_TooLarge()))
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done:
            return
        self.done = True
        # PotentialDataLoss: no length and no chunking, the close marks the end.
        if reason.check(ResponseDone, PotentialDataLoss):
            self._finished.callback(b"".join(self._chunks))
        else:
            self._finished.errback(reason)

    def _fail(self, failure: Failure) -> None:
        self.done = True
        self._chunks = []
        self._finished.errback(failure)
        self.stop()

    def stop(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()


class _StreamingBodyReader(Protocol):
    """Hands a response body to a callback as it arrives; if the callback raises, the
    connection is dropped and the transfer fails with that exception."""

    def __init__(self, finished: Deferred[None], on_data: Callable[[bytes], object]):
        self._finished = finished
        self._on_data = on_data
        self.done = False
        self.callback_error: Exception | None = None

    def dataReceived(self, data: bytes) -> None:
        if self.done:
            return
        try:
            self._on_data(data)
        except Exception as e:
            self.done = True
            self.callback_error = e
            self._finished.errback(Failure())
            self.stop()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done:
            return
        self.done = True
        if reason.check(ResponseDone, PotentialDataLoss):
            self._finished.callback(None)
        else:
            self._finished.errback(reason)

    def stop(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()


def _refuse(data: bytes) -> None:
    raise CancelledError()


def _header_map(response: Any) -> dict[str, list[str]]:
    return {
        name.decode("latin-1").lower(): [v.decode("latin-1") for v in values]
        for name, values in response.headers.getAllRawHeaders()
    }


async def _discard(response: Any) -> None:
    try:
        await read_body(response, MAX_ERROR_BODY)
    except Exception:
        pass


async def _deliver(destination: str, response: Any, start: BodyStart) -> None:
    """A 2xx body to ``start``'s callback; otherwise HttpResponseError."""
    if not 200 <= response.code < 300:
        try:
            raw = await read_body(response, MAX_ERROR_BODY)
        except Exception as e:
            if _cancelled(e):
                raise CancelledError() from e
            raw = b""
        try:
            parsed: Any = decode_json(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            parsed = None
        raise HttpResponseError(destination, response.code, parsed, raw)
    try:
        on_data = start(response.code, _header_map(response))
    except Exception:
        # Not reading the body: drop the connection rather than leave it half-read.
        dropped: Deferred[None] = Deferred()
        dropped.addErrback(lambda _f: None)
        response.deliverBody(_StreamingBodyReader(dropped, _refuse))
        raise
    if response.length == 0:
        return

    def cancel(d: Deferred[None]) -> None:
        reader.done = True
        reader.stop()

    finished: Deferred[None] = Deferred(cancel)
    reader = _StreamingBodyReader(finished, on_data)
    response.deliverBody(reader)
    try:
        await finished
    except Exception as e:
        if e is reader.callback_error:
            raise
        if _cancelled(e):
            raise CancelledError() from e
        raise RequestFailed(destination, f"reading the response failed: {_describe(e)}") from e


def read_body(response: Any, limit: int) -> Deferred[bytes]:
    """The body of ``response``, at most ``limit`` bytes (else _TooLarge); cancellable."""

    def cancel(d: Deferred[bytes]) -> None:
        reader.done = True
        reader.stop()

    finished: Deferred[bytes] = Deferred(cancel)
    length = response.length if response.length is not UNKNOWN_LENGTH else None
    reader = _LimitedBodyReader(finished, limit, length)
    response.deliverBody(reader)
    return finished


# -- .well-known over HTTPS ------------------------------------------------------------------------


class HttpWellKnownFetcher:
    """``GET https://<hostname>/.well-known/matrix/server`` for discovery.

    Same TLS and address policies as federation requests. Redirects are followed by hand,
    up to ``max_redirects`` and only to https URLs (a redirect to http would let anyone on
    the path rewrite the delegation); a loop ends at the limit. Bodies over ``max_size``
    and failures without a response raise WellKnownFetchError.
    """

    def __init__(
        self,
        reactor: Any,
        tls: TLSPolicy,
        addresses: AddressPolicy,
        *,
        user_agent: str = "homeserver",
        timeout_s: float = WELL_KNOWN_TIMEOUT_S,
        max_size: int = WELL_KNOWN_MAX_SIZE,
        max_redirects: int = WELL_KNOWN_MAX_REDIRECTS,
        url_for: Callable[[str], str] | None = None,
    ):
        self._reactor = reactor
        guarded, _ = guarded_reactor(reactor, addresses)
        self._addresses = addresses
        self._agent = Agent(guarded, contextFactory=tls, pool=HTTPConnectionPool(reactor))
        self._user_agent = user_agent
        self._timeout_s = timeout_s
        self._max_size = max_size
        self._max_redirects = max_redirects
        # For tests: where the well-known of a hostname lives.
        self._url_for = url_for or (lambda hostname: f"https://{hostname}{WELL_KNOWN_PATH}")

    async def __call__(self, hostname: str) -> WellKnownResponse:
        d = Deferred.fromCoroutine(self._fetch(self._url_for(hostname)))
        try:
            return await _with_timeout(d, self._timeout_s, self._reactor)
        except _TimedOut:
            raise WellKnownFetchError(f"no answer within {self._timeout_s}s") from None

    async def _fetch(self, url: str) -> WellKnownResponse:
        for _ in range(self._max_redirects + 1):
            host = urllib.parse.urlsplit(url).hostname or ""
            if not self._addresses.permits(host):
                raise WellKnownFetchError(f"{host} is a private address")
            headers = Headers({b"User-Agent": [self._user_agent.encode("utf-8")]})
            try:
                response = await self._agent.request(b"GET", url.encode("ascii"), headers)
                body = await read_body(response, self._max_size)
            except _TooLarge:
                raise WellKnownFetchError(f"{url} is larger than {self._max_size} bytes") from None
            except Exception as e:
                if _cancelled(e):
                    raise CancelledError() from e
                raise WellKnownFetchError(f"GET {url}: {_describe(e)}") from e
            location = response.headers.getRawHeaders(b"location")
            if response.code in _REDIRECT_STATUSES and location:
                url = urllib.parse.urljoin(url, location[-1].decode("ascii", "replace"))
                if urllib.parse.urlsplit(url).scheme != "https":
                    raise WellKnownFetchError(f"redirected to non-https {url}")
                continue
            return WellKnownResponse(
                response.code,
                body,
                {
                    name.decode("latin-1").lower(): [v.decode("latin-1") for v in values]
                    for name, values in response.headers.getAllRawHeaders()
                },
            )
        raise WellKnownFetchError(f"more than {self._max_redirects} redirects")
