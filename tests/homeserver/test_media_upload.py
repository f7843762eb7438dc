"""Uploads and downloads over HTTP on both engines: byte-exact round trips, async uploads,
limits and bad input, the security headers, and the freeze of the legacy endpoints."""

from __future__ import annotations

import hashlib
import os
import urllib.request
from io import BytesIO
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, threads

from homeserver.api.media import content_disposition, disposition_kind
from homeserver.config import DatabaseConfig
from homeserver.services.media.service import clean_media_type
from tests.support.client import Client
from tests.support.http import request
from tests.support.media import CLIENT_MEDIA, LEGACY_MEDIA, MediaClient, png, split_mxc
from tests.support.server import RunningServer, start_server

CSP = ("sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; "
       "style-src 'unsafe-inline'; media-src 'self'; object-src 'self';")


async def _user(hs: RunningServer, name: str = "alice") -> str:
    return (await Client(hs.client_url).register(name)).access_token


@pytest_twisted.ensureDeferred
async def test_upload_and_download_are_byte_exact(hs: RunningServer) -> None:
    token = await _user(hs)
    m = MediaClient(hs.client_url)
    # Every byte value, and larger than twisted's in-memory body threshold (100 kB).
    data = bytes(range(256)) * 1200 + os.urandom(4096)
    r = await m.upload(data, token, "application/x-custom", "report.bin")
    assert r.status == 200, r.body
    uri = r.json()["content_uri"]
    server, media_id = split_mxc(uri)
    assert server == "test.local" and media_id.isalnum()

    d = await m.download(uri, token)
    assert d.status == 200
    assert d.body == data
    assert d.header("Content-Type") == "application/x-custom"
    # Not a type browsers may render: a download, under the uploaded name.
    assert d.header("Content-Disposition") == "attachment; filename=report.bin"

    # The r0 alias uploads too; a small body stays byte-exact.
    r = await m.upload(b"\x00hello\xff", token, "text/plain", path="/_matrix/media/r0/upload")
    assert r.status == 200
    d = await m.download(r.json()["content_uri"], token)
    assert d.body == b"\x00hello\xff"
    assert d.header("Content-Type") == "text/plain; charset=utf-8"
    assert d.header("Content-Disposition") == "inline"  # no filename was given


@pytest_twisted.ensureDeferred
async def test_same_bytes_are_stored_once(hs: RunningServer) -> None:
    token = await _user(hs)
    m = MediaClient(hs.client_url)
    data = os.urandom(5000)
    uri1 = (await m.upload(data, token, "application/octet-stream")).json()["content_uri"]
    uri2 = (await m.upload(data, token, "application/octet-stream")).json()["content_uri"]
    assert uri1 != uri2
    store = hs.hs.services.media.files
    content = os.path.join(store.root, "content")
    files = [f for _, _, names in os.walk(content) for f in names]
    assert len(files) == 1
    # Named by the content hash, not by anything in the request.
    assert files == [hashlib.sha256(data).hexdigest()]
    assert (await m.download(uri2, token)).body == data


@pytest_twisted.ensureDeferred
async def test_download_with_file_name_and_unicode_names(hs: RunningServer) -> None:
    token = await _user(hs)
    m = MediaClient(hs.client_url)
    uri = (await m.upload(png(4, 4), token, "image/png", "Grüße aus Köln.png")).json()[
        "content_uri"]
    d = await m.download(uri, token)
    assert d.header("Content-Type") == "image/png"
    assert d.header("Content-Disposition") == (
        "inline; filename*=utf-8''Gr%C3%BC%C3%9Fe%20aus%20K%C3%B6ln.png")
    d = await m.download(uri, token, file_name='evil"; x=y.png')
    assert d.status == 200
    assert d.header("Content-Disposition") == "inline; filename*=utf-8''evil%22%3B%20x%3Dy.png"
    d = await m.download(uri, token, file_name="plain.png")
    assert d.header("Content-Disposition") == "inline; filename=plain.png"


