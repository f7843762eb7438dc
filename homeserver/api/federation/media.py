"""Our media for other servers: ``GET /_matrix/federation/v1/media/download/{mediaId}`` and
``/thumbnail/{mediaId}`` (X-Matrix authenticated). The answer is ``multipart/mixed``: an
empty JSON metadata part, then the file with its type and disposition, streamed from disk
between the two framing pieces. Only media uploaded here is served (never our cache of other
servers' media); quarantined media is 404 like anywhere else.
"""

from __future__ import annotations

import io
from typing import BinaryIO

from federation.transport.multipart import media_parts, new_boundary
from homeserver.api.federation.auth import authenticate_origin
from homeserver.api.media import (
    THUMBNAIL_EXTENSIONS,
    bool_param,
    content_disposition,
    dimension_param,
    disposition_kind,
    served_type,
    timeout_param,
)
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import Router
from homeserver.http.site import FileResponse
from homeserver.services.registry import Services

PREFIX = "/_matrix/federation/v1/media"


class _Framed(io.RawIOBase):
    """``prefix``, then the file, then ``suffix``, read as one stream (what the site's
    file sender reads in chunks); closing closes the file."""

    def __init__(self, prefix: bytes, file: BinaryIO, suffix: bytes) -> None:
        super().__init__()
        self._pieces: list[bytes | BinaryIO] = [prefix, file, suffix]
        self._file = file

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while self._pieces:
            piece = self._pieces[0]
            if isinstance(piece, bytes):
                n = min(len(buffer), len(piece))
                buffer[:n] = piece[:n]
                if n == len(piece):
                    self._pieces.pop(0)
                else:
                    self._pieces[0] = piece[n:]
                return n
            data = piece.read(len(buffer))
            if data:
                buffer[: len(data)] = data
                return len(data)
            self._pieces.pop(0)
        return 0

    def close(self) -> None:
        self._file.close()
        super().close()


def _framed(file: BinaryIO, length: int, part_headers: dict[str, str]) -> FileResponse:
    boundary = new_boundary()
    prefix, suffix = media_parts(boundary, {}, part_headers)
    stream = io.BufferedReader(_Framed(prefix, file, suffix))
    return FileResponse(200, stream, len(prefix) + length + len(suffix),
                        f"multipart/mixed; boundary={boundary}")


def register(router: Router, s: Services) -> None:
    here = s.config.server_name

    async def download(request: HomeserverRequest, mediaId: str) -> FileResponse:
        origin = await authenticate_origin(s.keyring, request)
        await s.federation_sender.peer_is_back(origin)
        media = await s.media.get_media(here, mediaId, allow_remote=False,
                                        timeout_ms=timeout_param(request))
        assert media.sha256 is not None
        ctype = served_type(media.media_type)
        f, length = s.media.open(media.sha256)
        return _framed(f, length, {
            "Content-Type": ctype,
            "Content-Disposition": content_disposition(disposition_kind(ctype),
                                                       media.upload_name),
        })

    async def thumbnail(request: HomeserverRequest, mediaId: str) -> FileResponse:
        origin = await authenticate_origin(s.keyring, request)
        await s.federation_sender.peer_is_back(origin)
        width, height = dimension_param(request, "width"), dimension_param(request, "height")
        method = request.query_param("method") or "scale"
        if method not in ("crop", "scale"):
            raise MatrixError(400, Codes.INVALID_PARAM, "method must be crop or scale")
        t = await s.media.get_thumbnail(
            here, mediaId, width, height, method, bool_param(request, "animated", False),
            allow_remote=False, timeout_ms=timeout_param(request),
        )
        f, length = s.media.open(t.sha256)
        ext = THUMBNAIL_EXTENSIONS.get(t.media_type, "bin")
        return _framed(f, length, {
            "Content-Type": t.media_type,
            "Content-Disposition": f"inline; filename=thumbnail.{ext}",
        })

    router.add("GET", f"{PREFIX}/download/{{mediaId}}", download, resource="federation")
    router.add("GET", f"{PREFIX}/thumbnail/{{mediaId}}", thumbnail, resource="federation")
