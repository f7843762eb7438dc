"""Remote media over federation: the multipart parser on its own, then two real servers
over TLS (a user of b.test downloads a.test media and thumbnails through the authenticated
client endpoints; many downloads, one fetch; unknown and too-large media; the origin's
thumbnails of an image too large to fetch), then an origin that behaves like a server from
before Matrix 1.11 (legacy fallback, downloads and thumbnails) or that answers with a
``Location`` part."""

from __future__ import annotations

import io
import json
import os
from typing import Any

import pytest
import pytest_twisted
from PIL import Image
from twisted.internet import defer, reactor
from twisted.web import resource, server

from federation.transport.multipart import (
    MediaMultipartParser,
    MultipartError,
    disposition_filename,
    media_parts,
    parse_boundary,
)
from homeserver.http.site import REQUESTS
from homeserver.tls import ensure_certificate, server_context
from tests.support.client import Client
from tests.support.http import request
from tests.support.media import MediaClient, png, split_mxc
from tests.support.server import RunningServer, free_port, start_server

FED_DOWNLOAD = "/_matrix/federation/v1/media/download/{mediaId}"
FED_THUMBNAIL = "/_matrix/federation/v1/media/thumbnail/{mediaId}"
MAX_REMOTE = 100_000


# -- the parser ---------------------------------------------------------------------------------


def _parse(body: bytes, boundary: bytes, chunk: int) -> tuple[Any, bytes]:
    out = bytearray()
    parser = MediaMultipartParser(boundary, out.extend)
    for i in range(0, len(body), chunk):
        parser.feed(body[i:i + chunk])
    return parser.finish(), bytes(out)


def test_multipart_round_trip_in_any_chunking() -> None:
    # File bytes that contain CRLFs, dashes and most of the delimiter.
    boundary = "abc123"
    data = b"\r\n--abc12\r\n--abc1\r\n" + os.urandom(3000) + b"\r\n--"
    prefix, suffix = media_parts(boundary, {}, {
        "Content-Type": "image/png",
        "Content-Disposition": "inline; filename*=utf-8''caf%C3%A9.png"})
    body = b"preamble\r\n" + prefix + data + suffix + b"epilogue"
    assert parse_boundary(f'multipart/mixed; boundary="{boundary}"') == b"abc123"
    for chunk in (1, 7, 64, len(body)):
        parts, out = _parse(body, b"abc123", chunk)
        assert out == data
        assert parts.metadata == {} and parts.content_type == "image/png"
        assert parts.filename == "café.png" and parts.location is None


def test_multipart_location_and_malformed_bodies() -> None:
    body = (b"--b\r\nContent-Type: application/json\r\n\r\n{}\r\n"
            b"--b\r\nLocation: https://cdn.example/x\r\n\r\n\r\n--b--\r\n")
    for raw in (body, body.replace(b"\r\n\r\n\r\n--b--", b"\r\n\r\n--b--")):
        parts, out = _parse(raw, b"b", 5)
        assert parts.location == "https://cdn.example/x" and out == b""

    bad = [
        b"--b\r\n\r\n{}\r\n--b--\r\n",  # one part
        b"--b\r\n\r\n{}\r\n--b\r\n\r\nx\r\n--b\r\n\r\ny\r\n--b--\r\n",  # three
        b"--b\r\n\r\n[1]\r\n--b\r\n\r\nx\r\n--b--\r\n",  # metadata not an object
        b"--b\r\n\r\n{}\r\n--b\r\n\r\nx",  # truncated
        b"x" * 20_000,  # no delimiter at all
        b"--b\r\nBroken header\r\n\r\n{}\r\n--b--\r\n",
    ]
    for raw in bad:
        with pytest.raises(MultipartError):
            _parse(raw, b"b", 100)
    for ctype in ("multipart/mixed", "image/png; boundary=x", "multipart/mixed; boundary=\"\""):
        with pytest.raises(MultipartError):
            parse_boundary(ctype)
    assert disposition_filename('attachment; filename="a b.txt"') == "a b.txt"
    assert disposition_filename("inline") is None


