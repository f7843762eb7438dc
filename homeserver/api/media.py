"""The content repository over HTTP: uploads, authenticated downloads and thumbnails
(``/_matrix/client/v1/media``), the deprecated unauthenticated ``/_matrix/media/v3`` ones
(frozen for new media unless configured otherwise), config and URL previews.

Every reply here carries headers that keep served files inert in a browser: a sandboxing
Content-Security-Policy, ``nosniff``, and ``inline`` disposition only for types that are safe
to render.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from homeserver.http.errors import Codes, MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router
from homeserver.http.site import FileResponse
from homeserver.http.validation import query_int
from homeserver.services.auth import Requester
from homeserver.services.registry import Services
from homeserver.storage.media import Media, Thumbnail

CLIENT_V1 = "/_matrix/client/v1/media"
LEGACY_PREFIXES = ("/_matrix/media/v3", "/_matrix/media/r0")

SECURITY_HEADERS = {
    b"Content-Security-Policy": (
        b"sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; "
        b"style-src 'unsafe-inline'; media-src 'self'; object-src 'self';"
    ),
    b"X-Content-Type-Options": b"nosniff",
    b"Cross-Origin-Resource-Policy": b"cross-origin",
}

# The spec's "serving inline content" list: types browsers render without running code.
INLINE_TYPES = frozenset({
    "text/css", "text/plain", "text/csv", "application/json", "application/ld+json",
    "image/jpeg", "image/gif", "image/png", "image/apng", "image/webp", "image/avif",
    "video/mp4", "video/webm", "video/ogg", "video/quicktime",
    "audio/mp4", "audio/webm", "audio/aac", "audio/mpeg", "audio/ogg", "audio/wave",
    "audio/wav", "audio/x-wav", "audio/x-pn-wav", "audio/flac", "audio/x-flac",
})

_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
# RFC 5987 attr-char beyond letters and digits (quote() keeps those and "_.-~").
_ATTR_SAFE = "!#$&+^`|"
THUMBNAIL_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/gif": "gif",
                        "image/webp": "webp"}


def content_disposition(kind: str, filename: str | None) -> str:
    """RFC 6266: a plain ``filename=`` when the name is a token, else ``filename*`` in
    UTF-8 percent-encoding (RFC 5987), so no name can break out of the header."""
    if not filename:
        return kind
    if all(c in _TOKEN_CHARS for c in filename):
        return f"{kind}; filename={filename}"
    return f"{kind}; filename*=utf-8''{quote(filename, safe=_ATTR_SAFE)}"


def served_type(media_type: str | None) -> str:
    """The stored type (already validated at upload), UTF-8 declared for text; unknown
    types as application/octet-stream."""
    if not media_type:
        return "application/octet-stream"
    if media_type.startswith("text/") and "charset=" not in media_type:
        return f"{media_type}; charset=utf-8"
    return media_type


def disposition_kind(media_type: str) -> str:
    return "inline" if media_type.split(";", 1)[0].strip() in INLINE_TYPES else "attachment"


def _secure(request: HomeserverRequest) -> None:
    for name, value in SECURITY_HEADERS.items():
        request.setHeader(name, value)


def bool_param(request: HomeserverRequest, name: str, default: bool) -> bool:
    raw = request.query_param(name)
    if raw is None:
        return default
    if raw not in ("true", "false"):
        raise MatrixError(400, Codes.INVALID_PARAM, f"{name} must be true or false")
    return raw == "true"


def timeout_param(request: HomeserverRequest) -> int | None:
    raw = request.query_param("timeout_ms")
    if raw is None:
        return None
    return query_int(raw, "timeout_ms", 0, min=0, max=2**31)


def register(router: Router, s: Services) -> None:
    limit = s.media.max_upload_bytes

    def _cache_control(request: HomeserverRequest, legacy: bool) -> None:
        # Authenticated media must not land in shared caches that would serve it without
        # a token; the legacy endpoints never asked for one.
        value = b"public, max-age=86400, s-maxage=86400" if legacy else b"private, max-age=86400"
        request.setHeader(b"Cache-Control", value)

    def _send_media(request: HomeserverRequest, media: Media, file_name: str | None,
                    legacy: bool) -> FileResponse:
        assert media.sha256 is not None
        ctype = served_type(media.media_type)
        name = file_name if file_name is not None else media.upload_name
        request.setHeader(b"Content-Disposition",
                          content_disposition(disposition_kind(ctype), name).encode("ascii"))
        _cache_control(request, legacy)
        f, length = s.media.open(media.sha256)
        return FileResponse(200, f, length, ctype)

    def _send_thumbnail(request: HomeserverRequest, t: Thumbnail, legacy: bool) -> FileResponse:
        ext = THUMBNAIL_EXTENSIONS.get(t.media_type, "bin")
        request.setHeader(b"Content-Disposition", f"inline; filename=thumbnail.{ext}".encode())
        _cache_control(request, legacy)
        f, length = s.media.open(t.sha256)
        return FileResponse(200, f, length, t.media_type)

    # -- uploads -------------------------------------------------------------------------------

    def _rate_limit(requester: Requester) -> None:
        # Uploads and reservations share one bucket (a reservation is an upload to come).
        if requester.rate_limited:
            s.ratelimits.media_uploads_per_user.check(requester.user_id)

    async def upload(request: HomeserverRequest) -> JsonResponse:
        _secure(request)
        requester = await s.auth.authenticate(request)
        _rate_limit(requester)
        content = request.content
        if content is None:
            raise MatrixError(400, Codes.MISSING_PARAM, "No content uploaded")
        uri = await s.media.upload(
            requester.user_id, content, request.getHeader("Content-Type"),
            request.query_param("filename"),
        )
        return 200, {"content_uri": uri}

    async def create(request: HomeserverRequest) -> JsonResponse:
        _secure(request)
        requester = await s.auth.authenticate(request)
        _rate_limit(requester)
        uri, expires = await s.media.create(requester.user_id)
        return 200, {"content_uri": uri, "unused_expires_at": expires}

    async def upload_to(request: HomeserverRequest, serverName: str, mediaId: str) -> JsonResponse:
        _secure(request)
        requester = await s.auth.authenticate(request)
        content = request.content
        if content is None:
            raise MatrixError(400, Codes.MISSING_PARAM, "No content uploaded")
        await s.media.upload_to(
            requester.user_id, serverName, mediaId, content, request.getHeader("Content-Type"),
            request.query_param("filename"),
        )
        return 200, {}

    # -- downloads -----------------------------------------------------------------------------

    async def _download(request: HomeserverRequest, server_name: str, media_id: str,
                        file_name: str | None, legacy: bool) -> FileResponse:
        _secure(request)
        if not legacy:
            await s.auth.authenticate(request, allow_guest=True)
        media = await s.media.get_media(
            server_name, media_id, legacy=legacy,
            allow_remote=bool_param(request, "allow_remote", True),
            timeout_ms=timeout_param(request),
        )
        return _send_media(request, media, file_name, legacy)

    async def _thumbnail(request: HomeserverRequest, server_name: str, media_id: str,
                         legacy: bool) -> FileResponse:
        _secure(request)
        if not legacy:
            await s.auth.authenticate(request, allow_guest=True)
        width, height = dimension_param(request, "width"), dimension_param(request, "height")
        method = request.query_param("method") or "scale"
        if method not in ("crop", "scale"):
            raise MatrixError(400, Codes.INVALID_PARAM, "method must be crop or scale")
        thumbnail = await s.media.get_thumbnail(
            server_name, media_id, width, height, method,
            bool_param(request, "animated", False), legacy=legacy,
            allow_remote=bool_param(request, "allow_remote", True),
            timeout_ms=timeout_param(request),
        )
        return _send_thumbnail(request, thumbnail, legacy)

    async def download(request: HomeserverRequest, serverName: str, mediaId: str) -> Any:
        return await _download(request, serverName, mediaId, None, legacy=False)

    async def download_named(request: HomeserverRequest, serverName: str, mediaId: str,
                             fileName: str) -> Any:
        return await _download(request, serverName, mediaId, fileName, legacy=False)

    async def thumbnail(request: HomeserverRequest, serverName: str, mediaId: str) -> Any:
        return await _thumbnail(request, serverName, mediaId, legacy=False)

    async def legacy_download(request: HomeserverRequest, serverName: str, mediaId: str) -> Any:
        return await _download(request, serverName, mediaId, None, legacy=True)

    async def legacy_download_named(request: HomeserverRequest, serverName: str, mediaId: str,
                                    fileName: str) -> Any:
        return await _download(request, serverName, mediaId, fileName, legacy=True)

    async def legacy_thumbnail(request: HomeserverRequest, serverName: str, mediaId: str) -> Any:
        return await _thumbnail(request, serverName, mediaId, legacy=True)

    # -- config and previews -------------------------------------------------------------------

    async def config(request: HomeserverRequest) -> JsonResponse:
        _secure(request)
        await s.auth.authenticate(request, allow_guest=True)
        return 200, {"m.upload.size": limit}

    async def preview_url(request: HomeserverRequest) -> JsonResponse:
        _secure(request)
        requester = await s.auth.authenticate(request)
        url = request.query_param("url")
        if not url:
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: url")
        return 200, await s.media.preview_url(url, requester.user_id)

    # -- routes --------------------------------------------------------------------------------

    router.add("GET", f"{CLIENT_V1}/config", config, resource="client")
    router.add("GET", f"{CLIENT_V1}/preview_url", preview_url, resource="client")
    router.add("GET", f"{CLIENT_V1}/download/{{serverName}}/{{mediaId}}", download,
               resource="client")
    router.add("GET", f"{CLIENT_V1}/download/{{serverName}}/{{mediaId}}/{{fileName}}",
               download_named, resource="client")
    router.add("GET", f"{CLIENT_V1}/thumbnail/{{serverName}}/{{mediaId}}", thumbnail,
               resource="client")

    router.add("POST", "/_matrix/media/v1/create", create, resource="media")
    router.add("PUT", "/_matrix/media/v3/upload/{serverName}/{mediaId}", upload_to,
               resource="media", max_body_bytes=limit)
    for prefix in LEGACY_PREFIXES:
        router.add("POST", f"{prefix}/upload", upload, resource="media", max_body_bytes=limit)
        router.add("GET", f"{prefix}/config", config, resource="media")
        router.add("GET", f"{prefix}/preview_url", preview_url, resource="media")
        router.add("GET", f"{prefix}/download/{{serverName}}/{{mediaId}}", legacy_download,
                   resource="media")
        router.add("GET", f"{prefix}/download/{{serverName}}/{{mediaId}}/{{fileName}}",
                   legacy_download_named, resource="media")
        router.add("GET", f"{prefix}/thumbnail/{{serverName}}/{{mediaId}}", legacy_thumbnail,
                   resource="media")


def dimension_param(request: HomeserverRequest, name: str) -> int:
    raw = request.query_param(name)
    if raw is None:
        raise MatrixError(400, Codes.MISSING_PARAM, f"Missing parameter: {name}")
    return query_int(raw, name, 0, min=1, max=10_000)
