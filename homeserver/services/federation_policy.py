"""Which servers this one federates with: ``federation.allowed_servers`` (None: all) and
``federation.blocked_servers``, server names or glob patterns (``*.example.com``). Enforced
both ways: requests from a refused server are answered 403, and nothing is sent to one."""

from __future__ import annotations

from fnmatch import fnmatchcase

from federation.transport.client import FederationClientError
from homeserver.config import Config
from homeserver.http.errors import Codes, MatrixError


class DestinationBlocked(FederationClientError):
    """Federation with this server is refused by policy."""


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    lowered = name.lower()
    return any(fnmatchcase(lowered, p.lower()) for p in patterns)


def server_allowed(config: Config, server_name: str) -> bool:
    fed = config.federation
    if server_name == config.server_name:
        return True
    if _matches(server_name, fed.blocked_servers):
        return False
    return fed.allowed_servers is None or _matches(server_name, fed.allowed_servers)


def check_inbound(config: Config, server_name: str) -> None:
    if not server_allowed(config, server_name):
        raise MatrixError(403, Codes.FORBIDDEN,
                          f"Federation with {server_name} is not allowed by this server's "
                          "policy (federation.allowed_servers / federation.blocked_servers)")


def outbound_gate(config: Config):  # type: ignore[no-untyped-def]
    async def gate(destination: str) -> None:
        if not server_allowed(config, destination):
            raise DestinationBlocked(destination, "federation with this server is not allowed")

    return gate
