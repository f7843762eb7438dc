"""A real client library (matrix-nio) against a real server process: upload an image, download
it back byte for byte, and fetch its thumbnails."""

from __future__ import annotations

import asyncio
import io
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image

from homeserver.config import DatabaseConfig
from tests.support.media import jpeg
from tests.support.process import ServerProcess, write_config

nio = pytest.importorskip("nio")


@pytest.fixture
def server(db_config: DatabaseConfig, tmp_path: Any) -> Iterator[ServerProcess]:
    proc = write_config(str(tmp_path), db_config.url, "--enable-registration")
    proc.start()
    try:
        yield proc
    finally:
        assert proc.stop(signal.SIGTERM) == 0


async def _flow(base_url: str) -> None:
    client = nio.AsyncClient(base_url, "alice")
    try:
        resp = await client.register("alice", "wonderland-pw")
        assert isinstance(resp, nio.RegisterResponse), resp

        image = jpeg(1024, 768)
        upload, keys = await client.upload(
            io.BytesIO(image), content_type="image/jpeg", filename="holiday.jpg",
            filesize=len(image),
        )
        assert isinstance(upload, nio.UploadResponse), upload
        assert keys is None
        assert upload.content_uri.startswith("mxc://proc.test/")
        server_name, media_id = upload.content_uri[len("mxc://"):].split("/")

        download = await client.download(mxc=upload.content_uri)
        assert isinstance(download, nio.DownloadResponse), download
        assert download.body == image
        assert download.content_type == "image/jpeg"
        assert download.filename == "holiday.jpg"

        thumb = await client.thumbnail(server_name, media_id, 320, 240,
                                       method=nio.ResizingMethod.scale)
        assert isinstance(thumb, nio.ThumbnailResponse), thumb
        assert thumb.content_type == "image/jpeg"
        assert Image.open(io.BytesIO(thumb.body)).size == (320, 240)

        avatar = await client.thumbnail(server_name, media_id, 96, 96,
                                        method=nio.ResizingMethod.crop)
        assert isinstance(avatar, nio.ThumbnailResponse), avatar
        assert Image.open(io.BytesIO(avatar.body)).size == (96, 96)

        missing = await client.thumbnail(server_name, "NoSuchMedia", 96, 96)
        assert isinstance(missing, nio.ThumbnailError)
        assert missing.transport_response.status == 404
    finally:
        await client.close()


def test_nio_upload_and_thumbnail(server: ServerProcess) -> None:
    asyncio.run(_flow(server.client_url))
