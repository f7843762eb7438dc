"""Operator endpoints for accounts, on Synapse's paths so existing operator tools work:
shared-secret registration and registration tokens."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from typing import Any

from homeserver.http.errors import Codes, MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router
from homeserver.http.validation import optional_bool, optional_int, optional_str, require_str
from homeserver.services.auth import Requester
from homeserver.services.registry import Services
from homeserver.storage.uia import RegistrationToken

NONCE_LIFETIME_MS = 60_000
_TOKEN_CHARS = string.ascii_letters + string.digits + "._~-"


async def require_admin(s: Services, request: HomeserverRequest) -> Requester:
    requester = await s.auth.authenticate(request)
    user = await s.users.get(requester.user_id)
    if user is None or not user.is_admin:
        raise MatrixError(403, Codes.FORBIDDEN, "You are not a server admin")
    return requester


def _token_json(t: RegistrationToken) -> dict[str, Any]:
    return {
        "token": t.token,
        "uses_allowed": t.uses_allowed,
        "pending": t.pending,
        "completed": t.completed,
        "expiry_time": t.expiry_time,
    }


def register(router: Router, s: Services) -> None:
    nonces: dict[str, int] = {}

    def _secret() -> str:
        secret = s.config.registration.shared_secret
        if secret is None:
            raise MatrixError(400, Codes.UNKNOWN, "Shared secret registration is not enabled")
        return secret

    async def get_nonce(request: HomeserverRequest) -> JsonResponse:
        _secret()
        now = s.clock.time_ms()
        for nonce, ts in list(nonces.items()):
            if ts < now - NONCE_LIFETIME_MS:
                del nonces[nonce]
        nonce = secrets.token_hex(32)
        nonces[nonce] = now
        return 200, {"nonce": nonce}

    async def post_register(request: HomeserverRequest) -> JsonResponse:
        secret = _secret()
        body = request.json_object()
        nonce = require_str(body, "nonce", max_len=128)
        username = require_str(body, "username", max_len=255)
        password = require_str(body, "password", max_len=512)
        admin = optional_bool(body, "admin", False)
        user_type = optional_str(body, "user_type", max_len=64)
        mac = require_str(body, "mac", max_len=128)
        issued = nonces.pop(nonce, None)
        if issued is None or issued < s.clock.time_ms() - NONCE_LIFETIME_MS:
            raise MatrixError(400, Codes.UNKNOWN, "Unrecognised nonce")
        # HMAC-SHA1 over nonce, username, password, admin flag (and user type), NUL-separated.
        want = hmac.new(secret.encode("utf-8"), digestmod=hashlib.sha1)
        want.update(nonce.encode("utf-8") + b"\x00" + username.encode("utf-8") + b"\x00")
        want.update(password.encode("utf-8") + b"\x00" + (b"admin" if admin else b"notadmin"))
        if user_type:
            want.update(b"\x00" + user_type.encode("utf-8"))
        if not hmac.compare_digest(want.hexdigest(), mac.lower()):
            raise MatrixError(403, Codes.FORBIDDEN, "HMAC incorrect")
        user_id = s.accounts.validate_localpart(username.lower(), for_client=False)
        await s.accounts.register(user_id, password)
        if admin:
            await s.users.set_admin(user_id, True)
        session = await s.auth.issue_session(user_id, None, None, refreshable=False)
        return 200, session

    async def list_tokens(request: HomeserverRequest) -> JsonResponse:
        await require_admin(s, request)
        tokens = await s.registration_tokens.list()
        valid = request.query_param("valid")
        now = s.clock.time_ms()
        if valid is not None:
            want = valid == "true"
            tokens = [t for t in tokens if t.usable(now) == want]
        return 200, {"registration_tokens": [_token_json(t) for t in tokens]}

    async def new_token(request: HomeserverRequest) -> JsonResponse:
        await require_admin(s, request)
        body = request.json_object()
        token = optional_str(body, "token", max_len=64)
        length = optional_int(body, "length", 16, min=1, max=64)
        uses = optional_int(body, "uses_allowed", None, min=0)
        expiry = optional_int(body, "expiry_time", None, min=0)
        if expiry is not None and expiry < s.clock.time_ms():
            raise MatrixError(400, Codes.INVALID_PARAM, "expiry_time is in the past")
        if token is None:
            assert length is not None
            token = "".join(secrets.choice(_TOKEN_CHARS) for _ in range(length))
        elif not token or any(c not in _TOKEN_CHARS for c in token):
            raise MatrixError(400, Codes.INVALID_PARAM, "token may use only A-Za-z0-9._~-")
        if not await s.registration_tokens.create(token, uses, expiry):
            raise MatrixError(400, Codes.INVALID_PARAM, "Token already exists")
        created = await s.registration_tokens.get(token)
        assert created is not None
        return 200, _token_json(created)

    async def get_token(request: HomeserverRequest, token: str) -> JsonResponse:
        await require_admin(s, request)
        found = await s.registration_tokens.get(token)
        if found is None:
            raise MatrixError(404, Codes.NOT_FOUND, "No such registration token")
        return 200, _token_json(found)

    async def delete_token(request: HomeserverRequest, token: str) -> JsonResponse:
        await require_admin(s, request)
        if not await s.registration_tokens.delete(token):
            raise MatrixError(404, Codes.NOT_FOUND, "No such registration token")
        return 200, {}

    base = "/_synapse/admin/v1"
    router.add("GET", f"{base}/register", get_nonce, resource="admin")
    router.add("POST", f"{base}/register", post_register, resource="admin")
    router.add("GET", f"{base}/registration_tokens", list_tokens, resource="admin")
    router.add("POST", f"{base}/registration_tokens/new", new_token, resource="admin")
    router.add("GET", f"{base}/registration_tokens/{{token}}", get_token, resource="admin")
    router.add("DELETE", f"{base}/registration_tokens/{{token}}", delete_token, resource="admin")
