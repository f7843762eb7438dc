"""Query parameters shared by the admin endpoints: paging (from/limit/dir) and booleans."""

from __future__ import annotations

from typing import Any

from homeserver.http.errors import Codes, MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.http.validation import query_int


def query_bool(request: HomeserverRequest, name: str, default: bool | None) -> bool | None:
    raw = request.query_param(name)
    if raw is None:
        return default
    if raw not in ("true", "false"):
        raise MatrixError(400, Codes.INVALID_PARAM, f"{name} must be true or false")
    return raw == "true"


def paging(request: HomeserverRequest, default_limit: int = 100) -> tuple[int, int, bool]:
    """(offset, limit, backwards) from ``from``, ``limit`` and ``dir``."""
    offset = query_int(request.query_param("from"), "from", 0, min=0, max=2**31)
    limit = query_int(request.query_param("limit"), "limit", default_limit, min=0, max=10_000)
    direction = request.query_param("dir") or "f"
    if direction not in ("f", "b"):
        raise MatrixError(400, Codes.INVALID_PARAM, "dir must be 'f' or 'b'")
    return offset, limit, direction == "b"


def page(key: str, items: list[Any], offset: int, total: int,
         token_as_str: bool = False) -> dict[str, Any]:
    """A page of ``items`` starting at ``offset`` of ``total``, with ``next_token`` when more
    follow (Synapse sends it as a string for users, an integer elsewhere)."""
    body: dict[str, Any] = {key: items, "total": total}
    if offset + len(items) < total:
        nxt = offset + len(items)
        body["next_token"] = str(nxt) if token_as_str else nxt
    return body
