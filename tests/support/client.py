"""A tiny Matrix client for HTTP-level tests: real requests, no magic."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from tests.support.http import Response, request


@dataclass
class User:
    user_id: str
    access_token: str
    device_id: str
    password: str


class Client:
    def __init__(self, base_url: str) -> None:
        self.base = base_url.rstrip("/")

    def url(self, path: str) -> str:
        return f"{self.base}/_matrix/client/v3{path}"

    async def call(
        self, method: str, path: str, body: Any = None, token: str | None = None,
        *, raw_path: bool = False,
    ) -> Response:
        url = f"{self.base}{path}" if raw_path else self.url(path)
        return await request(method, url, body, access_token=token)

    async def register(self, username: str, password: str = "s3cret-pass",
                       **extra: Any) -> User:
        body = {"username": username, "password": password, "auth": {"type": "m.login.dummy"},
                **extra}
        r = await self.call("POST", "/register", body)
        assert r.status == 200, r.body
        j = r.json()
        return User(j["user_id"], j["access_token"], j["device_id"], password)

    async def login(self, user: str, password: str, **extra: Any) -> Response:
        body = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
                "password": password, **extra}
        return await self.call("POST", "/login", body)


def q(value: str) -> str:
    return quote(value, safe="")
