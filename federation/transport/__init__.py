"""Outbound federation transport: the signed JSON HTTP client and its connection policies."""

from federation.transport.client import (
    BlockedAddress,
    FederationClient,
    FederationClientError,
    HttpResponseError,
    HttpWellKnownFetcher,
    InvalidResponse,
    NotRetryingDestination,
    RequestFailed,
    RequestTimedOut,
    ResponseTooLarge,
    TransportOptions,
)
from federation.transport.net import AddressPolicy, TLSPolicy

__all__ = [
    "AddressPolicy",
    "BlockedAddress",
    "FederationClient",
    "FederationClientError",
    "HttpResponseError",
    "HttpWellKnownFetcher",
    "InvalidResponse",
    "NotRetryingDestination",
    "RequestFailed",
    "RequestTimedOut",
    "ResponseTooLarge",
    "TLSPolicy",
    "TransportOptions",
]