def test_multipart_sink_error_stops_parsing() -> None:
    prefix, suffix = media_parts("q", {}, {"Content-Type": "application/octet-stream"})
    seen = 0

    def sink(data: bytes) -> None:
        nonlocal seen
        seen += len(data)
        if seen > 1000:
            raise OverflowError("cap")

    parser = MediaMultipartParser(b"q", sink)
    with pytest.raises(OverflowError):
        parser.feed(prefix + b"z" * 5000 + suffix)


# -- two of our servers --------------------------------------------------------------------------


@pytest.fixture
def pair_config() -> dict[str, Any]:
    return {"media": {"max_remote_bytes": MAX_REMOTE}}


def _served(template: str) -> float:
    return sum(REQUESTS.labels("GET", template, code)._value.get()  # type: ignore[attr-defined]
               for code in ("200", "404", "502"))


@pytest_twisted.ensureDeferred
async def test_remote_media_between_two_servers(
    pair: tuple[RunningServer, RunningServer],
) -> None:
    a, b = pair
    alice = await Client(a.client_url).register("alice")
    bob = await Client(b.client_url).register("bob")
    ma, mb = MediaClient(a.client_url), MediaClient(b.client_url)

    image = png(640, 480, (10, 200, 90))
    r = await ma.upload(image, alice.access_token, "image/png", "green field.png")
    assert r.status == 200, r.body
    uri = r.json()["content_uri"]

    # Many clients at once: one federation fetch.
    before = _served(FED_DOWNLOAD)
    downloads = await defer.gatherResults([
        defer.ensureDeferred(mb.download(uri, bob.access_token)) for _ in range(8)])
    assert {r.status for r in downloads} == {200}
    assert all(r.body == image for r in downloads)
    assert _served(FED_DOWNLOAD) - before == 1
    assert downloads[0].header("Content-Type") == "image/png"
    assert downloads[0].header("Content-Disposition") == \
        "inline; filename*=utf-8''green%20field.png"

    # Thumbnails on b, made from the cached file, equal the origin's byte for byte.
    for width, height, method in ((96, 96, "crop"), (320, 240, "scale")):
        ta = await ma.thumbnail(uri, alice.access_token, width, height, method)
        tb = await mb.thumbnail(uri, bob.access_token, width, height, method)
        assert ta.status == tb.status == 200, tb.body
        assert tb.body == ta.body and tb.header("Content-Type") == ta.header("Content-Type")
    assert _served(FED_DOWNLOAD) - before == 1

    # What a.test does not have is 404 at b; a file over b's remote limit is refused.
    server_name, _ = split_mxc(uri)
    r = await mb.download(f"mxc://{server_name}/NoSuchMedia", bob.access_token)
    assert (r.status, r.json()["errcode"]) == (404, "M_NOT_FOUND")
    big = os.urandom(MAX_REMOTE + 1)
    r = await ma.upload(big, alice.access_token, "application/octet-stream")
    big_uri = r.json()["content_uri"]
    r = await mb.download(big_uri, bob.access_token)
    assert (r.status, r.json()["errcode"]) == (502, "M_TOO_LARGE")
    assert (await ma.download(big_uri, alice.access_token)).body == big
    assert os.listdir(b.hs.services.media.files.tmp_dir) == []  # type: ignore[union-attr]

    # An image too large to fetch whole: its thumbnails come from the origin, once.
    noise = io.BytesIO()
    Image.frombytes("RGB", (300, 300), os.urandom(270_000)).save(noise, "PNG")
    assert len(noise.getvalue()) > MAX_REMOTE
    r = await ma.upload(noise.getvalue(), alice.access_token, "image/png")
    noise_uri = r.json()["content_uri"]
    r = await mb.download(noise_uri, bob.access_token)
    assert (r.status, r.json()["errcode"]) == (502, "M_TOO_LARGE")
    before = _served(FED_THUMBNAIL)
    ta = await ma.thumbnail(noise_uri, alice.access_token, 96, 96, "crop")
    for width in (96, 96, 40):  # 40x40: the 96x96 crop answers it
        tb = await mb.thumbnail(noise_uri, bob.access_token, width, width, "crop")
        assert tb.status == 200, tb.body
        assert tb.body == ta.body and tb.header("Content-Type") == "image/png"
    assert _served(FED_THUMBNAIL) - before == 1


