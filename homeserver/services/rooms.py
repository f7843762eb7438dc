"""Rooms: what the client-server API asks of a room, on top of the event pipeline.

Creating rooms (presets, initial state, power levels, invites, aliases), sending messages and
state, membership changes (join, invite, leave, kick, ban, unban, knock, forget), redaction,
and every read (events, state, members, history pages, context), each filtered by the history
visibility rules (``services.visibility``). Writes go through ``EventsService.send``: the
checks that depend on the room's state run in its ``prepare`` callback, under the room's lock,
and the authorisation rules have the final word (403 ``M_FORBIDDEN`` with their reason).
"""

from __future__ import annotations

import logging
import secrets
import string
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from federation.events import Event, JsonDict, StateKey
from federation.identifiers import (
    InvalidIdentifier,
    check_room_alias,
    get_domain,
    is_valid_user_id,
)
from federation.room_versions import KNOWN_ROOM_VERSIONS, get_room_version
from homeserver.clock import Clock
from homeserver.config import Config
from homeserver.http.errors import Codes, MatrixError, forbidden, not_found
from homeserver.services.events import (
    MEMBER,
    REDACTION,
    EventSpec,
    EventsService,
    RoomView,
    client_event,
)
from homeserver.services.profile import ProfileService
from homeserver.services.state import StateService
from homeserver.services.visibility import is_event_visible
from homeserver.storage.events import AliasInUse, EventStore, Position, StoredEvent
from homeserver.storage.state import StateFilter, StateStore
from homeserver.storage.streams import current_position

logger = logging.getLogger(__name__)

CREATE: StateKey = ("m.room.create", "")
POWER_LEVELS: StateKey = ("m.room.power_levels", "")
JOIN_RULES: StateKey = ("m.room.join_rules", "")
HISTORY_VISIBILITY: StateKey = ("m.room.history_visibility", "")
GUEST_ACCESS: StateKey = ("m.room.guest_access", "")
CANONICAL_ALIAS: StateKey = ("m.room.canonical_alias", "")
ENCRYPTION: StateKey = ("m.room.encryption", "")
MEGOLM = "m.megolm.v1.aes-sha2"
MAX_PAGE = 1000

PRESETS: dict[str, dict[str, Any]] = {
    "private_chat": {
        "join_rule": "invite", "history_visibility": "shared", "guest_can_join": True,
        "invitees_are_admins": False, "power_levels": {"invite": 0},
    },
    "trusted_private_chat": {
        "join_rule": "invite", "history_visibility": "shared", "guest_can_join": True,
        "invitees_are_admins": True, "power_levels": {"invite": 0},
    },
    "public_chat": {
        "join_rule": "public", "history_visibility": "shared", "guest_can_join": False,
        "invitees_are_admins": False, "power_levels": {},
    },
}


def default_power_levels(creator: str | None) -> JsonDict:
    """Synapse's defaults; ``creator`` None for v12, where creators must not be listed."""
    return {
        "users": {creator: 100} if creator is not None else {},
        "users_default": 0,
        "events": {
            "m.room.name": 50,
            "m.room.power_levels": 100,
            "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50,
            "m.room.avatar": 50,
            "m.room.tombstone": 100,
            "m.room.server_acl": 100,
            "m.room.encryption": 100,
        },
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": 50,
        "historical": 100,
    }


@dataclass(frozen=True)
class CreatedRoom:
    room_id: str
    room_alias: str | None
    event_ids: list[str]


@dataclass
class Page:
    """A page of /messages: ``end`` is None when there is nothing further."""

    chunk: list[JsonDict]
    start: str
    end: str | None
    state: list[JsonDict] = field(default_factory=list)


@dataclass
class Context:
    event: JsonDict
    events_before: list[JsonDict]
    events_after: list[JsonDict]
    start: str
    end: str
    state: list[JsonDict]


EventFilter = Callable[[Event], bool]
Bundler = Callable[[Sequence[StoredEvent], list[JsonDict], str], Awaitable[None]]


def _random_string(n: int) -> str:
    alphabet = string.ascii_letters
    return "".join(secrets.choice(alphabet) for _ in range(n))


def _bad(message: str, code: str = Codes.INVALID_PARAM) -> MatrixError:
    return MatrixError(400, code, message)


