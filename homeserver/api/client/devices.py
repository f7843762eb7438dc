"""Device management: list, rename, delete (behind user-interactive auth)."""

from __future__ import annotations

from homeserver.http.errors import Codes, MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router
from homeserver.http.validation import optional_str, optional_str_list
from homeserver.services import uia
from homeserver.services.registry import Services
from homeserver.storage.devices import Device


def _json(d: Device) -> dict[str, object]:
    return {
        "device_id": d.device_id,
        "display_name": d.display_name,
        "last_seen_ip": d.last_seen_ip,
        "last_seen_ts": d.last_seen_ts,
    }


def register(router: Router, s: Services) -> None:
    async def list_devices(request: HomeserverRequest) -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        devices = await s.devices.get_devices(requester.user_id)
        return 200, {"devices": [_json(d) for d in devices]}

    async def get_device(request: HomeserverRequest, deviceId: str) -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        device = await s.devices.get_device(requester.user_id, deviceId)
        if device is None:
            raise MatrixError(404, Codes.NOT_FOUND, "No such device")
        return 200, _json(device)

    async def put_device(request: HomeserverRequest, deviceId: str) -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        body = request.json_object()
        name = optional_str(body, "display_name", max_len=512)
        if not await s.devices.set_display_name(requester.user_id, deviceId, name):
            raise MatrixError(404, Codes.NOT_FOUND, "No such device")
        return 200, {}

    async def delete_device(request: HomeserverRequest, deviceId: str) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        body = request.json_object() if request.read_body() else {}
        await s.uia.check(body, "delete_devices", [[uia.PASSWORD]], requester.user_id)
        await s.devices.delete_devices(requester.user_id, [deviceId])
        return 200, {}

    async def delete_devices(request: HomeserverRequest) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        body = request.json_object()
        devices = optional_str_list(body, "devices")
        if devices is None:
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: devices")
        await s.uia.check(body, "delete_devices", [[uia.PASSWORD]], requester.user_id)
        await s.devices.delete_devices(requester.user_id, devices)
        return 200, {}

    router.client("GET", "/devices", list_devices)
    router.client("GET", "/devices/{deviceId}", get_device)
    router.client("PUT", "/devices/{deviceId}", put_device)
    router.client("DELETE", "/devices/{deviceId}", delete_device)
    router.client("POST", "/delete_devices", delete_devices)
