"""A small real HTTP client over loopback for tests (twisted's Agent), TLS without verification."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from twisted.internet import reactor, ssl
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer


@implementer(IPolicyForHTTPS)
class _TrustAnything:
    """Tests talk to servers with self-signed certificates they made themselves."""

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return ssl.CertificateOptions(verify=False)


@dataclass
class Response:
    status: int
    headers: Headers
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None


async def request(
    method: str,
    url: str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    access_token: str | None = None,
) -> Response:
    agent = Agent(reactor, contextFactory=_TrustAnything())
    hdrs = Headers()
    for k, v in (headers or {}).items():
        hdrs.addRawHeader(k, v)
    if access_token:
        hdrs.addRawHeader("Authorization", f"Bearer {access_token}")
    producer = None
    if body is not None:
        from io import BytesIO

        from twisted.web.client import FileBodyProducer

        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        if not hdrs.hasHeader("Content-Type"):
            hdrs.addRawHeader("Content-Type", "application/json")
        producer = FileBodyProducer(BytesIO(raw))
    resp = await agent.request(method.encode(), url.encode(), hdrs, producer)
    data = await readBody(resp)
    return Response(resp.code, resp.headers, data)
