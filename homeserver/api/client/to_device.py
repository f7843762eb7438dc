"""Send-to-device messaging: PUT /sendToDevice/{eventType}/{txnId}."""

from __future__ import annotations

from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router
from homeserver.services.registry import Services


def register(router: Router, s: Services) -> None:
    async def send(request: HomeserverRequest, eventType: str, txnId: str) -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        await s.e2ee.to_device.send(requester.user_id, requester.device_id, eventType, txnId,
                                    request.json_object())
        return 200, {}

    router.client("PUT", "/sendToDevice/{eventType}/{txnId}", send)
