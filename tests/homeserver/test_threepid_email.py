"""Email addresses on accounts, end to end with a real SMTP server (aiosmtpd on loopback):
request a token, the email arrives, submit it (link or submit_url), bind with UIA, list,
login by email, delete; password reset by email; and the errors of each step."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import pytest_twisted

from homeserver.config import DatabaseConfig
from tests.support.client import Client, User
from tests.support.http import request
from tests.support.server import RunningServer, start_server
from tests.support.smtp import Received, SmtpServer, smtp_server

SUBMIT = "/_matrix/client/unstable/add_threepid/email/submit_token"


@pytest_twisted.async_yield_fixture
async def mail(db_config: DatabaseConfig, tmp_path: object) -> AsyncIterator[
        tuple[RunningServer, SmtpServer]]:
    with smtp_server() as smtp:
        server = await start_server(str(tmp_path), db_config, email=smtp.config())
        try:
            yield server, smtp
        finally:
            await server.stop()


def _link(msg: Received) -> dict[str, str]:
    """The query of the validation link in the email."""
    url = re.search(r"https?://\S+", msg.text())
    assert url is not None, msg.text()
    parts = urlsplit(url.group(0))
    assert parts.path == SUBMIT
    return {k: v[0] for k, v in parse_qs(parts.query).items()}


async def _request_token(c: Client, path: str, email: str, secret: str, attempt: int = 1,
                         token: str | None = None) -> Any:
    return await c.call("POST", path, {"email": email, "client_secret": secret,
                                       "send_attempt": attempt}, token=token)


async def _with_password(c: Client, user: User, path: str, body: dict[str, Any]) -> Any:
    """A request behind user-interactive auth, completed with the password stage."""
    r = await c.call("POST", path, body, token=user.access_token)
    assert r.status == 401, r.body
    auth = {"type": "m.login.password", "session": r.json()["session"],
            "identifier": {"type": "m.id.user", "user": user.user_id},
            "password": user.password}
    return await c.call("POST", path, {**body, "auth": auth}, token=user.access_token)


async def _bind(c: Client, smtp: SmtpServer, user: User, email: str, secret: str) -> None:
    r = await _request_token(c, "/account/3pid/email/requestToken", email, secret)
    assert r.status == 200, r.body
    link = _link((await smtp.wait_for(email.lower()))[-1])
    r = await c.call("POST", SUBMIT, {"sid": link["sid"], "client_secret": secret,
                                      "token": link["token"]}, raw_path=True)
    assert (r.status, r.json()) == (200, {"success": True})
    r = await _with_password(c, user, "/account/3pid/add",
                             {"sid": link["sid"], "client_secret": secret})
    assert (r.status, r.json()) == (200, {}), r.body


@pytest_twisted.ensureDeferred
async def test_add_list_login_delete(mail: tuple[RunningServer, SmtpServer]) -> None:
    hs, smtp = mail
    c = Client(hs.client_url)
    alice, bob = await c.register("alice"), await c.register("bob")
    path = "/account/3pid/email/requestToken"
    r = await c.call("GET", "/capabilities", token=alice.access_token)
    assert r.json()["capabilities"]["m.3pid_changes"] == {"enabled": True}

    r = await _request_token(c, path, "Alice@Example.org", "secret.1")
    assert r.status == 200, r.body
    sid = r.json()["sid"]
    assert r.json()["submit_url"].endswith(SUBMIT)
    (msg,) = await smtp.wait_for("alice@example.org")
    assert msg.subject == "[Test Chat] Validate your email"
    assert msg.sender == "noreply@test.local"
    link = _link(msg)
    assert link["sid"] == sid and link["client_secret"] == "secret.1"
    # The same attempt again: the same session, no second email.
    r = await _request_token(c, path, "alice@example.org", "secret.1")
    assert r.json()["sid"] == sid and len(smtp.to("alice@example.org")) == 1

    # Not validated yet: nothing to bind (said before any password is asked for).
    r = await c.call("POST", "/account/3pid/add", {"sid": sid, "client_secret": "secret.1"},
                     token=alice.access_token)
    assert (r.status, r.json()["errcode"]) == (400, "M_THREEPID_AUTH_FAILED")
    # Wrong token, unknown session, wrong secret.
    for body in ({"sid": sid, "client_secret": "secret.1", "token": "nope"},
                 {"sid": "unknown", "client_secret": "secret.1", "token": link["token"]},
                 {"sid": sid, "client_secret": "other", "token": link["token"]}):
        r = await c.call("POST", SUBMIT, body, raw_path=True)
        assert (r.status, r.json()["errcode"]) == (400, "M_THREEPID_AUTH_FAILED"), body
    # The link, opened in a browser.
    r = await request("GET", f"{hs.client_url}{SUBMIT}?sid={sid}&client_secret=secret.1"
                             f"&token={link['token']}")
    assert r.status == 200 and b"validated" in r.body
    assert (r.header("Content-Type") or "").startswith("text/html")
    r = await _with_password(c, alice, "/account/3pid/add",
                             {"sid": sid, "client_secret": "secret.1"})
    assert (r.status, r.json()) == (200, {}), r.body
    # The session is spent.
    r = await c.call("POST", "/account/3pid/add", {"sid": sid, "client_secret": "secret.1"},
                     token=bob.access_token)
    assert (r.status, r.json()["errcode"]) == (400, "M_THREEPID_AUTH_FAILED")

    r = await c.call("GET", "/account/3pid", token=alice.access_token)
    (bound,) = r.json()["threepids"]
    assert (bound["medium"], bound["address"]) == ("email", "alice@example.org")
    assert isinstance(bound["validated_at"], int) and isinstance(bound["added_at"], int)
    r = await c.call("GET", "/account/3pid", token=bob.access_token)
    assert r.json() == {"threepids": []}
    # Nobody else may claim it, for their account or a new one.
    for p, token in ((path, bob.access_token), ("/register/email/requestToken", None)):
        r = await _request_token(c, p, "ALICE@example.org", "secret.2", token=token)
        assert (r.status, r.json()["errcode"]) == (400, "M_THREEPID_IN_USE"), p

    # Login with the address.
    login = {"type": "m.login.password", "password": alice.password,
             "identifier": {"type": "m.id.thirdparty", "medium": "email",
                            "address": "alice@EXAMPLE.org"}}
    r = await c.call("POST", "/login", login)
    assert (r.status, r.json()["user_id"]) == (200, alice.user_id)
    r = await c.call("POST", "/login", {**login, "password": "wrong"})
    assert (r.status, r.json()["errcode"]) == (403, "M_FORBIDDEN")
    r = await c.call("POST", "/login", {**login, "identifier": {
        "type": "m.id.thirdparty", "medium": "email", "address": "nobody@example.org"}})
    assert (r.status, r.json()["errcode"]) == (403, "M_FORBIDDEN")

    # Delete: gone from the list, from login, and a second delete finds nothing.
    body = {"medium": "email", "address": "alice@example.org"}
    r = await c.call("POST", "/account/3pid/delete", body, token=bob.access_token)
    assert (r.status, r.json()["errcode"]) == (400, "M_THREEPID_NOT_FOUND")
    r = await c.call("POST", "/account/3pid/delete", body, token=alice.access_token)
    assert (r.status, r.json()) == (200, {"id_server_unbind_result": "no-support"})
    r = await c.call("GET", "/account/3pid", token=alice.access_token)
    assert r.json() == {"threepids": []}
    r = await c.call("POST", "/account/3pid/delete", body, token=alice.access_token)
    assert (r.status, r.json()["errcode"]) == (400, "M_THREEPID_NOT_FOUND")
    r = await c.call("POST", "/login", login)
    assert r.status == 403


@pytest_twisted.ensureDeferred
async def test_bad_input_and_too_many_attempts(mail: tuple[RunningServer, SmtpServer]) -> None:
    hs, smtp = mail
    c = Client(hs.client_url)
    path = "/account/3pid/email/requestToken"
    for body in ({"email": "not an email", "client_secret": "s", "send_attempt": 1},
                 {"email": "a@b@c", "client_secret": "s", "send_attempt": 1},
                 {"email": 5, "client_secret": "s", "send_attempt": 1},
                 {"email": "x@example.org", "client_secret": "bad secret", "send_attempt": 1},
                 {"email": "x@example.org", "client_secret": "s", "send_attempt": "1"},
                 {"email": "x@example.org", "client_secret": "s"},
                 {"email": "x@example.org", "client_secret": "s", "send_attempt": 1,
                  "next_link": "javascript:alert(1)"}):
        r = await c.call("POST", path, body)
        assert (r.status, r.json()["errcode"]) == (400, "M_INVALID_PARAM"), body
    r = await c.call("POST", path, b"not json")
    assert (r.status, r.json()["errcode"]) == (400, "M_NOT_JSON")
    r = await _request_token(c, "/account/password/email/requestToken", "x@example.org", "s")
    assert (r.status, r.json()["errcode"]) == (400, "M_THREEPID_NOT_FOUND")
    r = await c.call("POST", SUBMIT, {"sid": "x"}, raw_path=True)
    assert (r.status, r.json()["errcode"]) == (400, "M_MISSING_PARAM")

    r = await _request_token(c, path, "x@example.org", "s")
    sid = r.json()["sid"]
    token = _link((await smtp.wait_for("x@example.org"))[0])["token"]
    for _ in range(5):
        r = await c.call("POST", SUBMIT, {"sid": sid, "client_secret": "s", "token": "0"},
                         raw_path=True)
        assert r.json()["errcode"] == "M_THREEPID_AUTH_FAILED"
    # Five wrong tokens end the session: even the right one is refused now.
    r = await c.call("POST", SUBMIT, {"sid": sid, "client_secret": "s", "token": token},
                     raw_path=True)
    assert (r.status, r.json()["errcode"]) == (429, "M_LIMIT_EXCEEDED")
    r = await request("GET", f"{hs.client_url}{SUBMIT}?sid={sid}&client_secret=s&token={token}")
    assert r.status == 429 and b"does not work" in r.body
    # A new attempt sends a new token and starts counting again.
    r = await _request_token(c, path, "x@example.org", "s", attempt=2)
    assert r.json()["sid"] == sid
    new = _link((await smtp.wait_for("x@example.org", 2))[1])["token"]
    assert new != token
    r = await c.call("POST", SUBMIT, {"sid": sid, "client_secret": "s", "token": new},
                     raw_path=True)
    assert r.status == 200


@pytest_twisted.ensureDeferred
async def test_password_reset_by_email(mail: tuple[RunningServer, SmtpServer]) -> None:
    hs, smtp = mail
    c = Client(hs.client_url)
    alice = await c.register("alice")
    await _bind(c, smtp, alice, "alice@example.org", "bind")

    r = await _request_token(c, "/account/password/email/requestToken", "alice@example.org",
                             "reset")
    assert r.status == 200, r.body
    sid = r.json()["sid"]
    link = _link((await smtp.wait_for("alice@example.org", 2))[1])
    body: dict[str, Any] = {"new_password": "n3w-pass", "logout_devices": True}
    # No access token: the email stage is the way in.
    r = await c.call("POST", "/account/password", body)
    assert r.status == 401
    assert r.json()["flows"] == [{"stages": ["m.login.email.identity"]}]
    auth = {"type": "m.login.email.identity", "session": r.json()["session"],
            "threepid_creds": {"sid": sid, "client_secret": "reset"}}
    r = await c.call("POST", "/account/password", {**body, "auth": auth})
    assert (r.status, r.json()["errcode"]) == (401, "M_FORBIDDEN")  # not validated yet
    r = await c.call("POST", SUBMIT, {"sid": sid, "client_secret": "reset",
                                      "token": link["token"]}, raw_path=True)
    assert r.status == 200
    r = await c.call("POST", "/account/password", {**body, "auth": auth})
    assert (r.status, r.json()) == (200, {}), r.body

    assert (await c.login(alice.user_id, alice.password)).status == 403
    assert (await c.login(alice.user_id, "n3w-pass")).status == 200
    r = await c.call("GET", "/account/whoami", token=alice.access_token)
    assert r.status == 401  # logged out everywhere
    # The validation session is spent.
    r = await c.call("POST", "/account/password", body)
    auth["session"] = r.json()["session"]
    r = await c.call("POST", "/account/password", {**body, "auth": auth})
    assert r.status == 401 and r.json()["errcode"] == "M_FORBIDDEN"


@pytest_twisted.ensureDeferred
async def test_password_reset_link_needs_confirmation(
        mail: tuple[RunningServer, SmtpServer]) -> None:
    """Opening a reset link (GET: a mail scanner, a curious click) only shows a form; the
    session is validated by the form's POST."""
    hs, smtp = mail
    c = Client(hs.client_url)
    alice = await c.register("alice")
    await _bind(c, smtp, alice, "alice@example.org", "bind")
    r = await _request_token(c, "/account/password/email/requestToken", "alice@example.org",
                             "reset")
    sid = r.json()["sid"]
    link = _link((await smtp.wait_for("alice@example.org", 2))[1])
    query = f"sid={sid}&client_secret=reset&token={link['token']}"
    r = await request("GET", f"{hs.client_url}{SUBMIT}?{query}")
    page = r.body.decode()
    assert r.status == 200 and "password reset was requested" in page
    assert f'<form method="post" action="?{query.replace("&", "&amp;")}">' in page
    body: dict[str, Any] = {"new_password": "n3w-pass"}
    r = await c.call("POST", "/account/password", body)
    auth = {"type": "m.login.email.identity", "session": r.json()["session"],
            "threepid_creds": {"sid": sid, "client_secret": "reset"}}
    r = await c.call("POST", "/account/password", {**body, "auth": auth})
    assert (r.status, r.json()["errcode"]) == (401, "M_FORBIDDEN")  # GET validated nothing
    r = await request("POST", f"{hs.client_url}{SUBMIT}?{query}",
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status == 200 and "validated" in r.body.decode(), r.body
    r = await c.call("POST", "/account/password", {**body, "auth": auth})
    assert (r.status, r.json()) == (200, {}), r.body


@pytest_twisted.ensureDeferred
async def test_email_off_by_default(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice = await c.register("alice")
    for path in ("/register/email/requestToken", "/account/3pid/email/requestToken",
                 "/account/password/email/requestToken"):
        r = await _request_token(c, path, "a@example.org", "s")
        assert (r.status, r.json()["errcode"]) == (400, "M_THREEPID_MEDIUM_NOT_SUPPORTED")
    r = await c.call("GET", "/account/3pid", token=alice.access_token)
    assert r.json() == {"threepids": []}
    r = await c.call("GET", "/capabilities", token=alice.access_token)
    assert r.json()["capabilities"]["m.3pid_changes"] == {"enabled": False}
    # Without email, /account/password still wants an access token.
    r = await c.call("POST", "/account/password", {"new_password": "x"})
    assert (r.status, r.json()["errcode"]) == (401, "M_MISSING_TOKEN")


@pytest_twisted.ensureDeferred
async def test_register_with_email(mail: tuple[RunningServer, SmtpServer]) -> None:
    hs, smtp = mail
    c = Client(hs.client_url)
    body: dict[str, Any] = {"username": "carol", "password": "c4rol-pass"}
    r = await c.call("POST", "/register", body)
    assert r.status == 401
    assert {"stages": ["m.login.email.identity"]} in r.json()["flows"]
    session = r.json()["session"]
    # Element asks to be brought back to its registration page by the link.
    back = "https://chat.example.org/#/register?client_secret=reg&sid=x"
    r = await c.call("POST", "/register/email/requestToken", {
        "email": "carol@example.org", "client_secret": "reg", "send_attempt": 1,
        "next_link": back})
    sid = r.json()["sid"]
    link = _link((await smtp.wait_for("carol@example.org"))[0])
    r = await request("GET", f"{hs.client_url}{SUBMIT}?sid={sid}&client_secret=reg"
                             f"&token={link['token']}")
    assert r.status == 200
    # No email.next_link_domain_whitelist: the link is shown, not followed automatically.
    assert 'http-equiv="refresh"' not in r.body.decode()
    assert ('<a href="https://chat.example.org/#/register?client_secret=reg&amp;sid=x">'
            in r.body.decode())
    auth = {"type": "m.login.email.identity", "session": session,
            "threepid_creds": {"sid": sid, "client_secret": "reg"}}
    r = await c.call("POST", "/register", {**body, "auth": auth})
    assert r.status == 200, r.body
    token = r.json()["access_token"]
    r = await c.call("GET", "/account/3pid", token=token)
    assert [t["address"] for t in r.json()["threepids"]] == ["carol@example.org"]


@pytest_twisted.ensureDeferred
async def test_register_losing_the_email_race_leaves_no_account(
        mail: tuple[RunningServer, SmtpServer], monkeypatch: pytest.MonkeyPatch) -> None:
    """Two registrations validated the same address; the second one's bind fails (after its
    in-use check passed): it answers M_THREEPID_IN_USE and its account is deactivated."""
    hs, smtp = mail
    c = Client(hs.client_url)
    creds = []
    for secret in ("a", "b"):
        r = await c.call("POST", "/register/email/requestToken", {
            "email": "erin@example.org", "client_secret": secret, "send_attempt": 1})
        sid = r.json()["sid"]
        msgs = await smtp.wait_for("erin@example.org", len(creds) + 1)
        r = await c.call("POST", SUBMIT, {"sid": sid, "client_secret": secret,
                                          "token": _link(msgs[-1])["token"]}, raw_path=True)
        assert r.status == 200, r.body
        creds.append({"sid": sid, "client_secret": secret})

    async def register(name: str, threepid_creds: dict[str, str]) -> Any:
        body = {"username": name, "password": "pa55-word"}
        r = await c.call("POST", "/register", body)
        auth = {"type": "m.login.email.identity", "session": r.json()["session"],
                "threepid_creds": threepid_creds}
        return await c.call("POST", "/register", {**body, "auth": auth})

    assert (await register("erin", creds[0])).status == 200
    store = hs.hs.services.threepids.store

    async def nobody(medium: str, address: str) -> None:
        return None

    monkeypatch.setattr(store, "user_for", nobody)  # the race: the check saw no owner
    r = await register("frank", creds[1])
    assert (r.status, r.json()["errcode"]) == (400, "M_THREEPID_IN_USE")
    user = await hs.hs.services.users.get("@frank:test.local")
    assert user is None or user.deactivated
    assert (await c.login("@frank:test.local", "pa55-word")).status == 403


@pytest_twisted.ensureDeferred
async def test_mailer_requires_starttls_when_asked() -> None:
    """``tls: starttls`` never falls back to plaintext: a server without STARTTLS is an
    error (EmailError, which the endpoints answer with 502), not a cleartext send."""
    from twisted.internet import reactor

    from homeserver.config.model import EmailConfig
    from homeserver.services.email.mailer import EmailError, Mailer

    with smtp_server() as smtp:
        base = EmailConfig(enabled=True, smtp_host="127.0.0.1", smtp_port=smtp.port,
                           from_address="Test <noreply@test.local>")
        with pytest.raises(EmailError):
            await Mailer(base, reactor).send("x@example.org", "hi", "body")
        assert smtp.to("x@example.org") == []
        plain = Mailer(dataclasses.replace(base, tls="none"), reactor)
        await plain.send("x@example.org", "hi", "body ünïcode")
        (got,) = smtp.to("x@example.org")
        assert got.subject == "hi" and "body ünïcode" in got.plain()


@pytest_twisted.ensureDeferred
async def test_next_link_domain_whitelist(db_config: DatabaseConfig, tmp_path: object) -> None:
    """With email.next_link_domain_whitelist, other domains are refused at requestToken and
    the listed ones are redirected to once validated."""
    with smtp_server() as smtp:
        hs = await start_server(str(tmp_path), db_config, email={
            **smtp.config(), "next_link_domain_whitelist": ["chat.example.org"]})
        try:
            c = Client(hs.client_url)
            body = {"email": "carol@example.org", "client_secret": "reg", "send_attempt": 1}
            for evil in ("https://evil.example/", "https://chat.example.org.evil.example/"):
                r = await c.call("POST", "/register/email/requestToken",
                                 {**body, "next_link": evil})
                assert (r.status, r.json()["errcode"]) == (400, "M_INVALID_PARAM")
            r = await c.call("POST", "/register/email/requestToken",
                             {**body, "next_link": "https://chat.example.org/#/back"})
            assert r.status == 200, r.body
            link = _link((await smtp.wait_for("carol@example.org"))[0])
            r = await request("GET", f"{hs.client_url}{SUBMIT}?sid={r.json()['sid']}"
                                     f"&client_secret=reg&token={link['token']}")
            assert ('<meta http-equiv="refresh" content="0; url=https://chat.example.org/#/back">'
                    in r.body.decode())
        finally:
            await hs.stop()