@pytest_twisted.ensureDeferred
async def test_federation_media_endpoints_directly(
    pair: tuple[RunningServer, RunningServer],
) -> None:
    a, b = pair
    alice = await Client(a.client_url).register("alice")
    image = png(300, 200)
    r = await MediaClient(a.client_url).upload(image, alice.access_token, "image/png", "p.png")
    _, media_id = split_mxc(r.json()["content_uri"])
    assert b.hs.services is not None
    client = b.hs.services.federation_client

    async def get(path: str, args: dict[str, str] | None = None) -> tuple[dict[str, list[str]],
                                                                        bytes]:
        got: dict[str, Any] = {}
        body = bytearray()

        def start(code: int, headers: Any) -> Any:
            got.update(headers)
            return body.extend

        await client.get_stream("a.test", path, args, start)
        return got, bytes(body)

    headers, body = await get(f"/_matrix/federation/v1/media/download/{media_id}")
    boundary = parse_boundary(headers["content-type"][0])
    parts, data = _parse(body, boundary, len(body))
    assert data == image and parts.metadata == {} and parts.content_type == "image/png"
    assert parts.headers["content-disposition"] == "inline; filename=p.png"

    headers, body = await get(f"/_matrix/federation/v1/media/thumbnail/{media_id}",
                              {"width": "32", "height": "32", "method": "crop"})
    parts, data = _parse(body, parse_boundary(headers["content-type"][0]), 10)
    assert parts.content_type == "image/png" and data[:8] == b"\x89PNG\r\n\x1a\n"

    # Unsigned: 401; bad input: the spec's errors; nothing cached from elsewhere is served.
    r = await request("GET", f"{a.federation_url}/_matrix/federation/v1/media/download/{media_id}")
    assert (r.status, r.json()["errcode"]) == (401, "M_UNAUTHORIZED")
    from federation.transport.client import HttpResponseError

    for path, args, status, errcode in (
        (f"/_matrix/federation/v1/media/thumbnail/{media_id}", {"width": "x", "height": "3"},
         400, "M_INVALID_PARAM"),
        ("/_matrix/federation/v1/media/download/bad%2Fid", None, 400, "M_INVALID_PARAM"),
        ("/_matrix/federation/v1/media/download/unknown", None, 404, "M_NOT_FOUND"),
    ):
        with pytest.raises(HttpResponseError) as e:
            await get(path, args)
        assert (e.value.status, e.value.errcode) == (status, errcode), path


# -- an origin from before Matrix 1.11, and one that redirects ----------------------------------


