"""The twisted.web request: body size limit while reading, request ids, in-flight tracking."""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

from twisted.web.server import Request

from homeserver.http.errors import Codes, MatrixError, too_large

_ids = itertools.count(1)


class HomeserverRequest(Request):
    """A request whose body is never buffered past the site's limit."""

    def __init__(self, channel: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(channel, *args, **kwargs)
        # Matrix bodies are JSON or raw media, never HTML forms: twisted must not merge a form
        # body into the query arguments, nor answer a malformed multipart body with a bare 400.
        self._parsePOSTFormSubmission = False
        self.request_id = f"req-{next(_ids)}"
        self.start_time = time.monotonic()
        site = getattr(channel, "site", None)
        self.body_limit: int = getattr(site, "max_body_bytes", 10 * 1024 * 1024)
        self.body_too_large = False
        self.route_label = "unmatched"
        self._body_bytes = 0
        tracker = getattr(site, "in_flight", None)
        if tracker is not None:
            tracker.add(self)
            self.notifyFinish().addBoth(lambda _: tracker.discard(self))

    @property
    def client_ip(self) -> str:
        """The client's address; behind a trusted proxy, the first X-Forwarded-For hop."""
        site = getattr(getattr(self, "channel", None), "site", None)
        if getattr(site, "x_forwarded", False):
            forwarded = self.getHeader("X-Forwarded-For")
            if forwarded:
                return forwarded.split(",")[0].strip()
        host = getattr(self.getClientAddress(), "host", None)
        return str(host) if host else "-"

    def gotLength(self, length: int | None) -> None:
        # Called once the headers are in, before any body byte: the route's own limit
        # (media uploads) applies from the first chunk on.
        limit_for = getattr(getattr(self.channel, "site", None), "body_limit_for", None)
        uri = getattr(self.channel, "_path", None)
        if limit_for is not None and isinstance(uri, bytes):
            self.body_limit = limit_for(uri.split(b"?", 1)[0])
        if length is not None and length > self.body_limit:
            self.body_too_large = True
            length = 0  # don't let twisted spool a huge body to a temp file
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_too_large:
            return
        self._body_bytes += len(data)
        if self._body_bytes > self.body_limit:
            # Drop what we have: the handler answers 413 without looking at the body.
            self.body_too_large = True
            assert self.content is not None
            self.content.seek(0)
            self.content.truncate()
            return
        super().handleContentChunk(data)

    def check_body_size(self) -> None:
        if self.body_too_large:
            raise too_large(self.body_limit)

    def read_body(self) -> bytes:
        self.check_body_size()
        if self.content is None:
            return b""
        self.content.seek(0)
        data: bytes = self.content.read()
        return data

    def json_body(self) -> Any:
        """The body as JSON: 400 M_NOT_JSON if it is not JSON (or not UTF-8)."""
        raw = self.read_body()
        try:
            text = raw.decode("utf-8")
            body = json.loads(text, parse_constant=_reject_constant)
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise MatrixError(400, Codes.NOT_JSON, "Content not JSON.") from None
        # NUL means nothing in Matrix text and PostgreSQL text cannot store it: refuse it from
        # clients up front (a peer's transaction is not refused whole for one odd event).
        if "\\u0000" in text and not self.path.startswith(_PEER_PATHS) and _has_nul(body):
            raise MatrixError(400, Codes.BAD_JSON, "Strings may not contain NUL (U+0000)")
        return body

    def json_object(self) -> dict[str, Any]:
        """The body as a JSON object: 400 M_BAD_JSON for any other JSON value."""
        body = self.json_body()
        if not isinstance(body, dict):
            raise MatrixError(400, Codes.BAD_JSON, "Content must be a JSON object.")
        return body

    def query_param(self, name: str) -> str | None:
        values = self.args.get(name.encode("ascii"))
        if not values:
            return None
        try:
            value: str = values[0].decode("utf-8")
        except UnicodeDecodeError:
            raise MatrixError(
                400, Codes.INVALID_PARAM, f"Query parameter {name} is not UTF-8"
            ) from None
        if "\x00" in value:
            raise MatrixError(400, Codes.INVALID_PARAM, f"Query parameter {name} contains NUL")
        return value


_PEER_PATHS = (b"/_matrix/federation/", b"/_matrix/key/")


def _has_nul(value: Any) -> bool:
    """Whether a NUL is in any string (key or value) of parsed JSON; iterative, since the
    nesting can be as deep as the parser allows."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON, though Python's parser accepts them.
    raise ValueError(f"{name} is not valid JSON")
