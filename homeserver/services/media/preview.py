"""URL previews: fetch a page a user linked to and read its OpenGraph data.

The server fetches what users name, so every fetch is guarded: http(s) only, addresses
checked *after* name resolution (a name resolving to a private address is refused, however
it got there), a size cap on what is read, a time limit on the whole fetch, redirects
followed a few times and checked again. Previews are cached for an hour.
"""

from __future__ import annotations

import codecs
import ipaddress
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

from twisted.internet import defer, protocol, threads
from twisted.internet.error import DNSLookupError
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers

from federation.transport.net import AddressPolicy, guarded_reactor
from homeserver.config.model import UrlPreviewConfig
from homeserver.http.errors import Codes, MatrixError
from homeserver.services.media.remote import SingleFlight

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 5
CACHE_SECONDS = 3600
CACHE_ENTRIES = 1000
# Only the start of a page is parsed: OpenGraph data lives in <head>.
PARSE_CHARS = 1024 * 1024
USER_AGENT = b"Mozilla/5.0 (compatible; homeserver URL preview)"
_MAX_VALUE_CHARS = 1000
_MAX_DESCRIPTION_CHARS = 500

# (image bytes, content type, requesting user) -> (mxc URI, width, height)
StoreImage = Callable[[bytes, str | None, str], Awaitable[tuple[str, int | None, int | None]]]


def address_policy(config: UrlPreviewConfig, allow_private: bool) -> AddressPolicy:
    """Which resolved addresses a preview may connect to: public unicast addresses outside
    the blocked ranges, plus the allowed ranges; ``allow_private`` (the server-wide test
    switch) lets private addresses through too."""
    return AddressPolicy.with_allowlist(
        config.allowed_ip_ranges, allow_private, config.blocked_ip_ranges
    )


class _TooLarge(Exception):
    pass