class RoomService:
    def __init__(
        self,
        *,
        config: Config,
        clock: Clock,
        pipeline: EventsService,
        state: StateService,
        profiles: ProfileService,
    ) -> None:
        self.config = config
        self.server_name = config.server_name
        self.clock = clock
        self.pipeline = pipeline
        self.store: EventStore = pipeline.store
        self.state_store: StateStore = pipeline.state_store
        self.state = state
        self.profiles = profiles
        # Adds bundled aggregations (``unsigned.m.relations``) to served events; set by
        # ``services.relations``.
        self.bundler: Bundler | None = None
        # Has an invite of a remote user countersigned by their server before it is
        # persisted; set by ``services.federation_invites``.
        self.remote_inviter: Callable[[Event, RoomView], Awaitable[Event]] | None = None
        # Fetches history from other servers when a page reaches where ours stops
        # (room_id, lowest depth, highest depth or None) -> whether anything was stored;
        # set by ``services.backfill``.
        self.backfiller: Callable[[str, int, int | None], Awaitable[bool]] | None = None
        # Whether operators blocked a room (set by the admin services): nobody joins it.
        self.blocked: Callable[[str], Awaitable[bool]] | None = None

    # == creating rooms =====================================================================

    async def create_room(
        self,
        requester: str,
        *,
        preset: str | None = None,
        visibility: str = "private",
        name: str | None = None,
        topic: str | None = None,
        invite: Sequence[str] = (),
        is_direct: bool = False,
        initial_state: Sequence[Mapping[str, Any]] = (),
        creation_content: Mapping[str, Any] | None = None,
        power_level_content_override: Mapping[str, Any] | None = None,
        room_version: str | None = None,
        room_alias_name: str | None = None,
        encrypt_by_default: bool = True,
    ) -> CreatedRoom:
        """POST /createRoom. Every event is authorised and the room, its events and its alias
        are stored in one transaction, so a failure leaves nothing behind."""
        version_id = room_version or self.config.default_room_version
        if version_id not in KNOWN_ROOM_VERSIONS:
            raise MatrixError(400, "M_UNSUPPORTED_ROOM_VERSION",
                              f"Room version {version_id!r} is not supported")
        rv = get_room_version(version_id)
        if visibility not in ("public", "private"):
            raise _bad("visibility must be 'public' or 'private'")
        if preset is None:
            preset = "public_chat" if visibility == "public" else "private_chat"
        if preset not in PRESETS:
            raise _bad(f"Unknown preset {preset!r}")
        config = PRESETS[preset]
        invitees = list(dict.fromkeys(invite))
        for user_id in invitees:
            if not isinstance(user_id, str) or not is_valid_user_id(user_id):
                raise _bad(f"Invalid user ID to invite: {user_id!r}")
        alias = None
        if room_alias_name is not None:
            alias = self._local_alias(room_alias_name)
            if await self.store.get_alias(alias) is not None:
                raise MatrixError(400, "M_ROOM_IN_USE", "Room alias already taken")

        create_content: JsonDict = dict(creation_content or {})
        create_content["room_version"] = rv.identifier
        if not rv.implicit_room_creator:
            create_content["creator"] = requester
        if rv.creators_infinite_power and preset == "trusted_private_chat" and invitees:
            extra = create_content.get("additional_creators", [])
            if not isinstance(extra, list):
                raise _bad("additional_creators must be a list of user IDs", Codes.BAD_JSON)
            create_content["additional_creators"] = list(dict.fromkeys([*extra, *invitees]))

        state: dict[StateKey, JsonDict] = {}
        for entry in initial_state:
            if not isinstance(entry, Mapping) or not isinstance(entry.get("type"), str):
                raise _bad("initial_state entries need a type and content", Codes.BAD_JSON)
            key = (entry["type"], entry.get("state_key", ""))
            if not isinstance(key[1], str) or not isinstance(entry.get("content"), dict):
                raise _bad("initial_state entries need a type and content", Codes.BAD_JSON)
            if key[0] in ("m.room.create", MEMBER):
                raise _bad(f"initial_state may not set {key[0]}")
            state[key] = dict(entry["content"])

        creators = {requester}
        if rv.creators_infinite_power:
            extra = create_content.get("additional_creators", [])
            if isinstance(extra, list):
                creators.update(u for u in extra if isinstance(u, str))
        pl = state.pop(POWER_LEVELS, None) or default_power_levels(
            None if rv.creators_infinite_power else requester
        )
        if config["invitees_are_admins"] and not rv.creators_infinite_power:
            pl.setdefault("users", {}).update(dict.fromkeys(invitees, 100))
        pl.update(config["power_levels"])
        if power_level_content_override:
            pl.update(power_level_content_override)
        if rv.creators_infinite_power:
            listed = creators & set(pl.get("users") or {})
            if listed:
                raise _bad(
                    f"Room creators {sorted(listed)} have unlimited power in room version "
                    f"{rv.identifier} and may not be listed in the power levels",
                    Codes.BAD_JSON,
                )

        profile = await self._profile_content(requester)
        specs = [
            EventSpec(MEMBER, requester, {"membership": "join", **profile}, state_key=requester),
            EventSpec("m.room.power_levels", requester, pl, state_key=""),
        ]
        if alias is not None:
            specs.append(EventSpec("m.room.canonical_alias", requester, {"alias": alias}, ""))
        preset_state: dict[StateKey, JsonDict] = {
            JOIN_RULES: {"join_rule": config["join_rule"]},
            HISTORY_VISIBILITY: {"history_visibility": config["history_visibility"]},
        }
        if config["guest_can_join"]:
            preset_state[GUEST_ACCESS] = {"guest_access": "can_join"}
        preset_state.update(state)
        # Encrypted by default (config encryption.by_default): every room, or private chats
        # and DMs; an explicit m.room.encryption in initial_state wins.
        policy = self.config.encryption.by_default
        if encrypt_by_default and (policy == "all" or (policy == "private" and (
            preset in ("private_chat", "trusted_private_chat") or is_direct
        ))) and ENCRYPTION not in preset_state:
            preset_state[ENCRYPTION] = {"algorithm": MEGOLM}
        if name is not None:
            preset_state[("m.room.name", "")] = {"name": name}
        if topic is not None:
            preset_state[("m.room.topic", "")] = _topic_content(topic)
        for (t, sk), content in preset_state.items():
            specs.append(EventSpec(t, requester, content, state_key=sk))
        # Remote invitees are invited once the room exists: their servers countersign.
        remote_invitees = [u for u in invitees
                           if self.remote_inviter is not None and get_domain(u) != self.server_name]
        for user_id in invitees:
            if user_id in remote_invitees:
                continue
            content = {"membership": "invite", **await self._profile_content(user_id)}
            if is_direct:
                content["is_direct"] = True
            specs.append(EventSpec(MEMBER, requester, content, state_key=user_id))

        room_id = None if rv.room_id_is_create_event_hash else self._new_room_id()
        try:
            rid, event_ids = await self.pipeline.create_room(
                rv, requester, create_content, specs, is_public=visibility == "public",
                room_id=room_id, aliases=[alias] if alias else [],
            )
        except AliasInUse:
            raise MatrixError(400, "M_ROOM_IN_USE", "Room alias already taken") from None
        logger.info("%s created room %s (version %s, %s)", requester, rid, rv.identifier, preset)
        for user_id in remote_invitees:
            try:
                event_ids.append(await self.invite(rid, requester, user_id,
                                                   is_direct=is_direct))
            except MatrixError as e:
                # The room exists; an unreachable invitee's server does not undo it.
                logger.warning("inviting %s to %s failed: %s", user_id, rid, e)
        return CreatedRoom(rid, alias, event_ids)

    def _new_room_id(self) -> str:
        return f"!{_random_string(18)}:{self.server_name}"

    def _local_alias(self, localpart: str) -> str:
        if not isinstance(localpart, str) or not localpart or ":" in localpart or any(
            c.isspace() for c in localpart
        ):
            raise _bad("room_alias_name must be a non-empty localpart without ':' or spaces")
        alias = f"#{localpart}:{self.server_name}"
        try:
            check_room_alias(alias)
        except InvalidIdentifier as e:
            raise _bad(f"Invalid room alias: {e}") from None
        if len(alias.encode("utf-8")) > 255:
            raise _bad("Room alias is longer than 255 bytes")
        return alias

    async def _profile_content(self, user_id: str) -> JsonDict:
        """displayname and avatar_url for a member event of a local user."""
        if get_domain(user_id) != self.server_name:
            return {}
        profile = await self.profiles.get(user_id)
        return {k: profile[k] for k in ("displayname", "avatar_url") if profile.get(k) is not None}

    # == sending ============================================================================

    async def send_event(
        self,
        room_id: str,
        sender: str,
        event_type: str,
        content: JsonDict,
        state_key: str | None = None,
        *,
        txn_id: str | None = None,
        device_id: str | None = None,
        ts: int | None = None,
    ) -> str:
        """PUT /rooms/{id}/send/{type}/{txnId} and PUT /rooms/{id}/state/{type}/{stateKey}.

        A retried ``txn_id`` (per sender and device) returns the first event's ID and creates
        nothing. Membership and redaction events take their dedicated paths."""
        if not isinstance(content, dict):
            raise _bad("Event content must be an object", Codes.BAD_JSON)
        txn = (device_id or "", txn_id) if txn_id is not None else None
        if event_type == MEMBER and state_key is not None:
            membership = content.get("membership")
            if not isinstance(membership, str):
                raise _bad("Membership events need a membership", Codes.BAD_JSON)
            extra = {k: v for k, v in content.items() if k != "membership"}
            return await self._change_membership(room_id, sender, state_key, membership, extra)
        redacts = content.get("redacts")
        if event_type == REDACTION and state_key is None and isinstance(redacts, str):
            return await self.redact(
                room_id, sender, redacts, reason=content.get("reason"),
                txn_id=txn_id, device_id=device_id,
            )
        if event_type == "m.room.canonical_alias" and state_key == "":
            await self._check_canonical_alias(room_id, content)
        spec = EventSpec(event_type, sender, dict(content), state_key=state_key, txn=txn,
                         origin_server_ts=ts)
        if state_key is None:
            if event_type == "m.room.message" and self.config.encryption.require and (
                await self.pipeline.current_state_event(room_id, ENCRYPTION) is not None
            ):
                raise forbidden(
                    "This room is end-to-end encrypted and this server requires encryption: "
                    "send m.room.encrypted events, not plaintext m.room.message"
                )
            return (await self.pipeline.send(room_id, spec)).event_id

        async def prepare(view: RoomView) -> EventSpec | str:
            # Setting state to what the same sender already set is a no-op (as in Synapse).
            current = await view.state_event((event_type, state_key))
            if current is not None and current.sender == sender and current.content == content:
                return current.event_id
            return spec

        return (await self.pipeline.send(room_id, prepare)).event_id

    async def _check_canonical_alias(self, room_id: str, content: JsonDict) -> None:
        aliases: list[Any] = []
        if "alias" in content and content["alias"] is not None:
            aliases.append(content["alias"])
        alt = content.get("alt_aliases", [])
        if not isinstance(alt, list):
            raise _bad("alt_aliases must be a list", Codes.BAD_JSON)
        aliases.extend(alt)
        for alias in aliases:
            if not isinstance(alias, str):
                raise _bad("Aliases must be strings")
            try:
                check_room_alias(alias)
            except InvalidIdentifier as e:
                raise _bad(f"Invalid alias {alias!r}: {e}") from None
            if get_domain(alias) == self.server_name:
                found = await self.store.get_alias(alias)
                if found is None or found.room_id != room_id:
                    raise MatrixError(400, "M_BAD_ALIAS", f"{alias} does not point to this room")

    async def redact(
        self,
        room_id: str,
        sender: str,
        event_id: str,
        *,
        reason: str | None = None,
        txn_id: str | None = None,
        device_id: str | None = None,
    ) -> str:
        """PUT /rooms/{id}/redact/{eventId}/{txnId}. Allowed for the event's sender and for
        users with the redact power level. From then on every read serves the redacted form."""
        content: JsonDict = {}
        if reason is not None:
            content["reason"] = reason
        txn = (device_id or "", txn_id) if txn_id is not None else None

        async def prepare(view: RoomView) -> EventSpec | str:
            if txn is not None:
                seen = await self.store.event_for_txn(sender, txn[0], txn[1])
                if seen is not None:
                    return seen
            target = await self.store.get_event(event_id)
            if target is None or target.room_id != room_id or target.rejected is not None:
                raise not_found("Unknown event")
            if target.event.sender != sender:
                if await view.power_level(sender) < await view.named_level("redact"):
                    raise forbidden("You don't have permission to redact events")
            return EventSpec(REDACTION, sender, content, redacts=event_id, txn=txn)

        return (await self.pipeline.send(room_id, prepare)).event_id

    # == membership =========================================================================

    async def _change_membership(
        self,
        room_id: str,
        sender: str,
        target: str,
        membership: str,
        extra: Mapping[str, Any] | None = None,
        check: Callable[[RoomView, Event | None], Any] | None = None,
        countersign: Callable[[Event, RoomView], Awaitable[Event]] | None = None,
    ) -> str:
        if not is_valid_user_id(target):
            raise _bad(f"Invalid user ID {target!r}")
        if membership in ("join", "invite", "knock"):
            await self.check_not_blocked(room_id)
        content: JsonDict = {**(extra or {}), "membership": membership}

        async def prepare(view: RoomView) -> EventSpec | str:
            current = await view.state_event((MEMBER, target))
            if check is not None:
                verdict = await check(view, current)
                if isinstance(verdict, str):
                    return verdict
            if membership == "join" and sender == target:
                await self._add_join_authoriser(view, target, current, content)
            return EventSpec(MEMBER, sender, content, state_key=target,
                             countersign=countersign)

        return (await self.pipeline.send(room_id, prepare)).event_id

    async def check_not_blocked(self, room_id: str) -> None:
        if self.blocked is not None and await self.blocked(room_id):
            raise forbidden("This room has been blocked on this server")

    async def _add_join_authoriser(
        self, view: RoomView, user_id: str, current: Event | None, content: JsonDict
    ) -> None:
        """Restricted rooms (v8+): a join by someone not invited needs a local member who may
        invite to vouch for it (``join_authorised_via_users_server``)."""
        rules = await view.state_event(JOIN_RULES)
        rule = rules.content.get("join_rule") if rules is not None else None
        if not view.room_version.restricted_join_rule:
            return
        if rule not in ("restricted", "knock_restricted"):
            return
        if current is not None and current.membership in ("join", "invite"):
            return
        assert rules is not None
        allow = rules.content.get("allow")
        allowed_rooms = [
            a.get("room_id") for a in allow if isinstance(a, dict)
            and a.get("type") == "m.room_membership" and isinstance(a.get("room_id"), str)
        ] if isinstance(allow, list) else []
        member_of = {
            m.room_id for m in await self.state_store.rooms_for_user(user_id, ["join"])
        }
        if not any(r in member_of for r in allowed_rooms):
            raise forbidden(
                "You are not invited to this room and not in a room that allows joining it"
            )
        invite_level = await view.named_level("invite")
        candidates = []
        for (t, sk), _ in view.state_ids().items():
            if t == MEMBER and get_domain(sk) == self.server_name and sk != user_id:
                if await view.membership(sk) == "join":
                    level = await view.power_level(sk)
                    if level >= invite_level:
                        candidates.append((level, sk))
        if not candidates:
            raise forbidden("No user on this server can authorise your join")
        content["join_authorised_via_users_server"] = max(candidates)[1]

    async def join(
        self, room_id: str, user_id: str, *, reason: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> str:
        """POST /rooms/{id}/join (and /join/{roomIdOrAlias} once the alias is resolved).
        Joining again with an unchanged profile is a no-op returning the current event."""
        profile = await self._profile_content(user_id)
        content: JsonDict = {**profile, **(extra or {})}
        if reason is not None:
            content["reason"] = reason

        async def check(view: RoomView, current: Event | None) -> str | None:
            if current is not None and current.membership == "join":
                same = all(current.content.get(k) == v for k, v in content.items())
                if same and set(current.content) - {"membership"} <= set(content):
                    return current.event_id
            return None

        return await self._change_membership(room_id, user_id, user_id, "join", content, check)

    async def join_content(self, user_id: str, reason: str | None) -> JsonDict:
        """The content of a join made through another server: profile and reason."""
        content: JsonDict = await self._profile_content(user_id)
        if reason is not None:
            content["reason"] = reason
        return content

    async def invite(
        self, room_id: str, sender: str, target: str, *, reason: str | None = None,
        is_direct: bool = False,
    ) -> str:
        content: JsonDict = await self._profile_content(target) if is_valid_user_id(target) else {}
        if reason is not None:
            content["reason"] = reason
        if is_direct:
            content["is_direct"] = True

        async def check(view: RoomView, current: Event | None) -> str | None:
            if current is not None and current.membership == "invite":
                return current.event_id
            return None

        remote = is_valid_user_id(target) and get_domain(target) != self.server_name
        return await self._change_membership(room_id, sender, target, "invite", content, check,
                                             self.remote_inviter if remote else None)

    async def leave(self, room_id: str, user_id: str, *, reason: str | None = None) -> str:
        """Leave, reject an invite or rescind a knock."""
        content: JsonDict = {"reason": reason} if reason is not None else {}

        async def check(view: RoomView, current: Event | None) -> str | None:
            if current is None:
                raise forbidden("You are not in this room")
            if current.membership == "leave":
                return current.event_id
            return None

        return await self._change_membership(room_id, user_id, user_id, "leave", content, check)

    async def kick(
        self, room_id: str, sender: str, target: str, *, reason: str | None = None
    ) -> str:
        content: JsonDict = {"reason": reason} if reason is not None else {}

        async def check(view: RoomView, current: Event | None) -> None:
            if current is None or current.membership not in ("join", "invite", "knock"):
                raise forbidden("The target user is not in the room")

        return await self._change_membership(room_id, sender, target, "leave", content, check)

    async def ban(
        self, room_id: str, sender: str, target: str, *, reason: str | None = None
    ) -> str:
        content: JsonDict = {"reason": reason} if reason is not None else {}

        async def check(view: RoomView, current: Event | None) -> str | None:
            if current is not None and current.membership == "ban":
                return current.event_id
            return None

        return await self._change_membership(room_id, sender, target, "ban", content, check)

    async def unban(
        self, room_id: str, sender: str, target: str, *, reason: str | None = None
    ) -> str:
        content: JsonDict = {"reason": reason} if reason is not None else {}

        async def check(view: RoomView, current: Event | None) -> None:
            if current is None or current.membership != "ban":
                raise forbidden("The target user is not banned")

        return await self._change_membership(room_id, sender, target, "leave", content, check)

    async def knock(self, room_id: str, user_id: str, *, reason: str | None = None) -> str:
        content: JsonDict = await self._profile_content(user_id)
        if reason is not None:
            content["reason"] = reason
        return await self._change_membership(room_id, user_id, user_id, "knock", content)

    async def forget(self, room_id: str, user_id: str) -> None:
        """POST /rooms/{id}/forget: only once the user has left (or been banned)."""
        membership = await self._membership_now(room_id, user_id)
        if membership in ("join", "invite", "knock"):
            raise _bad(f"{user_id} is still in room {room_id}", Codes.UNKNOWN)
        await self.store.forget(user_id, room_id)

    # == reading ============================================================================

    async def _membership_now(self, room_id: str, user_id: str) -> str | None:
        ids = await self.pipeline.current_state_ids(
            room_id, StateFilter.from_keys([(MEMBER, user_id)])
        )
        eid = ids.get((MEMBER, user_id))
        if eid is None:
            return None
        ev = await self.store.get_event(eid)
        return ev.event.membership if ev is not None else None

    async def _world_readable(self, room_id: str) -> bool:
        ev = await self.pipeline.current_state_event(room_id, HISTORY_VISIBILITY)
        return ev is not None and ev.event.content.get("history_visibility") == "world_readable"

    async def _state_access(self, room_id: str, user_id: str) -> StoredEvent | None:
        """Which state the user may read: None for the current state, or their leave/ban
        event for those who left (the state as it was then). 403 otherwise, 404 if the room
        is unknown."""
        ids = await self.pipeline.current_state_ids(
            room_id, StateFilter.from_keys([(MEMBER, user_id)])
        )
        eid = ids.get((MEMBER, user_id))
        member = await self.store.get_event(eid) if eid is not None else None
        membership = member.event.membership if member is not None else None
        if membership == "join" or await self._world_readable(room_id):
            return None
        if member is not None and membership in ("leave", "ban"):
            replaced = member.replaces_state
            prev = await self.store.get_event(replaced) if replaced else None
            if prev is not None and prev.event.membership == "join":
                return member
        raise forbidden(f"{user_id} is not in room {room_id}")

    async def _check_history_access(self, room_id: str, user_id: str) -> bool:
        """May the user page history at all: ever had a membership, or world readable.
        Returns whether the user is joined now."""
        membership = await self._membership_now(room_id, user_id)
        if membership == "join":
            return True
        if membership is None and not await self._world_readable(room_id):
            raise forbidden(f"{user_id} is not in room {room_id}")
        return False

    async def filter_visible(
        self, room_id: str, user_id: str, events: Sequence[StoredEvent],
        joined_now: bool | None = None,
    ) -> list[StoredEvent]:
        """The events the user may see under the history visibility rules."""
        # Rejected and soft-failed events are never shown (as in Synapse).
        events = [e for e in events if e.rejected is None and not e.soft_failed]
        if not events:
            return []
        if joined_now is None:
            joined_now = await self._membership_now(room_id, user_id) == "join"
        keys = [HISTORY_VISIBILITY, (MEMBER, user_id)]
        states = await self.state_store.states_at_groups(
            {e.state_group for e in events}, StateFilter.from_keys(keys)
        )
        wanted = {eid for s in states.values() for eid in s.values()}
        for e in events:
            special = (e.event.type == HISTORY_VISIBILITY[0] and e.event.state_key == "") or (
                e.event.type == MEMBER and e.event.state_key == user_id
            )
            if special and e.replaces_state:
                wanted.add(e.replaces_state)
        loaded = await self.store.get_events(wanted)

        def content_of(eid: str | None, key: str) -> str | None:
            ev = loaded.get(eid) if eid is not None else None
            value = ev.event.content.get(key) if ev is not None else None
            return value if isinstance(value, str) else None

        out = []
        for e in events:
            st = states[e.state_group]
            prev = e.replaces_state
            if is_event_visible(
                e.event,
                user_id,
                visibility=content_of(st.get(HISTORY_VISIBILITY), "history_visibility"),
                membership=content_of(st.get((MEMBER, user_id)), "membership"),
                currently_joined=joined_now,
                prev_visibility=content_of(prev, "history_visibility"),
                prev_membership=content_of(prev, "membership"),
            ):
                out.append(e)
        return out

    async def serialize(
        self, events: Sequence[StoredEvent], user_id: str | None = None,
        device_id: str | None = None,
    ) -> list[JsonDict]:
        """Client-format events (prev_content, redacted_because, transaction_id)."""
        extra = {e.replaces_state for e in events if e.replaces_state}
        extra |= {e.redacted_by for e in events if e.redacted_by}
        loaded = await self.store.get_events(x for x in extra if x is not None)
        now = self.clock.time_ms()
        device = (user_id, device_id) if user_id is not None else None
        out = [
            client_event(
                e, now, device=device,
                replaced=loaded.get(e.replaces_state) if e.replaces_state else None,
                redaction=loaded.get(e.redacted_by) if e.redacted_by else None,
            )
            for e in events
        ]
        if user_id is not None:
            await self._add_membership(events, out, user_id)
        if self.bundler is not None and user_id is not None:
            await self.bundler(events, out, user_id)
        return out

    async def _add_membership(self, events: Sequence[StoredEvent], out: list[JsonDict],
                              user_id: str) -> None:
        """``unsigned.membership`` (spec v1.11): the reader's membership in the state after
        each event, ``leave`` when they had none. The read paths have just loaded these
        (group, member) entries to check visibility, so this is mostly cache hits."""
        key = (MEMBER, user_id)
        states = await self.state_store.states_at_groups(
            {e.state_group for e in events if e.state_group is not None},
            StateFilter.from_keys([key]),
        )
        member_ids = {st[key] for st in states.values() if key in st}
        members = await self.store.get_events(member_ids)
        for e, o in zip(events, out, strict=True):
            eid = states.get(e.state_group, {}).get(key)
            member = members.get(eid) if eid is not None else None
            value = member.event.content.get("membership") if member is not None else None
            o.setdefault("unsigned", {})["membership"] = (
                value if isinstance(value, str) else "leave"
            )

    async def get_event(
        self, room_id: str, user_id: str, event_id: str, *, device_id: str | None = None
    ) -> JsonDict:
        """GET /rooms/{id}/event/{eventId}: 404 if unknown or not visible to the user."""
        if not await self.pipeline.room_exists(room_id):
            raise not_found(f"Unknown room {room_id}")
        ev = await self.store.get_event(event_id)
        if ev is None or ev.room_id != room_id:
            raise not_found("Event not found")
        if not await self.filter_visible(room_id, user_id, [ev]):
            raise not_found("Event not found or you may not see it")
        return (await self.serialize([ev], user_id, device_id))[0]

    async def _readable_state(
        self, room_id: str, user_id: str, state_filter: StateFilter | None = None
    ) -> dict[StateKey, str]:
        at = await self._state_access(room_id, user_id)
        if at is None:
            return await self.pipeline.current_state_ids(room_id, state_filter)
        return await self.state.state_after(at, state_filter)

    async def get_state(self, room_id: str, user_id: str) -> list[JsonDict]:
        """GET /rooms/{id}/state."""
        ids = await self._readable_state(room_id, user_id)
        found = await self.store.get_events(ids.values())
        return await self.serialize([found[i] for i in ids.values() if i in found], user_id)

    async def get_state_event(
        self, room_id: str, user_id: str, event_type: str, state_key: str = ""
    ) -> StoredEvent:
        """GET /rooms/{id}/state/{type}/{stateKey} (the API returns ``.event.content``)."""
        key = (event_type, state_key)
        ids = await self._readable_state(room_id, user_id, StateFilter.from_keys([key]))
        ev = await self.store.get_event(ids[key]) if key in ids else None
        if ev is None:
            raise not_found(f"No {event_type} state with key {state_key!r} in this room")
        return ev

    async def members(
        self,
        room_id: str,
        user_id: str,
        *,
        at: str | None = None,
        membership: str | None = None,
        not_membership: str | None = None,
    ) -> list[JsonDict]:
        """GET /rooms/{id}/members: member events now, at a token, or when the user left."""
        limit = await self._state_access(room_id, user_id)
        group: int | None = limit.state_group if limit is not None else None
        if at is not None:
            try:
                pos = Position.parse(at)
            except ValueError as e:
                raise _bad(str(e)) from None
            event = await self.store.latest_event_at(room_id, pos)
            before_limit = limit is None or (
                event is not None and event.stream_ordering < limit.stream_ordering
            )
            if event is not None and before_limit:
                group = event.state_group
        member_filter = StateFilter.from_types([MEMBER])
        if group is None:
            ids = await self.pipeline.current_state_ids(room_id, member_filter)
        else:
            ids = await self.state_store.state_at_group(group, member_filter)
        found = await self.store.get_events(ids.values())
        events = [
            e for e in (found.get(i) for i in ids.values())
            if e is not None
            and (membership is None or e.event.membership == membership)
            and (not_membership is None or e.event.membership != not_membership)
        ]
        return await self.serialize(events, user_id)

    async def joined_members(self, room_id: str, user_id: str) -> dict[str, JsonDict]:
        """GET /rooms/{id}/joined_members: {user_id: {display_name, avatar_url}}."""
        joined = await self._membership_now(room_id, user_id) == "join"
        if not joined and not await self._world_readable(room_id):
            raise forbidden(f"{user_id} is not in room {room_id}")
        ids = await self.pipeline.current_state_ids(room_id, StateFilter.from_types([MEMBER]))
        found = await self.store.get_events(ids.values())
        out: dict[str, JsonDict] = {}
        for ev in found.values():
            if ev.event.membership == "join" and ev.event.state_key is not None:
                content = ev.event.content
                out[ev.event.state_key] = {
                    "display_name": content.get("displayname"),
                    "avatar_url": content.get("avatar_url"),
                }
        return out

    async def joined_rooms(self, user_id: str) -> list[str]:
        rows = await self.state_store.rooms_for_user(user_id, ["join"])
        return sorted(m.room_id for m in rows)

    async def rooms_for_user(
        self, user_id: str, memberships: Iterable[str] | None = None
    ) -> dict[str, str]:
        """room_id -> membership (for sync: invites, knocks, leaves), forgotten rooms left out."""
        rows = await self.state_store.rooms_for_user(user_id, memberships)
        forgotten = await self.store.forgotten_rooms(user_id)
        return {
            m.room_id: m.membership for m in rows
            if m.membership in ("join", "invite", "knock") or m.room_id not in forgotten
        }

    async def paginate(
        self,
        room_id: str,
        user_id: str,
        *,
        from_token: str | None = None,
        to_token: str | None = None,
        direction: str = "b",
        limit: int = 10,
        event_filter: EventFilter | None = None,
        lazy_load_members: bool = False,
        device_id: str | None = None,
    ) -> Page:
        """GET /rooms/{id}/messages, in topological order. Tokens: 't<depth>-<stream>' (between
        events) and 's<stream>' (a sync position); the cost of a page does not depend on the
        length of the room."""
        if direction not in ("b", "f"):
            raise _bad("dir must be 'b' or 'f'")
        if not await self.pipeline.room_exists(room_id):
            raise not_found(f"Unknown room {room_id}")
        joined_now = await self._check_history_access(room_id, user_id)
        limit = max(0, min(int(limit), MAX_PAGE))
        backwards = direction == "b"
        try:
            start = Position.parse(from_token) if from_token else None
            end = Position.parse(to_token) if to_token else None
        except ValueError as e:
            raise _bad(str(e)) from None
        start_token = start.token() if start is not None else None
        chunk: list[StoredEvent] = []
        position = start
        exhausted = limit == 0
        rounds = 0
        while not exhausted and not chunk and rounds < 5:
            rounds += 1
            rows = await self.store.paginate(room_id, position, end, backwards, limit)
            if backwards and self.backfiller is not None and rounds == 1:
                # Where the page reaches a gap in our copy of the history, fill it first.
                low = rows[-1].depth if len(rows) >= limit else 0
                high = position.depth if position is not None else None
                if await self.backfiller(room_id, low, high):
                    rows = await self.store.paginate(room_id, position, end, backwards, limit)
            if start_token is None and rows:
                # No `from`: the page starts at the newest (or oldest) event.
                first = rows[0]
                start_token = (
                    Position(None, first.stream_ordering).token()
                    if backwards
                    else Position(first.depth, first.stream_ordering - 1).token()
                )
            if len(rows) < limit:
                exhausted = True
            if rows:
                last = rows[-1]
                position = Position(last.depth, last.stream_ordering - (1 if backwards else 0))
            visible = await self.filter_visible(room_id, user_id, rows, joined_now)
            if event_filter is not None:
                visible = [e for e in visible if event_filter(e.event)]
            chunk.extend(visible)
        state: list[JsonDict] = []
        if lazy_load_members and chunk:
            state = await self._member_state(chunk[-1], {e.event.sender for e in chunk}, user_id)
        if start_token is None:
            start_token = (
                Position(None, await current_position(self.store.db, "events")).token()
                if backwards
                else "t0-0"
            )
        return Page(
            chunk=await self.serialize(chunk, user_id, device_id),
            start=start_token,
            end=None if exhausted or position is None else position.token(),
            state=state,
        )

    async def _member_state(
        self, at: StoredEvent, users: Iterable[str], user_id: str
    ) -> list[JsonDict]:
        keys = [(MEMBER, u) for u in users]
        ids = await self.state.state_after(at, StateFilter.from_keys(keys))
        found = await self.store.get_events(ids.values())
        return await self.serialize(list(found.values()), user_id)

    async def context(
        self,
        room_id: str,
        user_id: str,
        event_id: str,
        *,
        limit: int = 10,
        event_filter: EventFilter | None = None,
        lazy_load_members: bool = False,
        device_id: str | None = None,
    ) -> Context:
        """GET /rooms/{id}/context/{eventId}: the event, up to ``limit`` events around it
        (half before, half after), tokens either side and the state at the last event."""
        if not await self.pipeline.room_exists(room_id):
            raise not_found(f"Unknown room {room_id}")
        joined_now = await self._check_history_access(room_id, user_id)
        target = await self.store.get_event(event_id)
        if target is None or target.room_id != room_id or not await self.filter_visible(
            room_id, user_id, [target], joined_now
        ):
            raise not_found("Event not found or you may not see it")
        limit = max(0, min(int(limit), MAX_PAGE))
        n_before = limit // 2
        n_after = limit - n_before

        async def side(backwards: bool, n: int) -> list[StoredEvent]:
            if n == 0:
                return []
            pos = Position(target.depth, target.stream_ordering - (1 if backwards else 0))
            rows = await self.store.paginate(room_id, pos, None, backwards, n)
            visible = await self.filter_visible(room_id, user_id, rows, joined_now)
            if event_filter is not None:
                visible = [e for e in visible if event_filter(e.event)]
            return visible

        before = await side(True, n_before)
        after = await side(False, n_after)
        first = before[-1] if before else target
        last = after[-1] if after else target
        if lazy_load_members:
            senders = {e.event.sender for e in [*before, target, *after]}
            state = await self._member_state(last, senders, user_id)
        else:
            ids = await self.state.state_after(last)
            found = await self.store.get_events(ids.values())
            state = await self.serialize(list(found.values()), user_id)
        events = await self.serialize([target, *before, *after], user_id, device_id)
        return Context(
            event=events[0],
            events_before=events[1 : 1 + len(before)],
            events_after=events[1 + len(before) :],
            start=Position(first.depth, first.stream_ordering - 1).token(),
            end=Position(last.depth, last.stream_ordering).token(),
            state=state,
        )

    # == hooks ==============================================================================

    async def on_profile_change(self, user_id: str, key: str, value: Any) -> None:
        """ProfileService hook: a new displayname or avatar updates the user's member event
        in every room they are joined to."""
        if key not in ("displayname", "avatar_url"):
            return
        for room_id in await self.joined_rooms(user_id):
            try:
                current = await self.pipeline.current_state_event(room_id, (MEMBER, user_id))
                if current is None or current.event.membership != "join":
                    continue
                content = dict(current.event.content)
                if value is None:
                    content.pop(key, None)
                else:
                    content[key] = value
                if content == current.event.content:
                    continue
                content.pop("reason", None)
                content.pop("join_authorised_via_users_server", None)
                await self.pipeline.send(
                    room_id, EventSpec(MEMBER, user_id, content, state_key=user_id)
                )
            except MatrixError as e:
                logger.warning("could not update %s's profile in %s: %s", user_id, room_id, e)

    async def on_deactivate(self, user_id: str) -> None:
        """AccountService hook: a deactivated account leaves every room and rejects its
        invites and knocks."""
        rows = await self.state_store.rooms_for_user(user_id, ["join", "invite", "knock"])
        for m in rows:
            try:
                await self.leave(m.room_id, user_id)
            except MatrixError as e:
                logger.warning("deactivated %s could not leave %s: %s", user_id, m.room_id, e)


def _topic_content(topic: str) -> JsonDict:
    # Spec v1.15: m.topic alongside the plain topic.
    return {"topic": topic, "m.topic": [{"mimetype": "text/plain", "body": topic}]}
