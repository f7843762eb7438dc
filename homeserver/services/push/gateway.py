"""POSTs to push gateways (push gateway API ``/_matrix/push/v1/notify``).

Twisted's ``Agent`` over the federation transport's connection policy: name resolution drops
private, loopback and other non-public addresses unless ``outbound_requests.
allow_private_addresses`` is set (a pusher URL must not steer the server into its own
network), and TLS certificates are checked unless ``accept_self_signed`` is. Responses are
read up to a size limit, within a time limit.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from dataclasses import dataclass
from io import BytesIO
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool
from twisted.web.http_headers import Headers

from federation.transport.client import read_body
from federation.transport.net import AddressPolicy, TLSPolicy, guarded_reactor

logger = logging.getLogger(__name__)

NOTIFY_PATH = "/_matrix/push/v1/notify"
MAX_RESPONSE_BYTES = 64 * 1024


class GatewayError(Exception):
    """The gateway could not be reached, timed out, or answered 5xx/429: worth retrying."""


class GatewayRefused(Exception):
    """The gateway answered another 4xx: this request will never succeed."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:200]!r}")
        self.status = status


@dataclass(frozen=True)
class GatewayReply:
    rejected: list[str]


def check_gateway_url(url: str) -> str | None:
    """Why ``url`` is not a push gateway notify URL, or None if it is one."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises on a bad port
    except ValueError:
        return "data.url is not a valid URL"
    if parts.scheme not in ("http", "https"):
        return "data.url must be an http or https URL"
    if not parts.hostname:
        return "data.url has no host"
    if parts.path != NOTIFY_PATH:
        return f"data.url must have the path {NOTIFY_PATH}"
    if parts.username is not None or parts.password is not None or parts.fragment:
        return "data.url may not have credentials or a fragment"
    return None


class PushGatewayClient:
    def __init__(
        self,
        reactor: Any,
        *,
        verify_tls: bool = True,
        allow_private: bool = False,
        timeout_s: float = 30.0,
        user_agent: str = "homeserver",
    ) -> None:
        self._reactor = reactor
        self._policy = AddressPolicy(allow_private=allow_private)
        guarded, _ = guarded_reactor(reactor, self._policy)
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = 5
        self._agent = Agent(
            guarded, contextFactory=TLSPolicy(verify_tls), pool=self._pool, connectTimeout=10
        )
        self.timeout_s = timeout_s
        self._user_agent = user_agent.encode("utf-8")

    async def close(self) -> None:
        await self._pool.closeCachedConnections()

    async def notify(self, url: str, payload: dict[str, Any]) -> GatewayReply:
        """POST the notification; the pushkeys the gateway rejected. Raises GatewayError
        (retry later) or GatewayRefused (do not)."""
        host = urlsplit(url).hostname or ""
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            if not self._policy.permits(host):
                raise GatewayError(f"{host} is a private address")
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        headers = Headers({
            b"Content-Type": [b"application/json"],
            b"User-Agent": [self._user_agent],
        })
        d = defer.Deferred.fromCoroutine(self._post(url, headers, body))
        timed_out = False

        def expire() -> None:
            nonlocal timed_out
            timed_out = True
            d.cancel()

        call = self._reactor.callLater(self.timeout_s, expire)
        try:
            status, raw = await d
        except (GatewayError, GatewayRefused):
            raise
        except Exception as e:
            if timed_out:
                raise GatewayError(f"no answer within {self.timeout_s}s") from None
            raise GatewayError(f"{type(e).__name__}: {e}") from e
        finally:
            if call.active():
                call.cancel()
        if status == 429 or status >= 500:
            raise GatewayError(f"HTTP {status}")
        if not 200 <= status < 300:
            raise GatewayRefused(status, raw)
        try:
            parsed = json.loads(raw.decode("utf-8")) if raw else {}
        except (UnicodeDecodeError, ValueError):
            parsed = {}
        rejected = parsed.get("rejected") if isinstance(parsed, dict) else None
        if not isinstance(rejected, list):
            rejected = []
        return GatewayReply([k for k in rejected if isinstance(k, str)])

    async def _post(self, url: str, headers: Headers, body: bytes) -> tuple[int, bytes]:
        producer: Any = FileBodyProducer(BytesIO(body))
        response = await self._agent.request(b"POST", url.encode("utf-8"), headers, producer)
        raw = await read_body(response, MAX_RESPONSE_BYTES)
        return int(response.code), raw
