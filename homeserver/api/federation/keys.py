"""The key server: our signing keys (/_matrix/key/v2/server) and the notary
(/_matrix/key/v2/query), which vouches for other servers' keys it has fetched."""

from __future__ import annotations

from federation.identifiers import is_valid_server_name
from federation.server_keys import parse_key_query_request
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.http.router import JsonResponse, Router
from homeserver.services.registry import Services


def register(router: Router, s: Services) -> None:
    keyring = s.keyring

    async def server_keys(request: HomeserverRequest, keyId: str = "") -> JsonResponse:
        # The key ID path segment is deprecated; the whole document is served either way.
        return 200, keyring.own_document()

    async def query_one(request: HomeserverRequest, serverName: str) -> JsonResponse:
        if not is_valid_server_name(serverName):
            raise MatrixError(400, Codes.INVALID_PARAM, "Invalid server name")
        minimum = request.query_param("minimum_valid_until_ts")
        criterion = int(minimum) if minimum and minimum.isdigit() else None
        return 200, await keyring.notary_query({serverName: {}}, minimum=criterion)

    async def query_many(request: HomeserverRequest) -> JsonResponse:
        try:
            criteria = parse_key_query_request(request.json_object())
        except ValueError as e:
            raise MatrixError(400, Codes.BAD_JSON, str(e)) from None
        if len(criteria) > 100:
            raise MatrixError(400, Codes.BAD_JSON, "At most 100 servers per query")
        return 200, await keyring.notary_query(criteria)

    router.add("GET", "/_matrix/key/v2/server", server_keys, resource="keys")
    router.add("GET", "/_matrix/key/v2/server/{keyId}", server_keys, resource="keys")
    router.add("GET", "/_matrix/key/v2/query/{serverName}", query_one, resource="keys")
    router.add("POST", "/_matrix/key/v2/query", query_many, resource="keys")
