"""Remote media over federation: the ``RemoteMediaFetcher`` the media service uses.

``GET /_matrix/federation/v1/media/download/{mediaId}`` on the origin (signed), its
``multipart/mixed`` answer parsed as it streams in (``federation.transport.multipart``); a
``Location`` part is followed with an unsigned GET under the same address policy. Origins
that do not know the endpoint (``M_UNRECOGNIZED``, as servers from before Matrix 1.11
answer) are asked at the deprecated ``/_matrix/media/v3/download/{server}/{mediaId}`` with
``allow_remote=false``, as the spec says. Thumbnails (of media too large to fetch whole)
come the same way from ``/thumbnail``. Every byte goes through the caller's sink, which
enforces the size cap while reading.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from urllib.parse import quote

from federation.transport.client import (
    FederationClient,
    FederationClientError,
    HttpResponseError,
    NotRetryingDestination,
)
from federation.transport.multipart import (
    MediaMultipartParser,
    MediaParts,
    MultipartError,
    disposition_filename,
    parse_boundary,
)
from homeserver.http.errors import Codes, MatrixError
from homeserver.services.federation_policy import DestinationBlocked
from homeserver.services.media.remote import MediaSink, RemoteFile, remote_too_large

logger = logging.getLogger(__name__)

# A whole transfer (all of a file up to the size cap) must finish within this.
FETCH_TIMEOUT_S = 120.0
# How long the origin may wait for a media ID reserved but not yet uploaded to.
ORIGIN_WAIT_MS = 20_000


def _first(headers: Mapping[str, list[str]], name: str) -> str | None:
    values = headers.get(name)
    return values[-1] if values else None


class FederationMediaFetcher:
    def __init__(self, client: FederationClient, timeout_s: float = FETCH_TIMEOUT_S) -> None:
        self.client = client
        self.timeout_s = timeout_s

    async def fetch(
        self, server_name: str, media_id: str, sink: MediaSink, max_bytes: int
    ) -> RemoteFile:
        return await self._fetch(server_name, media_id, "download", {}, sink, max_bytes)

    async def fetch_thumbnail(
        self, server_name: str, media_id: str, width: int, height: int, method: str,
        animated: bool, sink: MediaSink, max_bytes: int,
    ) -> RemoteFile:
        """The origin's thumbnail of the media (for media too large to fetch whole)."""
        args = {"width": str(width), "height": str(height), "method": method,
                "animated": "true" if animated else "false"}
        return await self._fetch(server_name, media_id, "thumbnail", args, sink, max_bytes)

    async def _fetch(
        self, server_name: str, media_id: str, kind: str, args: dict[str, str],
        sink: MediaSink, max_bytes: int,
    ) -> RemoteFile:
        quoted = quote(media_id, safe="")
        try:
            try:
                return await self._multipart(
                    server_name, f"/_matrix/federation/v1/media/{kind}/{quoted}",
                    {**args, "timeout_ms": str(ORIGIN_WAIT_MS)}, sink, max_bytes,
                )  # fmt: skip
            except HttpResponseError as e:
                if not _unrecognized(e):
                    raise
            logger.info("%s does not serve federation media; using the legacy endpoint",
                        server_name)
            return await self._plain(
                server_name,
                f"/_matrix/media/v3/{kind}/{quote(server_name, safe='')}/{quoted}",
                {**args, "allow_remote": "false", "timeout_ms": str(ORIGIN_WAIT_MS)}, sink,
                max_bytes,
            )
        except MatrixError:
            raise
        except HttpResponseError as e:
            raise _from_origin(e) from None
        except DestinationBlocked:
            raise MatrixError(
                403, Codes.FORBIDDEN, f"Federation with {server_name} is not allowed"
            ) from None
        except NotRetryingDestination:
            raise MatrixError(
                502, Codes.UNKNOWN, f"{server_name} is unreachable; not retrying yet"
            ) from None
        except (FederationClientError, MultipartError) as e:
            logger.info("fetching mxc://%s/%s failed: %s", server_name, media_id, e)
            raise MatrixError(
                502, Codes.UNKNOWN, f"Could not fetch the media from {server_name}"
            ) from None

    async def _multipart(
        self, server_name: str, path: str, args: dict[str, str], sink: MediaSink,
        max_bytes: int,
    ) -> RemoteFile:
        parser: MediaMultipartParser | None = None

        def start(code: int, headers: Mapping[str, list[str]]) -> Callable[[bytes], object]:
            nonlocal parser
            _check_length(headers, max_bytes, multipart=True)
            boundary = parse_boundary(_first(headers, "content-type") or "")
            parser = MediaMultipartParser(boundary, sink.write)
            return parser.feed

        await self.client.get_stream(server_name, path, args, start, timeout_s=self.timeout_s)
        if parser is None:
            raise MultipartError("empty answer")
        parts: MediaParts = parser.finish()
        if parts.location is not None:
            return await self._follow(parts.location, sink, max_bytes)
        return RemoteFile(parts.content_type, parts.filename)

    async def _follow(self, url: str, sink: MediaSink, max_bytes: int) -> RemoteFile:
        """The file at a ``Location`` the origin gave (not cached: it may expire)."""
        found: dict[str, str | None] = {}

        def start(code: int, headers: Mapping[str, list[str]]) -> Callable[[bytes], object]:
            _check_length(headers, max_bytes)
            found["type"] = _first(headers, "content-type")
            found["name"] = disposition_filename(_first(headers, "content-disposition"))
            return sink.write

        await self.client.get_url_stream(url, start, timeout_s=self.timeout_s)
        return RemoteFile(found.get("type"), found.get("name"))

    async def _plain(
        self, server_name: str, path: str, args: dict[str, str], sink: MediaSink,
        max_bytes: int,
    ) -> RemoteFile:
        found: dict[str, str | None] = {}

        def start(code: int, headers: Mapping[str, list[str]]) -> Callable[[bytes], object]:
            _check_length(headers, max_bytes)
            found["type"] = _first(headers, "content-type")
            found["name"] = disposition_filename(_first(headers, "content-disposition"))
            return sink.write

        await self.client.get_stream(server_name, path, args, start, timeout_s=self.timeout_s)
        return RemoteFile(found.get("type"), found.get("name"))


