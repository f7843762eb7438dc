"""Turning what a client names a room by (a room ID or an alias, local or another server's)
into a room ID and the servers to reach it through. Joins, knocks and room summaries share it.

A local alias is looked up in the directory (and, for an alias in an application service's
namespace that is not there yet, asked of that service); another server's alias is asked of
that server (GET /_matrix/federation/v1/query/directory).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from federation.identifiers import get_domain, is_valid_room_alias
from federation.transport.client import FederationClientError, HttpResponseError
from homeserver.http.errors import Codes, MatrixError

if TYPE_CHECKING:
    from homeserver.services.registry import Services


async def resolve_local(s: Services, room_id_or_alias: str) -> str:
    """The room ID for a room ID or one of this server's aliases."""
    if room_id_or_alias.startswith("!"):
        return room_id_or_alias
    if not room_id_or_alias.startswith("#") or not is_valid_room_alias(room_id_or_alias):
        raise MatrixError(400, Codes.INVALID_PARAM, "Invalid room ID or alias")
    alias = await s.appservices.get_alias(room_id_or_alias)
    if alias is None:
        raise MatrixError(404, Codes.NOT_FOUND, f"Room alias {room_id_or_alias} not found")
    return alias.room_id


async def resolve_with_servers(s: Services, room_id_or_alias: str) -> tuple[str, list[str]]:
    """The room ID and the servers to reach it through (those the alias's server lists)."""
    if room_id_or_alias.startswith("#") and is_valid_room_alias(room_id_or_alias):
        domain = get_domain(room_id_or_alias)
        if domain != s.config.server_name:
            try:
                found = await s.federation_client.get_json(
                    domain, "/_matrix/federation/v1/query/directory",
                    {"room_alias": room_id_or_alias})
            except HttpResponseError as e:
                if e.status == 404:
                    raise MatrixError(404, Codes.NOT_FOUND,
                                      f"Room alias {room_id_or_alias} not found") from None
                raise MatrixError(502, Codes.UNKNOWN,
                                  f"Cannot resolve {room_id_or_alias}: {e}") from None
            except FederationClientError as e:
                raise MatrixError(502, Codes.UNKNOWN,
                                  f"Cannot resolve {room_id_or_alias}: {e}") from None
            room_id = found.get("room_id") if isinstance(found, dict) else None
            servers = found.get("servers") if isinstance(found, dict) else None
            if not isinstance(room_id, str) or not room_id.startswith("!"):
                raise MatrixError(502, Codes.UNKNOWN, "Invalid directory response")
            listed = [x for x in servers if isinstance(x, str)] if isinstance(
                servers, list) else []
            return room_id, [domain, *listed]
    return await resolve_local(s, room_id_or_alias), []
