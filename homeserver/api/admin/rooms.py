"""Admin API for rooms, on Synapse's paths: list and search, details, members, state,
blocking, deletion (v1 waits; v2 runs in the background with a status to poll) and history
purges with their status."""

from __future__ import annotations

from typing import Any

from federation.identifiers import is_valid_room_id
from homeserver.api.admin.params import paging
from homeserver.api.admin.registration import require_admin
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router
from homeserver.http.validation import optional_bool, optional_int, optional_str
from homeserver.services.admin.rooms import ROOM_ORDER, DeleteOptions
from homeserver.services.registry import Services
from homeserver.storage.admin import AdminTask

# Synapse's older names for two orders.
_ORDER_ALIASES = {"alphabetical": "name", "size": "joined_members"}
_EMPTY_SHUTDOWN: dict[str, Any] = {"kicked_users": [], "failed_to_kick_users": [],
                                   "local_aliases": [], "new_room_id": None}


def _room_id(room_id: str) -> str:
    if not is_valid_room_id(room_id):
        raise MatrixError(400, Codes.INVALID_PARAM, f"{room_id!r} is not a valid room ID")
    return room_id


def _delete_status(task: AdminTask) -> dict[str, Any]:
    body: dict[str, Any] = {
        "delete_id": task.task_id,
        "status": task.status,
        "shutdown_room": {**_EMPTY_SHUTDOWN, **task.result},
    }
    if task.error:
        body["error"] = task.error
    return body


