"""Registration over HTTP: user-interactive auth, usernames, tokens, guests, shared secret."""

from __future__ import annotations

import hashlib
import hmac

import pytest_twisted

from tests.support.client import Client, q
from tests.support.server import RunningServer, start_server


@pytest_twisted.ensureDeferred
async def test_register_walks_the_uia_flow(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    # First call without auth: 401 with the flows and a session.
    r = await c.call("POST", "/register", {"username": "alice", "password": "pw-alice-1"})
    assert r.status == 401
    body = r.json()
    assert body["flows"] == [{"stages": ["m.login.dummy"]}]
    assert isinstance(body["session"], str) and "errcode" not in body
    # Completing the dummy stage in that session registers the user.
    r = await c.call("POST", "/register", {
        "username": "alice", "password": "pw-alice-1",
        "initial_device_display_name": "Alice's phone",
        "auth": {"type": "m.login.dummy", "session": body["session"]},
    })
    assert r.status == 200, r.body
    j = r.json()
    assert j["user_id"] == "@alice:test.local"
    assert j["access_token"] and j["device_id"]
    r = await c.call("GET", "/devices", token=j["access_token"])
    assert [d["display_name"] for d in r.json()["devices"]] == ["Alice's phone"]
    # The session was spent.
    r = await c.call("POST", "/register", {
        "username": "alice2", "password": "pw",
        "auth": {"type": "m.login.dummy", "session": body["session"]},
    })
    assert r.status == 400


@pytest_twisted.ensureDeferred
async def test_taken_and_invalid_usernames(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    await c.register("bob")
    r = await c.call("POST", "/register", {"username": "bob", "password": "x",
                                           "auth": {"type": "m.login.dummy"}})
    assert (r.status, r.json()["errcode"]) == (400, "M_USER_IN_USE")
    r = await c.call("GET", "/register/available?username=bob")
    assert (r.status, r.json()["errcode"]) == (400, "M_USER_IN_USE")
    r = await c.call("GET", "/register/available?username=carol")
    assert (r.status, r.json()) == (200, {"available": True})
    for bad in ("bad name", "é", "_bridge_user", "12345", "a" * 300, "x:y", ""):
        r = await c.call("POST", "/register", {"username": bad, "password": "x",
                                               "auth": {"type": "m.login.dummy"}})
        assert r.status == 400, bad
        assert r.json()["errcode"] == "M_INVALID_USERNAME", bad
    # Usernames are case-folded, so BOB is bob.
    r = await c.call("GET", "/register/available?username=BOB")
    assert r.json()["errcode"] == "M_USER_IN_USE"


@pytest_twisted.ensureDeferred
async def test_wrong_types_and_missing_password(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    r = await c.call("POST", "/register", {"username": 5, "auth": {"type": "m.login.dummy"}})
    assert (r.status, r.json()["errcode"]) == (400, "M_BAD_JSON")
    r = await c.call("POST", "/register", {"username": "dan", "auth": {"type": "m.login.dummy"}})
    assert (r.status, r.json()["errcode"]) == (400, "M_MISSING_PARAM")
    r = await c.call("POST", "/register", {"username": "dan", "password": "x", "auth": "dummy"})
    assert (r.status, r.json()["errcode"]) == (400, "M_BAD_JSON")
    r = await c.call("POST", "/register", {"username": "dan", "password": "x",
                                           "auth": {"type": "m.login.unknown"}})
    assert r.status == 400


@pytest_twisted.ensureDeferred
async def test_inhibit_login_and_refresh_token_on_register(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    r = await c.call("POST", "/register", {"username": "erin", "password": "pw",
                                           "inhibit_login": True,
                                           "auth": {"type": "m.login.dummy"}})
    assert r.status == 200
    assert "access_token" not in r.json() and r.json()["user_id"] == "@erin:test.local"
    r = await c.call("POST", "/register", {"username": "fay", "password": "pw",
                                           "refresh_token": True,
                                           "auth": {"type": "m.login.dummy"}})
    j = r.json()
    assert j["refresh_token"] and j["expires_in_ms"] > 0


@pytest_twisted.ensureDeferred
async def test_registration_disabled(db_config: object, tmp_path: object) -> None:
    server = await start_server(str(tmp_path), db_config,  # type: ignore[arg-type]
                                registration={"enabled": False})
    try:
        c = Client(server.client_url)
        r = await c.call("POST", "/register", {"username": "x", "password": "y",
                                               "auth": {"type": "m.login.dummy"}})
        assert (r.status, r.json()["errcode"]) == (403, "M_FORBIDDEN")
        r = await c.call("GET", "/register/available?username=x")
        assert r.status == 403
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_reserved_names_outside_testing(db_config: object, tmp_path: object) -> None:
    server = await start_server(str(tmp_path), db_config,  # type: ignore[arg-type]
                                registration={"enabled": True,
                                              "reserved_localparts": ["admin"]})
    try:
        r = await Client(server.client_url).call("GET", "/register/available?username=admin")
        assert (r.status, r.json()["errcode"]) == (400, "M_INVALID_USERNAME")
    finally:
        await server.stop()


def _mac(secret: str, nonce: str, user: str, password: str, admin: bool) -> str:
    m = hmac.new(secret.encode(), digestmod=hashlib.sha1)
    m.update(f"{nonce}\x00{user}\x00{password}\x00{'admin' if admin else 'notadmin'}".encode())
    return m.hexdigest()


@pytest_twisted.ensureDeferred
async def test_shared_secret_registration_and_registration_tokens(
    db_config: object, tmp_path: object
) -> None:
    secret = "operator-secret"
    server = await start_server(
        str(tmp_path), db_config,  # type: ignore[arg-type]
        registration={"enabled": True, "require_token": True, "shared_secret": secret},
    )
    try:
        c = Client(server.client_url)
        admin_path = "/_synapse/admin/v1/register"
        nonce = (await c.call("GET", admin_path, raw_path=True)).json()["nonce"]
        bad = {"nonce": nonce, "username": "root1", "password": "pw", "admin": True,
               "mac": "00" * 20}
        r = await c.call("POST", admin_path, bad, raw_path=True)
        assert (r.status, r.json()["errcode"]) == (403, "M_FORBIDDEN")
        # A nonce works once, even after a failure.
        good = {**bad, "mac": _mac(secret, nonce, "root1", "pw", True)}
        r = await c.call("POST", admin_path, good, raw_path=True)
        assert r.status == 400
        nonce = (await c.call("GET", admin_path, raw_path=True)).json()["nonce"]
        good = {**bad, "nonce": nonce, "mac": _mac(secret, nonce, "root1", "pw", True)}
        r = await c.call("POST", admin_path, good, raw_path=True)
        assert r.status == 200, r.body
        admin_token = r.json()["access_token"]

        # Invite-only registration: the flow asks for a token.
        r = await c.call("POST", "/register", {"username": "gus", "password": "pw"})
        assert r.json()["flows"] == [{"stages": ["m.login.registration_token"]}]
        session = r.json()["session"]
        r = await c.call("POST", "/register", {
            "username": "gus", "password": "pw",
            "auth": {"type": "m.login.registration_token", "token": "nope", "session": session}})
        assert (r.status, r.json()["errcode"]) == (401, "M_FORBIDDEN")
        assert r.json()["session"] == session

        # Only admins make tokens.
        r = await c.call("POST", "/_synapse/admin/v1/registration_tokens/new",
                         {"token": "welcome", "uses_allowed": 1}, raw_path=True)
        assert r.status == 401
        user = await c.call("POST", "/_synapse/admin/v1/registration_tokens/new",
                            {"token": "welcome", "uses_allowed": 1}, token=admin_token,
                            raw_path=True)
        assert user.status == 200 and user.json()["uses_allowed"] == 1
        r = await c.call("GET", "/_matrix/client/v1/register/m.login.registration_token/"
                         "validity?token=welcome", raw_path=True)
        assert r.json() == {"valid": True}
        r = await c.call("POST", "/register", {
            "username": "gus", "password": "pw",
            "auth": {"type": "m.login.registration_token", "token": "welcome",
                     "session": session}})
        assert r.status == 200, r.body
        # Its one use is spent.
        r = await c.call("GET", "/_synapse/admin/v1/registration_tokens/welcome",
                         token=admin_token, raw_path=True)
        assert (r.json()["completed"], r.json()["pending"]) == (1, 0)
        r = await c.call("POST", "/register", {
            "username": "hal", "password": "pw",
            "auth": {"type": "m.login.registration_token", "token": "welcome"}})
        assert r.status == 401
        gus_token = (await c.login("gus", "pw")).json()["access_token"]
        r = await c.call("GET", "/_synapse/admin/v1/registration_tokens", token=gus_token,
                         raw_path=True)
        assert (r.status, r.json()["errcode"]) == (403, "M_FORBIDDEN")
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_guest_registration(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    r = await c.call("POST", "/register?kind=guest", {})
    assert r.status == 200, r.body
    guest = r.json()
    r = await c.call("GET", "/account/whoami", token=guest["access_token"])
    assert r.json()["is_guest"] is True
    # Guests cannot use endpoints meant for full accounts.
    r = await c.call("GET", "/capabilities", token=guest["access_token"])
    assert r.status == 200
    r = await c.call("POST", "/user_directory/search", {"search_term": "a"},
                     token=guest["access_token"])
    assert (r.status, r.json()["errcode"]) == (403, "M_GUEST_ACCESS_FORBIDDEN")


@pytest_twisted.ensureDeferred
async def test_passwords_are_stored_hashed(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    await c.register("ivy", "a-very-distinct-password")
    from homeserver.storage.engine import Txn

    def rows(txn: Txn) -> list[tuple[object, ...]]:
        return txn.execute("SELECT user_id, password_hash FROM users").fetchall()

    assert hs.hs.db is not None
    stored = await hs.hs.db.run("t", rows)
    assert stored and all("distinct" not in str(h) and str(h).startswith("$2b$")
                          for _, h in stored)
    tokens = await hs.hs.db.run(
        "t", lambda txn: txn.execute("SELECT token_hash FROM access_tokens").fetchall())
    assert all(len(t[0]) == 64 for t in tokens)  # SHA-256 hex, never the token
    assert q("@a:b") == "%40a%3Ab"
