"""A minimal Matrix client over aiohttp: only the client-server API calls the scenarios need."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp


class ApiError(Exception):
    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        super().__init__(f"{method} {path}: {status} {body}")
        self.status = status
        self.body = body


@dataclass
class Account:
    user_id: str
    token: str


def q(value: str) -> str:
    return quote(value, safe="")


class Client:
    """One aiohttp session against one server; every call returns the parsed JSON body."""

    def __init__(self, base_url: str) -> None:
        self.base = base_url.rstrip("/")
        # No connection cap: the scenarios decide the concurrency.
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=120),
        )
        self._txn = 0

    async def close(self) -> None:
        await self.session.close()

    async def call(self, method: str, path: str, body: Any = None, token: str | None = None,
                   params: dict[str, str] | None = None) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = json.dumps(body) if body is not None else None
        if data is not None:
            headers["Content-Type"] = "application/json"
        url = f"{self.base}/_matrix/client/v3{path}"
        for attempt in range(20):
            async with self.session.request(method, url, data=data, headers=headers,
                                            params=params) as resp:
                payload = await resp.json(content_type=None)
                if resp.status == 200:
                    return payload
                # Rate limits are off on both servers; a 429 would still be honoured.
                if resp.status == 429 and attempt < 19:
                    await asyncio.sleep(payload.get("retry_after_ms", 100) / 1000)
                    continue
                raise ApiError(method, path, resp.status, payload)
        raise AssertionError("unreachable")

    async def register(self, username: str, password: str = "bench-pass-1") -> Account:
        body = {"username": username, "password": password,
                "auth": {"type": "m.login.dummy"}, "inhibit_login": False}
        j = await self.call("POST", "/register", body)
        return Account(j["user_id"], j["access_token"])

    async def create_room(self, who: Account, **body: Any) -> str:
        body.setdefault("preset", "public_chat")
        j = await self.call("POST", "/createRoom", body, who.token)
        return str(j["room_id"])

    async def join(self, who: Account, room: str, via: str | None = None) -> None:
        params = {"server_name": via} if via else None
        await self.call("POST", f"/join/{q(room)}", {}, who.token, params)

    async def send(self, who: Account, room: str, body: str) -> str:
        self._txn += 1
        j = await self.call("PUT", f"/rooms/{q(room)}/send/m.room.message/b{self._txn}",
                            {"msgtype": "m.text", "body": body}, who.token)
        return str(j["event_id"])

    async def sync(self, who: Account, since: str | None = None, timeout_ms: int = 0,
                   filter_json: str | None = None) -> Any:
        params = {"timeout": str(timeout_ms)}
        if since:
            params["since"] = since
        if filter_json:
            params["filter"] = filter_json
        return await self.call("GET", "/sync", None, who.token, params)

    async def messages(self, who: Account, room: str, from_token: str | None,
                       limit: int) -> Any:
        params = {"dir": "b", "limit": str(limit)}
        if from_token:
            params["from"] = from_token
        return await self.call("GET", f"/rooms/{q(room)}/messages", None, who.token, params)


async def timed(coro: Any) -> tuple[Any, float]:
    """Await ``coro``; its result and how long it took in seconds."""
    start = time.perf_counter()
    result = await coro
    return result, time.perf_counter() - start


def timeline_bodies(sync: Any, room: str) -> list[str]:
    """The bodies of the messages in one room's timeline of a sync response."""
    events = sync.get("rooms", {}).get("join", {}).get(room, {}).get("timeline", {}).get(
        "events", [])
    return [e["content"].get("body", "") for e in events if e.get("type") == "m.room.message"]
