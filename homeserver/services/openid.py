"""OpenID tokens: a user asks for one (``/user/{userId}/openid/request_token``) and hands it
to a third party (an integration manager), which exchanges it at our
``/_matrix/federation/v1/openid/userinfo`` for the user's ID. The token proves nothing else
and grants no access; it is random, stored as a digest, and expires after an hour."""

from __future__ import annotations

from homeserver.clock import Clock
from homeserver.http.errors import Codes, MatrixError
from homeserver.services.auth import hash_token, new_token
from homeserver.storage.openid import OpenIdStore

TOKEN_LIFETIME_MS = 3600 * 1000


class OpenIdService:
    def __init__(self, store: OpenIdStore, clock: Clock, server_name: str) -> None:
        self.store = store
        self.clock = clock
        self.server_name = server_name

    async def request_token(self, user_id: str) -> dict[str, object]:
        token = new_token("oid")
        now = self.clock.time_ms()
        await self.store.add(hash_token(token), user_id, now + TOKEN_LIFETIME_MS, now)
        return {
            "access_token": token,
            "token_type": "Bearer",
            "matrix_server_name": self.server_name,
            "expires_in": TOKEN_LIFETIME_MS // 1000,
        }

    async def userinfo(self, token: str) -> str:
        user_id = await self.store.user_for(hash_token(token), self.clock.time_ms())
        if user_id is None:
            raise MatrixError(401, Codes.UNKNOWN_TOKEN, "Access token unknown or expired")
        return user_id
