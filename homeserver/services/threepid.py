"""Email addresses on accounts: validation sessions, binding, lookup (``Services.threepids``).

A client asks for a token (``…/email/requestToken`` with a ``client_secret`` and a
``send_attempt``; a retry with the same attempt sends nothing and returns the same ``sid``).
We email a link carrying a random token; opening it (GET) or posting the token to the
``submit_url`` validates the session (a password reset's GET only shows a confirming form).
A validated session is then spent once: binding the address (``/account/3pid/add``), or as
the ``m.login.email.identity`` stage of user-interactive auth (registration, password
reset). Tokens are stored as SHA-256 digests; five wrong tokens end the session (429).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from typing import Any
from urllib.parse import urlencode, urlsplit

from homeserver.clock import Clock
from homeserver.config import Config
from homeserver.config.model import RateLimit
from homeserver.http.errors import Codes, MatrixError
from homeserver.services.email.mailer import EmailError, Mailer
from homeserver.services.ratelimit import Ratelimiter
from homeserver.storage.threepids import Threepid, ThreepidInUse, ThreepidSession, ThreepidStore

EMAIL = "email"
EMAIL_IDENTITY = "m.login.email.identity"
# What a session was requested for: /register, /account/3pid, /account/password.
REGISTER, ADD, PASSWORD = "register", "add", "password"
SUBMIT_PATH = "_matrix/client/unstable/add_threepid/email/submit_token"
MAX_FAILED_ATTEMPTS = 5
MAX_SEND_ATTEMPT = 2**53
_CLIENT_SECRET = re.compile(r"^[0-9a-zA-Z.=_\-]{1,255}$")
_LOCAL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~\-]{1,64}$")
_DOMAIN = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?"
                     r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)*$")
_TOKEN_CHARS = string.ascii_letters + string.digits
# Emails sent per address (Synapse's rc_3pid_validation).
SEND_LIMIT = RateLimit(0.003, 5)


def _invalid(message: str) -> MatrixError:
    return MatrixError(400, Codes.INVALID_PARAM, message)


def _auth_failed(message: str) -> MatrixError:
    return MatrixError(400, "M_THREEPID_AUTH_FAILED", message)


def canonical_email(value: object) -> str:
    """The address as stored and compared (lower case), or 400 M_INVALID_PARAM."""
    if not isinstance(value, str):
        raise _invalid("'email' must be an email address")
    local, at, domain = value.strip().rpartition("@")
    if not at or not _LOCAL.match(local) or not _DOMAIN.match(domain) or ".." in local:
        raise _invalid("'email' must be an email address")
    return f"{local}@{domain}".lower()


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class ThreepidService:
    def __init__(self, config: Config, store: ThreepidStore, mailer: Mailer | None,
                 clock: Clock) -> None:
        self.config = config
        self.store = store
        self.mailer = mailer
        self.clock = clock
        self.send_limit = Ratelimiter(SEND_LIMIT, config.rate_limiting.enabled, clock)

    @property
    def enabled(self) -> bool:
        return self.mailer is not None

    @property
    def submit_url(self) -> str:
        return self.config.public_baseurl + SUBMIT_PATH

    def _require_enabled(self) -> Mailer:
        if self.mailer is None:
            raise MatrixError(400, "M_THREEPID_MEDIUM_NOT_SUPPORTED",
                              "This server does not handle email addresses")
        return self.mailer

    # -- requestToken --------------------------------------------------------------------------
    async def request_token(self, purpose: str, body: dict[str, Any]) -> dict[str, Any]:
        mailer = self._require_enabled()
        email = canonical_email(body.get("email"))
        client_secret = body.get("client_secret")
        if not isinstance(client_secret, str) or not _CLIENT_SECRET.match(client_secret):
            raise _invalid("'client_secret' must be 1-255 characters of [0-9a-zA-Z.=_-]")
        attempt = body.get("send_attempt")
        if isinstance(attempt, bool) or not isinstance(attempt, int) or not (
            0 <= attempt <= MAX_SEND_ATTEMPT
        ):
            raise _invalid("'send_attempt' must be a non-negative integer")
        next_link = body.get("next_link")
        if next_link is not None and not (
            isinstance(next_link, str) and len(next_link) <= 2048
            and urlsplit(next_link).scheme in ("http", "https") and urlsplit(next_link).netloc
        ):
            raise _invalid("'next_link' must be an http(s) URL")
        allowed = self.config.email.next_link_domain_whitelist
        if next_link is not None and allowed is not None and (
            (urlsplit(next_link).hostname or "") not in allowed
        ):
            raise _invalid("'next_link' points at a domain this server does not allow")
        owner = await self.store.user_for(EMAIL, email)
        if purpose in (REGISTER, ADD) and owner is not None:
            raise MatrixError(400, "M_THREEPID_IN_USE", "This email address is already in use")
        if purpose == PASSWORD and owner is None:
            raise MatrixError(400, "M_THREEPID_NOT_FOUND",
                              "No account has this email address")
        now = self.clock.time_ms()
        token = "".join(secrets.choice(_TOKEN_CHARS) for _ in range(32))
        wanted = ThreepidSession(
            session_id=secrets.token_urlsafe(18), medium=EMAIL, address=email,
            client_secret=client_secret, purpose=purpose, token_hash=_digest(token),
            send_attempt=attempt, failed_attempts=0, created_ts=now,
            expires_ts=now + self.config.email.validation_token_lifetime_ms, validated_ts=None,
            next_link=next_link,
        )
        session, send = await self.store.start_session(wanted)
        if send:
            # A refused attempt leaves a token nobody received: the next attempt replaces it.
            self.send_limit.check(email)
            await self.store.delete_expired(now)
            link = self.submit_url + "?" + urlencode(
                {"token": token, "client_secret": client_secret, "sid": session.session_id})
            subject, text = _validation_text(self.config.email.app_name, purpose, link, token)
            try:
                await mailer.send(email, subject, text)
            except EmailError as e:
                await self.store.delete_session(session.session_id)
                raise MatrixError(502, Codes.UNKNOWN, "Could not send the email") from e
        return {"sid": session.session_id, "submit_url": self.submit_url}

    # -- submitToken ---------------------------------------------------------------------------
    async def submit_token(self, sid: object, client_secret: object, token: object, *,
                           confirm: bool = True) -> ThreepidSession:
        """Check the token and validate the session; with ``confirm=False`` (a GET of the
        link) a password-reset session is only checked, left for the confirming POST."""
        for name, value in (("sid", sid), ("client_secret", client_secret), ("token", token)):
            if not isinstance(value, str) or not value or len(value) > 255:
                raise MatrixError(400, Codes.MISSING_PARAM, f"Missing parameter: {name}")
        assert isinstance(sid, str) and isinstance(token, str)
        session = await self._session(sid, client_secret)
        if session.failed_attempts >= MAX_FAILED_ATTEMPTS:
            raise MatrixError(429, Codes.LIMIT_EXCEEDED,
                              "Too many wrong tokens: request a new one")
        if not hmac.compare_digest(_digest(token), session.token_hash):
            await self.store.record_failure(sid)
            raise _auth_failed("Wrong token")
        if confirm or session.purpose != PASSWORD:
            await self.store.mark_validated(sid, self.clock.time_ms())
        return session

    async def _session(self, sid: str, client_secret: object) -> ThreepidSession:
        session = await self.store.session(sid)
        if (
            session is None
            or not hmac.compare_digest(session.client_secret.encode(),
                                       str(client_secret).encode())
            or session.expires_ts <= self.clock.time_ms()
        ):
            raise _auth_failed("Unknown or expired validation session")
        return session

    async def validated(self, creds: object, purposes: tuple[str, ...]) -> ThreepidSession:
        """The validated session ``threepid_creds`` (``sid``, ``client_secret``) name, or 400
        M_THREEPID_AUTH_FAILED."""
        self._require_enabled()
        if not isinstance(creds, dict):
            raise _auth_failed("Missing threepid_creds")
        sid, secret = creds.get("sid"), creds.get("client_secret")
        if not isinstance(sid, str) or not isinstance(secret, str):
            raise _auth_failed("threepid_creds needs 'sid' and 'client_secret'")
        session = await self._session(sid, secret)
        if session.validated_ts is None:
            raise _auth_failed("This email address has not been validated yet")
        if session.purpose not in purposes:
            raise _auth_failed("This validation session was requested for something else")
        return session

    # -- bound addresses -----------------------------------------------------------------------
    async def add(self, user_id: str, creds: object) -> str:
        session = await self.validated(creds, (ADD, REGISTER))
        await self.bind(user_id, session)
        return session.address

    async def bind(self, user_id: str, session: ThreepidSession) -> None:
        now = self.clock.time_ms()
        try:
            await self.store.add(
                Threepid(session.medium, session.address, user_id,
                         session.validated_ts or now, now),
                consume_session=session.session_id,
            )
        except ThreepidInUse:
            raise MatrixError(400, "M_THREEPID_IN_USE",
                              "This email address is already in use") from None

    async def list(self, user_id: str) -> list[dict[str, Any]]:
        return [
            {"medium": t.medium, "address": t.address, "validated_at": t.validated_at,
             "added_at": t.added_at}
            for t in await self.store.for_user(user_id)
        ]

    async def delete(self, user_id: str, medium: object, address: object) -> str:
        """Unbind an address of the user's; returns it as it was stored."""
        if medium != EMAIL:
            raise _invalid("Only the 'email' medium is supported")
        if not isinstance(address, str):
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: address")
        stored = address.strip().lower()
        if not await self.store.remove(user_id, EMAIL, stored):
            raise MatrixError(400, "M_THREEPID_NOT_FOUND", "You have no such email address")
        return stored

    async def user_for_email(self, address: str) -> str | None:
        try:
            email = canonical_email(address)
        except MatrixError:
            return None
        return await self.store.user_for(EMAIL, email)

    async def emails_of(self, user_id: str) -> set[str]:
        return {t.address for t in await self.store.for_user(user_id) if t.medium == EMAIL}

    async def on_deactivate(self, user_id: str) -> None:
        await self.store.remove_user(user_id)

    # -- user-interactive auth -----------------------------------------------------------------
    async def uia_stage(self, auth: dict[str, Any], action: str,
                        values: dict[str, Any]) -> str | None:
        """``m.login.email.identity``: None when it passed (the session goes in
        ``values["threepid"]``, spent by the caller), otherwise why not."""
        purposes = {"register": (REGISTER,), "password_reset": (PASSWORD,)}.get(
            action, (ADD, PASSWORD))
        try:
            values["threepid"] = await self.validated(auth.get("threepid_creds"), purposes)
        except MatrixError as e:
            return e.message
        return None


def _validation_text(app: str, purpose: str, link: str, token: str) -> tuple[str, str]:
    what = {REGISTER: "register an account", ADD: "add this email address to your account",
            PASSWORD: "reset your password"}[purpose]
    subject = f"[{app}] Validate your email"
    text = (
        f"Someone asked to {what} on {app} with this email address.\n\n"
        f"If it was you, open this link to confirm:\n\n{link}\n\n"
        f"(or enter this code: {token})\n\n"
        "If it was not you, ignore this email: nothing happens without the link.\n"
    )
    return subject, text
