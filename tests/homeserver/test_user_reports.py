"""Reporting users (``POST /users/{userId}/report``) and the admin listing of the reports
(``GET /_synapse/admin/v1/user_reports``), over real HTTP on both engines."""

from __future__ import annotations

from typing import Any

import pytest_twisted

from homeserver.services.user_reports import REPORT_RATE
from tests.support.admin import admin_and_user, call
from tests.support.client import Client, q
from tests.support.databases import fresh_database
from tests.support.rooms import count
from tests.support.server import RunningServer, start_server

ADMIN = "/_synapse/admin/v1/user_reports"


def report_path(user_id: str) -> str:
    return f"/_matrix/client/v3/users/{q(user_id)}/report"


@pytest_twisted.ensureDeferred
async def test_report_users(hs: RunningServer) -> None:
    admin, alice = await admin_and_user(hs)
    bob = await Client(hs.client_url).register("bob")
    s = hs.hs.services

    assert await call(hs, "POST", report_path(bob.user_id), alice.access_token,
                      {"reason": "spam"}) == (200, {})
    assert await call(hs, "POST", report_path("@spammer:elsewhere.example"),
                      alice.access_token, {"reason": ""}) == (200, {})
    # An unknown local user: the same answer, nothing stored (no account enumeration).
    assert await call(hs, "POST", report_path("@ghost:test.local"), alice.access_token,
                      {"reason": "boo"}) == (200, {})
    assert await count(s, "user_reports") == 2

    # Admins read them, newest first with dir=b, filtered by reporter or target.
    status, body = await call(hs, "GET", ADMIN, admin.access_token)
    assert status == 200 and body["total"] == 2
    assert [r["target_user_id"] for r in body["user_reports"]] == [
        "@spammer:elsewhere.example", bob.user_id]
    first = body["user_reports"][1]
    assert first["user_id"] == alice.user_id and first["reason"] == "spam"
    assert isinstance(first["received_ts"], int) and isinstance(first["id"], int)
    status, body = await call(hs, "GET", f"{ADMIN}?target_user_id={q(bob.user_id)}",
                              admin.access_token)
    assert [r["reason"] for r in body["user_reports"]] == ["spam"]
    status, body = await call(hs, "GET", f"{ADMIN}?limit=1", admin.access_token)
    assert len(body["user_reports"]) == 1 and body["next_token"] == 1
    assert (await call(hs, "GET", ADMIN, alice.access_token))[0] == 403
    status, body = await call(hs, "GET", f"{ADMIN}?dir=f", admin.access_token)
    assert body["user_reports"][0] == first
    assert await call(hs, "GET", f"{ADMIN}/{first['id']}", admin.access_token) == (200, first)
    assert await call(hs, "DELETE", f"{ADMIN}/{first['id']}", admin.access_token) == (200, {})
    for method in ("GET", "DELETE"):
        status, body = await call(hs, method, f"{ADMIN}/{first['id']}", admin.access_token)
        assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
        status, body = await call(hs, method, f"{ADMIN}/abc", admin.access_token)
        assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
        assert (await call(hs, method, f"{ADMIN}/1", alice.access_token))[0] == 403

    # Bad input.
    bad: list[tuple[str, Any, int, str]] = [
        (report_path(bob.user_id), {}, 400, "M_BAD_JSON"),  # reason is required
        (report_path(bob.user_id), {"reason": 5}, 400, "M_BAD_JSON"),
        (report_path(bob.user_id), {"reason": "x" * 1001}, 400, "M_BAD_JSON"),
        (report_path("not-a-user"), {"reason": "x"}, 400, "M_INVALID_PARAM"),
    ]
    for path, body_in, expect, errcode in bad:
        status, answer = await call(hs, "POST", path, alice.access_token, body_in)
        assert (status, answer["errcode"]) == (expect, errcode), path
    status, answer = await call(hs, "POST", report_path(bob.user_id), None, {"reason": "x"})
    assert (status, answer["errcode"]) == (401, "M_MISSING_TOKEN")
    status, answer = await call(hs, "GET", ADMIN + "?dir=x", admin.access_token)
    assert (status, answer["errcode"]) == (400, "M_INVALID_PARAM")
    assert await count(s, "user_reports") == 1


@pytest_twisted.ensureDeferred
async def test_reports_are_rate_limited(tmp_path: Any) -> None:
    with fresh_database("sqlite", str(tmp_path)) as db:
        hs = await start_server(str(tmp_path), db, rate_limiting={"enabled": True})
        try:
            alice = await Client(hs.client_url).register("alice")
            for _ in range(REPORT_RATE.burst):
                assert (await call(hs, "POST", report_path("@x:elsewhere.example"),
                                   alice.access_token, {"reason": "again"}))[0] == 200
            status, answer = await call(hs, "POST", report_path("@x:elsewhere.example"),
                                        alice.access_token, {"reason": "again"})
            assert (status, answer["errcode"]) == (429, "M_LIMIT_EXCEEDED")
            assert answer["retry_after_ms"] > 0
        finally:
            await hs.stop()
