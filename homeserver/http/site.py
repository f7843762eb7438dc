"""The twisted.web glue: one root resource per listener that dispatches to the router.

It owns what every request gets: the request id, CORS, the error shape, 404/405 for unknown
routes, the body limit, JSON encoding, the access log, and cancelling work when the client
goes away.
"""

from __future__ import annotations

import json
import logging
import time
import weakref
from collections.abc import Callable
from typing import Any, BinaryIO

from prometheus_client import Counter, Histogram
from twisted.internet import defer
from twisted.protocols.basic import FileSender
from twisted.python.failure import Failure
from twisted.web import http, resource, server

from homeserver.http.context import current_request_id
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import Router
from homeserver.storage.engine import DatabaseUnavailable

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("homeserver.access")

# Defined here (not in homeserver.metrics) so the HTTP core has no upward import.
REQUESTS = Counter(
    "homeserver_http_requests_total", "HTTP requests served", ["method", "route", "status"]
)
REQUEST_SECONDS = Histogram(
    "homeserver_http_request_duration_seconds", "Time to answer a request", ["method", "route"]
)

_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"))

CORS_HEADERS = {
    b"Access-Control-Allow-Origin": b"*",
    b"Access-Control-Allow-Methods": b"GET, HEAD, POST, PUT, DELETE, OPTIONS",
    b"Access-Control-Allow-Headers": b"X-Requested-With, Content-Type, Authorization, Date",
    b"Access-Control-Expose-Headers": b"ETag, Content-Disposition",
}
_JSON_TYPE = b"application/json"


class RawResponse:
    """A non-JSON reply (health checks, media): bytes with a content type."""

    def __init__(self, status: int, body: bytes, content_type: str) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type


class FileResponse:
    """A reply streamed from an open file (media), never read into memory whole. The site
    closes the file when the reply is done or the client goes away."""

    def __init__(self, status: int, file: BinaryIO, length: int, content_type: str) -> None:
        self.status = status
        self.file = file
        self.length = length
        self.content_type = content_type


