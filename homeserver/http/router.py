"""Routes: a method, a path template and an async handler, grouped by the resource that serves them.

Handlers are ``async def handler(request, **path_params) -> (status, json)``; they hold no state
and only parse, call one service and shape the reply.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from homeserver.http.errors import Codes, MatrixError
from homeserver.http.request import HomeserverRequest

JsonResponse = tuple[int, Any]
Handler = Callable[..., Awaitable[Any]]

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
CLIENT_PREFIXES = ("/_matrix/client/v3", "/_matrix/client/r0")


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    pattern: re.Pattern[str]
    handler: Handler
    resource: str
    # Per-route body limit (media uploads); None uses the listener's JSON limit.
    max_body_bytes: int | None = None


def compile_template(template: str) -> re.Pattern[str]:
    out, pos = [], 0
    for m in _PARAM.finditer(template):
        out.append(re.escape(template[pos : m.start()]))
        out.append(f"(?P<{m.group(1)}>[^/]+)")
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("^" + "".join(out) + "$")


class Router:
    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(
        self,
        method: str,
        template: str,
        handler: Handler,
        *,
        resource: str,
        max_body_bytes: int | None = None,
    ) -> None:
        self.routes.append(
            Route(method, template, compile_template(template), handler, resource, max_body_bytes)
        )

    def client(self, method: str, path: str, handler: Handler, **kw: Any) -> None:
        """A client-server API route under /v3 and its older /r0 alias."""
        for prefix in CLIENT_PREFIXES:
            self.add(method, prefix + path, handler, resource="client", **kw)

    def body_limit(self, path: str) -> int | None:
        """The largest body limit of the routes at this path, if any route sets one."""
        limits = [
            r.max_body_bytes
            for r in self.routes
            if r.max_body_bytes is not None and r.pattern.match(path)
        ]
        return max(limits) if limits else None

    def match(
        self, method: str, path: str, resources: frozenset[str]
    ) -> tuple[Route | None, dict[str, str], list[str]]:
        """The route for (method, path); else the methods the path allows (for a 405)."""
        allowed: list[str] = []
        for route in self.routes:
            if route.resource not in resources:
                continue
            m = route.pattern.match(path)
            if m is None:
                continue
            if route.method == method or (method == "HEAD" and route.method == "GET"):
                params = {k: unquote(v, errors="strict") for k, v in m.groupdict().items()}
                if any("\x00" in v for v in params.values()):
                    # No identifier holds a NUL, and PostgreSQL text cannot store one.
                    raise MatrixError(400, Codes.INVALID_PARAM, "Path parameter contains NUL")
                return route, params, allowed
            allowed.append(route.method)
        return None, {}, allowed


Request = HomeserverRequest
