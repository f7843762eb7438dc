"""The HTTP core over real loopback HTTP: routing, the error shape, body limits, CORS."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from homeserver.http.errors import MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import Router
from homeserver.http.site import HomeserverSite
from tests.support.http import request

LIMIT = 65536


@pytest_twisted.async_yield_fixture
async def base_url() -> AsyncIterator[str]:
    router = Router()
    cancelled: list[bool] = []

    async def echo(req: HomeserverRequest) -> tuple[int, Any]:
        return 200, {"got": req.json_object()}

    async def echo_param(req: HomeserverRequest, roomId: str) -> tuple[int, Any]:
        return 200, {"room_id": roomId}

    async def boom(req: HomeserverRequest) -> tuple[int, Any]:
        raise RuntimeError("a bug")

    async def forbidden(req: HomeserverRequest) -> tuple[int, Any]:
        raise MatrixError(403, "M_FORBIDDEN", "no", extra_field=1)

    async def upload(req: HomeserverRequest) -> tuple[int, Any]:
        return 200, {"size": len(req.read_body())}

    async def hang(req: HomeserverRequest) -> tuple[int, Any]:
        d: defer.Deferred[None] = defer.Deferred(lambda _: cancelled.append(True))
        await d
        return 200, {}

    router.client("POST", "/echo", echo)
    router.client("GET", "/rooms/{roomId}/thing", echo_param)
    router.client("GET", "/boom", boom)
    router.client("GET", "/forbidden", forbidden)
    router.add("POST", "/_matrix/media/v3/upload", upload, resource="media",
               max_body_bytes=4 * LIMIT)
    router.client("GET", "/hang", hang)
    site = HomeserverSite(router, frozenset({"client", "media"}), LIMIT)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
    try:
        yield f"http://127.0.0.1:{port.getHost().port}"
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_json_round_trip_and_path_params(base_url: str) -> None:
    r = await request("POST", f"{base_url}/_matrix/client/v3/echo", {"a": [1, "é"]})
    assert r.status == 200
    assert r.json() == {"got": {"a": [1, "é"]}}
    assert r.header("Content-Type") == "application/json"
    # The r0 alias serves the same handler; path segments are URL-decoded.
    r = await request("GET", f"{base_url}/_matrix/client/r0/rooms/%21abc%3Aex.org/thing")
    assert r.json() == {"room_id": "!abc:ex.org"}


@pytest.mark.parametrize(
    "body, errcode",
    [
        (b"{not json", "M_NOT_JSON"),
        (b"", "M_NOT_JSON"),
        (b'{"a": NaN}', "M_NOT_JSON"),
        (b"\xff\xfe{}", "M_NOT_JSON"),
        (b"[1, 2]", "M_BAD_JSON"),
        (b'"a string"', "M_BAD_JSON"),
        (b"null", "M_BAD_JSON"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_json_bodies(base_url: str, body: bytes, errcode: str) -> None:
    r = await request("POST", f"{base_url}/_matrix/client/v3/echo", body)
    assert r.status == 400
    assert r.json()["errcode"] == errcode
    assert isinstance(r.json()["error"], str)


@pytest_twisted.ensureDeferred
async def test_deeply_nested_json_is_rejected_not_crashing(base_url: str) -> None:
    body = b"[" * 30_000 + b"]" * 30_000
    r = await request("POST", f"{base_url}/_matrix/client/v3/echo", body)
    assert r.status == 400
    assert r.json()["errcode"] == "M_NOT_JSON"


@pytest_twisted.ensureDeferred
async def test_unknown_endpoint_and_wrong_method(base_url: str) -> None:
    r = await request("GET", f"{base_url}/_matrix/client/v3/nothing_here")
    assert (r.status, r.json()["errcode"]) == (404, "M_UNRECOGNIZED")
    r = await request("GET", f"{base_url}/_matrix/client/v3/echo")
    assert (r.status, r.json()["errcode"]) == (405, "M_UNRECOGNIZED")
    assert r.header("Allow") == "POST"
    # A path outside what this listener serves is unknown here.
    r = await request("GET", f"{base_url}/_matrix/federation/v1/version")
    assert (r.status, r.json()["errcode"]) == (404, "M_UNRECOGNIZED")


@pytest_twisted.ensureDeferred
async def test_body_over_the_limit_is_413(base_url: str) -> None:
    big = b'{"a": "' + b"x" * LIMIT + b'"}'
    r = await request("POST", f"{base_url}/_matrix/client/v3/echo", big)
    assert (r.status, r.json()["errcode"]) == (413, "M_TOO_LARGE")
    # Just under the limit is fine.
    ok = b'{"a": "' + b"x" * (LIMIT - 20) + b'"}'
    r = await request("POST", f"{base_url}/_matrix/client/v3/echo", ok)
    assert r.status == 200


def _raw_http(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload)
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


@pytest_twisted.ensureDeferred
async def test_chunked_body_over_the_limit_is_413(base_url: str) -> None:
    from twisted.internet import threads

    port = int(base_url.rsplit(":", 1)[1])
    chunk = b"x" * 8192
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(LIMIT // 8192 + 2))
    payload = (
        b"POST /_matrix/client/v3/echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + body + b"0\r\n\r\n"
    )
    raw = await threads.deferToThread(_raw_http, port, payload)
    assert raw.startswith(b"HTTP/1.1 413")
    assert b"M_TOO_LARGE" in raw


@pytest_twisted.ensureDeferred
async def test_route_with_larger_limit(base_url: str) -> None:
    body = b"x" * (2 * LIMIT)
    r = await request("POST", f"{base_url}/_matrix/media/v3/upload", body,
                      headers={"Content-Type": "application/octet-stream"})
    assert r.status == 200
    assert r.json() == {"size": 2 * LIMIT}
    r = await request("POST", f"{base_url}/_matrix/media/v3/upload", b"x" * (5 * LIMIT))
    assert (r.status, r.json()["errcode"]) == (413, "M_TOO_LARGE")


@pytest_twisted.ensureDeferred
async def test_errors_have_the_spec_shape(base_url: str) -> None:
    r = await request("GET", f"{base_url}/_matrix/client/v3/boom")
    assert r.status == 500
    assert r.json() == {"errcode": "M_UNKNOWN", "error": "Internal server error"}
    r = await request("GET", f"{base_url}/_matrix/client/v3/forbidden")
    assert r.status == 403
    assert r.json() == {"errcode": "M_FORBIDDEN", "error": "no", "extra_field": 1}


@pytest_twisted.ensureDeferred
async def test_cors_preflight_and_headers(base_url: str) -> None:
    r = await request("OPTIONS", f"{base_url}/_matrix/client/v3/echo",
                      headers={"Origin": "https://app.example",
                               "Access-Control-Request-Method": "POST"})
    assert r.status == 200
    assert r.header("Access-Control-Allow-Origin") == "*"
    assert "POST" in (r.header("Access-Control-Allow-Methods") or "")
    assert "Authorization" in (r.header("Access-Control-Allow-Headers") or "")
    # Ordinary responses, errors included, carry CORS headers too.
    r = await request("GET", f"{base_url}/_matrix/client/v3/nothing_here")
    assert r.header("Access-Control-Allow-Origin") == "*"


@pytest_twisted.ensureDeferred
async def test_disconnect_cancels_the_handler(base_url: str) -> None:
    from twisted.internet import task, threads

    port = int(base_url.rsplit(":", 1)[1])

    def connect_and_drop() -> None:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /_matrix/client/v3/hang HTTP/1.1\r\nHost: x\r\n\r\n")
        s.close()

    await threads.deferToThread(connect_and_drop)
    # The server notices the disconnect and cancels the waiting handler.
    for _ in range(100):
        await task.deferLater(reactor, 0.02, lambda: None)
    r = await request("GET", f"{base_url}/_matrix/client/v3/boom")  # server still healthy
    assert r.status == 500
