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

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("homeserver.access")

# Defined here (not in homeserver.metrics) so the HTTP core has no upward import.
REQUESTS = Counter(
    "homeserver_http_requests_total", "HTTP requests served", ["method", "route", "status"]
)
REQUEST_SECONDS = Histogram(
    "homeserver_http_request_duration_seconds", "Time to answer a request", ["method", "route"]
)

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
        try:
            if not path:
                raise MatrixError(400, Codes.UNRECOGNIZED, "Request path is not ASCII")
            if method == "OPTIONS":
                # CORS preflight: browsers ask before any cross-origin call.
                self._write_json(request, 200, {})
                return
            route, params, allowed = self.router.match(method, path, self.resources)
            request.route_label = route.template if route else "unmatched"
            if route is None:
                if allowed:
                    request.setHeader(b"Allow", ", ".join(sorted(set(allowed))).encode())
                    raise MatrixError(405, Codes.UNRECOGNIZED, "Unrecognized request")
                raise MatrixError(404, Codes.UNRECOGNIZED, "Unrecognized request")
            request.check_body_size()
            result = await route.handler(request, **params)
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
        except UnicodeDecodeError:
            self._write_json(
                request,
                400,
                {"errcode": Codes.INVALID_PARAM, "error": "Path parameter is not UTF-8"},
            )
        except defer.CancelledError:
            # The client disconnected; nobody is left to answer.
            access_logger.info("%s cancelled: client disconnected", _describe(request))

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
        REQUESTS.labels(request.method.decode("ascii", "replace"), request.route_label,
                        str(request.code)).inc()
        REQUEST_SECONDS.labels(request.method.decode("ascii", "replace"),
                               request.route_label).observe(elapsed)
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


def _describe(request: HomeserverRequest) -> str:
    # Never log query strings whole: they may carry access tokens.
    path = request.path.decode("ascii", "replace")
    return f"{request.client_ip} {request.method.decode('ascii', 'replace')} {path}"


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
    ) -> None:
        super().__init__(RootResource(router, resources))
        self.router = router
        self.x_forwarded = x_forwarded
        self.max_body_bytes = max_body_bytes
        self.in_flight: set[HomeserverRequest] = set()
        # Open connections, so shutdown can close idle keep-alive ones.
        self.channels: weakref.WeakSet[Any] = weakref.WeakSet()
        # No "twisted.web" access log lines: ours carry the request id and no query strings.
        self.noisy = False

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        self.channels.add(channel)
        return channel

    def close_idle_connections(self) -> None:
        """At shutdown: drop kept-alive connections with no request in flight."""
        busy = {getattr(r, "channel", None) for r in self.in_flight}
        for channel in list(self.channels):
            if channel not in busy and getattr(channel, "transport", None) is not None:
                channel.transport.loseConnection()

    def log(self, request: http.Request) -> None:
        pass

    def body_limit_for(self, raw_path: bytes) -> int:
        try:
            path = raw_path.decode("ascii")
        except UnicodeDecodeError:
            return self.max_body_bytes
        return self.router.body_limit(path) or self.max_body_bytes
