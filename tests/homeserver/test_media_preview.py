"""URL previews against a real local web server: off by default, loopback refused unless
allowed, OpenGraph data and the preview image when allowed, size and time limits."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.web import resource, server

from homeserver.config import DatabaseConfig
from homeserver.services.media.preview import parse_open_graph
from tests.support.client import Client
from tests.support.media import CLIENT_MEDIA, LEGACY_MEDIA, MediaClient, open_image, png
from tests.support.server import RunningServer, start_server

IMAGE = png(120, 80, (0, 200, 0))
PAGE = b"""<!doctype html><html><head>
<meta charset="utf-8">
<title>Fallback title</title>
<meta property="og:title" content="Caf\xc3\xa9 &amp; friends">
<meta property="og:description" content="A page for testing previews">
<meta property="og:image" content="/img.png">
</head><body><p>Hello</p></body></html>"""


class _Site(resource.Resource):
    isLeaf = True

    def render_GET(self, request: server.Request) -> Any:
        path = request.path
        if path == b"/page.html":
            request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
            return PAGE
        if path == b"/title-only":
            request.setHeader(b"Content-Type", b"text/html")
            return b"<html><head><title> Just   a title </title></head></html>"
        if path == b"/img.png":
            request.setHeader(b"Content-Type", b"image/png")
            return IMAGE
        if path == b"/moved":
            request.setResponseCode(302)
            request.setHeader(b"Location", b"/page.html")
            return b""
        if path == b"/elsewhere":
            # To a loopback address the preview may not reach.
            request.setResponseCode(301)
            port = request.getHost().port
            request.setHeader(b"Location", f"http://127.0.0.2:{port}/page.html".encode())
            return b""
        if path == b"/huge":
            request.setHeader(b"Content-Type", b"text/html")
            return b"<html>" + b"x" * 300_000
        if path == b"/slow":
            return server.NOT_DONE_YET  # never answers
        request.setResponseCode(404)
        return b"no"


@pytest_twisted.async_yield_fixture
async def site() -> AsyncIterator[int]:
    port: Any = reactor.listenTCP(0, server.Site(_Site()), interface="127.0.0.1")  # type: ignore[arg-type]
    try:
        yield port.getHost().port
    finally:
        await port.stopListening()


def _preview_config(**url_preview: Any) -> dict[str, Any]:
    return {
        "media": {"url_preview": {"enabled": True, "max_page_bytes": 100_000,
                                  "timeout_seconds": 1, **url_preview}},
        # The test servers' default lets private addresses through; previews must not.
        "outbound_requests": {"accept_self_signed": True, "allow_private_addresses": False},
    }


async def _preview(hs: RunningServer, token: str, url: str,
                   prefix: str = CLIENT_MEDIA) -> tuple[int, dict[str, Any]]:
    r = await MediaClient(hs.client_url).get(f"{prefix}/preview_url", token, url=url)
    return r.status, r.json()


@pytest_twisted.ensureDeferred
async def test_previews_are_off_by_default(hs: RunningServer, site: int) -> None:
    token = (await Client(hs.client_url).register("alice")).access_token
    status, body = await _preview(hs, token, f"http://127.0.0.1:{site}/page.html")
    assert (status, body["errcode"]) == (404, "M_UNRECOGNIZED")


@pytest_twisted.ensureDeferred
async def test_loopback_refused_unless_allowed(db_config: DatabaseConfig, tmp_path: Any,
                                               site: int) -> None:
    hs = await start_server(str(tmp_path), db_config, **_preview_config())
    try:
        token = (await Client(hs.client_url).register("alice")).access_token
        for url in (f"http://127.0.0.1:{site}/page.html", f"http://localhost:{site}/page.html",
                    f"http://[::ffff:127.0.0.1]:{site}/page.html"):
            status, body = await _preview(hs, token, url)
            assert (status, body["errcode"]) == (403, "M_FORBIDDEN"), url
        for url in ("ftp://example.org/", "file:///etc/passwd", "not a url",
                    "http://user:pw@example.org/"):
            status, body = await _preview(hs, token, url)
            assert (status, body["errcode"]) == (400, "M_INVALID_PARAM"), url
        status, body = await _preview(hs, token, "")
        assert (status, body["errcode"]) == (400, "M_MISSING_PARAM")
    finally:
        await hs.stop()


@pytest_twisted.ensureDeferred
async def test_allowed_loopback_gives_open_graph_data(db_config: DatabaseConfig, tmp_path: Any,
                                                      site: int) -> None:
    hs = await start_server(str(tmp_path), db_config,
                            **_preview_config(allowed_ip_ranges=["127.0.0.0/8"]))
    try:
        token = (await Client(hs.client_url).register("alice")).access_token
        status, body = await _preview(hs, token, f"http://127.0.0.1:{site}/page.html")
        assert status == 200, body
        assert body["og:title"] == "Café & friends"
        assert body["og:description"] == "A page for testing previews"
        # The image was fetched and stored here, under an mxc URI.
        assert body["og:image"].startswith("mxc://test.local/")
        assert (body["og:image:width"], body["og:image:height"]) == (120, 80)
        assert body["og:image:type"] == "image/png"
        assert body["matrix:image:size"] == len(IMAGE)
        m = MediaClient(hs.client_url)
        assert (await m.download(body["og:image"], token)).body == IMAGE
        thumb = await m.thumbnail(body["og:image"], token, 32, 32, "crop")
        assert open_image(thumb.body).size == (32, 32)

        # Redirects are followed; the legacy path works too.
        status, moved = await _preview(hs, token, f"http://127.0.0.1:{site}/moved",
                                       prefix=LEGACY_MEDIA)
        assert status == 200 and moved["og:title"] == "Café & friends"
        # Without OpenGraph tags the <title> stands in.
        status, body = await _preview(hs, token, f"http://127.0.0.1:{site}/title-only")
        assert (status, body) == (200, {"og:title": "Just a title"})
        # An image URL previews as the image.
        status, body = await _preview(hs, token, f"http://127.0.0.1:{site}/img.png")
        assert status == 200 and body["og:image:width"] == 120

        # Limits: size, time, errors.
        status, body = await _preview(hs, token, f"http://127.0.0.1:{site}/huge")
        assert (status, body["errcode"]) == (502, "M_TOO_LARGE")
        status, body = await _preview(hs, token, f"http://127.0.0.1:{site}/slow")
        assert status == 504, body
        status, body = await _preview(hs, token, f"http://127.0.0.1:{site}/missing")
        assert status == 502 and "404" in body["error"]
    finally:
        await hs.stop()


@pytest_twisted.ensureDeferred
async def test_blocked_ranges_and_redirects_are_checked(db_config: DatabaseConfig,
                                                        tmp_path: Any, site: int) -> None:
    # Blocked ranges apply even where private addresses are otherwise let through.
    config = _preview_config(blocked_ip_ranges=["127.0.0.0/8"])
    config["outbound_requests"]["allow_private_addresses"] = True
    hs = await start_server(str(tmp_path), db_config, **config)
    try:
        token = (await Client(hs.client_url).register("alice")).access_token
        status, body = await _preview(hs, token, f"http://127.0.0.1:{site}/page.html")
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    finally:
        await hs.stop()
    # Every redirect hop is checked again: 127.0.0.1 is allowed, 127.0.0.2 is not.
    hs = await start_server(str(tmp_path), db_config,
                            **_preview_config(allowed_ip_ranges=["127.0.0.1/32"]))
    try:
        token = (await Client(hs.client_url).login("alice", "s3cret-pass")).json()[
            "access_token"]
        status, body = await _preview(hs, token, f"http://127.0.0.1:{site}/moved")
        assert status == 200 and body["og:title"] == "Café & friends"
        status, body = await _preview(hs, token, f"http://127.0.0.1:{site}/elsewhere")
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    finally:
        await hs.stop()


def test_open_graph_parser() -> None:
    og = parse_open_graph(
        '<html><head><meta name="og:title" content="By name">'
        '<meta property="og:title" content="second is ignored">'
        '<meta name="description" content="from meta description">'
        "<title>t</title><meta property='og:site_name' content='" + "x" * 2000 + "'>"
    )
    assert og["og:title"] == "By name"
    assert og["og:description"] == "from meta description"
    assert len(og["og:site_name"]) == 1000
    assert parse_open_graph("<<<not html") == {}
