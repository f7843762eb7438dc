"""Media test helpers: real images made with Pillow, and raw-bytes calls to the media API."""

from __future__ import annotations

import io
from urllib.parse import quote, urlencode

from PIL import Image

from tests.support.http import Response, request

CLIENT_MEDIA = "/_matrix/client/v1/media"
LEGACY_MEDIA = "/_matrix/media/v3"


def png(width: int, height: int, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "PNG")
    return buf.getvalue()


def jpeg(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    im = Image.new("RGB", (width, height), (10, 120, 200))
    # Some structure, so the encoder has something to do.
    for x in range(0, width, 7):
        im.putpixel((x, x * height // max(width, 1)), (255, 255, 255))
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def gif(width: int, height: int, frames: int = 1) -> bytes:
    images = [Image.new("RGB", (width, height), (i * 50 % 256, 100, 255 - i * 30 % 256))
              for i in range(frames)]
    buf = io.BytesIO()
    if frames > 1:
        images[0].save(buf, "GIF", save_all=True, append_images=images[1:], duration=80, loop=0)
    else:
        images[0].save(buf, "GIF")
    return buf.getvalue()


def open_image(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def split_mxc(uri: str) -> tuple[str, str]:
    assert uri.startswith("mxc://"), uri
    server, media_id = uri[len("mxc://"):].split("/", 1)
    return server, media_id


class MediaClient:
    """Raw media calls against one server (bytes in, bytes out)."""

    def __init__(self, base_url: str) -> None:
        self.base = base_url.rstrip("/")

    async def upload(self, data: bytes, token: str | None, content_type: str | None = None,
                     filename: str | None = None, path: str = f"{LEGACY_MEDIA}/upload",
                     method: str = "POST") -> Response:
        url = self.base + path
        if filename is not None:
            url += "?" + urlencode({"filename": filename})
        headers = {"Content-Type": content_type or "application/octet-stream"}
        return await request(method, url, data, headers=headers, access_token=token)

    async def get(self, path: str, token: str | None = None, **query: object) -> Response:
        url = self.base + path
        if query:
            url += "?" + urlencode({k: str(v) for k, v in query.items()})
        return await request("GET", url, access_token=token)

    async def download(self, uri: str, token: str | None, file_name: str | None = None,
                       legacy: bool = False, **query: object) -> Response:
        server, media_id = split_mxc(uri)
        prefix = LEGACY_MEDIA if legacy else CLIENT_MEDIA
        path = f"{prefix}/download/{server}/{media_id}"
        if file_name is not None:
            path += "/" + quote(file_name, safe="")
        return await self.get(path, token, **query)

    async def thumbnail(self, uri: str, token: str | None, width: int, height: int,
                        method: str = "scale", legacy: bool = False,
                        **query: object) -> Response:
        server, media_id = split_mxc(uri)
        prefix = LEGACY_MEDIA if legacy else CLIENT_MEDIA
        return await self.get(f"{prefix}/thumbnail/{server}/{media_id}", token,
                              width=width, height=height, method=method, **query)
