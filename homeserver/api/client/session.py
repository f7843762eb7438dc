"""Registration, login, logout, token refresh, whoami: how a client gets and ends a session."""

from __future__ import annotations

from typing import Any

from homeserver.http.errors import Codes, MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router
from homeserver.http.validation import optional_bool, optional_str, require_str
from homeserver.services import uia
from homeserver.services.appservice.registration import AppService
from homeserver.services.auth import token_from_request
from homeserver.services.registry import Services
from homeserver.services.threepid import EMAIL, EMAIL_IDENTITY
from homeserver.storage.threepids import ThreepidSession
from homeserver.storage.uia import release_registration_token

LOGIN_PASSWORD = "m.login.password"
LOGIN_TOKEN = "m.login.token"
LOGIN_APPSERVICE = "m.login.application_service"


def register(router: Router, s: Services) -> None:
    config = s.config

    def registration_flows() -> list[list[str]]:
        if config.registration.require_token:
            return [[uia.REGISTRATION_TOKEN]]
        if s.threepids.enabled:
            return [[uia.DUMMY], [EMAIL_IDENTITY]]
        return [[uia.DUMMY]]

    async def post_register(request: HomeserverRequest) -> JsonResponse:
        body = request.json_object()
        kind = request.query_param("kind") or "user"
        if kind not in ("user", "guest"):
            raise MatrixError(400, Codes.INVALID_PARAM, "kind must be 'user' or 'guest'")
        auth = body.get("auth")
        if body.get("type") == LOGIN_APPSERVICE or (
            isinstance(auth, dict) and auth.get("type") == LOGIN_APPSERVICE
        ):
            return 200, await _register_appservice_user(s, request, body)
        s.ratelimits.registration_per_address.check(request.client_ip)
        device_id = optional_str(body, "device_id", max_len=255)
        display_name = optional_str(body, "initial_device_display_name", max_len=512)
        inhibit_login = optional_bool(body, "inhibit_login", False)
        refreshable = optional_bool(body, "refresh_token", False)

        if kind == "guest":
            if not config.guest_access:
                raise MatrixError(403, "M_GUEST_ACCESS_FORBIDDEN", "Guest access is disabled")
            user_id = await s.accounts.register_guest()
            return 200, await _session_or_id(s, user_id, None, display_name, inhibit_login,
                                            refreshable)

        if not config.registration.enabled:
            raise MatrixError(403, Codes.FORBIDDEN, "Registration has been disabled")
        username = optional_str(body, "username", max_len=4096)
        password = optional_str(body, "password", max_len=512)
        if username is not None:
            # Tell the client about a bad or taken name before it goes through the stages.
            s.appservices.check_user_allowed(
                await s.accounts.check_available(username.lower()), None)
        result = await s.uia.check(body, "register", registration_flows())
        token = result.values.get("registration_token")
        try:
            if password is None:
                raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: password")
            if username is None:
                user_id = await _generated_user_id(s)
            else:
                user_id = await s.accounts.check_available(username.lower())
            email = result.values.get("threepid")
            if isinstance(email, ThreepidSession) and await s.threepids.store.user_for(
                email.medium, email.address
            ):
                raise MatrixError(400, "M_THREEPID_IN_USE", "This email address is in use")
            await s.accounts.register(user_id, password, registration_token=token)
            if isinstance(email, ThreepidSession):
                try:
                    await s.threepids.bind(user_id, email)
                except Exception:
                    # Bound by someone else meanwhile: leave no account behind.
                    await s.accounts.deactivate(user_id)
                    raise
        except BaseException:
            if token is not None:
                await release_registration_token(s.db, token)
            raise
        return 200, await _session_or_id(s, user_id, device_id, display_name, inhibit_login,
                                        refreshable)

    async def get_available(request: HomeserverRequest) -> JsonResponse:
        if not config.registration.enabled:
            raise MatrixError(403, Codes.FORBIDDEN, "Registration has been disabled")
        s.ratelimits.registration_per_address.check(request.client_ip)
        username = request.query_param("username")
        if not username:
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: username")
        s.appservices.check_user_allowed(await s.accounts.check_available(username.lower()),
                                         None)
        return 200, {"available": True}

    async def get_token_validity(request: HomeserverRequest) -> JsonResponse:
        s.ratelimits.registration_per_address.check(request.client_ip)
        token = request.query_param("token")
        if not token:
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: token")
        found = await s.registration_tokens.get(token)
        return 200, {"valid": found is not None and found.usable(s.clock.time_ms())}

    async def get_login(request: HomeserverRequest) -> JsonResponse:
        flows: list[dict[str, Any]] = [{"type": LOGIN_PASSWORD},
                                       {"type": LOGIN_TOKEN, "get_login_token": True}]
        if s.appservices.all:
            flows.append({"type": LOGIN_APPSERVICE})
        return 200, {"flows": flows}

    async def post_login(request: HomeserverRequest) -> JsonResponse:
        body = request.json_object()
        login_type = require_str(body, "type", max_len=255)
        if login_type != LOGIN_APPSERVICE:
            s.ratelimits.login_per_address.check(request.client_ip)
        device_id = optional_str(body, "device_id", max_len=255)
        display_name = optional_str(body, "initial_device_display_name", max_len=512)
        refreshable = optional_bool(body, "refresh_token", False)
        if login_type == LOGIN_PASSWORD:
            user_id = await _email_login_user(s, body) or _login_user_id(body,
                                                                          config.server_name)
            password = require_str(body, "password", max_len=512)
            limiter = s.ratelimits.login_failures_per_account
            if not limiter.would_allow(user_id):
                limiter.check(user_id)  # raises 429 with the wait
            if not await s.accounts.check_login_password(user_id, password):
                limiter.check(user_id)
                raise MatrixError(403, Codes.FORBIDDEN, "Invalid username or password")
        elif login_type == LOGIN_TOKEN:
            token = require_str(body, "token", max_len=512)
            found = await s.auth.consume_login_token(token)
            if found is None:
                raise MatrixError(403, Codes.FORBIDDEN, "Invalid login token")
            user_id = found
        elif login_type == LOGIN_APPSERVICE:
            svc = _calling_appservice(s, request)
            user_id = _login_user_id(body, config.server_name)
            if not svc.may_act_as(user_id):
                raise MatrixError(400, Codes.EXCLUSIVE,
                                  "This user is outside the application service's namespace")
        else:
            raise MatrixError(400, Codes.UNKNOWN, f"Unknown login type {login_type}")
        user = await s.users.get(user_id)
        if user is None or user.deactivated:
            raise MatrixError(403, "M_USER_DEACTIVATED" if user else Codes.FORBIDDEN,
                              "This account has been deactivated" if user else "Invalid login")
        if device_id is not None and await s.e2ee.keys.device_id_is_taken_by_a_key(
            user_id, device_id
        ):
            # Device IDs and cross-signing public keys share one namespace (spec).
            raise MatrixError(400, Codes.INVALID_PARAM, "That device ID is a cross-signing key")
        return 200, await s.auth.issue_session(user_id, device_id, display_name,
                                               refreshable=refreshable)

    async def post_get_login_token(request: HomeserverRequest) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        body = request.json_object()
        await s.uia.check(body, "get_login_token", [[uia.PASSWORD]], requester.user_id)
        token, lifetime = await s.auth.create_login_token(requester.user_id)
        return 200, {"login_token": token, "expires_in_ms": lifetime}

    async def post_logout(request: HomeserverRequest) -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        await s.devices.delete_devices(requester.user_id, [requester.device_id])
        return 200, {}

    async def post_logout_all(request: HomeserverRequest) -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        await s.devices.delete_devices(requester.user_id, None)
        return 200, {}

    async def post_refresh(request: HomeserverRequest) -> JsonResponse:
        body = request.json_object()
        return 200, await s.auth.refresh(require_str(body, "refresh_token", max_len=512))

    async def get_whoami(request: HomeserverRequest) -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        return 200, {
            "user_id": requester.user_id,
            "device_id": requester.device_id,
            "is_guest": requester.is_guest,
        }

    async def post_password(request: HomeserverRequest) -> JsonResponse:
        if not token_from_request(request) and s.threepids.enabled:
            return 200, await _reset_password(s, request)
        requester = await s.auth.authenticate(request)
        body = request.json_object()
        new_password = optional_str(body, "new_password", max_len=512)
        logout_devices = optional_bool(body, "logout_devices", True)
        await s.uia.check(body, "password", [[uia.PASSWORD]], requester.user_id)
        if new_password is None:
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: new_password")
        await s.accounts.change_password(
            requester.user_id, new_password, requester.device_id, logout_devices
        )
        return 200, {}

    async def post_deactivate(request: HomeserverRequest) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        body = request.json_object()
        optional_bool(body, "erase", False)
        await s.uia.check(body, "deactivate", [[uia.PASSWORD]], requester.user_id)
        await s.accounts.deactivate(requester.user_id)
        return 200, {"id_server_unbind_result": "no-support"}

    router.client("POST", "/register", post_register)
    router.client("GET", "/register/available", get_available)
    router.add("GET", "/_matrix/client/v1/register/m.login.registration_token/validity",
               get_token_validity, resource="client")
    router.client("GET", "/login", get_login)
    router.client("POST", "/login", post_login)
    router.add("POST", "/_matrix/client/v1/login/get_token", post_get_login_token,
               resource="client")
    router.client("POST", "/logout", post_logout)
    router.client("POST", "/logout/all", post_logout_all)
    router.client("POST", "/refresh", post_refresh)
    router.add("POST", "/_matrix/client/v1/refresh", post_refresh, resource="client")
    router.client("GET", "/account/whoami", get_whoami)
    router.client("POST", "/account/password", post_password)
    router.client("POST", "/account/deactivate", post_deactivate)