class _BodyReader(protocol.Protocol):
    """Collects a response body up to a limit; past it, drops the connection."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        # Cancelling (the preview timed out) drops the connection too.
        self.done: defer.Deferred[bytes] = defer.Deferred(lambda _d: self._stop())
        self.parts: list[bytes] = []
        self.length = 0

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self.length += len(data)
        if self.length > self.max_bytes:
            self.done.errback(_TooLarge())
            self._stop()
            return
        self.parts.append(data)

    def _stop(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(reason)


@dataclass(frozen=True)
class FetchedPage:
    url: str
    media_type: str
    params: dict[str, str]
    body: bytes


def _unavailable(message: str) -> MatrixError:
    return MatrixError(502, Codes.UNKNOWN, message)


def normalise_url(url: str) -> str:
    """An http(s) URL as ASCII for the wire (IDNA host, percent-encoded path), or 400."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
        port = parts.port
    except ValueError:
        raise MatrixError(400, Codes.INVALID_PARAM, "Not a valid URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise MatrixError(400, Codes.INVALID_PARAM, "Only http and https URLs can be previewed")
    if parts.username is not None or parts.password is not None:
        raise MatrixError(400, Codes.INVALID_PARAM, "URLs with credentials cannot be previewed")
    try:
        ascii_host = host.encode("idna").decode("ascii") if not _is_ip(host) else host
    except UnicodeError:
        raise MatrixError(400, Codes.INVALID_PARAM, "Not a valid host name") from None
    if ":" in ascii_host:
        ascii_host = f"[{ascii_host}]"
    netloc = ascii_host if port is None else f"{ascii_host}:{port}"
    safe = "/%:@!$&'()*+,;=?~-._"
    return urlunsplit(
        (parts.scheme, netloc, quote(parts.path or "/", safe=safe),
         quote(parts.query, safe=safe), "")
    )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _content_type(headers: Headers) -> tuple[str, dict[str, str]]:
    raw = headers.getRawHeaders(b"content-type")
    if not raw:
        return "application/octet-stream", {}
    value = raw[0].decode("latin-1")
    main, _, rest = value.partition(";")
    params = {}
    for item in rest.split(";"):
        key, sep, val = item.partition("=")
        if sep:
            params[key.strip().lower()] = val.strip().strip('"')
    return main.strip().lower(), params


_META_CHARSET = re.compile(rb"<meta[^>]+charset\s*=\s*[\"']?([A-Za-z0-9_.:-]+)", re.I)


def decode_html(body: bytes, charset: str | None) -> str:
    candidates = [charset] if charset else []
    m = _META_CHARSET.search(body[:4096])
    if m:
        candidates.append(m.group(1).decode("ascii"))
    candidates.append("utf-8")
    for name in candidates:
        try:
            codec = codecs.lookup(name)
        except LookupError:
            continue
        return body.decode(codec.name, errors="replace")
    return body.decode("utf-8", errors="replace")


class OpenGraphParser(HTMLParser):
    """OpenGraph ``<meta property="og:…">`` tags, the ``<title>`` and the description."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.og: dict[str, str] = {}
        self.title: str | None = None
        self.description: str | None = None
        self._in_title = False
        self._title_parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "meta":
            a = {k.lower(): v for k, v in attrs if v is not None}
            key = a.get("property") or a.get("name") or ""
            content = a.get("content")
            if content is None:
                return
            if key.startswith("og:") and key not in self.og:
                self.og[key] = content.strip()
            elif key.lower() == "description" and self.description is None:
                self.description = content.strip()
        elif tag == "title" and self.title is None:
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "title" and self._in_title:
            self._in_title = False
            self.title = " ".join("".join(self._title_parts).split())

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self._title_parts.append(data)


def parse_open_graph(html: str) -> dict[str, str]:
    parser = OpenGraphParser()
    try:
        parser.feed(html[:PARSE_CHARS])
        parser.close()
    except Exception:  # html.parser is lenient, but be sure a bad page is only a bad page
        logger.debug("HTML parse error in URL preview", exc_info=True)
    og = dict(parser.og)
    if "og:title" not in og and parser.title:
        og["og:title"] = parser.title
    if "og:description" not in og and parser.description:
        og["og:description"] = parser.description
    for key, value in list(og.items()):
        limit = _MAX_DESCRIPTION_CHARS if key == "og:description" else _MAX_VALUE_CHARS
        og[key] = value[:limit]
    return og


class UrlPreviewer:
    def __init__(
        self,
        config: UrlPreviewConfig,
        allow_private: bool,
        reactor: Any,
        store_image: StoreImage,
    ) -> None:
        self.config = config
        self.guard = address_policy(config, allow_private)
        self._reactor = reactor
        self._store_image = store_image
        self._cache: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()
        self._in_flight: SingleFlight[str, dict[str, Any]] = SingleFlight()

    async def preview(self, url: str, user_id: str) -> dict[str, Any]:
        if not self.config.enabled:
            raise MatrixError(404, Codes.UNRECOGNIZED, "URL previews are disabled on this server")
        wire_url = normalise_url(url)
        cached = self._cache.get(wire_url)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            self._cache.move_to_end(wire_url)
            return dict(cached[1])

        async def work() -> dict[str, Any]:
            result = await self._with_timeout(self._build(wire_url, user_id))
            self._cache[wire_url] = (time.monotonic() + CACHE_SECONDS, result)
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
            return result

        # Like the cache, shared by everyone: the preview image is stored once, owned by
        # whoever asked first.
        return dict(await self._in_flight.run(wire_url, work))

    async def _with_timeout(self, work: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
        d: defer.Deferred[dict[str, Any]] = defer.ensureDeferred(work)
        timed_out = False

        def expire() -> None:
            nonlocal timed_out
            timed_out = True
            d.cancel()

        call = self._reactor.callLater(self.config.timeout_seconds, expire)
        try:
            return await d
        except Exception:
            # Cancelling a request surfaces as whatever the HTTP client makes of it.
            if timed_out:
                raise MatrixError(
                    504, Codes.UNKNOWN,
                    f"Fetching the URL took longer than {self.config.timeout_seconds}s",
                ) from None
            raise
        finally:
            if call.active():
                call.cancel()

    async def _build(self, url: str, user_id: str) -> dict[str, Any]:
        page = await self.fetch(url)
        if page.media_type.startswith("image/"):
            return await self._image_fields(page.body, page.media_type, user_id)
        if page.media_type not in ("text/html", "application/xhtml+xml"):
            return {}
        html = decode_html(page.body, page.params.get("charset"))
        og: dict[str, Any] = await threads.deferToThread(parse_open_graph, html)
        image_url = og.pop("og:image", None) or og.pop("og:image:url", None)
        for key in ("og:image:url", "og:image:secure_url", "og:image:type", "og:image:width",
                    "og:image:height"):
            og.pop(key, None)
        if image_url:
            try:
                absolute = urljoin(page.url, image_url)
                image = await self.fetch(normalise_url(absolute))
                if image.media_type.startswith("image/"):
                    og.update(await self._image_fields(image.body, image.media_type, user_id))
            except MatrixError as e:
                logger.info("URL preview of %s: no image (%s)", url, e.message)
        return og

    async def _image_fields(self, body: bytes, media_type: str, user_id: str) -> dict[str, Any]:
        mxc, width, height = await self._store_image(body, media_type, user_id)
        fields: dict[str, Any] = {
            "og:image": mxc,
            "og:image:type": media_type,
            "matrix:image:size": len(body),
        }
        if width and height:
            fields["og:image:width"] = width
            fields["og:image:height"] = height
        return fields

    async def fetch(self, url: str) -> FetchedPage:
        """GET a URL under the guard, following redirects, reading at most the size cap."""
        for _ in range(MAX_REDIRECTS + 1):
            reactor, resolver = guarded_reactor(self._reactor, self.guard)
            agent = Agent(
                reactor,
                connectTimeout=self.config.timeout_seconds,
                pool=HTTPConnectionPool(self._reactor, persistent=False),
            )
            headers = Headers({
                b"User-Agent": [USER_AGENT],
                b"Accept": [b"text/html, application/xhtml+xml, image/*;q=0.9, */*;q=0.5"],
            })
            try:
                response: Any = await agent.request(b"GET", url.encode("ascii"), headers)
            except DNSLookupError:
                if resolver.blocked:
                    raise MatrixError(
                        403, Codes.FORBIDDEN,
                        "This server may not fetch that address (a private or blocked range)",
                    ) from None
                raise _unavailable("Could not resolve the URL's host") from None
            except defer.CancelledError:
                raise
            except Exception as e:
                raise _unavailable(f"Could not fetch the URL: {type(e).__name__}") from None
            if response.code in (301, 302, 303, 307, 308):
                location = response.headers.getRawHeaders(b"location")
                _discard(response)
                if not location:
                    raise _unavailable("The URL redirects nowhere")
                url = normalise_url(urljoin(url, location[0].decode("latin-1")))
                continue
            if response.code != 200:
                _discard(response)
                raise _unavailable(f"The URL answered HTTP {response.code}")
            media_type, params = _content_type(response.headers)
            if response.length is not None and isinstance(response.length, int) and (
                response.length > self.config.max_page_bytes
            ):
                _discard(response)
                raise MatrixError(502, Codes.TOO_LARGE, "The page is too large to preview")
            reader = _BodyReader(self.config.max_page_bytes)
            response.deliverBody(reader)
            try:
                body = await reader.done
            except _TooLarge:
                raise MatrixError(
                    502, Codes.TOO_LARGE, "The page is too large to preview"
                ) from None
            except Exception as e:
                raise _unavailable(f"Could not read the URL: {type(e).__name__}") from None
            return FetchedPage(url, media_type, params, body)
        raise _unavailable("Too many redirects")


def _discard(response: Any) -> None:
    reader = _BodyReader(0)
    reader.done.addErrback(lambda _f: None)
    response.deliverBody(reader)
