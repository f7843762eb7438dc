"""Rooms over the client API: create, send, state, redact, read events and history."""

from __future__ import annotations

import json
from typing import Any

from federation.events import Event
from homeserver.api.client.appservice import massaged_ts
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router
from homeserver.http.validation import (
    optional_bool,
    optional_object,
    optional_str,
    optional_str_list,
    query_int,
)
from homeserver.services.filters import validate_filter
from homeserver.services.registry import Services
from homeserver.services.rooms import EventFilter

MAX_TXN_ID = 255
MAX_TYPE = 255


def event_filter_from(raw: str | None) -> tuple[EventFilter | None, bool, int | None]:
    """A RoomEventFilter from a ``filter`` query parameter (JSON): (predicate,
    lazy_load_members, limit)."""
    if not raw:
        return None, False, None
    try:
        spec = json.loads(raw)
    except ValueError:
        raise MatrixError(400, Codes.BAD_JSON, "filter is not valid JSON") from None
    if not isinstance(spec, dict):
        raise MatrixError(400, Codes.BAD_JSON, "filter must be an object")
    validate_filter({"room": {"timeline": spec}})
    types, not_types = spec.get("types"), spec.get("not_types") or []
    senders, not_senders = spec.get("senders"), spec.get("not_senders") or []
    contains_url = spec.get("contains_url")

    def matches(pattern: str, value: str) -> bool:
        return pattern == value or (pattern.endswith("*") and value.startswith(pattern[:-1]))

    def predicate(event: Event) -> bool:
        if any(matches(p, event.type) for p in not_types):
            return False
        if types is not None and not any(matches(p, event.type) for p in types):
            return False
        if event.sender in not_senders:
            return False
        if senders is not None and event.sender not in senders:
            return False
        if contains_url is not None:
            has_url = isinstance(event.content.get("url"), str)
            if has_url != contains_url:
                return False
        return True

    limit = spec.get("limit")
    return predicate, bool(spec.get("lazy_load_members")), limit if isinstance(limit, int) else None


def _check_txn(txn_id: str) -> None:
    if not txn_id or len(txn_id) > MAX_TXN_ID:
        raise MatrixError(400, Codes.INVALID_PARAM, "Invalid transaction ID")


def _check_type(event_type: str) -> None:
    if not event_type or len(event_type.encode("utf-8")) > MAX_TYPE:
        raise MatrixError(400, Codes.INVALID_PARAM, "Invalid event type")


