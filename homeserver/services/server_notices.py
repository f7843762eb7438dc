"""Server notices: messages from the server to one user, sent by a system user
(``server_notices.system_mxid_localpart``) into a room of the user's own, which the user is
invited to and which carries the ``m.server_notice`` tag in their account data.

The room is kept per user; if the user left it, they are invited again. Notice rooms are
never encrypted (the server writes the notices) and members other than the system user
cannot send in them (users_default -10)."""

from __future__ import annotations

import logging
from typing import Any

from federation.identifiers import get_domain, is_valid_user_id
from homeserver.config import Config
from homeserver.http.errors import Codes, MatrixError
from homeserver.services.accounts import AccountService
from homeserver.services.profile import ProfileService
from homeserver.services.rooms import RoomService
from homeserver.storage.account_data import AccountDataStore
from homeserver.storage.admin import AdminStore
from homeserver.storage.users import UserStore

logger = logging.getLogger(__name__)

SERVER_NOTICE_TAG = "m.server_notice"


class ServerNotices:
    def __init__(self, *, config: Config, store: AdminStore, users: UserStore,
                 accounts: AccountService, profiles: ProfileService, rooms: RoomService,
                 account_data: AccountDataStore) -> None:
        self.config = config
        self.store = store
        self.users = users
        self.accounts = accounts
        self.profiles = profiles
        self.rooms = rooms
        self.account_data = account_data

    @property
    def enabled(self) -> bool:
        return self.config.server_notices.system_mxid_localpart is not None

    @property
    def system_user(self) -> str:
        localpart = self.config.server_notices.system_mxid_localpart
        return f"@{localpart}:{self.config.server_name}"

    async def send(self, user_id: str, event_type: str, content: dict[str, Any],
                   state_key: str | None = None) -> str:
        """Send a notice to a local user; returns the event ID."""
        if not self.enabled:
            raise MatrixError(400, Codes.UNKNOWN, "Server notices are not enabled on this "
                              "server (server_notices.system_mxid_localpart)")
        if not is_valid_user_id(user_id) or get_domain(user_id) != self.config.server_name:
            raise MatrixError(400, Codes.INVALID_PARAM,
                              "Server notices can only be sent to local users")
        user = await self.users.get(user_id)
        if user is None:
            raise MatrixError(404, Codes.NOT_FOUND, "Unknown user")
        if user_id == self.system_user:
            raise MatrixError(400, Codes.INVALID_PARAM, "Cannot send notices to the notices user")
        await self._ensure_system_user()
        room_id = await self._room_for(user_id)
        return await self.rooms.send_event(room_id, self.system_user, event_type, content,
                                           state_key)

    async def _ensure_system_user(self) -> None:
        if await self.users.exists(self.system_user):
            return
        sn = self.config.server_notices
        await self.accounts.register(self.system_user, None)
        await self.profiles.set_field(self.system_user, "displayname",
                                      sn.system_mxid_display_name)
        if sn.system_mxid_avatar_url:
            await self.profiles.set_field(self.system_user, "avatar_url",
                                          sn.system_mxid_avatar_url)
        logger.info("created the server notices user %s", self.system_user)

    async def _room_for(self, user_id: str) -> str:
        room_id = await self.store.notice_room(user_id)
        if room_id is not None:
            membership = await self.rooms.state_store.membership(room_id, user_id)
            ours = await self.rooms.state_store.membership(room_id, self.system_user)
            if ours is not None and ours.membership == "join":
                if membership is None or membership.membership not in ("join", "invite"):
                    await self.rooms.invite(room_id, self.system_user, user_id)
                return room_id
        created = await self.rooms.create_room(
            self.system_user,
            preset="private_chat",
            name=self.config.server_notices.room_name,
            invite=[user_id],
            power_level_content_override={"users_default": -10},
            encrypt_by_default=False,
        )
        room_id = created.room_id
        await self.store.set_notice_room(user_id, room_id)
        tags = await self.account_data.get(user_id, room_id, "m.tag")
        merged = dict(tags.get("tags", {})) if isinstance(tags, dict) else {}
        merged[SERVER_NOTICE_TAG] = {}
        await self.account_data.put(user_id, room_id, "m.tag", {"tags": merged})
        return room_id
