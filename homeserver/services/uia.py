"""User-interactive authentication: flows of stages a client completes across requests.

A session is tied to the action it was started for (register, change password, …) and, for
logged-in users, to the user: completing stages for one cannot be spent on another.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from homeserver.clock import Clock
from homeserver.http.errors import Codes, MatrixError, UiaRequired
from homeserver.services.passwords import check_password
from homeserver.storage.uia import RegistrationTokenStore, UiaStore
from homeserver.storage.users import UserStore

DUMMY = "m.login.dummy"
PASSWORD = "m.login.password"
REGISTRATION_TOKEN = "m.login.registration_token"

StageHook = Callable[[dict[str, Any], str, dict[str, Any]], Awaitable[str | None]]

# Sessions older than this are forgotten.
SESSION_LIFETIME_MS = 24 * 3600 * 1000


@dataclass
class UiaResult:
    session_id: str
    completed: list[str]
    # Values stages produced, e.g. the registration token that was spent.
    values: dict[str, Any] = field(default_factory=dict)


class UiaService:
    def __init__(
        self,
        store: UiaStore,
        users: UserStore,
        registration_tokens: RegistrationTokenStore,
        clock: Clock,
        server_name: str,
    ) -> None:
        self.store = store
        self.users = users
        self.registration_tokens = registration_tokens
        self.clock = clock
        self.server_name = server_name
        # Stages other services run (m.login.email.identity): (auth, action, values) → None
        # when passed, else why not.
        self.stage_hooks: dict[str, StageHook] = {}

    async def check(
        self,
        body: dict[str, Any],
        action: str,
        flows: list[list[str]],
        user_id: str | None = None,
    ) -> UiaResult:
        """Return when a flow is complete; otherwise raise the spec's 401 with the flows."""
        auth = body.get("auth")
        if auth is not None and not isinstance(auth, dict):
            raise MatrixError(400, Codes.BAD_JSON, "'auth' must be an object")
        session_id = auth.get("session") if auth else None
        now = self.clock.time_ms()
        if session_id is None:
            session_id = secrets.token_urlsafe(24)
            await self.store.create(session_id, action, user_id, now)
            await self.store.delete_older_than(now - SESSION_LIFETIME_MS)
            completed: list[str] = []
        else:
            if not isinstance(session_id, str):
                raise MatrixError(400, Codes.BAD_JSON, "'auth.session' must be a string")
            session = await self.store.get(session_id)
            if (
                session is None
                or session.action != action
                or session.user_id != user_id
                or session.created_ts < now - SESSION_LIFETIME_MS
            ):
                raise MatrixError(400, Codes.UNKNOWN, "Unknown or expired session")
            completed = session.completed

        values: dict[str, Any] = {}
        stage = auth.get("type") if auth else None
        if stage is not None:
            allowed_stages = {s for flow in flows for s in flow}
            if stage not in allowed_stages:
                self._fail(flows, session_id, completed, Codes.UNRECOGNIZED,
                           f"Unknown auth stage {stage!r}", status=400)
            assert auth is not None
            error = await self._run_stage(stage, auth, user_id, values, action)
            if error is not None:
                self._fail(flows, session_id, completed, Codes.FORBIDDEN, error)
            completed = await self.store.mark_completed(session_id, stage)

        for flow in flows:
            if all(s in completed for s in flow):
                await self.store.delete(session_id)
                return UiaResult(session_id, completed, values)
        self._fail(flows, session_id, completed, None, None)
        raise AssertionError("unreachable")

    def _fail(
        self,
        flows: list[list[str]],
        session_id: str,
        completed: list[str],
        errcode: str | None,
        error: str | None,
        status: int = 401,
    ) -> None:
        body: dict[str, Any] = {
            "flows": [{"stages": flow} for flow in flows],
            "params": {},
            "session": session_id,
        }
        if completed:
            body["completed"] = completed
        # A plain "please authenticate" carries no errcode; a failed stage does.
        raise UiaRequired(body, errcode, error, status)

    async def _run_stage(
        self, stage: str, auth: dict[str, Any], user_id: str | None, values: dict[str, Any],
        action: str = "",
    ) -> str | None:
        """None when the stage passed; otherwise why not."""
        if stage == DUMMY:
            return None
        if stage == PASSWORD:
            if user_id is None:
                return "Password stage needs a logged-in user"
            claimed = _identifier_user(auth, self.server_name)
            if claimed is not None and claimed != user_id:
                return "You can only authenticate as yourself"
            password = auth.get("password")
            if not isinstance(password, str):
                return "Missing password"
            user = await self.users.get(user_id)
            if user is None or user.password_hash is None or user.deactivated:
                return "Invalid password"
            if not await check_password(password, user.password_hash):
                return "Invalid password"
            return None
        if stage == REGISTRATION_TOKEN:
            token = auth.get("token")
            if not isinstance(token, str) or not token or len(token) > 64:
                return "Invalid registration token"
            # Held until the account is made (or given back if that fails).
            if not await self.registration_tokens.reserve(token, self.clock.time_ms()):
                return "Invalid registration token"
            values["registration_token"] = token
            return None
        hook = self.stage_hooks.get(stage)
        if hook is not None:
            return await hook(auth, action, values)
        return f"Unsupported auth stage {stage!r}"


def _identifier_user(auth: dict[str, Any], server_name: str) -> str | None:
    identifier = auth.get("identifier")
    user: Any = None
    if isinstance(identifier, dict) and identifier.get("type") == "m.id.user":
        user = identifier.get("user")
    elif "user" in auth:
        user = auth.get("user")
    if not isinstance(user, str):
        return None
    return user if user.startswith("@") else f"@{user.lower()}:{server_name}"