def register(router: Router, s: Services) -> None:
    rooms = s.rooms

    async def create_room(request: HomeserverRequest) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        body = request.json_object()
        invite = optional_str_list(body, "invite", max_items=100) or []
        initial_state = body.get("initial_state") or []
        if not isinstance(initial_state, list) or len(initial_state) > 100:
            raise MatrixError(400, Codes.BAD_JSON, "initial_state must be a list of events")
        if not all(isinstance(e, dict) for e in initial_state):
            raise MatrixError(400, Codes.BAD_JSON, "initial_state must be a list of events")
        visibility = optional_str(body, "visibility") or "private"
        if visibility not in ("public", "private"):
            raise MatrixError(400, Codes.BAD_JSON, "visibility must be public or private")
        if visibility == "public" and not s.config.room_directory_publish_by_anyone:
            user = await s.users.get(requester.user_id)
            if user is None or not user.is_admin:
                raise MatrixError(403, Codes.FORBIDDEN,
                                  "Only server admins may publish rooms to the directory")
        preset = optional_str(body, "preset")
        if preset is not None and preset not in (
            "private_chat", "trusted_private_chat", "public_chat"
        ):
            raise MatrixError(400, Codes.BAD_JSON, f"Unknown preset {preset}")
        alias_name = optional_str(body, "room_alias_name", max_len=255)
        if alias_name is not None:
            s.appservices.check_alias_allowed(f"#{alias_name}:{s.config.server_name}",
                                              requester.app_service)
        room_version = body.get("room_version")
        if room_version is not None and not isinstance(room_version, str):
            raise MatrixError(400, Codes.BAD_JSON, "room_version must be a string")
        created = await rooms.create_room(
            requester.user_id,
            preset=preset,
            visibility=visibility,
            name=optional_str(body, "name", max_len=4096),
            topic=optional_str(body, "topic", max_len=16384),
            invite=invite,
            is_direct=optional_bool(body, "is_direct", False),
            initial_state=initial_state,
            creation_content=optional_object(body, "creation_content"),
            power_level_content_override=optional_object(body, "power_level_content_override"),
            room_version=room_version,
            room_alias_name=alias_name,
        )
        result: dict[str, Any] = {"room_id": created.room_id}
        if created.room_alias:
            result["room_alias"] = created.room_alias
        return 200, result

    async def send(request: HomeserverRequest, roomId: str, eventType: str,
                   txnId: str) -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        _check_type(eventType)
        _check_txn(txnId)
        content = request.json_object()
        if requester.rate_limited:
            s.ratelimits.messages_per_user.check(requester.user_id)
        event_id = await rooms.send_event(
            roomId, requester.user_id, eventType, content,
            txn_id=txnId, device_id=requester.device_id, ts=massaged_ts(request, requester),
        )
        return 200, {"event_id": event_id}

    async def put_state(request: HomeserverRequest, roomId: str, eventType: str,
                        stateKey: str = "") -> JsonResponse:
        requester = await s.auth.authenticate(request)
        _check_type(eventType)
        if len(stateKey.encode("utf-8")) > 255:
            raise MatrixError(400, Codes.INVALID_PARAM, "State key is too long")
        content = request.json_object()
        event_id = await rooms.send_event(roomId, requester.user_id, eventType, content,
                                          stateKey, ts=massaged_ts(request, requester))
        return 200, {"event_id": event_id}

    async def get_state(request: HomeserverRequest, roomId: str) -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        return 200, await rooms.get_state(roomId, requester.user_id)

    async def get_state_event(request: HomeserverRequest, roomId: str, eventType: str,
                              stateKey: str = "") -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        ev = await rooms.get_state_event(roomId, requester.user_id, eventType, stateKey)
        if request.query_param("format") == "event":
            return 200, (await rooms.serialize([ev], requester.user_id))[0]
        return 200, ev.event.content

    async def redact(request: HomeserverRequest, roomId: str, eventId: str,
                     txnId: str) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        _check_txn(txnId)
        body = request.json_object()
        event_id = await rooms.redact(
            roomId, requester.user_id, eventId, reason=optional_str(body, "reason"),
            txn_id=txnId, device_id=requester.device_id,
        )
        return 200, {"event_id": event_id}

    async def get_event(request: HomeserverRequest, roomId: str, eventId: str) -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        return 200, await rooms.get_event(roomId, requester.user_id, eventId,
                                          device_id=requester.device_id)

    async def members(request: HomeserverRequest, roomId: str) -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        for name in ("membership", "not_membership"):
            value = request.query_param(name)
            if value is not None and value not in ("join", "invite", "leave", "ban", "knock"):
                raise MatrixError(400, Codes.INVALID_PARAM, f"Invalid {name}")
        chunk = await rooms.members(
            roomId, requester.user_id, at=request.query_param("at"),
            membership=request.query_param("membership"),
            not_membership=request.query_param("not_membership"),
        )
        return 200, {"chunk": chunk}

    async def joined_members(request: HomeserverRequest, roomId: str) -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        return 200, {"joined": await rooms.joined_members(roomId, requester.user_id)}

    async def joined_rooms(request: HomeserverRequest) -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        return 200, {"joined_rooms": await rooms.joined_rooms(requester.user_id)}

    async def messages(request: HomeserverRequest, roomId: str) -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        direction = request.query_param("dir") or "b"
        if direction not in ("b", "f"):
            raise MatrixError(400, Codes.INVALID_PARAM, "dir must be b or f")
        predicate, lazy, filter_limit = event_filter_from(request.query_param("filter"))
        limit = query_int(request.query_param("limit"), "limit", filter_limit or 10,
                          min=0, max=1000)
        page = await rooms.paginate(
            roomId, requester.user_id, from_token=request.query_param("from"),
            to_token=request.query_param("to"), direction=direction, limit=limit,
            event_filter=predicate, lazy_load_members=lazy, device_id=requester.device_id,
        )
        body: dict[str, Any] = {"chunk": page.chunk, "start": page.start}
        if page.end is not None:
            body["end"] = page.end
        if page.state:
            body["state"] = page.state
        return 200, body

    async def context(request: HomeserverRequest, roomId: str, eventId: str) -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        predicate, lazy, _ = event_filter_from(request.query_param("filter"))
        limit = query_int(request.query_param("limit"), "limit", 10, min=0, max=1000)
        ctx = await rooms.context(roomId, requester.user_id, eventId, limit=limit,
                                  event_filter=predicate, lazy_load_members=lazy,
                                  device_id=requester.device_id)
        return 200, {
            "event": ctx.event, "events_before": ctx.events_before,
            "events_after": ctx.events_after, "start": ctx.start, "end": ctx.end,
            "state": ctx.state,
        }

    router.client("POST", "/createRoom", create_room)
    router.client("PUT", "/rooms/{roomId}/send/{eventType}/{txnId}", send)
    router.client("PUT", "/rooms/{roomId}/state/{eventType}/{stateKey}", put_state)
    router.client("PUT", "/rooms/{roomId}/state/{eventType}", put_state)
    # A trailing slash names the empty state key explicitly.
    router.client("PUT", "/rooms/{roomId}/state/{eventType}/", put_state)
    router.client("GET", "/rooms/{roomId}/state/{eventType}/", get_state_event)
    router.client("GET", "/rooms/{roomId}/state", get_state)
    router.client("GET", "/rooms/{roomId}/state/{eventType}/{stateKey}", get_state_event)
    router.client("GET", "/rooms/{roomId}/state/{eventType}", get_state_event)
    router.client("PUT", "/rooms/{roomId}/redact/{eventId}/{txnId}", redact)
    router.client("GET", "/rooms/{roomId}/event/{eventId}", get_event)
    router.client("GET", "/rooms/{roomId}/members", members)
    router.client("GET", "/rooms/{roomId}/joined_members", joined_members)
    router.client("GET", "/joined_rooms", joined_rooms)
    router.client("GET", "/rooms/{roomId}/messages", messages)
    router.client("GET", "/rooms/{roomId}/context/{eventId}", context)
