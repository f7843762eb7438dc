"""End-to-end encryption over federation: a local user's devices and keys, key queries and
one-time key claims from other servers (local users only)."""

from __future__ import annotations

from homeserver.api.federation.auth import authenticate_origin
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router
from homeserver.services.registry import Services


def register(router: Router, s: Services) -> None:
    fed = s.federation

    async def origin_of(request: HomeserverRequest, content: object = None) -> str:
        origin = await authenticate_origin(s.keyring, request, content)
        await s.federation_sender.peer_is_back(origin)
        return origin

    async def user_devices(request: HomeserverRequest, userId: str) -> JsonResponse:
        await origin_of(request)
        return 200, await fed.user_devices(userId)

    async def keys_query(request: HomeserverRequest) -> JsonResponse:
        body = request.json_object()
        await origin_of(request, body)
        wanted = fed.local_only(body.get("device_keys"))
        answer = await s.e2ee.keys.query("", {"device_keys": wanted})
        answer.pop("user_signing_keys", None)
        answer.pop("failures", None)
        return 200, answer

    async def keys_claim(request: HomeserverRequest) -> JsonResponse:
        body = request.json_object()
        await origin_of(request, body)
        wanted = fed.local_only(body.get("one_time_keys"))
        answer = await s.e2ee.keys.claim({"one_time_keys": wanted})
        return 200, {"one_time_keys": answer["one_time_keys"]}

    r = "federation"
    router.add("GET", "/_matrix/federation/v1/user/devices/{userId}", user_devices, resource=r)
    router.add("POST", "/_matrix/federation/v1/user/keys/query", keys_query, resource=r)
    router.add("POST", "/_matrix/federation/v1/user/keys/claim", keys_claim, resource=r)