def encode_json(value: Any) -> bytes:
    # Compact and ASCII-safe; canonical JSON is only needed where it is signed.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class RootResource(resource.Resource):
    isLeaf = True

    def __init__(self, router: Router, resources: frozenset[str]) -> None:
        super().__init__()
        self.router = router
        self.resources = resources

    def render(self, request: server.Request) -> int:
        assert isinstance(request, HomeserverRequest)
        token = current_request_id.set(request.request_id)
        try:
            d = defer.Deferred.fromCoroutine(self._handle(request))
        finally:
            current_request_id.reset(token)
        # The client went away: stop the work (a long poll, a slow query) on its behalf.
        request.notifyFinish().addErrback(lambda _f: d.cancel())
        d.addErrback(self._unexpected, request)
        return server.NOT_DONE_YET

    async def _handle(self, request: HomeserverRequest) -> None:
        current_request_id.set(request.request_id)
        method = request.method.decode("ascii", "replace")
        try:
            path = request.path.decode("ascii")
        except UnicodeDecodeError:
            path = ""
        for name, value in CORS_HEADERS.items():
            request.setHeader(name, value)
        concurrency: ClientConcurrency | None = getattr(
            getattr(request.channel, "site", None), "concurrency", None)
        client_key: str | None = None
        try:
            if not path:
                raise MatrixError(400, Codes.UNRECOGNIZED, "Request path is not ASCII")
            if method == "OPTIONS":
                # CORS preflight: browsers ask before any cross-origin call.
                self._write_json(request, 200, {})
                return
            if concurrency is not None:
                client_key = concurrency.enter(request)
            route, params, allowed = self.router.match(method, path, self.resources)
            request.route_label = route.template if route else "unmatched"
            if route is None:
                if allowed:
                    request.setHeader(b"Allow", ", ".join(sorted(set(allowed))).encode())
                    raise MatrixError(405, Codes.UNRECOGNIZED, "Unrecognized request")
                raise MatrixError(404, Codes.UNRECOGNIZED, "Unrecognized request")
            request.check_body_size()
            try:
                result = await route.handler(request, **params)
            except defer.FirstError as e:
                # gatherResults wraps the first failure: answer as for that one (a 4xx,
                # or 503 for an outage), not with a 500.
                raise _first_cause(e) from None
            if isinstance(result, RawResponse):
                self._write_raw(request, result)
            elif isinstance(result, FileResponse):
                self._write_file(request, result)
            else:
                status, body = result
                self._write_json(request, status, body)
        except MatrixError as e:
            for header, header_value in e.headers.items():
                request.setHeader(header.encode(), header_value.encode())
            self._write_json(request, e.status, e.to_json())
        except DatabaseUnavailable as e:
            # An outage, not a bug: a clear, retryable 503 and one log line, no traceback.
            logger.warning("%s: database unavailable: %s", _describe(request), e)
            request.setHeader(b"Retry-After", b"1")
            self._write_json(request, 503, {
                "errcode": Codes.UNKNOWN,
                "error": "The database is unavailable; try again shortly",
            })
        except UnicodeDecodeError:
            self._write_json(
                request,
                400,
                {"errcode": Codes.INVALID_PARAM, "error": "Path parameter is not UTF-8"},
            )
        except defer.CancelledError:
            # The client disconnected; nobody is left to answer.
            access_logger.info("%s cancelled: client disconnected", _describe(request))
        finally:
            if concurrency is not None and client_key is not None:
                concurrency.leave(client_key)

    def _write_json(self, request: HomeserverRequest, status: int, body: Any) -> None:
        payload = encode_json(body)
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", _JSON_TYPE)
        request.setHeader(b"Cache-Control", b"no-cache, no-store, must-revalidate")
        self._finish(request, payload)

    def _write_raw(self, request: HomeserverRequest, response: RawResponse) -> None:
        request.setResponseCode(response.status)
        request.setHeader(b"Content-Type", response.content_type.encode())
        self._finish(request, response.body)

    def _write_file(self, request: HomeserverRequest, response: FileResponse) -> None:
        if request._disconnected or request.finished:
            response.file.close()
            return
        request.setResponseCode(response.status)
        request.setHeader(b"Content-Type", response.content_type.encode())
        request.setHeader(b"Content-Length", str(response.length).encode())
        description = _describe(request)
        if request.method == b"HEAD":
            response.file.close()
            request.finish()
            self._log_done(request, description)
            return
        sending = FileSender().beginFileTransfer(response.file, request)

        def done(result: Any) -> None:
            response.file.close()
            if isinstance(result, Failure):
                # The client went away mid-file: nothing more to say to it.
                access_logger.info("%s stopped: client disconnected", description)
                return
            if not (request._disconnected or request.finished):
                request.finish()
            self._log_done(request, description)

        sending.addBoth(done)

    def _finish(self, request: HomeserverRequest, payload: bytes) -> None:
        if request._disconnected or request.finished:
            return
        request.setHeader(b"Content-Length", str(len(payload)).encode())
        description = _describe(request)
        if request.method != b"HEAD":
            request.write(payload)
        request.finish()
        self._log_done(request, description)

    def _log_done(self, request: HomeserverRequest, description: str) -> None:
        elapsed = time.monotonic() - request.start_time
        method = request.method.decode("ascii", "replace")
        if method not in _METHODS:
            method = "other"  # a client's made-up method must not make a new series
        REQUESTS.labels(method, request.route_label, str(request.code)).inc()
        REQUEST_SECONDS.labels(method, request.route_label).observe(elapsed)
        access_logger.info(
            "%s %d %.1fms",
            description,
            request.code,
            elapsed * 1000,
        )

    def _unexpected(self, failure: Failure, request: HomeserverRequest) -> None:
        token = current_request_id.set(request.request_id)
        try:
            logger.error(
                "unhandled error serving %s: %s",
                _describe(request),
                failure.getTraceback(),
            )
            self._write_json(
                request, 500, {"errcode": Codes.UNKNOWN, "error": "Internal server error"}
            )
        finally:
            current_request_id.reset(token)


def _unsent(transport: Any) -> bool:
    # A TLS transport wraps the TCP one; either may hold bytes not yet given to the kernel.
    for t in (transport, getattr(transport, "transport", None)):
        if t is not None and any(getattr(t, name, None) for name in
                                 ("dataBuffer", "_tempDataLen", "_appSendBuffer")):
            return True
    return False


def _first_cause(error: defer.FirstError) -> BaseException:
    cause: BaseException | None = error
    while isinstance(cause, defer.FirstError):
        cause = cause.subFailure.value
    return cause if cause is not None else error


def _describe(request: HomeserverRequest) -> str:
    # Never log query strings whole: they may carry access tokens.
    path = request.path.decode("ascii", "replace")
    return f"{request.client_ip} {request.method.decode('ascii', 'replace')} {path}"


