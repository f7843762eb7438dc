"""The ``multipart/mixed`` answers of the federation media endpoints (server-server API,
"Content Repository"): exactly two parts, JSON metadata then either the file's bytes or a
``Location`` header naming where to get them.

``MediaMultipartParser`` is a push parser: bytes go in as they arrive, the file part's bytes
come out through a callback as soon as they cannot be the start of a delimiter, so a file is
never held in memory and whatever caps the callback enforces apply while reading. Headers,
the metadata part and the preamble are bounded.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

MAX_HEADER_BYTES = 16 * 1024
MAX_METADATA_BYTES = 64 * 1024
MAX_PREAMBLE_BYTES = 16 * 1024
# RFC 2046 5.1.1: bchars, 1 to 70 of them, not ending in a space.
_BOUNDARY = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]$")


class MultipartError(ValueError):
    """The body is not the two-part answer the spec describes."""


def parse_boundary(content_type: str) -> bytes:
    """The boundary of a ``multipart/mixed`` Content-Type value (quoted or not)."""
    main, _, params = content_type.partition(";")
    if main.strip().lower() != "multipart/mixed":
        raise MultipartError(f"expected multipart/mixed, got {main.strip()!r}")
    for name, value in _parameters(params):
        if name == "boundary":
            if not _BOUNDARY.match(value):
                raise MultipartError("invalid multipart boundary")
            return value.encode("ascii")
    raise MultipartError("multipart/mixed without a boundary")


def _parameters(params: str) -> list[tuple[str, str]]:
    """``; name=value`` pairs (RFC 9110 parameters, values possibly quoted)."""
    out = []
    for m in re.finditer(r';?\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)',
                         params):
        value = m.group(2).strip()
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        out.append((m.group(1).lower(), value))
    return out


def disposition_filename(value: str | None) -> str | None:
    """The file name of a Content-Disposition value: ``filename*`` (RFC 5987, UTF-8 or
    ISO-8859-1) preferred over ``filename``; None if there is none or it is unreadable."""
    if not value:
        return None
    _, _, params = value.partition(";")
    plain = extended = None
    for name, v in _parameters(params):
        if name == "filename*":
            charset, sep, rest = v.partition("'")
            _lang, sep2, encoded = rest.partition("'")
            if sep and sep2 and charset.lower() in ("utf-8", "iso-8859-1"):
                try:
                    extended = unquote(encoded, encoding=charset.lower(), errors="strict")
                except (UnicodeDecodeError, LookupError):
                    extended = None
        elif name == "filename":
            plain = v
    return extended or plain or None


def new_boundary() -> str:
    return secrets.token_hex(16)


def media_parts(
    boundary: str, metadata: Mapping[str, Any], part_headers: Mapping[str, str]
) -> tuple[bytes, bytes]:
    """What goes before and after the file's bytes in a media answer."""
    b = boundary.encode("ascii")
    head = b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in part_headers.items())
    prefix = (
        b"--" + b + b"\r\nContent-Type: application/json\r\n\r\n"
        + json.dumps(dict(metadata), separators=(",", ":")).encode("utf-8")
        + b"\r\n--" + b + b"\r\n" + head + b"\r\n"
    )  # fmt: skip
    return prefix, b"\r\n--" + b + b"--\r\n"


@dataclass
class MediaParts:
    metadata: dict[str, Any]
    # Headers of the second part, names lower-cased.
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def location(self) -> str | None:
        return self.headers.get("location")

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")

    @property
    def filename(self) -> str | None:
        return disposition_filename(self.headers.get("content-disposition"))


_PREAMBLE, _DELIMITER, _HEADERS, _BODY, _DONE = range(5)


