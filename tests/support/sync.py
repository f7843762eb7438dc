"""Helpers for /sync tests: a client's sync loop, rooms and messages over real HTTP."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlencode

from tests.support.client import Client, User, q


async def sync(
    c: Client, user: User, since: str | None = None, *, filter: Any = None,
    timeout: int | None = None, expect: int = 200, **params: Any,
) -> dict[str, Any]:
    query: dict[str, Any] = {}
    if since is not None:
        query["since"] = since
    if timeout is not None:
        query["timeout"] = timeout
    if filter is not None:
        query["filter"] = filter if isinstance(filter, str) else json.dumps(filter)
    for k, v in params.items():
        query[k] = ("true" if v else "false") if isinstance(v, bool) else v
    path = "/sync" + (f"?{urlencode(query)}" if query else "")
    r = await c.call("GET", path, token=user.access_token)
    assert r.status == expect, r.body
    body: dict[str, Any] = r.json()
    return body


async def timed_sync(c: Client, user: User, since: str, timeout: int,
                     **kw: Any) -> tuple[dict[str, Any], float]:
    start = time.monotonic()
    body = await sync(c, user, since, timeout=timeout, **kw)
    return body, time.monotonic() - start


async def create_room(c: Client, user: User, **body: Any) -> str:
    r = await c.call("POST", "/createRoom", body, token=user.access_token)
    assert r.status == 200, r.body
    return str(r.json()["room_id"])


_txn = [0]


async def send(c: Client, user: User, room: str, text: str,
               event_type: str = "m.room.message", content: Any = None) -> str:
    _txn[0] += 1
    body = content if content is not None else {"msgtype": "m.text", "body": text}
    r = await c.call("PUT", f"/rooms/{q(room)}/send/{event_type}/t{_txn[0]}-{time.time_ns()}",
                     body, token=user.access_token)
    assert r.status == 200, r.body
    return str(r.json()["event_id"])


async def put_state(c: Client, user: User, room: str, event_type: str, content: Any,
                    state_key: str = "") -> str:
    path = f"/rooms/{q(room)}/state/{event_type}"
    if state_key:
        path += f"/{q(state_key)}"
    r = await c.call("PUT", path, content, token=user.access_token)
    assert r.status == 200, r.body
    return str(r.json()["event_id"])


async def join(c: Client, user: User, room: str) -> None:
    r = await c.call("POST", f"/rooms/{q(room)}/join", {}, token=user.access_token)
    assert r.status == 200, r.body


async def invite(c: Client, user: User, room: str, target: User) -> None:
    r = await c.call("POST", f"/rooms/{q(room)}/invite", {"user_id": target.user_id},
                     token=user.access_token)
    assert r.status == 200, r.body


async def leave(c: Client, user: User, room: str) -> None:
    r = await c.call("POST", f"/rooms/{q(room)}/leave", {}, token=user.access_token)
    assert r.status == 200, r.body


def timeline(body: dict[str, Any], room: str, section: str = "join") -> dict[str, Any]:
    tl: dict[str, Any] = body["rooms"][section][room]["timeline"]
    return tl


def bodies(events: list[dict[str, Any]]) -> list[str]:
    return [e["content"]["body"] for e in events if e["type"] == "m.room.message"]


def ids(events: list[dict[str, Any]]) -> list[str]:
    return [e["event_id"] for e in events]