class ClientConcurrency:
    """Requests in flight per client, so one client cannot hold every worker and database
    connection: past ``limit``, 429 ``M_LIMIT_EXCEEDED``. A client is its access token.
    Requests without one are not counted: keyed by address they would put everyone behind
    one proxy (or every peer server) in one bucket; logins and registrations have their rate
    limits per address instead."""

    RETRY_AFTER_MS = 1000

    def __init__(self, limit: int, exempt: Callable[[str], bool] | None = None) -> None:
        self.limit = limit
        # Tokens not counted: an application service's acts for many users at once.
        self.exempt = exempt
        self._counts: dict[str, int] = {}

    @staticmethod
    def key_of(request: HomeserverRequest) -> str | None:
        auth = request.getHeader("Authorization") or ""
        if auth[:7].lower() == "bearer ":
            return auth[7:].strip()
        token = request.args.get(b"access_token")
        if token:
            return token[0].decode("utf-8", "replace")
        return None

    def enter(self, request: HomeserverRequest) -> str | None:
        """Count the request in, or raise 429; returns the key to ``leave`` with."""
        key = self.key_of(request)
        if key is None or (self.exempt is not None and self.exempt(key)):
            return None
        count = self._counts.get(key, 0)
        if count >= self.limit:
            error = MatrixError(429, Codes.LIMIT_EXCEEDED,
                                f"Too many concurrent requests (at most {self.limit})",
                                retry_after_ms=self.RETRY_AFTER_MS)
            error.headers["Retry-After"] = str(self.RETRY_AFTER_MS // 1000)
            raise error
        self._counts[key] = count + 1
        return key

    def leave(self, key: str) -> None:
        count = self._counts.get(key, 0) - 1
        if count > 0:
            self._counts[key] = count
        else:
            self._counts.pop(key, None)

    def in_flight(self, key: str) -> int:
        return self._counts.get(key, 0)


class HomeserverSite(server.Site):
    """A listener's site: request factory, body limit, and the set of in-flight requests that
    graceful shutdown waits for."""

    requestFactory = HomeserverRequest

    def __init__(
        self,
        router: Router,
        resources: frozenset[str],
        max_body_bytes: int,
        x_forwarded: bool = False,
        max_concurrent_per_client: int | None = None,
        concurrency_exempt: Callable[[str], bool] | None = None,
    ) -> None:
        super().__init__(RootResource(router, resources))
        self.router = router
        self.x_forwarded = x_forwarded
        self.max_body_bytes = max_body_bytes
        # None: no per-client cap on requests in flight.
        self.concurrency = (ClientConcurrency(max_concurrent_per_client, concurrency_exempt)
                            if max_concurrent_per_client else None)
        self.in_flight: set[HomeserverRequest] = set()
        # Open connections, so shutdown can close idle keep-alive ones.
        self.channels: weakref.WeakSet[Any] = weakref.WeakSet()
        # No "twisted.web" access log lines: ours carry the request id and no query strings.
        self.noisy = False

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        self.channels.add(channel)
        return channel

    def _open_channels(self) -> list[Any]:
        # Site.buildProtocol returns a wrapper (it picks HTTP/1.1 or HTTP/2), which has no
        # transport of its own: the channel it wraps has.
        return [getattr(built, "_channel", built) for built in list(self.channels)]

    def busy(self) -> bool:
        """Requests in flight, or arriving: a channel holds a request from its request line
        on, so one whose body is still coming in counts (shutdown waits for it)."""
        return bool(self.in_flight) or any(
            getattr(channel, "requests", None) for channel in self._open_channels())

    def _idle_channels(self) -> list[Any]:
        busy = {getattr(r, "channel", None) for r in self.in_flight}
        return [c for c in self._open_channels()
                if c not in busy and not getattr(c, "requests", None)
                and getattr(c, "transport", None) is not None]

    def unsent_on_idle_connections(self) -> bool:
        """Whether a finished response still has bytes in a write buffer (twisted's, or the
        TLS layer's) on a connection shutdown is about to cut."""
        return any(_unsent(c.transport) for c in self._idle_channels())

    def close_idle_connections(self) -> None:
        """At shutdown: drop kept-alive connections with no request in flight or arriving.
        Abort, not lose: a TLS close waits for the peer's close_notify, which an idle client
        never sends, and the connection would linger (serving requests after shutdown); the
        caller first lets written responses leave (``unsent_on_idle_connections``)."""
        for channel in self._idle_channels():
            channel.transport.abortConnection()

    def log(self, request: http.Request) -> None:
        pass

    def body_limit_for(self, raw_path: bytes) -> int:
        try:
            path = raw_path.decode("ascii")
        except UnicodeDecodeError:
            return self.max_body_bytes
        return self.router.body_limit(path) or self.max_body_bytes