class MediaMultipartParser:
    """Feed the body with ``feed``, then call ``finish`` for the metadata and the second
    part's headers. The second part's bytes go to ``on_file_data`` (unless it is a
    ``Location`` part); an exception from it propagates out of ``feed``."""

    def __init__(self, boundary: bytes, on_file_data: Callable[[bytes], object]) -> None:
        self._delimiter = b"\r\n--" + boundary
        self._on_file_data = on_file_data
        # A leading CRLF makes the first delimiter look like all the others.
        self._buf = bytearray(b"\r\n")
        self._state = _PREAMBLE
        self._skipped = 0
        self._part = -1
        self._metadata = bytearray()
        self._headers: list[dict[str, str]] = []
        self._body_start = False

    def feed(self, data: bytes) -> None:
        self._buf += data
        while self._step():
            pass

    def finish(self) -> MediaParts:
        if self._state != _DONE:
            raise MultipartError("the body ended before the closing delimiter")
        if self._part != 1:
            raise MultipartError(f"expected 2 parts, got {self._part + 1}")
        try:
            metadata = json.loads(self._metadata.decode("utf-8")) if self._metadata.strip() else {}
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise MultipartError("the metadata part is not JSON") from None
        if not isinstance(metadata, dict):
            raise MultipartError("the metadata part is not a JSON object")
        return MediaParts(metadata, self._headers[1])

    def _step(self) -> bool:
        """Advance by one state; False when more input is needed."""
        buf, delim = self._buf, self._delimiter
        if self._state == _PREAMBLE:
            i = buf.find(delim)
            if i < 0:
                keep = len(delim) - 1
                self._skip(max(0, len(buf) - keep))
                return False
            self._skip(i + len(delim))
            self._state = _DELIMITER
            return True
        if self._state == _DELIMITER:
            if len(buf) < 2:
                return False
            if buf[:2] == b"--":
                self._state = _DONE
                return False
            # Transport padding (spaces and tabs) may follow a delimiter before its CRLF.
            end = buf.find(b"\r\n")
            if end < 0:
                if len(buf) > 256:
                    raise MultipartError("malformed delimiter line")
                return False
            if buf[:end].strip(b" \t"):
                raise MultipartError("malformed delimiter line")
            del buf[: end + 2]
            self._part += 1
            if self._part > 1:
                raise MultipartError("more than 2 parts")
            self._state = _HEADERS
            return True
        if self._state == _HEADERS:
            if buf[:2] == b"\r\n":
                end, skip = 0, 2
            else:
                end, skip = buf.find(b"\r\n\r\n"), 4
            if end < 0:
                if len(buf) > MAX_HEADER_BYTES:
                    raise MultipartError("part headers too long")
                return False
            if end > MAX_HEADER_BYTES:
                raise MultipartError("part headers too long")
            self._headers.append(_parse_headers(bytes(buf[:end])))
            del buf[: end + skip]
            self._state = _BODY
            self._body_start = True
            return True
        if self._state == _BODY:
            if self._body_start:
                # An empty part whose header block's CRLF doubles as the delimiter's (seen
                # from real servers for Location parts): "...\r\n\r\n--boundary".
                bare = delim[2:]
                if len(buf) < len(bare) and bare.startswith(bytes(buf)):
                    return False
                self._body_start = False
                if buf.startswith(bare):
                    del buf[: len(bare)]
                    self._state = _DELIMITER
                    return True
            i = buf.find(delim)
            cut = i if i >= 0 else max(0, len(buf) - (len(delim) - 1))
            if cut:
                self._body(bytes(buf[:cut]))
                del buf[:cut]
            if i < 0:
                return False
            del buf[: len(delim)]
            self._state = _DELIMITER
            return True
        # _DONE: the epilogue is ignored.
        buf.clear()
        return False

    def _skip(self, n: int) -> None:
        self._skipped += n
        if self._skipped > MAX_PREAMBLE_BYTES:
            raise MultipartError("no multipart delimiter found")
        del self._buf[:n]

    def _body(self, data: bytes) -> None:
        if self._part == 0:
            self._metadata += data
            if len(self._metadata) > MAX_METADATA_BYTES:
                raise MultipartError("metadata part too large")
        elif "location" in self._headers[1]:
            # A redirect part has no business carrying a body; ignore a little of it.
            self._skipped += len(data)
            if self._skipped > MAX_PREAMBLE_BYTES + MAX_METADATA_BYTES:
                raise MultipartError("a Location part with a body")
        else:
            self._on_file_data(data)


def _parse_headers(raw: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    if not raw:
        return headers
    for line in raw.decode("latin-1").split("\r\n"):
        name, sep, value = line.partition(":")
        if not sep or not name.strip() or name != name.strip():
            raise MultipartError(f"malformed part header {line[:80]!r}")
        headers[name.lower()] = value.strip()
    return headers
