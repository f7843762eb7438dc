"""Profiles: GET the whole profile or one field; PUT and DELETE one's own fields."""

from __future__ import annotations

from federation.identifiers import is_valid_user_id
from federation.transport.client import FederationClientError, HttpResponseError
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router
from homeserver.services.profile import check_key
from homeserver.services.registry import Services


def register(router: Router, s: Services) -> None:
    async def _local_profile(user_id: str) -> dict[str, object]:
        domain = user_id.partition(":")[2]
        if domain and domain != s.config.server_name:
            return await _remote_profile(user_id, domain)
        user = await s.users.get(user_id)
        if user is None and await s.appservices.ensure_user(user_id):
            user = await s.users.get(user_id)  # an application service created it
        if user is None or user.deactivated:
            raise MatrixError(404, Codes.NOT_FOUND, "Profile not found")
        return await s.profiles.get(user_id)

    async def _remote_profile(user_id: str, domain: str) -> dict[str, object]:
        if not is_valid_user_id(user_id):
            raise MatrixError(400, Codes.INVALID_PARAM, "Invalid user ID")
        try:
            profile = await s.federation_client.get_json(
                domain, "/_matrix/federation/v1/query/profile", {"user_id": user_id}
            )
        except HttpResponseError as e:
            if e.status == 404:
                raise MatrixError(404, Codes.NOT_FOUND, "Profile not found") from None
            raise MatrixError(502, Codes.UNKNOWN, f"{domain} answered {e.status}") from None
        except FederationClientError as e:
            raise MatrixError(502, Codes.UNKNOWN, f"Could not reach {domain}: {e}") from None
        if not isinstance(profile, dict):
            raise MatrixError(502, Codes.UNKNOWN, f"{domain} sent an invalid profile")
        return profile

    async def get_profile(request: HomeserverRequest, userId: str) -> JsonResponse:
        return 200, await _local_profile(userId)

    async def get_field(request: HomeserverRequest, userId: str, keyName: str) -> JsonResponse:
        check_key(keyName)
        profile = await _local_profile(userId)
        if keyName not in profile:
            raise MatrixError(404, Codes.NOT_FOUND, f"The user has no {keyName}")
        return 200, {keyName: profile[keyName]}

    async def put_field(request: HomeserverRequest, userId: str, keyName: str) -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        if requester.user_id != userId:
            raise MatrixError(403, Codes.FORBIDDEN, "You cannot change another user's profile")
        check_key(keyName)
        body = request.json_object()
        if keyName not in body:
            raise MatrixError(400, Codes.MISSING_PARAM, f"Missing parameter: {keyName}")
        await s.profiles.set_field(userId, keyName, body[keyName])
        return 200, {}

    async def delete_field(request: HomeserverRequest, userId: str, keyName: str) -> JsonResponse:
        requester = await s.auth.authenticate(request, allow_guest=True)
        if requester.user_id != userId:
            raise MatrixError(403, Codes.FORBIDDEN, "You cannot change another user's profile")
        await s.profiles.delete_field(userId, keyName)
        return 200, {}

    router.client("GET", "/profile/{userId}", get_profile)
    router.client("GET", "/profile/{userId}/{keyName}", get_field)
    router.client("PUT", "/profile/{userId}/{keyName}", put_field)
    router.client("DELETE", "/profile/{userId}/{keyName}", delete_field)
