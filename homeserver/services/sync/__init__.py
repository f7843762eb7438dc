"""/sync: tokens (``token``), filters (``filter``) and the service that computes a response
(``service``). See ``service`` for how a response is assembled and how long-polling waits."""

from homeserver.services.sync.filter import EventFilter, SyncFilter, parse_filter_json
from homeserver.services.sync.service import SyncRequest, SyncService
from homeserver.services.sync.token import InvalidToken, SyncToken

__all__ = [
    "EventFilter",
    "InvalidToken",
    "SyncFilter",
    "SyncRequest",
    "SyncService",
    "SyncToken",
    "parse_filter_json",
]
