"""Every admin endpoint refuses requests without a valid token (401) and from users who are
not server admins (403 M_FORBIDDEN), on both engines."""

from __future__ import annotations

import pytest_twisted

from tests.support.admin import admin_and_user, call
from tests.support.client import q
from tests.support.server import RunningServer

V1, V2 = "/_synapse/admin/v1", "/_synapse/admin/v2"


def _endpoints(user: str, room: str) -> list[tuple[str, str]]:
    u, r = q(user), q(room)
    return [
        ("GET", f"{V2}/users"), ("GET", f"{V2}/users/{u}"), ("PUT", f"{V2}/users/{u}"),
        ("GET", f"{V2}/users/{u}/devices"), ("GET", f"{V1}/users/{u}/joined_rooms"),
        ("GET", f"{V1}/users/{u}/media"), ("POST", f"{V1}/deactivate/{u}"),
        ("POST", f"{V1}/reset_password/{u}"), ("GET", f"{V1}/users/{u}/admin"),
        ("PUT", f"{V1}/users/{u}/admin"), ("GET", f"{V1}/whois/{q('@root:test.local')}"),
        ("GET", f"{V1}/rooms"), ("GET", f"{V1}/rooms/{r}"), ("GET", f"{V1}/rooms/{r}/members"),
        ("GET", f"{V1}/rooms/{r}/state"), ("GET", f"{V1}/rooms/{r}/block"),
        ("PUT", f"{V1}/rooms/{r}/block"), ("DELETE", f"{V1}/rooms/{r}"),
        ("DELETE", f"{V2}/rooms/{r}"), ("GET", f"{V2}/rooms/{r}/delete_status"),
        ("GET", f"{V2}/rooms/delete_status/abc"), ("POST", f"{V1}/purge_history/{r}"),
        ("POST", f"{V1}/purge_history/{r}/{q('$event')}"),
        ("GET", f"{V1}/purge_history_status/abc"),
        ("GET", f"{V1}/federation/destinations"), ("GET", f"{V1}/federation/destinations/x.org"),
        ("POST", f"{V1}/federation/destinations/x.org/reset_connection"),
        ("GET", f"{V1}/federation/policy"), ("POST", f"{V1}/send_server_notice"),
        ("PUT", f"{V1}/send_server_notice/txn1"), ("GET", f"{V1}/server_version"),
        ("GET", f"{V1}/event_reports"), ("GET", f"{V1}/statistics/users/media"),
        ("GET", f"{V2}/users/{u}/devices/DEV"), ("PUT", f"{V2}/users/{u}/devices/DEV"),
        ("DELETE", f"{V2}/users/{u}/devices/DEV"), ("POST", f"{V2}/users/{u}/delete_devices"),
        ("GET", f"{V1}/username_available?username=x"), ("GET", f"{V1}/users/{u}/pushers"),
        ("GET", f"{V1}/rooms/{r}/forward_extremities"), ("GET", f"{V1}/room/{r}/media"),
        ("POST", f"{V1}/room/{r}/media/quarantine"),
        ("GET", f"{V1}/federation/destinations/x.org/rooms"),
        ("GET", f"{V1}/event_reports/1"), ("DELETE", f"{V1}/event_reports/1"),
    ]


@pytest_twisted.ensureDeferred
async def test_admin_endpoints_refuse_non_admins(hs: RunningServer) -> None:
    admin, alice = await admin_and_user(hs)
    room = "!someroom:test.local"
    for method, path in _endpoints(alice.user_id, room):
        status, body = await call(hs, method, path, alice.access_token)
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN"), (method, path, body)
        status, body = await call(hs, method, path, None)
        assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN"), (method, path, body)
        status, body = await call(hs, method, path, "not-a-token")
        assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN"), (method, path, body)
    # Nothing was changed by the refused requests.
    user = await hs.hs.services.users.get(alice.user_id)
    assert user is not None and not user.deactivated and not user.is_admin
    # The admin is not refused (whatever else the answer is; never a 500).
    for method, path in _endpoints(alice.user_id, room):
        status, _ = await call(hs, method, path, admin.access_token)
        assert status not in (401, 403) and status < 500, (method, path, status)
