"""Membership over the client API: join, leave, forget, invite, kick, ban, unban, knock, and
room aliases (which joins resolve)."""

from __future__ import annotations

from federation.identifiers import get_domain, is_valid_room_alias, is_valid_user_id
from federation.power_levels import get_send_level, get_user_power_level
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router
from homeserver.http.validation import optional_str, require_str
from homeserver.services.federation_knocks import FederationKnocks
from homeserver.services.registry import Services
from homeserver.services.room_refs import resolve_with_servers


def register(router: Router, s: Services) -> None:
    rooms = s.rooms
    knocks = FederationKnocks(s.federation)

    def _reason(body: dict[str, object]) -> str | None:
        return optional_str(body, "reason", max_len=4096)

    def _target(body: dict[str, object]) -> str:
        target = require_str(body, "user_id", max_len=255)
        if not is_valid_user_id(target):
            raise MatrixError(400, Codes.INVALID_PARAM, "Invalid user_id")
        return target

    async def join_by_id_or_alias(request: HomeserverRequest, roomIdOrAlias: str) -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        body = request.json_object() if request.read_body() else {}
        room_id, servers = await resolve_with_servers(s, roomIdOrAlias)
        await rooms.check_not_blocked(room_id)
        if await s.federation.should_join_remotely(room_id):
            via = [v.decode("utf-8", "replace") for name in (b"via", b"server_name")
                   for v in request.args.get(name, [])]
            await s.federation.join_remote(
                room_id, requester.user_id, [*servers, *via, *s.federation.room_servers(room_id)],
                await rooms.join_content(requester.user_id, _reason(body)))
            return 200, {"room_id": room_id}
        await rooms.join(room_id, requester.user_id, reason=_reason(body))
        return 200, {"room_id": room_id}

    async def join(request: HomeserverRequest, roomId: str) -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        body = request.json_object() if request.read_body() else {}
        if await s.federation.should_join_remotely(roomId):
            # Through the inviting server (an invite over federation), then the room's.
            await s.federation.join_remote(
                roomId, requester.user_id, s.federation.room_servers(roomId),
                await rooms.join_content(requester.user_id, _reason(body)))
            return 200, {"room_id": roomId}
        await rooms.join(roomId, requester.user_id, reason=_reason(body))
        return 200, {"room_id": roomId}

    async def knock(request: HomeserverRequest, roomIdOrAlias: str) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        body = request.json_object() if request.read_body() else {}
        room_id, servers = await resolve_with_servers(s, roomIdOrAlias)
        if await s.federation.should_join_remotely(room_id):
            # A room this server is not in: knock through the servers the client names.
            await rooms.check_not_blocked(room_id)
            via = [v.decode("utf-8", "replace") for name in (b"via", b"server_name")
                   for v in request.args.get(name, [])]
            await knocks.knock_remote(
                room_id, requester.user_id, [*servers, *via, *s.federation.room_servers(room_id)],
                await rooms.join_content(requester.user_id, _reason(body)))
            return 200, {"room_id": room_id}
        await rooms.knock(room_id, requester.user_id, reason=_reason(body))
        return 200, {"room_id": room_id}

    async def leave(request: HomeserverRequest, roomId: str) -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        body = request.json_object() if request.read_body() else {}
        if await s.federation.invites.pending(roomId, requester.user_id) is not None:
            # An invite to a room this server is not in: rejected through the inviter.
            await s.federation.invites.reject(roomId, requester.user_id, _reason(body))
            return 200, {}
        knock = await knocks.pending(roomId, requester.user_id)
        if knock is not None:
            # A knock on a room this server is not in: withdrawn through a resident.
            await knocks.withdraw(knock, knocks.knock_servers(knock), _reason(body))
            return 200, {}
        await rooms.leave(roomId, requester.user_id, reason=_reason(body))
        return 200, {}

    async def forget(request: HomeserverRequest, roomId: str) -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        await rooms.forget(roomId, requester.user_id)
        return 200, {}

    async def invite(request: HomeserverRequest, roomId: str) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        body = request.json_object()
        if "user_id" not in body and "medium" in body:
            raise MatrixError(400, Codes.UNKNOWN, "Third-party invites are not supported")
        target = _target(body)
        if get_domain(target) == s.config.server_name:
            # A bridge's puppet may not exist yet: its application service is asked first.
            await s.appservices.ensure_user(target)
        await rooms.invite(roomId, requester.user_id, target, reason=_reason(body))
        return 200, {}

    async def kick(request: HomeserverRequest, roomId: str) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        body = request.json_object()
        await rooms.kick(roomId, requester.user_id, _target(body), reason=_reason(body))
        return 200, {}

    async def ban(request: HomeserverRequest, roomId: str) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        body = request.json_object()
        await rooms.ban(roomId, requester.user_id, _target(body), reason=_reason(body))
        return 200, {}

    async def unban(request: HomeserverRequest, roomId: str) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        body = request.json_object()
        await rooms.unban(roomId, requester.user_id, _target(body), reason=_reason(body))
        return 200, {}

    # -- aliases -------------------------------------------------------------------------------
    def _check_alias(alias: str) -> None:
        if not is_valid_room_alias(alias):
            raise MatrixError(400, Codes.INVALID_PARAM, "Invalid room alias")

    async def put_alias(request: HomeserverRequest, roomAlias: str) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        _check_alias(roomAlias)
        if not roomAlias.endswith(":" + s.config.server_name):
            raise MatrixError(400, Codes.INVALID_PARAM, "Aliases must be on this server")
        body = request.json_object()
        room_id = require_str(body, "room_id", max_len=255)
        s.appservices.check_alias_allowed(roomAlias, requester.app_service)
        if not await s.pipeline.room_exists(room_id):
            raise MatrixError(404, Codes.NOT_FOUND, "Unknown room")
        if room_id not in await rooms.joined_rooms(requester.user_id):
            raise MatrixError(403, Codes.FORBIDDEN, "You are not in that room")
        if not await s.events.create_alias(roomAlias, room_id, requester.user_id,
                                           s.clock.time_ms()):
            raise MatrixError(409, "M_UNKNOWN", "Room alias already exists")
        return 200, {}

    async def get_alias(request: HomeserverRequest, roomAlias: str) -> JsonResponse:
        _check_alias(roomAlias)
        if get_domain(roomAlias) != s.config.server_name:
            # Another server's alias: that server answers (/query/directory).
            room_id, servers = await resolve_with_servers(s, roomAlias)
            return 200, {"room_id": room_id, "servers": list(dict.fromkeys(servers))}
        alias = await s.appservices.get_alias(roomAlias)
        if alias is None:
            raise MatrixError(404, Codes.NOT_FOUND, f"Room alias {roomAlias} not found")
        return 200, {"room_id": alias.room_id, "servers": [s.config.server_name]}

    async def delete_alias(request: HomeserverRequest, roomAlias: str) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        _check_alias(roomAlias)
        alias = await s.events.get_alias(roomAlias)
        if alias is None:
            raise MatrixError(404, Codes.NOT_FOUND, f"Room alias {roomAlias} not found")
        user = await s.users.get(requester.user_id)
        if alias.creator != requester.user_id and not (user and user.is_admin):
            # Those who may set the canonical alias may remove aliases too, as in Synapse.
            if not await _may_send_state(alias.room_id, requester.user_id,
                                         "m.room.canonical_alias"):
                raise MatrixError(403, Codes.FORBIDDEN, "You may not remove this alias")
        await s.events.delete_alias(roomAlias)
        return 200, {}

    async def _may_send_state(room_id: str, user_id: str, event_type: str) -> bool:
        keys = [("m.room.create", ""), ("m.room.power_levels", "")]
        state = {}
        for key in keys:
            found = await s.pipeline.current_state_event(room_id, key)
            if found is not None:
                state[key] = found.event
        if ("m.room.create", "") not in state:
            return False
        level = get_user_power_level(user_id, state)
        return level >= get_send_level(event_type, "", state)

    async def room_aliases(request: HomeserverRequest, roomId: str) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        await rooms.get_state(roomId, requester.user_id)  # checks the user may read the room
        return 200, {"aliases": await s.events.aliases_for_room(roomId)}

    router.client("POST", "/join/{roomIdOrAlias}", join_by_id_or_alias)
    router.client("POST", "/rooms/{roomId}/join", join)
    router.client("POST", "/knock/{roomIdOrAlias}", knock)
    router.client("POST", "/rooms/{roomId}/leave", leave)
    router.client("POST", "/rooms/{roomId}/forget", forget)
    router.client("POST", "/rooms/{roomId}/invite", invite)
    router.client("POST", "/rooms/{roomId}/kick", kick)
    router.client("POST", "/rooms/{roomId}/ban", ban)
    router.client("POST", "/rooms/{roomId}/unban", unban)
    router.client("PUT", "/directory/room/{roomAlias}", put_alias)
    router.client("GET", "/directory/room/{roomAlias}", get_alias)
    router.client("DELETE", "/directory/room/{roomAlias}", delete_alias)
    router.client("GET", "/rooms/{roomId}/aliases", room_aliases)
