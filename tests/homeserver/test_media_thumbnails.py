"""Thumbnails of real PNG, JPEG and GIF files over HTTP on both engines: the sizes the spec
asks for, scale keeping the aspect ratio, crop giving the box, no upscaling, animation only
when asked for, other sizes made on demand (bounded); and the pure sizing and selection
rules."""

from __future__ import annotations

import io
from typing import Any

import pytest
import pytest_twisted
from PIL import Image

from homeserver.config import DatabaseConfig
from homeserver.config.model import DEFAULT_THUMBNAIL_SIZES
from homeserver.services.media import thumbnailer
from homeserver.services.media.service import MAX_ON_DEMAND_THUMBNAILS
from homeserver.storage.media import Thumbnail
from tests.support.client import Client
from tests.support.media import MediaClient, gif, jpeg, open_image, png, split_mxc
from tests.support.server import RunningServer, start_server


async def _setup(hs: RunningServer) -> tuple[MediaClient, str]:
    token = (await Client(hs.client_url).register("alice")).access_token
    return MediaClient(hs.client_url), token


async def _thumb(m: MediaClient, uri: str, token: str, w: int, h: int, method: str,
                 **query: Any) -> Image.Image:
    r = await m.thumbnail(uri, token, w, h, method, **query)
    assert r.status == 200, r.body
    assert r.header("Content-Disposition").startswith("inline; filename=thumbnail.")
    im = open_image(r.body)
    expected_type = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}[im.format]
    assert r.header("Content-Type") == expected_type
    return im


@pytest_twisted.ensureDeferred
async def test_png_thumbnails_scale_and_crop(hs: RunningServer) -> None:
    m, token = await _setup(hs)
    uri = (await m.upload(png(1000, 800), token, "image/png")).json()["content_uri"]
    # scale: fits the box, aspect kept (1000x800 -> 300x240 inside 320x240).
    assert (await _thumb(m, uri, token, 320, 240, "scale")).size == (300, 240)
    assert (await _thumb(m, uri, token, 640, 480, "scale")).size == (600, 480)
    assert (await _thumb(m, uri, token, 800, 600, "scale")).size == (750, 600)
    # crop: exactly the box.
    assert (await _thumb(m, uri, token, 32, 32, "crop")).size == (32, 32)
    assert (await _thumb(m, uri, token, 96, 96, "crop")).size == (96, 96)
    # Sizes between: the next larger one, never a smaller one.
    assert (await _thumb(m, uri, token, 50, 50, "crop")).size == (96, 96)
    im = await _thumb(m, uri, token, 400, 300, "scale")
    assert im.size == (600, 480) and im.format == "PNG"
    # Larger than any thumbnail: made on demand, never larger than the image.
    assert (await _thumb(m, uri, token, 2000, 2000, "scale")).size == (1000, 800)


@pytest_twisted.ensureDeferred
async def test_thumbnails_of_other_sizes_on_demand(hs: RunningServer) -> None:
    m, token = await _setup(hs)
    uri = (await m.upload(png(1000, 800), token, "image/png")).json()["content_uri"]
    server, media_id = split_mxc(uri)
    store = hs.hs.services.media.store  # type: ignore[union-attr]
    stored = len(await store.thumbnails(server, media_id))
    # A crop of a shape no configured size has: made once, then served from the store.
    assert (await _thumb(m, uri, token, 200, 100, "crop")).size == (200, 100)
    assert (await _thumb(m, uri, token, 200, 100, "crop")).size == (200, 100)
    assert len(await store.thumbnails(server, media_id)) == stored + 1
    # A configured size that answers the request makes nothing new.
    assert (await _thumb(m, uri, token, 80, 60, "scale")).size == (300, 240)
    assert len(await store.thumbnails(server, media_id)) == stored + 1
    # A bounded number of sizes per media; past it, the best stored one.
    for i in range(MAX_ON_DEMAND_THUMBNAILS):
        await _thumb(m, uri, token, 50 + i, 20, "crop")
    assert len(await store.thumbnails(server, media_id)) == 5 + MAX_ON_DEMAND_THUMBNAILS
    assert (await _thumb(m, uri, token, 70, 20, "crop")).size != (70, 20)