def register(router: Router, s: Services) -> None:
    rooms = s.admin.rooms

    async def list_rooms(request: HomeserverRequest) -> JsonResponse:
        await require_admin(s, request)
        offset, limit, backwards = paging(request)
        order_by = request.query_param("order_by") or "name"
        order_by = _ORDER_ALIASES.get(order_by, order_by)
        if order_by not in ROOM_ORDER:
            raise MatrixError(400, Codes.INVALID_PARAM,
                              f"order_by must be one of {', '.join(ROOM_ORDER)}")
        search = request.query_param("search_term")
        if search is not None and not search:
            raise MatrixError(400, Codes.INVALID_PARAM, "search_term cannot be empty")
        found = await rooms.list_rooms(search_term=search, order_by=order_by,
                                       descending=backwards)
        chunk = found[offset:offset + limit]
        body: dict[str, Any] = {"rooms": chunk, "offset": offset, "total_rooms": len(found)}
        if offset + len(chunk) < len(found):
            body["next_batch"] = offset + len(chunk)
        if offset > 0:
            body["prev_batch"] = max(0, offset - limit)
        return 200, body

    async def room(request: HomeserverRequest, roomId: str) -> JsonResponse:
        await require_admin(s, request)
        return 200, await rooms.details(_room_id(roomId))

    async def members(request: HomeserverRequest, roomId: str) -> JsonResponse:
        await require_admin(s, request)
        found = await rooms.members(_room_id(roomId))
        return 200, {"members": found, "total": len(found)}

    async def state(request: HomeserverRequest, roomId: str) -> JsonResponse:
        await require_admin(s, request)
        return 200, {"state": await rooms.state(_room_id(roomId))}

    async def get_block(request: HomeserverRequest, roomId: str) -> JsonResponse:
        await require_admin(s, request)
        by = await s.admin.store.room_block(_room_id(roomId))
        return 200, {"block": True, "user_id": by} if by is not None else {"block": False}

    async def put_block(request: HomeserverRequest, roomId: str) -> JsonResponse:
        requester = await require_admin(s, request)
        body = request.json_object()
        if not isinstance(body.get("block"), bool):
            raise MatrixError(400, Codes.BAD_JSON, "'block' must be true or false")
        await rooms.set_blocked(_room_id(roomId), body["block"], requester.user_id,
                                s.clock.time_ms())
        return 200, {"block": body["block"]}

    async def _start_delete(request: HomeserverRequest, room_id: str) -> str:
        requester = await require_admin(s, request)
        body = request.json_object() if request.read_body() else {}
        options = DeleteOptions(
            requester=requester.user_id,
            block=optional_bool(body, "block", False),
            purge=optional_bool(body, "purge", True),
            force_purge=optional_bool(body, "force_purge", False),
            new_room_user_id=optional_str(body, "new_room_user_id", max_len=255),
            room_name=optional_str(body, "room_name", max_len=255),
            message=optional_str(body, "message", max_len=65536),
        )
        return await rooms.start_delete(_room_id(room_id), options, s.clock.time_ms())

    async def delete_v1(request: HomeserverRequest, roomId: str) -> JsonResponse:
        task_id = await _start_delete(request, roomId)
        await s.admin.tasks.wait(task_id)
        task = await s.admin.store.get_task(task_id)
        assert task is not None
        if task.status == "failed":
            raise MatrixError(400, Codes.UNKNOWN, task.error or "Deleting the room failed")
        return 200, {**_EMPTY_SHUTDOWN, **task.result}

    async def delete_v2(request: HomeserverRequest, roomId: str) -> JsonResponse:
        return 200, {"delete_id": await _start_delete(request, roomId)}

    async def room_delete_status(request: HomeserverRequest, roomId: str) -> JsonResponse:
        await require_admin(s, request)
        tasks = await s.admin.store.room_tasks(_room_id(roomId), "delete_room")
        if not tasks:
            raise MatrixError(404, Codes.NOT_FOUND, "No deletion of this room is known")
        return 200, {"results": [_delete_status(t) for t in tasks]}

    async def delete_status(request: HomeserverRequest, deleteId: str) -> JsonResponse:
        await require_admin(s, request)
        task = await s.admin.store.get_task(deleteId)
        if task is None or task.kind != "delete_room":
            raise MatrixError(404, Codes.NOT_FOUND, "Unknown delete_id")
        body = _delete_status(task)
        del body["delete_id"]
        return 200, body

    async def purge_history(request: HomeserverRequest, roomId: str,
                            eventId: str | None = None) -> JsonResponse:
        await require_admin(s, request)
        body = request.json_object()
        event_id = eventId or optional_str(body, "purge_up_to_event_id", max_len=255)
        before_ts = optional_int(body, "purge_up_to_ts", None, min=0)
        if event_id is None and before_ts is None:
            raise MatrixError(400, Codes.MISSING_PARAM,
                              "Give purge_up_to_event_id or purge_up_to_ts")
        if event_id is not None and before_ts is not None:
            raise MatrixError(400, Codes.INVALID_PARAM,
                              "Give purge_up_to_event_id or purge_up_to_ts, not both")
        purge_id = await rooms.start_purge_history(
            _room_id(roomId), event_id=event_id, before_ts=before_ts,
            delete_local=optional_bool(body, "delete_local_events", False),
        )
        return 200, {"purge_id": purge_id}

    async def purge_with_event(request: HomeserverRequest, roomId: str,
                               eventId: str) -> JsonResponse:
        return await purge_history(request, roomId, eventId)

    async def purge_status(request: HomeserverRequest, purgeId: str) -> JsonResponse:
        await require_admin(s, request)
        task = await s.admin.store.get_task(purgeId)
        if task is None or task.kind != "purge_history":
            raise MatrixError(404, Codes.NOT_FOUND, "Unknown purge_id")
        status = "active" if task.status == "scheduled" else task.status
        body: dict[str, Any] = {"status": status, **task.result}
        if task.error:
            body["error"] = task.error
        return 200, body

    async def forward_extremities(request: HomeserverRequest, roomId: str) -> JsonResponse:
        await require_admin(s, request)
        row = await s.events.get_room(_room_id(roomId))
        if row is None:
            raise MatrixError(404, Codes.NOT_FOUND, "Room not found")
        found = await s.events.get_events(row.extremities)
        results = [{"event_id": e.event_id, "state_group": e.state_group, "depth": e.depth}
                   for e in found.values()]
        return 200, {"count": len(results), "results": results}

    async def _room_mxcs(room_id: str) -> list[tuple[str, str]]:
        if not await s.pipeline.room_exists(_room_id(room_id)):
            raise MatrixError(404, Codes.NOT_FOUND, "Room not found")
        out = []
        for uri in await s.admin.store.room_media(room_id):
            server, _, media_id = uri[len("mxc://"):].partition("/")
            if server and media_id and "/" not in media_id:
                out.append((server, media_id))
        return out

    async def room_media(request: HomeserverRequest, roomId: str) -> JsonResponse:
        await require_admin(s, request)
        local: list[str] = []
        remote: list[str] = []
        for server, media_id in await _room_mxcs(roomId):
            uri = f"mxc://{server}/{media_id}"
            (local if server == s.config.server_name else remote).append(uri)
        return 200, {"local": local, "remote": remote}

    async def quarantine_room_media(request: HomeserverRequest, roomId: str) -> JsonResponse:
        requester = await require_admin(s, request)
        count = 0
        for server, media_id in await _room_mxcs(roomId):
            if await s.media.store.set_quarantine(server, media_id, requester.user_id):
                count += 1
        return 200, {"num_quarantined": count}

    v1, v2 = "/_synapse/admin/v1", "/_synapse/admin/v2"
    for method, path, handler in (
        ("GET", f"{v1}/rooms", list_rooms),
        ("GET", f"{v1}/rooms/{{roomId}}", room),
        ("GET", f"{v1}/rooms/{{roomId}}/members", members),
        ("GET", f"{v1}/rooms/{{roomId}}/state", state),
        ("GET", f"{v1}/rooms/{{roomId}}/block", get_block),
        ("PUT", f"{v1}/rooms/{{roomId}}/block", put_block),
        ("DELETE", f"{v1}/rooms/{{roomId}}", delete_v1),
        ("DELETE", f"{v2}/rooms/{{roomId}}", delete_v2),
        ("GET", f"{v2}/rooms/{{roomId}}/delete_status", room_delete_status),
        ("GET", f"{v2}/rooms/delete_status/{{deleteId}}", delete_status),
        ("POST", f"{v1}/purge_history/{{roomId}}", purge_history),
        ("POST", f"{v1}/purge_history/{{roomId}}/{{eventId}}", purge_with_event),
        ("GET", f"{v1}/purge_history_status/{{purgeId}}", purge_status),
        ("GET", f"{v1}/rooms/{{roomId}}/forward_extremities", forward_extremities),
        ("GET", f"{v1}/room/{{roomId}}/media", room_media),
        ("POST", f"{v1}/room/{{roomId}}/media/quarantine", quarantine_room_media),
    ):
        router.add(method, path, handler, resource="admin")
