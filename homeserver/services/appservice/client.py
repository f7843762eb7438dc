"""Requests from the homeserver to application services (``/_matrix/app/v1/...``).

Twisted's ``Agent`` over the federation transport's connection policy: addresses outside the
public internet and self-signed certificates are refused unless ``outbound_requests`` allows
them (``--dev-federation``). Every request carries ``Authorization: Bearer <hs_token>``.
"""

from __future__ import annotations

import json
import logging
from io import BytesIO
from typing import Any
from urllib.parse import quote, urlencode

from twisted.internet import defer
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, ResponseNeverReceived
from twisted.web.http_headers import Headers

from federation.transport.client import read_body
from federation.transport.net import AddressPolicy, TLSPolicy, guarded_reactor
from homeserver.services.appservice.registration import AppService

logger = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 1024 * 1024
APP_PREFIX = "/_matrix/app/v1"


class AppServiceUnreachable(Exception):
    """No answer: connection refused or failed, TLS refused, timeout, or no URL."""


class AppServiceClient:
    def __init__(
        self,
        reactor: Any,
        *,
        verify_tls: bool = True,
        allow_private: bool = False,
        timeout_s: float = 60.0,
    ) -> None:
        self._reactor = reactor
        guarded, _ = guarded_reactor(reactor, AddressPolicy(allow_private=allow_private))
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = 4
        self._agent = Agent(
            guarded, contextFactory=TLSPolicy(verify_tls), pool=self._pool, connectTimeout=10
        )
        self.timeout_s = timeout_s

    async def close(self) -> None:
        await self._pool.closeCachedConnections()

    async def request(
        self,
        svc: AppService,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        timeout_s: float | None = None,
    ) -> tuple[int, bytes]:
        """``method`` ``{url}{path}``; (status, body) of any answer, else AppServiceUnreachable."""
        if svc.url is None:
            raise AppServiceUnreachable(f"application service {svc.id} has no url")
        url = svc.url + path
        if query:
            url += "?" + urlencode(query)
        headers = Headers({
            b"Authorization": [f"Bearer {svc.hs_token}".encode()],
            b"User-Agent": [b"homeserver"],
        })
        producer: Any = None
        if body is not None:
            headers.addRawHeader(b"Content-Type", b"application/json")
            producer = FileBodyProducer(
                BytesIO(json.dumps(body, ensure_ascii=False).encode("utf-8"))
            )
        limit = self.timeout_s if timeout_s is None else timeout_s
        d = defer.Deferred.fromCoroutine(self._send(method, url, headers, producer))
        timed_out = False

        def expire() -> None:
            nonlocal timed_out
            timed_out = True
            d.cancel()

        call = self._reactor.callLater(limit, expire)
        try:
            return await d
        except Exception as e:
            if timed_out:
                raise AppServiceUnreachable(f"no answer within {limit}s") from None
            if isinstance(e, defer.CancelledError) or (
                isinstance(e, ResponseNeverReceived)
                and any(f.check(defer.CancelledError) for f in e.reasons)
            ):
                # Cancelled by the caller (shutdown): not the service's failure.
                raise defer.CancelledError() from e
            raise AppServiceUnreachable(f"{type(e).__name__}: {e}") from e
        finally:
            if call.active():
                call.cancel()

    async def _send(
        self, method: str, url: str, headers: Headers, producer: Any
    ) -> tuple[int, bytes]:
        response = await self._agent.request(
            method.encode("ascii"), url.encode("utf-8"), headers, producer
        )
        raw = await read_body(response, MAX_RESPONSE_BYTES)
        return int(response.code), raw

    # -- the application service API ----------------------------------------------------------
    async def push(self, svc: AppService, txn_id: int, body: dict[str, Any]) -> None:
        """PUT a transaction; raises AppServiceUnreachable unless the service answered 2xx."""
        status, raw = await self.request(
            svc, "PUT", f"{APP_PREFIX}/transactions/{txn_id}", body=body
        )
        if not 200 <= status < 300:
            raise AppServiceUnreachable(f"HTTP {status}: {raw[:200]!r}")

    async def query_user(self, svc: AppService, user_id: str) -> bool:
        """Whether the service says it has (now) created ``user_id``."""
        return await self._query(svc, f"{APP_PREFIX}/users/{quote(user_id, safe='')}")

    async def query_alias(self, svc: AppService, alias: str) -> bool:
        return await self._query(svc, f"{APP_PREFIX}/rooms/{quote(alias, safe='')}")

    async def _query(self, svc: AppService, path: str) -> bool:
        try:
            status, _ = await self.request(svc, "GET", path, timeout_s=30)
        except AppServiceUnreachable as e:
            logger.warning("application service %s: query %s failed: %s", svc.id, path, e)
            return False
        return 200 <= status < 300

    async def get_json(
        self, svc: AppService, path: str, query: list[tuple[str, str]] | None = None
    ) -> Any:
        """GET a third-party lookup; None unless the service answered 2xx with JSON."""
        try:
            status, raw = await self.request(svc, "GET", APP_PREFIX + path, query=query,
                                             timeout_s=30)
        except AppServiceUnreachable as e:
            logger.warning("application service %s: %s failed: %s", svc.id, path, e)
            return None
        if not 200 <= status < 300:
            return None
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return None