def _calling_appservice(s: Services, request: HomeserverRequest) -> AppService:
    """The application service whose as_token the request carries, else 401."""
    token = token_from_request(request)
    if not token:
        raise MatrixError(401, Codes.MISSING_TOKEN, "Missing access token")
    svc = s.appservices.by_token(token)
    if svc is None:
        raise MatrixError(401, Codes.UNKNOWN_TOKEN, "Unknown application service token")
    return svc


async def _register_appservice_user(
    s: Services, request: HomeserverRequest, body: dict[str, Any]
) -> dict[str, Any]:
    """``m.login.application_service``: an account in the service's namespace, no password,
    no user-interactive auth, whatever the registration settings."""
    svc = _calling_appservice(s, request)
    username = require_str(body, "username", max_len=255)
    localpart = username[1:].partition(":")[0] if username.startswith("@") else username
    user_id = s.accounts.validate_localpart(localpart.lower(), for_client=False)
    if not svc.may_act_as(user_id):
        raise MatrixError(400, Codes.EXCLUSIVE,
                          "This user ID is outside the application service's namespace")
    s.appservices.check_user_allowed(user_id, svc)
    await s.accounts.register(user_id, None)
    return await _session_or_id(
        s, user_id, optional_str(body, "device_id", max_len=255),
        optional_str(body, "initial_device_display_name", max_len=512),
        optional_bool(body, "inhibit_login", False), optional_bool(body, "refresh_token", False),
    )


