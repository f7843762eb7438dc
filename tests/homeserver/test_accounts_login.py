"""Login, tokens, refresh, logout, password change and deactivation over HTTP."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from tests.support.client import Client
from tests.support.server import RunningServer, start_server


@pytest_twisted.ensureDeferred
async def test_login_flows_and_identifiers(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    user = await c.register("alice", "pw-1")
    r = await c.call("GET", "/login")
    types = [f["type"] for f in r.json()["flows"]]
    assert "m.login.password" in types and "m.login.token" in types
    for ident in ("alice", "@alice:test.local", "ALICE"):
        r = await c.login(ident, "pw-1")
        assert r.status == 200, (ident, r.body)
        assert r.json()["user_id"] == user.user_id
    # The legacy top-level "user" field.
    r = await c.call("POST", "/login", {"type": "m.login.password", "user": "alice",
                                        "password": "pw-1", "device_id": "MYDEVICE"})
    assert r.status == 200 and r.json()["device_id"] == "MYDEVICE"


@pytest.mark.parametrize(
    "body, status, errcode",
    [
        ({"type": "m.login.password", "user": "alice", "password": "wrong"}, 403, "M_FORBIDDEN"),
        ({"type": "m.login.password", "user": "nobody", "password": "pw-1"}, 403, "M_FORBIDDEN"),
        ({"type": "m.login.password", "user": "@alice:elsewhere.org", "password": "pw-1"},
         403, "M_FORBIDDEN"),
        ({"type": "m.login.password", "password": "pw-1"}, 400, "M_MISSING_PARAM"),
        ({"type": "m.login.password", "user": "alice"}, 400, "M_MISSING_PARAM"),
        ({"type": "m.login.password", "user": ["alice"], "password": "pw-1"}, 400,
         "M_MISSING_PARAM"),
        ({"type": "m.login.password", "identifier": {"type": "m.id.phone"}, "password": "x"},
         400, "M_UNKNOWN"),
        ({"type": "m.login.sso"}, 400, "M_UNKNOWN"),
        ({"type": "m.login.token", "token": "mal_forged"}, 403, "M_FORBIDDEN"),
        ({"password": "pw-1"}, 400, "M_MISSING_PARAM"),
        ({"type": 7}, 400, "M_BAD_JSON"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_login_failures(hs: RunningServer, body: dict[str, object], status: int,
                              errcode: str) -> None:
    c = Client(hs.client_url)
    await c.register("alice", "pw-1")
    r = await c.call("POST", "/login", body)
    assert (r.status, r.json()["errcode"]) == (status, errcode)


@pytest_twisted.ensureDeferred
async def test_login_is_rate_limited(db_config: object, tmp_path: object) -> None:
    server = await start_server(
        str(tmp_path), db_config,  # type: ignore[arg-type]
        rate_limiting={"enabled": True,
                       "login_failures_per_account": {"per_second": 0.01, "burst": 2}},
    )
    try:
        c = Client(server.client_url)
        await c.register("alice", "pw-1")
        codes = [(await c.login("alice", "wrong")).status for _ in range(4)]
        assert codes[0] == 403 and codes[-1] == 429
        r = await c.login("alice", "wrong")
        assert r.json()["errcode"] == "M_LIMIT_EXCEEDED"
        assert r.json()["retry_after_ms"] > 0
        assert r.header("Retry-After") is not None
        # Even the right password waits until the bucket refills.
        assert (await c.login("alice", "pw-1")).status == 429
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_login_token_works_once(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    user = await c.register("alice", "pw-1")
    r = await c.call("POST", "/login/get_token", {}, token=user.access_token,
                     raw_path=False)
    assert r.status == 404  # v1 only
    path = "/_matrix/client/v1/login/get_token"
    r = await c.call("POST", path, {}, token=user.access_token, raw_path=True)
    assert r.status == 401
    r = await c.call("POST", path, {"auth": {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
        "password": "pw-1", "session": r.json()["session"]}}, token=user.access_token,
        raw_path=True)
    assert r.status == 200, r.body
    login_token = r.json()["login_token"]
    r = await c.call("POST", "/login", {"type": "m.login.token", "token": login_token})
    assert r.status == 200 and r.json()["user_id"] == user.user_id
    r = await c.call("POST", "/login", {"type": "m.login.token", "token": login_token})
    assert (r.status, r.json()["errcode"]) == (403, "M_FORBIDDEN")


@pytest_twisted.ensureDeferred
async def test_refresh_and_soft_logout(db_config: object, tmp_path: object) -> None:
    server = await start_server(
        str(tmp_path), db_config,  # type: ignore[arg-type]
        sessions={"refreshable_access_token_lifetime_ms": 1000},
    )
    try:
        c = Client(server.client_url)
        await c.register("alice", "pw-1")
        r = await c.login("alice", "pw-1", refresh_token=True)
        first = r.json()
        assert first["expires_in_ms"] == 1000
        assert (await c.call("GET", "/account/whoami", token=first["access_token"])).status == 200
        await task.deferLater(reactor, 1.2, lambda: None)
        r = await c.call("GET", "/account/whoami", token=first["access_token"])
        assert (r.status, r.json()["errcode"], r.json()["soft_logout"]) == (
            401, "M_UNKNOWN_TOKEN", True)
        r = await c.call("POST", "/refresh", {"refresh_token": first["refresh_token"]})
        assert r.status == 200, r.body
        second = r.json()
        assert second["refresh_token"] != first["refresh_token"]
        r = await c.call("GET", "/account/whoami", token=second["access_token"])
        assert r.json()["device_id"] == first["device_id"]
        # A refresh token works once.
        r = await c.call("POST", "/refresh", {"refresh_token": first["refresh_token"]})
        assert (r.status, r.json()["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_logout_and_logout_all(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    user = await c.register("alice", "pw-1")
    other = (await c.login("alice", "pw-1")).json()["access_token"]
    third = (await c.login("alice", "pw-1")).json()["access_token"]
    assert (await c.call("POST", "/logout", {}, token=user.access_token)).status == 200
    r = await c.call("GET", "/account/whoami", token=user.access_token)
    assert (r.status, r.json()["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    devices = (await c.call("GET", "/devices", token=other)).json()["devices"]
    assert user.device_id not in [d["device_id"] for d in devices]
    assert len(devices) == 2
    assert (await c.call("POST", "/logout/all", {}, token=other)).status == 200
    for token in (other, third):
        assert (await c.call("GET", "/account/whoami", token=token)).status == 401


@pytest_twisted.ensureDeferred
async def test_whoami_and_token_in_query(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    user = await c.register("alice", "pw-1")
    r = await c.call("GET", "/account/whoami", token=user.access_token)
    assert r.json() == {"user_id": user.user_id, "device_id": user.device_id, "is_guest": False}
    r = await c.call("GET", f"/account/whoami?access_token={user.access_token}")
    assert r.status == 200


@pytest_twisted.ensureDeferred
async def test_password_change_behind_uia(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    user = await c.register("alice", "old-pw")
    other = (await c.login("alice", "old-pw")).json()["access_token"]
    r = await c.call("POST", "/account/password", {"new_password": "new-pw"},
                     token=user.access_token)
    assert r.status == 401 and r.json()["flows"] == [{"stages": ["m.login.password"]}]
    session = r.json()["session"]
    wrong = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
             "password": "nope", "session": session}
    r = await c.call("POST", "/account/password", {"new_password": "new-pw", "auth": wrong},
                     token=user.access_token)
    assert (r.status, r.json()["errcode"]) == (401, "M_FORBIDDEN")
    right = {**wrong, "password": "old-pw"}
    r = await c.call("POST", "/account/password", {"new_password": "new-pw", "auth": right},
                     token=user.access_token)
    assert r.status == 200, r.body
    assert (await c.login("alice", "old-pw")).status == 403
    assert (await c.login("alice", "new-pw")).status == 200
    # Other sessions end; this one stays.
    assert (await c.call("GET", "/account/whoami", token=other)).status == 401
    assert (await c.call("GET", "/account/whoami", token=user.access_token)).status == 200


@pytest_twisted.ensureDeferred
async def test_uia_session_cannot_be_used_for_another_user(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice = await c.register("alice", "pw-a")
    bob = await c.register("bob", "pw-b")
    r = await c.call("POST", "/account/password", {"new_password": "x"}, token=alice.access_token)
    session = r.json()["session"]
    auth = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "bob"},
            "password": "pw-b", "session": session}
    r = await c.call("POST", "/account/password", {"new_password": "x", "auth": auth},
                     token=bob.access_token)
    assert r.status == 400
    # Nor authenticate as someone else in one's own session.
    r = await c.call("POST", "/account/password", {"new_password": "x"}, token=alice.access_token)
    auth["session"] = r.json()["session"]
    r = await c.call("POST", "/account/password", {"new_password": "x", "auth": auth},
                     token=alice.access_token)
    assert (r.status, r.json()["errcode"]) == (401, "M_FORBIDDEN")


@pytest_twisted.ensureDeferred
async def test_deactivation(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    user = await c.register("alice", "pw-1")
    await c.call("PUT", f"/profile/{user.user_id}/displayname", {"displayname": "Alice"},
                 token=user.access_token)
    r = await c.call("POST", "/account/deactivate", {}, token=user.access_token)
    auth = {"type": "m.login.password", "user": "alice", "password": "pw-1",
            "session": r.json()["session"]}
    r = await c.call("POST", "/account/deactivate", {"auth": auth}, token=user.access_token)
    assert r.status == 200, r.body
    assert r.json() == {"id_server_unbind_result": "no-support"}
    assert (await c.call("GET", "/account/whoami", token=user.access_token)).status == 401
    assert (await c.login("alice", "pw-1")).status == 403
    assert (await c.call("GET", f"/profile/{user.user_id}")).status == 404
    # The name stays taken.
    r = await c.call("GET", "/register/available?username=alice")
    assert r.json()["errcode"] == "M_USER_IN_USE"
