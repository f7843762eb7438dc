"""Helpers for admin API tests: an admin and a user, and calls with a token."""

from __future__ import annotations

from typing import Any

from tests.support.client import Client, User
from tests.support.http import request
from tests.support.server import RunningServer


async def admin_and_user(hs: RunningServer, user: str = "alice") -> tuple[User, User]:
    c = Client(hs.client_url)
    admin, other = await c.register("root"), await c.register(user)
    await hs.hs.services.users.set_admin(admin.user_id, True)
    return admin, other


async def call(hs: RunningServer, method: str, path: str, token: str | None,
               body: Any = None) -> tuple[int, Any]:
    if body is None and method in ("POST", "PUT"):
        body = {}
    r = await request(method, hs.client_url + path, body, access_token=token)
    return r.status, r.json()