async def _generated_user_id(s: Services) -> str:
    import secrets

    while True:
        localpart = f"user{secrets.randbelow(10**10)}"
        user_id = s.accounts.validate_localpart(localpart, for_client=False)
        if not await s.users.exists(user_id):
            return user_id


async def _session_or_id(
    s: Services,
    user_id: str,
    device_id: str | None,
    display_name: str | None,
    inhibit_login: bool,
    refreshable: bool,
) -> dict[str, Any]:
    if inhibit_login:
        return {"user_id": user_id, "home_server": s.config.server_name}
    return await s.auth.issue_session(user_id, device_id, display_name, refreshable=refreshable)


async def _email_login_user(s: Services, body: dict[str, Any]) -> str | None:
    """The account of an ``m.id.thirdparty`` email identifier (or the legacy top-level
    ``medium``/``address``); None for other identifiers; 403 for an unknown address."""
    identifier = body.get("identifier")
    if isinstance(identifier, dict) and identifier.get("type") == "m.id.thirdparty":
        medium, address = identifier.get("medium"), identifier.get("address")
    elif identifier is None and "medium" in body:
        medium, address = body.get("medium"), body.get("address")
    else:
        return None
    if medium != EMAIL or not isinstance(address, str) or not s.threepids.enabled:
        raise MatrixError(400, Codes.INVALID_PARAM,
                          "Only email third-party identifiers are supported")
    user_id = await s.threepids.user_for_email(address)
    if user_id is None:
        raise MatrixError(403, Codes.FORBIDDEN, "Invalid username or password")
    return user_id


async def _reset_password(s: Services, request: HomeserverRequest) -> dict[str, Any]:
    """``/account/password`` without an access token: the user proves control of an email
    address of their account (``m.login.email.identity``)."""
    body = request.json_object()
    new_password = optional_str(body, "new_password", max_len=512)
    logout_devices = optional_bool(body, "logout_devices", True)
    result = await s.uia.check(body, "password_reset", [[EMAIL_IDENTITY]])
    session = result.values.get("threepid")
    if not isinstance(session, ThreepidSession):
        raise MatrixError(400, "M_THREEPID_AUTH_FAILED", "Validate an email of the account")
    if new_password is None:
        raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: new_password")
    user_id = await s.threepids.user_for_email(session.address)
    if user_id is None:
        raise MatrixError(400, "M_THREEPID_NOT_FOUND", "No account has this email address")
    await s.accounts.change_password(user_id, new_password, None, logout_devices)
    await s.threepids.store.delete_session(session.session_id)
    return {}


def _login_user_id(body: dict[str, Any], server_name: str) -> str:
    identifier = body.get("identifier")
    user: Any
    if identifier is not None:
        if not isinstance(identifier, dict):
            raise MatrixError(400, Codes.BAD_JSON, "'identifier' must be an object")
        if identifier.get("type") != "m.id.user":
            raise MatrixError(400, Codes.UNKNOWN, "Only m.id.user identifiers are supported")
        user = identifier.get("user")
    else:
        user = body.get("user")  # the legacy field
    if not isinstance(user, str) or not user or len(user) > 255:
        raise MatrixError(400, Codes.MISSING_PARAM, "Missing or invalid user identifier")
    if user.startswith("@"):
        localpart, sep, domain = user[1:].partition(":")
        if not sep or domain != server_name:
            raise MatrixError(403, Codes.FORBIDDEN, "Invalid username or password")
        return f"@{localpart.lower()}:{server_name}"
    return f"@{user.lower()}:{server_name}"