@pytest_twisted.ensureDeferred
async def test_security_headers_on_every_media_reply(hs: RunningServer) -> None:
    token = await _user(hs)
    m = MediaClient(hs.client_url)
    uri = (await m.upload(b"<script>alert(1)</script>", token, "text/html")).json()["content_uri"]
    replies = [
        await m.download(uri, token),
        await m.thumbnail(uri, token, 32, 32),
        await m.download(uri.replace(split_mxc(uri)[1], "unknownMedia"), token),
        await m.get(f"{CLIENT_MEDIA}/config", token),
    ]
    for r in replies:
        assert r.header("Content-Security-Policy") == CSP, r.status
        assert r.header("X-Content-Type-Options") == "nosniff"
        assert r.header("Cross-Origin-Resource-Policy") == "cross-origin"
    html = replies[0]
    assert html.status == 200 and html.body == b"<script>alert(1)</script>"
    # HTML is never shown inline.
    assert html.header("Content-Disposition") == "attachment"
    assert html.header("Content-Type") == "text/html; charset=utf-8"
    assert html.header("Cache-Control") == "private, max-age=86400"


@pytest.mark.parametrize("declared, served", [
    ("image/png", "image/png"),
    ("IMAGE/PNG", "image/png"),
    ("text/plain; charset=ISO-8859-1; x=y", "text/plain; charset=iso-8859-1"),
    ("not a type", "application/octet-stream"),
    ("image/png\r\nX-Evil: 1", "application/octet-stream"),
])
@pytest_twisted.ensureDeferred
async def test_content_type_is_kept_only_when_valid(hs: RunningServer, declared: str,
                                                    served: str) -> None:
    token = await _user(hs)
    m = MediaClient(hs.client_url)
    if "\r" in declared:
        # No HTTP client sends that header; store through the service as a client would.
        uri = await hs.hs.services.media.upload("@alice:test.local", BytesIO(b"x"), declared,
                                                None)
    else:
        uri = (await m.upload(b"x", token, declared)).json()["content_uri"]
    d = await m.download(uri, token)
    assert d.status == 200
    assert d.header("Content-Type") == served
    assert d.header("X-Evil") is None


@pytest_twisted.ensureDeferred
async def test_config_endpoints(hs: RunningServer) -> None:
    token = await _user(hs)
    m = MediaClient(hs.client_url)
    for path in (f"{CLIENT_MEDIA}/config", f"{LEGACY_MEDIA}/config", "/_matrix/media/r0/config"):
        r = await m.get(path, token)
        assert (r.status, r.json()) == (200, {"m.upload.size": 50 * 1024 * 1024}), path
        assert (await m.get(path)).json()["errcode"] == "M_MISSING_TOKEN"


@pytest_twisted.ensureDeferred
async def test_authenticated_endpoints_need_a_token(hs: RunningServer) -> None:
    token = await _user(hs)
    m = MediaClient(hs.client_url)
    uri = (await m.upload(png(8, 8), token, "image/png")).json()["content_uri"]
    server, media_id = split_mxc(uri)
    calls: list[tuple[str, str, bytes | None]] = [
        ("POST", f"{LEGACY_MEDIA}/upload", b"data"),
        ("POST", "/_matrix/media/v1/create", b"{}"),
        ("PUT", f"{LEGACY_MEDIA}/upload/{server}/{media_id}", b"data"),
        ("GET", f"{CLIENT_MEDIA}/download/{server}/{media_id}", None),
        ("GET", f"{CLIENT_MEDIA}/download/{server}/{media_id}/name.png", None),
        ("GET", f"{CLIENT_MEDIA}/thumbnail/{server}/{media_id}?width=32&height=32", None),
        ("GET", f"{CLIENT_MEDIA}/preview_url?url=https%3A%2F%2Fexample.org", None),
        ("GET", f"{CLIENT_MEDIA}/config", None),
    ]
    for method, path, body in calls:
        r = await request(method, hs.client_url + path, body)
        assert (r.status, r.json()["errcode"]) == (401, "M_MISSING_TOKEN"), path
        r = await request(method, hs.client_url + path, body, access_token="mat_nonsense")
        assert (r.status, r.json()["errcode"]) == (401, "M_UNKNOWN_TOKEN"), path