@pytest_twisted.ensureDeferred
async def test_jpeg_thumbnails_stay_jpeg(hs: RunningServer) -> None:
    m, token = await _setup(hs)
    uri = (await m.upload(jpeg(1200, 900), token, "image/jpeg")).json()["content_uri"]
    im = await _thumb(m, uri, token, 640, 480, "scale")
    assert (im.format, im.size) == ("JPEG", (640, 480))
    im = await _thumb(m, uri, token, 96, 96, "crop")
    assert (im.format, im.size) == ("JPEG", (96, 96))
    # A portrait crop request of a landscape image still fills the box.
    im = await _thumb(m, uri, token, 32, 32, "crop")
    assert im.size == (32, 32)


@pytest_twisted.ensureDeferred
async def test_small_images_are_never_upscaled(hs: RunningServer) -> None:
    m, token = await _setup(hs)
    uri = (await m.upload(png(60, 40), token, "image/png")).json()["content_uri"]
    assert (await _thumb(m, uri, token, 800, 600, "scale")).size == (60, 40)
    assert (await _thumb(m, uri, token, 32, 32, "crop")).size == (32, 32)
    # 96x96 crop of a 60x40 image: the largest square it has, unscaled.
    assert (await _thumb(m, uri, token, 96, 96, "crop")).size == (40, 40)


@pytest_twisted.ensureDeferred
async def test_gif_thumbnails_static_unless_animation_asked_for(hs: RunningServer) -> None:
    m, token = await _setup(hs)
    still = (await m.upload(gif(400, 300), token, "image/gif")).json()["content_uri"]
    moving = (await m.upload(gif(400, 300, frames=5), token, "image/gif")).json()["content_uri"]

    # A still GIF: static thumbnails, even with animated=true.
    im = await _thumb(m, still, token, 320, 240, "scale", animated="true")
    assert im.size == (320, 240) and not getattr(im, "is_animated", False)

    # An animated GIF without animated=true: static.
    for query in ({}, {"animated": "false"}):
        im = await _thumb(m, moving, token, 320, 240, "scale", **query)
        assert im.format == "PNG" and not getattr(im, "is_animated", False)
    # With animated=true: an animated WebP with every frame, at the asked size.
    im = await _thumb(m, moving, token, 320, 240, "scale", animated="true")
    assert im.format == "WEBP" and im.is_animated and im.n_frames == 5
    assert im.size == (320, 240)
    im = await _thumb(m, moving, token, 96, 96, "crop", animated="true")
    assert im.is_animated and im.size == (96, 96)


@pytest_twisted.ensureDeferred
async def test_what_cannot_be_thumbnailed(hs: RunningServer) -> None:
    m, token = await _setup(hs)
    not_image = (await m.upload(b"plain text", token, "text/plain")).json()["content_uri"]
    r = await m.thumbnail(not_image, token, 32, 32)
    assert (r.status, r.json()["errcode"]) == (400, "M_UNKNOWN")
    # Claims to be an image, is not.
    fake = (await m.upload(b"\x89PNG but not really", token, "image/png")).json()["content_uri"]
    r = await m.thumbnail(fake, token, 32, 32)
    assert (r.status, r.json()["errcode"]) == (400, "M_UNKNOWN")
    # The download of it is unaffected.
    assert (await m.download(fake, token)).body == b"\x89PNG but not really"


@pytest_twisted.ensureDeferred
async def test_images_over_the_pixel_limit_get_no_thumbnails(db_config: DatabaseConfig,
                                                            tmp_path: Any) -> None:
    server = await start_server(str(tmp_path), db_config, media={"max_image_pixels": 10_000})
    try:
        m, token = await _setup(server)
        uri = (await m.upload(png(200, 100), token, "image/png")).json()["content_uri"]
        r = await m.thumbnail(uri, token, 32, 32, "crop")
        assert (r.status, r.json()["errcode"]) == (413, "M_TOO_LARGE")
        ok = (await m.upload(png(100, 100), token, "image/png")).json()["content_uri"]
        assert (await _thumb(m, ok, token, 32, 32, "crop")).size == (32, 32)
    finally:
        await server.stop()