class _OldOrigin(resource.Resource):
    """Speaks like an older server: no federation media endpoints (404 M_UNRECOGNIZED) but
    the legacy download; ``moved`` answers with a Location part pointing at ``/cdn``."""

    isLeaf = True

    def __init__(self, files: dict[str, bytes]) -> None:
        super().__init__()
        self.files = files
        self.seen: list[tuple[bytes, dict[bytes, list[bytes]], bool]] = []
        self.base = ""

    def render_GET(self, request: server.Request) -> bytes:
        signed = (request.getHeader("authorization") or "").startswith("X-Matrix ")
        self.seen.append((request.path, request.args, signed))
        path = request.path.decode()
        if path in ("/_matrix/federation/v1/media/download/moved",
                    "/_matrix/federation/v1/media/download/insecure"):
            target = f"{self.base}/cdn/moved"
            if path.endswith("insecure"):
                target = target.replace("https:", "http:")
            request.setHeader("Content-Type", "multipart/mixed; boundary=zz")
            return (b"--zz\r\nContent-Type: application/json\r\n\r\n{}\r\n--zz\r\n"
                    b"Location: " + target.encode() + b"\r\n\r\n--zz--\r\n")
        if path.startswith("/_matrix/federation/v1/media/"):
            request.setResponseCode(404)
            return json.dumps({"errcode": "M_UNRECOGNIZED", "error": "Unrecognized"}).encode()
        if path == "/cdn/moved":
            request.setHeader("Content-Type", "video/mp4")
            return self.files["moved"]
        if path == "/_matrix/media/v3/thumbnail/old.test/huge":
            request.setHeader("Content-Type", "image/png")
            return png(64, 64)
        if path.startswith("/_matrix/media/v3/download/old.test/"):
            media_id = path.rsplit("/", 1)[1]
            if media_id in self.files:
                request.setHeader("Content-Type", "text/plain")
                request.setHeader("Content-Disposition", "attachment; filename=\"notes.txt\"")
                return self.files[media_id]
        request.setResponseCode(404)
        return json.dumps({"errcode": "M_NOT_FOUND", "error": "Not found"}).encode()


@pytest_twisted.ensureDeferred
async def test_legacy_fallback_and_location(db_config: Any, tmp_path: Any) -> None:
    files = {"legacy": b"plain text\r\n" * 100, "moved": os.urandom(5_000),
             "huge": os.urandom(20_000)}
    origin = _OldOrigin(files)
    cert, key = str(tmp_path / "old.crt"), str(tmp_path / "old.key")
    ensure_certificate(cert, key, "old.test")
    port = free_port("127.0.0.2")
    listening = reactor.listenSSL(  # type: ignore[attr-defined]
        port, server.Site(origin), server_context(cert, key), interface="127.0.0.2")
    origin.base = f"https://127.0.0.2:{port}"
    hs = await start_server(str(tmp_path / "b"), db_config, "b.test", federation={
        "static_servers": {"old.test": f"127.0.0.2:{port}"}},
        media={"max_remote_bytes": 10_000})
    try:
        bob = await Client(hs.client_url).register("bob")
        m = MediaClient(hs.client_url)
        r = await m.download("mxc://old.test/legacy", bob.access_token)
        assert r.status == 200 and r.body == files["legacy"]
        assert r.header("Content-Type") == "text/plain; charset=utf-8"
        assert r.header("Content-Disposition") == "inline; filename=notes.txt"
        legacy = [s for s in origin.seen if s[0].startswith(b"/_matrix/media/v3/")]
        assert legacy and legacy[0][1][b"allow_remote"] == [b"false"] and legacy[0][2]

        r = await m.download("mxc://old.test/moved", bob.access_token)
        assert r.status == 200 and r.body == files["moved"]
        assert r.header("Content-Type") == "video/mp4"
        assert (b"/cdn/moved", {}, False) in origin.seen  # the redirect is not signed

        # Too large to fetch whole: the legacy thumbnail endpoint, with allow_remote=false.
        r = await m.download("mxc://old.test/huge", bob.access_token)
        assert (r.status, r.json()["errcode"]) == (502, "M_TOO_LARGE")
        r = await m.thumbnail("mxc://old.test/huge", bob.access_token, 64, 64, "crop")
        assert r.status == 200 and r.body == png(64, 64)
        thumb = [s for s in origin.seen if s[0] == b"/_matrix/media/v3/thumbnail/old.test/huge"]
        assert thumb and thumb[0][1][b"width"] == [b"64"]
        assert thumb[0][1][b"allow_remote"] == [b"false"]

        # A redirect to plain http is not followed.
        r = await m.download("mxc://old.test/insecure", bob.access_token)
        assert (r.status, r.json()["errcode"]) == (502, "M_UNKNOWN")

        r = await m.download("mxc://old.test/gone", bob.access_token)
        assert (r.status, r.json()["errcode"]) == (404, "M_NOT_FOUND")
    finally:
        await hs.stop()
        await listening.stopListening()