@pytest_twisted.ensureDeferred
async def test_async_upload_flow(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, bob = await c.register("alice"), await c.register("bob")
    m = MediaClient(hs.client_url)
    r = await request("POST", hs.client_url + "/_matrix/media/v1/create", {},
                      access_token=alice.access_token)
    assert r.status == 200, r.body
    uri, expires = r.json()["content_uri"], r.json()["unused_expires_at"]
    server, media_id = split_mxc(uri)
    now_ms = hs.hs.services.clock.time_ms()
    assert now_ms + 23 * 3600_000 < expires <= now_ms + 24 * 3600_000

    # Not uploaded yet: a download waits up to timeout_ms, then says so.
    d = await m.download(uri, alice.access_token, timeout_ms=100)
    assert (d.status, d.json()["errcode"]) == (504, "M_NOT_YET_UPLOADED")

    put_path = f"{LEGACY_MEDIA}/upload/{server}/{media_id}"
    r = await m.upload(b"first", bob.access_token, "text/plain", path=put_path, method="PUT")
    assert (r.status, r.json()["errcode"]) == (403, "M_FORBIDDEN")

    # A download started before the upload finishes gets the content.
    pending = defer.ensureDeferred(m.download(uri, alice.access_token, timeout_ms=10_000))
    r = await m.upload(b"first", alice.access_token, "text/plain", "a.txt", path=put_path,
                       method="PUT")
    assert (r.status, r.json()) == (200, {})
    early = await pending
    assert (early.status, early.body) == (200, b"first")

    r = await m.upload(b"second", alice.access_token, "text/plain", path=put_path, method="PUT")
    assert (r.status, r.json()["errcode"]) == (409, "M_CANNOT_OVERWRITE_MEDIA")
    d = await m.download(uri, alice.access_token)
    assert (d.body, d.header("Content-Disposition")) == (b"first", "inline; filename=a.txt")

    # IDs that were never created, and other servers' IDs, cannot be uploaded to.
    r = await m.upload(b"x", alice.access_token, path=f"{LEGACY_MEDIA}/upload/{server}/nope",
                       method="PUT")
    assert (r.status, r.json()["errcode"]) == (404, "M_NOT_FOUND")
    r = await m.upload(b"x", alice.access_token, path=f"{LEGACY_MEDIA}/upload/other.org/abc",
                       method="PUT")
    assert (r.status, r.json()["errcode"]) == (404, "M_NOT_FOUND")


@pytest_twisted.ensureDeferred
async def test_pending_upload_limit_and_expiry(hs: RunningServer) -> None:
    token = await _user(hs)
    m = MediaClient(hs.client_url)
    create = hs.client_url + "/_matrix/media/v1/create"
    uris = []
    for _ in range(5):
        r = await request("POST", create, {}, access_token=token)
        assert r.status == 200
        uris.append(r.json()["content_uri"])
    r = await request("POST", create, {}, access_token=token)
    assert (r.status, r.json()["errcode"]) == (429, "M_LIMIT_EXCEEDED")

    # Uploading to one frees a slot.
    server, media_id = split_mxc(uris[0])
    r = await m.upload(b"x", token, path=f"{LEGACY_MEDIA}/upload/{server}/{media_id}",
                       method="PUT")
    assert r.status == 200
    assert (await request("POST", create, {}, access_token=token)).status == 200

    # Once expired, reserved IDs can be neither uploaded to nor downloaded.
    clock = hs.hs.services.clock
    real = clock.time_ms
    clock.time_ms = lambda: real() + 24 * 3600_000 + 1  # type: ignore[method-assign]
    try:
        server, media_id = split_mxc(uris[1])
        r = await m.upload(b"x", token, path=f"{LEGACY_MEDIA}/upload/{server}/{media_id}",
                           method="PUT")
        assert (r.status, r.json()["errcode"]) == (404, "M_NOT_FOUND")
        d = await m.download(uris[1], token)
        assert (d.status, d.json()["errcode"]) == (404, "M_NOT_FOUND")
        # And they no longer count against the limit.
        assert (await request("POST", create, {}, access_token=token)).status == 200
        gone = await hs.hs.services.media.store.get(server, media_id)
        assert gone is None  # swept by that /create
    finally:
        clock.time_ms = real  # type: ignore[method-assign]


@pytest_twisted.ensureDeferred
async def test_bad_input(hs: RunningServer) -> None:
    token = await _user(hs)
    m = MediaClient(hs.client_url)
    uri = (await m.upload(png(8, 8), token, "image/png")).json()["content_uri"]
    server, media_id = split_mxc(uri)

    async def status(path: str) -> tuple[int, str]:
        r = await m.get(path, token)
        return r.status, r.json()["errcode"]

    # Unknown media.
    assert await status(f"{CLIENT_MEDIA}/download/{server}/NoSuchMedia") == (404, "M_NOT_FOUND")
    # Bad media IDs and server names, including traversal attempts however encoded.
    for bad_id in ("..%2F..%2Fetc%2Fpasswd", "..", "a.b", "%2e%2e", "abc%00", "%C3%A9t%C3%A9"):
        assert await status(f"{CLIENT_MEDIA}/download/{server}/{bad_id}") == (
            400, "M_INVALID_PARAM"), bad_id
        assert await status(f"{LEGACY_MEDIA}/download/{server}/{bad_id}") == (
            400, "M_INVALID_PARAM"), bad_id
    for bad_server in ("..", "bad%2Fserver", "a_b", "%2e%2e%2f", ".hidden", "x:port"):
        assert await status(f"{CLIENT_MEDIA}/download/{bad_server}/{media_id}") == (
            400, "M_INVALID_PARAM"), bad_server
    # Unencoded traversal never reaches a handler.
    r = await m.get(f"{CLIENT_MEDIA}/download/{server}/../../../etc/passwd", token)
    assert r.status == 404
    # Wrong methods.
    r = await request("DELETE", f"{hs.client_url}{CLIENT_MEDIA}/download/{server}/{media_id}",
                      access_token=token)
    assert (r.status, r.json()["errcode"]) == (405, "M_UNRECOGNIZED")
    r = await request("GET", f"{hs.client_url}{LEGACY_MEDIA}/upload", access_token=token)
    assert (r.status, r.json()["errcode"]) == (405, "M_UNRECOGNIZED")
    # Bad query parameters.
    thumb = f"{CLIENT_MEDIA}/thumbnail/{server}/{media_id}"
    for query, code in [("width=32", "M_MISSING_PARAM"), ("width=a&height=3", "M_INVALID_PARAM"),
                        ("width=-3&height=3", "M_INVALID_PARAM"),
                        ("width=3&height=3&method=stretch", "M_INVALID_PARAM"),
                        ("width=3&height=3&animated=yes", "M_INVALID_PARAM")]:
        assert await status(f"{thumb}?{query}") == (400, code), query
    r = await m.upload(b"x", token, filename="bad\x01name")
    assert (r.status, r.json()["errcode"]) == (400, "M_INVALID_PARAM")
    # Remote media from an origin that cannot be reached (nothing listens there).
    r = await m.get(f"{CLIENT_MEDIA}/download/127.0.0.1:1/{media_id}", token)
    assert (r.status, r.json()["errcode"]) == (502, "M_UNKNOWN")


def _raw(method: str, url: str, token: str) -> tuple[int, dict[str, str], bytes]:
    """urllib, to see Content-Length (twisted's client keeps it out of the headers)."""
    req = urllib.request.Request(url, method=method,
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, dict(resp.headers), resp.read()


@pytest_twisted.ensureDeferred
async def test_content_length_and_head(hs: RunningServer) -> None:
    token = await _user(hs)
    m = MediaClient(hs.client_url)
    data = os.urandom(300_000)
    uri = (await m.upload(data, token)).json()["content_uri"]
    server, media_id = split_mxc(uri)
    url = f"{hs.client_url}{CLIENT_MEDIA}/download/{server}/{media_id}"
    status, headers, body = await threads.deferToThread(_raw, "GET", url, token)
    assert (status, headers["Content-Length"], body) == (200, "300000", data)
    status, headers, body = await threads.deferToThread(_raw, "HEAD", url, token)
    assert (status, headers["Content-Length"], body) == (200, "300000", b"")
    assert headers["Content-Type"] == "application/octet-stream"


@pytest_twisted.ensureDeferred
async def test_upload_over_the_limit_is_refused(db_config: DatabaseConfig, tmp_path: Any) -> None:
    server = await start_server(str(tmp_path), db_config, media={"max_upload_bytes": 1000})
    try:
        token = await _user(server)
        m = MediaClient(server.client_url)
        r = await m.get(f"{CLIENT_MEDIA}/config", token)
        assert r.json() == {"m.upload.size": 1000}
        assert (await m.upload(b"x" * 1000, token)).status == 200
        r = await m.upload(b"x" * 1001, token)
        assert (r.status, r.json()["errcode"]) == (413, "M_TOO_LARGE")
        r = await m.upload(b"x" * 200_000, token)
        assert (r.status, r.json()["errcode"]) == (413, "M_TOO_LARGE")
        # The async upload has the same limit.
        r = await request("POST", server.client_url + "/_matrix/media/v1/create", {},
                          access_token=token)
        srv, media_id = split_mxc(r.json()["content_uri"])
        r = await m.upload(b"x" * 5000, token, path=f"{LEGACY_MEDIA}/upload/{srv}/{media_id}",
                           method="PUT")
        assert (r.status, r.json()["errcode"]) == (413, "M_TOO_LARGE")
        # Nothing of the refused uploads was kept.
        tmp_dir = server.hs.services.media.files.tmp_dir
        assert os.listdir(tmp_dir) == []
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_legacy_endpoints_are_frozen_for_new_media(db_config: DatabaseConfig,
                                                        tmp_path: Any) -> None:
    # Media stored while the legacy endpoints were enabled stays reachable through them...
    data_dir = str(tmp_path)
    server = await start_server(data_dir, db_config,
                                media={"enable_legacy_unauthenticated_media": True})
    try:
        token = await _user(server)
        m = MediaClient(server.client_url)
        old_uri = (await m.upload(png(50, 40), token, "image/png")).json()["content_uri"]
        r = await m.download(old_uri, None, legacy=True)
        assert (r.status, r.header("Cache-Control")) == (
            200, "public, max-age=86400, s-maxage=86400")
        assert (await m.thumbnail(old_uri, None, 32, 32, "crop", legacy=True)).status == 200
    finally:
        await server.stop()
    # ...after the freeze (the default), while media stored since is not.
    server = await start_server(data_dir, db_config)
    try:
        m = MediaClient(server.client_url)
        c = Client(server.client_url)
        login = await c.login("alice", "s3cret-pass")
        token = login.json()["access_token"]
        new_uri = (await m.upload(png(50, 40), token, "image/png")).json()["content_uri"]
        assert (await m.download(old_uri, None, legacy=True)).status == 200
        for r in (await m.download(new_uri, None, legacy=True),
                  await m.download(new_uri, None, "x.png", legacy=True),
                  await m.thumbnail(new_uri, None, 32, 32, legacy=True)):
            assert (r.status, r.json()["errcode"]) == (404, "M_NOT_FOUND")
        # The authenticated endpoints serve both.
        assert (await m.download(new_uri, token)).status == 200
        assert (await m.download(old_uri, token)).status == 200
    finally:
        await server.stop()


def test_header_rules() -> None:
    assert content_disposition("inline", None) == "inline"
    assert content_disposition("inline", "a.png") == "inline; filename=a.png"
    # Anything that could end or extend the header is percent-encoded.
    assert content_disposition("attachment", 'a"\r\nSet-Cookie: x;.txt') == (
        "attachment; filename*=utf-8''a%22%0D%0ASet-Cookie%3A%20x%3B.txt")
    assert content_disposition("inline", "日本.jpg") == (
        "inline; filename*=utf-8''%E6%97%A5%E6%9C%AC.jpg")
    assert disposition_kind("image/png") == "inline"
    assert disposition_kind("text/plain; charset=utf-8") == "inline"
    for risky in ("text/html", "image/svg+xml", "application/javascript", "application/pdf"):
        assert disposition_kind(risky) == "attachment", risky
    assert clean_media_type("Image/JPEG") == "image/jpeg"
    assert clean_media_type('text/plain; format=flowed; charset="UTF-8"') == (
        "text/plain; charset=utf-8")
    assert clean_media_type("text/plain; charset=a b") == "text/plain"
    assert clean_media_type("nonsense") is None
    assert clean_media_type("") is None