# -- the pure rules ------------------------------------------------------------------------------


@pytest.mark.parametrize("size, box, expected", [
    ((1000, 800), (320, 240), (300, 240)),
    ((800, 1000), (320, 240), (192, 240)),
    ((100, 50), (800, 600), (100, 50)),      # never upscaled
    ((10000, 10), (320, 240), (320, 1)),     # at least one pixel
])
def test_scale_size(size: tuple[int, int], box: tuple[int, int],
                    expected: tuple[int, int]) -> None:
    assert thumbnailer.scale_size(*size, *box) == expected


@pytest.mark.parametrize("size, box, expected", [
    ((1000, 800), (96, 96), (96, 96)),
    ((800, 1000), (96, 32), (96, 32)),
    ((60, 40), (96, 96), (40, 40)),          # smaller than the box: its aspect, unscaled
    ((200, 50), (96, 96), (50, 50)),
])
def test_crop_output(size: tuple[int, int], box: tuple[int, int],
                     expected: tuple[int, int]) -> None:
    class Spec:
        width, height, method = box[0], box[1], "crop"

    assert thumbnailer.output_size(*size, Spec()) == expected


def _t(w: int, h: int, method: str, animated: bool = False, length: int = 1) -> Thumbnail:
    return Thumbnail(w, h, method, animated, "image/png", "0" * 64, length)


def test_selection() -> None:
    thumbs = [_t(32, 32, "crop"), _t(96, 96, "crop"), _t(300, 240, "scale"),
              _t(600, 480, "scale"), _t(750, 600, "scale"), _t(96, 96, "crop", animated=True)]
    assert thumbnailer.select(thumbs, 32, 32, "crop", False) == thumbs[0]
    assert thumbnailer.select(thumbs, 33, 33, "crop", False) == thumbs[1]
    assert thumbnailer.select(thumbs, 96, 96, "crop", True) == thumbs[5]
    assert thumbnailer.select(thumbs, 32, 32, "crop", True) == thumbs[5]  # only animated one
    # Scale keeps the image's aspect: reaching the box on one side is enough.
    assert thumbnailer.select(thumbs, 320, 240, "scale", False) == thumbs[2]
    assert thumbnailer.select(thumbs, 400, 300, "scale", False) == thumbs[3]
    assert thumbnailer.select(thumbs, 1, 1, "scale", False) == thumbs[2]
    assert thumbnailer.select(thumbs, 5000, 5000, "scale", False) == thumbs[4]
    # No thumbnails of the method asked for: the other method's.
    assert thumbnailer.select(thumbs[:2], 320, 240, "scale", False) == thumbs[1]
    assert thumbnailer.select([], 32, 32, "crop", False) is None


def test_generate_handles_transparency_and_exif_rotation(tmp_path: Any) -> None:
    # A transparent PNG keeps its alpha channel.
    path = tmp_path / "t.png"
    Image.new("RGBA", (200, 100), (0, 0, 0, 0)).save(path)
    out = thumbnailer.generate(str(path), DEFAULT_THUMBNAIL_SIZES, 10**8)
    assert {(g.width, g.height, g.method) for g in out} == {
        (32, 32, "crop"), (96, 96, "crop"), (200, 100, "scale")}
    assert all(Image.open(io.BytesIO(g.data)).mode == "RGBA" for g in out)
    # A JPEG whose EXIF says "rotate 90°" is thumbnailed as it is seen: portrait.
    path = tmp_path / "r.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (400, 200)).save(path, exif=exif)
    assert thumbnailer.probe(str(path)).width == 200
    out = thumbnailer.generate(str(path), DEFAULT_THUMBNAIL_SIZES, 10**8)
    scaled = [g for g in out if g.method == "scale"]
    assert [(g.width, g.height) for g in scaled] == [(120, 240), (200, 400)]
