"""Operator view of federation: each destination's queue and backoff state, resetting a
backoff, and the server's federation policy."""

from __future__ import annotations

from typing import Any

from homeserver.config import Config
from homeserver.http.errors import Codes, MatrixError
from homeserver.services.federation_policy import server_allowed
from homeserver.services.federation_sender import FederationSender
from homeserver.storage.admin import AdminStore, Destination


def destination_json(d: Destination) -> dict[str, Any]:
    """Synapse's fields, plus the queue depth and when the destination last accepted a
    transaction (``last_successful_ts``)."""
    return {
        "destination": d.destination,
        "retry_last_ts": d.retry_last_ts,
        "retry_interval": d.retry_interval_ms,
        "failure_ts": d.failure_ts,
        "last_successful_stream_ordering": None,
        "last_successful_ts": d.last_successful_ts,
        "queued_pdus": d.queued_pdus,
        "queued_edus": d.queued_edus,
    }


class FederationAdmin:
    def __init__(self, config: Config, store: AdminStore, sender: FederationSender) -> None:
        self.config = config
        self.store = store
        self.sender = sender

    async def destinations(self) -> list[Destination]:
        return await self.store.destinations()

    async def destination(self, name: str) -> Destination:
        for d in await self.store.destinations():
            if d.destination == name:
                return d
        raise MatrixError(404, Codes.NOT_FOUND, "Unknown destination")

    async def reset_connection(self, name: str) -> None:
        await self.destination(name)
        await self.sender.reset_backoff(name)

    def policy(self, server: str | None) -> dict[str, Any]:
        fed = self.config.federation
        allowed = list(fed.allowed_servers) if fed.allowed_servers is not None else None
        body: dict[str, Any] = {
            "mode": "allow_list" if allowed is not None else
                    ("deny_list" if fed.blocked_servers else "open"),
            "allowed_servers": allowed,
            "blocked_servers": list(fed.blocked_servers),
        }
        if server is not None:
            body["server"] = server
            body["allowed"] = server_allowed(self.config, server)
        return body
