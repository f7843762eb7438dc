"""End-to-end encryption keys: upload, query, claim, changes, cross-signing keys and
signatures."""

from __future__ import annotations

from homeserver.http.errors import Codes, MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router
from homeserver.services import uia
from homeserver.services.registry import Services


def register(router: Router, s: Services) -> None:
    keys = s.e2ee.keys
    cross_signing = s.e2ee.cross_signing

    async def upload(request: HomeserverRequest) -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        return 200, await keys.upload(requester.user_id, requester.device_id,
                                      request.json_object())

    async def query(request: HomeserverRequest) -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        return 200, await keys.query(requester.user_id, request.json_object())

    async def claim(request: HomeserverRequest) -> JsonResponse:
        await s.auth.authenticate(request, allow_guest=True)
        return 200, await keys.claim(request.json_object())

    async def changes(request: HomeserverRequest) -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        from_token = request.query_param("from")
        if from_token is None:
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: from")
        return 200, await s.sync.keys_changes(requester.user_id, from_token,
                                              request.query_param("to"))

    async def device_signing_upload(request: HomeserverRequest) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        body = request.json_object()
        if await cross_signing.needs_authentication(requester.user_id, body):
            await s.uia.check(body, "device_signing_upload", [[uia.PASSWORD]],
                              requester.user_id)
        await cross_signing.upload_keys(requester.user_id, body)
        return 200, {}

    async def signatures_upload(request: HomeserverRequest) -> JsonResponse:
        requester = await s.auth.authenticate(request)
        return 200, await cross_signing.upload_signatures(requester.user_id,
                                                          request.json_object())

    router.client("POST", "/keys/upload", upload)
    router.client("POST", "/keys/query", query)
    router.client("POST", "/keys/claim", claim)
    router.client("GET", "/keys/changes", changes)
    router.client("POST", "/keys/device_signing/upload", device_signing_upload)
    router.client("POST", "/keys/signatures/upload", signatures_upload)