def _check_length(headers: Mapping[str, list[str]], max_bytes: int,
                  multipart: bool = False) -> None:
    """Refuse up front what announces itself as too large (the sink would anyway)."""
    raw = _first(headers, "content-length")
    if raw is None or not raw.strip().isdigit():
        return
    # A multipart body carries delimiters and headers besides the file.
    slack = 64 * 1024 if multipart else 0
    if int(raw) > max_bytes + slack:
        raise remote_too_large(max_bytes)


def _unrecognized(e: HttpResponseError) -> bool:
    """The origin does not know the federation media endpoints (spec: 404 M_UNRECOGNIZED;
    some servers say 400 or 405, and a proxy in front may send no Matrix error at all)."""
    if e.errcode == Codes.UNRECOGNIZED:
        return e.status in (400, 404, 405)
    return e.errcode is None and e.status in (404, 405)


def _from_origin(e: HttpResponseError) -> MatrixError:
    if e.status == 404:
        return MatrixError(404, Codes.NOT_FOUND, "Media not found at its origin")
    if e.errcode == Codes.TOO_LARGE:
        return MatrixError(502, Codes.TOO_LARGE, "The origin refuses to serve media this large")
    if e.status == 504 and e.errcode == "M_NOT_YET_UPLOADED":
        return MatrixError(504, "M_NOT_YET_UPLOADED", "Content has not yet been uploaded")
    if e.status == 403:
        return MatrixError(403, Codes.FORBIDDEN, "The origin refuses to serve this media")
    logger.info("origin %s answered media fetch with %s", e.destination, e)
    return MatrixError(502, Codes.UNKNOWN, f"The origin answered {e.status}")
