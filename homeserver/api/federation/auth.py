"""Authenticating requests from other servers (X-Matrix), before any handler logic runs."""

from __future__ import annotations

from typing import Any

from federation.x_matrix import XMatrixError, parse_request_authorization, verify_request
from homeserver.http.errors import MatrixError
from homeserver.http.request import HomeserverRequest
from homeserver.services.federation_policy import check_inbound
from homeserver.services.keyring import Keyring


async def authenticate_origin(
    keyring: Keyring, request: HomeserverRequest, content: Any = None
) -> str:
    """The server name a request comes from, after checking its signature (401 if not).

    ``content`` is the parsed JSON body for requests that have one.
    """
    headers = request.requestHeaders.getRawHeaders(b"Authorization") or []
    try:
        authorization = parse_request_authorization(headers, keyring.server_name)
    except XMatrixError as e:
        raise MatrixError(e.status, e.errcode, e.message) from None
    # Refused servers are refused before their keys are fetched.
    check_inbound(keyring.config, authorization.origin)
    now = keyring.clock.time_ms()
    lookup = await keyring.lookup_for({authorization.origin: authorization.key_ids}, now)
    try:
        origin = verify_request(
            authorization,
            method=request.method.decode("ascii"),
            uri=request.uri.decode("ascii", "replace"),
            content=content,
            our_server_name=keyring.server_name,
            key_lookup=lookup,
            now_ms=now,
        )
    except XMatrixError as e:
        raise MatrixError(e.status, e.errcode, e.message) from None
    check_inbound(keyring.config, origin)
    return origin
