"""Admin API for accounts, on Synapse's paths (synapse-admin and operator scripts use them):
list and search, show, create or modify, devices, joined rooms, deactivate (with erase),
reset password, admin rights, whois."""

from __future__ import annotations

from typing import Any

from homeserver.api.admin.params import page, paging, query_bool
from homeserver.api.admin.registration import require_admin
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router
from homeserver.http.validation import (
    optional_bool,
    optional_str,
    optional_str_list,
    query_int,
    require_str,
)
from homeserver.services.admin.users import UserChanges, user_json
from homeserver.services.registry import Services
from homeserver.storage.admin import MEDIA_USAGE_ORDER, USER_ORDER


def register(router: Router, s: Services) -> None:
    admin = s.admin.users

    async def list_users(request: HomeserverRequest) -> JsonResponse:
        await require_admin(s, request)
        offset, limit, backwards = paging(request)
        order_by = request.query_param("order_by") or "name"
        if order_by not in USER_ORDER:
            raise MatrixError(400, Codes.INVALID_PARAM,
                              f"order_by must be one of {', '.join(USER_ORDER)}")
        rows, total = await s.admin.store.list_users(
            offset=offset, limit=limit,
            name=request.query_param("name"), user_id=request.query_param("user_id"),
            guests=bool(query_bool(request, "guests", True)),
            deactivated=bool(query_bool(request, "deactivated", False)),
            admins=query_bool(request, "admins", None),
            order_by=order_by, descending=backwards,
        )
        return 200, page("users", [user_json(r) for r in rows], offset, total,
                         token_as_str=True)

    async def get_user(request: HomeserverRequest, userId: str) -> JsonResponse:
        await require_admin(s, request)
        return 200, await admin.details(userId)

    async def put_user(request: HomeserverRequest, userId: str) -> JsonResponse:
        requester = await require_admin(s, request)
        body = request.json_object()
        admin_flag = body.get("admin")
        deactivated = body.get("deactivated")
        for key, value in (("admin", admin_flag), ("deactivated", deactivated)):
            if value is not None and not isinstance(value, bool):
                raise MatrixError(400, Codes.BAD_JSON, f"'{key}' must be true or false")
        threepids = body.get("threepids")
        if threepids not in (None, []):
            raise MatrixError(400, Codes.INVALID_PARAM,
                              "This server does not keep third-party identifiers")
        if requester.user_id == userId and (admin_flag is False or deactivated is True):
            raise MatrixError(400, Codes.INVALID_PARAM,
                              "You may not demote or deactivate yourself")
        changes = UserChanges(
            password=optional_str(body, "password", max_len=512),
            logout_devices=optional_bool(body, "logout_devices", True),
            displayname=optional_str(body, "displayname", max_len=256),
            avatar_url=optional_str(body, "avatar_url", max_len=1024),
            admin=admin_flag,
            deactivated=deactivated,
        )
        created = await admin.upsert(userId, changes)
        return (201 if created else 200), await admin.details(userId)

    async def devices(request: HomeserverRequest, userId: str) -> JsonResponse:
        await require_admin(s, request)
        await admin.get(userId)
        out = [_device_json(d) for d in await s.devices.get_devices(userId)]
        return 200, {"devices": out, "total": len(out)}

    async def joined_rooms(request: HomeserverRequest, userId: str) -> JsonResponse:
        await require_admin(s, request)
        await admin.get(userId)
        rooms = sorted(await s.rooms.joined_rooms(userId))
        return 200, {"joined_rooms": rooms, "total": len(rooms)}

    async def deactivate(request: HomeserverRequest, userId: str) -> JsonResponse:
        requester = await require_admin(s, request)
        body = request.json_object() if request.read_body() else {}
        erase = optional_bool(body, "erase", False)
        if requester.user_id == userId:
            raise MatrixError(400, Codes.INVALID_PARAM, "You may not deactivate yourself")
        await admin.deactivate(userId, erase)
        return 200, {"id_server_unbind_result": "success"}

    async def reset_password(request: HomeserverRequest, userId: str) -> JsonResponse:
        await require_admin(s, request)
        body = request.json_object()
        password = require_str(body, "new_password", max_len=512)
        await admin.reset_password(userId, password, optional_bool(body, "logout_devices", True))
        return 200, {}

    async def get_admin(request: HomeserverRequest, userId: str) -> JsonResponse:
        await require_admin(s, request)
        return 200, {"admin": (await admin.get(userId)).is_admin}

    async def put_admin(request: HomeserverRequest, userId: str) -> JsonResponse:
        requester = await require_admin(s, request)
        body = request.json_object()
        if not isinstance(body.get("admin"), bool):
            raise MatrixError(400, Codes.MISSING_PARAM, "'admin' must be true or false")
        await admin.get(userId)
        if requester.user_id == userId and not body["admin"]:
            raise MatrixError(400, Codes.INVALID_PARAM, "You may not demote yourself")
        await s.users.set_admin(userId, body["admin"])
        return 200, {}

    async def whois(request: HomeserverRequest, userId: str) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        if requester.user_id != userId:
            await require_admin(s, request)
        return 200, await admin.whois(userId)

    def _device_json(d: Any) -> dict[str, Any]:
        return {"device_id": d.device_id, "display_name": d.display_name,
                "last_seen_ip": d.last_seen_ip, "last_seen_ts": d.last_seen_ts,
                "last_seen_user_agent": None, "user_id": d.user_id}

    async def get_device(request: HomeserverRequest, userId: str,
                         deviceId: str) -> JsonResponse:
        await require_admin(s, request)
        await admin.get(userId)
        device = await s.devices.get_device(userId, deviceId)
        if device is None:
            raise MatrixError(404, Codes.NOT_FOUND, "No such device")
        return 200, _device_json(device)

    async def put_device(request: HomeserverRequest, userId: str,
                         deviceId: str) -> JsonResponse:
        await require_admin(s, request)
        await admin.get(userId)
        body = request.json_object()
        name = optional_str(body, "display_name", max_len=512)
        if not await s.devices.set_display_name(userId, deviceId, name):
            raise MatrixError(404, Codes.NOT_FOUND, "No such device")
        return 200, {}

    async def delete_device(request: HomeserverRequest, userId: str,
                            deviceId: str) -> JsonResponse:
        await require_admin(s, request)
        await admin.get(userId)
        # Like Synapse: deleting a device that does not exist is not an error.
        await s.devices.delete_devices(userId, [deviceId])
        return 200, {}

    async def delete_devices(request: HomeserverRequest, userId: str) -> JsonResponse:
        await require_admin(s, request)
        await admin.get(userId)
        body = request.json_object()
        devices = optional_str_list(body, "devices")
        if devices is None:
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: devices")
        await s.devices.delete_devices(userId, devices)
        return 200, {}

    async def pushers(request: HomeserverRequest, userId: str) -> JsonResponse:
        await require_admin(s, request)
        await admin.get(userId)
        found = await s.push.pushers.get_pushers(userId)
        return 200, {"pushers": found, "total": len(found)}

    async def username_available(request: HomeserverRequest) -> JsonResponse:
        await require_admin(s, request)
        username = request.query_param("username")
        if not username:
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: username")
        # 400 M_USER_IN_USE / M_INVALID_USERNAME as the client API's check.
        await s.accounts.check_available(username)
        return 200, {"available": True}

    async def media_statistics(request: HomeserverRequest) -> JsonResponse:
        await require_admin(s, request)
        offset, limit, backwards = paging(request)
        order_by = request.query_param("order_by") or "user_id"
        if order_by not in MEDIA_USAGE_ORDER:
            raise MatrixError(400, Codes.INVALID_PARAM,
                              f"order_by must be one of {', '.join(MEDIA_USAGE_ORDER)}")
        from_ts = query_int(request.query_param("from_ts"), "from_ts", 0, min=0, max=2**62)
        raw_until = request.query_param("until_ts")
        until_ts = None if raw_until is None else query_int(raw_until, "until_ts", 0, min=0,
                                                            max=2**62)
        search = request.query_param("search_term")
        if search is not None and not search:
            raise MatrixError(400, Codes.INVALID_PARAM, "search_term cannot be empty")
        users, total = await s.admin.store.media_usage(
            offset=offset, limit=limit, order_by=order_by, descending=backwards,
            search=search, from_ts=from_ts, until_ts=until_ts,
        )
        return 200, page("users", users, offset, total)

    v1, v2 = "/_synapse/admin/v1", "/_synapse/admin/v2"
    for method, path, handler in (
        ("GET", f"{v2}/users", list_users),
        ("GET", f"{v2}/users/{{userId}}", get_user),
        ("PUT", f"{v2}/users/{{userId}}", put_user),
        ("GET", f"{v2}/users/{{userId}}/devices", devices),
        ("GET", f"{v1}/users/{{userId}}/joined_rooms", joined_rooms),
        ("POST", f"{v1}/deactivate/{{userId}}", deactivate),
        ("POST", f"{v1}/reset_password/{{userId}}", reset_password),
        ("GET", f"{v1}/users/{{userId}}/admin", get_admin),
        ("PUT", f"{v1}/users/{{userId}}/admin", put_admin),
        ("GET", f"{v1}/whois/{{userId}}", whois),
        ("GET", f"{v1}/statistics/users/media", media_statistics),
        ("GET", f"{v2}/users/{{userId}}/devices/{{deviceId}}", get_device),
        ("PUT", f"{v2}/users/{{userId}}/devices/{{deviceId}}", put_device),
        ("DELETE", f"{v2}/users/{{userId}}/devices/{{deviceId}}", delete_device),
        ("POST", f"{v2}/users/{{userId}}/delete_devices", delete_devices),
        ("GET", f"{v1}/username_available", username_available),
        ("GET", f"{v1}/users/{{userId}}/pushers", pushers),
    ):
        router.add(method, path, handler, resource="admin")
    # The spec's copy of whois on the client API (admins, or users about themselves).
    router.client("GET", "/admin/whois/{userId}", whois)
