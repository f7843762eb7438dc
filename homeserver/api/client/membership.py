"""Membership over the client API: join, leave, forget, invite, kick, ban, unban, knock, and
room aliases (which joins resolve)."""

from __future__ import annotations

from federation.identifiers import get_domain, is_valid_room_alias, is_valid_user_id
from federation.power_levels import get_send_level, get_user_power_level
from federation.transport.client import FederationClientError, HttpResponseError
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router
from homeserver.http.validation import optional_str, require_str
from homeserver.services.registry import Services


def register(router: Router, s: Services) -> None:
    rooms = s.rooms

    async def resolve(room_id_or_alias: str) -> str:
        if room_id_or_alias.startswith("!"):
            return room_id_or_alias
        if not room_id_or_alias.startswith("#") or not is_valid_room_alias(room_id_or_alias):
            raise MatrixError(400, Codes.INVALID_PARAM, "Invalid room ID or alias")
        alias = await s.events.get_alias(room_id_or_alias)
        if alias is None:
            raise MatrixError(404, Codes.NOT_FOUND, f"Room alias {room_id_or_alias} not found")
        return alias.room_id

    def _reason(body: dict[str, object]) -> str | None:
        return optional_str(body, "reason", max_len=4096)

    def _target(body: dict[str, object]) -> str:
        target = require_str(body, "user_id", max_len=255)
        if not is_valid_user_id(target):
            raise MatrixError(400, Codes.INVALID_PARAM, "Invalid user_id")
        return target

    async def resolve_with_servers(room_id_or_alias: str) -> tuple[str, list[str]]:
        """The room ID and servers to join through, asking the alias's server for a remote
        alias (GET /_matrix/federation/v1/query/directory)."""
        if room_id_or_alias.startswith("#") and is_valid_room_alias(room_id_or_alias):
            domain = get_domain(room_id_or_alias)
            if domain != s.config.server_name:
                try:
                    found = await s.federation_client.get_json(
                        domain, "/_matrix/federation/v1/query/directory",
                        {"room_alias": room_id_or_alias})
                except HttpResponseError as e:
                    if e.status == 404:
                        raise MatrixError(404, Codes.NOT_FOUND,
                                          f"Room alias {room_id_or_alias} not found") from None
                    raise MatrixError(502, Codes.UNKNOWN,
                                      f"Cannot resolve {room_id_or_alias}: {e}") from None
                except FederationClientError as e:
                    raise MatrixError(502, Codes.UNKNOWN,
                                      f"Cannot resolve {room_id_or_alias}: {e}") from None
                room_id = found.get("room_id") if isinstance(found, dict) else None
                servers = found.get("servers") if isinstance(found, dict) else None
                if not isinstance(room_id, str) or not room_id.startswith("!"):
                    raise MatrixError(502, Codes.UNKNOWN, "Invalid directory response")
                listed = [x for x in servers if isinstance(x, str)] if isinstance(
                    servers, list) else []
                return room_id, [domain, *listed]
        return await resolve(room_id_or_alias), []

    async def join_by_id_or_alias(request: HomeserverRequest, roomIdOrAlias: str) -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        body = request.json_object() if request.read_body() else {}
        room_id, servers = await resolve_with_servers(roomIdOrAlias)
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
        await rooms.join(roomId, requester.user_id, reason=_reason(body))
        return 200, {"room_id": roomId}

    async def knock(request: HomeserverRequest, roomIdOrAlias: str) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        body = request.json_object() if request.read_body() else {}
        room_id = await resolve(roomIdOrAlias)
        await rooms.knock(room_id, requester.user_id, reason=_reason(body))
        return 200, {"room_id": room_id}

    async def leave(request: HomeserverRequest, roomId: str) -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        body = request.json_object() if request.read_body() else {}
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
        await rooms.invite(roomId, requester.user_id, _target(body), reason=_reason(body))
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
        alias = await s.events.get_alias(roomAlias)
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
