"""Server key documents: ``/_matrix/key/v2/server`` and the notary ``/_matrix/key/v2/query``.

We build and sign our own key document, validate documents fetched from other servers
(directly or through a notary), and act as a notary by countersigning cached documents.
Pure: fetching, storing and choosing when to refetch are the caller's business.

Validity: ``valid_until_ts`` is ignored in room versions 1-4 and enforced from v5, where a
server "MUST use the lesser of this field and 7 days into the future". That room-version
choice is made by callers (``signing.verify_event_signatures``); here parsed keys carry the
capped validity and the raw value stays available.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from signedjson.types import SigningKey, VerifyKey

from federation.events import JsonDict
from federation.identifiers import is_valid_server_name
from federation.keys import (
    ED25519,
    InvalidKey,
    decode_verify_key,
    encode_verify_key,
    key_id_of,
    verify_key_of,
)
from federation.signing import (
    KeyLookup,
    ServerKey,
    SignatureError,
    sign_json,
    verify_json_signatures,
)

DAY_MS = 24 * 60 * 60 * 1000
# keys_server.yaml: use the lesser of valid_until_ts and "7 days into the future".
MAX_KEY_VALIDITY_MS = 7 * DAY_MS
# How long our own document says it is valid. Synapse's key_refresh_interval default; the
# spec asks for no less than an hour so that others do not refetch constantly.
DEFAULT_OWN_KEYS_VALIDITY_MS = DAY_MS
_INT64_MAX = 2**63 - 1


class KeyResponseError(ValueError):
    """A key document (or a notary response) is malformed, mis-signed or out of date."""


@dataclass(frozen=True)
class OldVerifyKey:
    """A key we no longer sign with; others still need it for the events it signed."""

    verify_key: VerifyKey
    expired_ts: int


@dataclass(frozen=True)
class ServerKeys:
    """A validated key document of ``server_name``.

    ``verify_keys`` carry ``min(valid_until_ts, fetched_at + 7 days)`` as their validity,
    ``old_verify_keys`` their ``expired_ts``. ``response`` is the document as received, with
    its signatures, for caching and re-serving as a notary.
    """

    server_name: str
    valid_until_ts: int
    verify_keys: Mapping[str, ServerKey]
    old_verify_keys: Mapping[str, ServerKey]
    response: JsonDict = field(repr=False)

    def get(self, key_id: str) -> ServerKey | None:
        return self.verify_keys.get(key_id) or self.old_verify_keys.get(key_id)

    def all_keys(self) -> dict[str, ServerKey]:
        # A key listed as both current and old is current.
        return {**self.old_verify_keys, **self.verify_keys}

    def lookup(self) -> KeyLookup:
        """A KeyLookup over these keys, for verify_json_signatures & co."""

        def lookup(server_name: str, key_id: str) -> ServerKey | None:
            return self.get(key_id) if server_name == self.server_name else None

        return lookup


def cap_valid_until_ts(valid_until_ts: int, now_ms: int) -> int:
    """The lesser of a published ``valid_until_ts`` and seven days after ``now_ms``."""
    return min(valid_until_ts, now_ms + MAX_KEY_VALIDITY_MS)


# -- our own document ---------------------------------------------------------------------------


def build_server_keys_response(
    server_name: str,
    signing_keys: Sequence[SigningKey],
    valid_until_ts: int,
    old_verify_keys: Mapping[str, OldVerifyKey] | None = None,
) -> JsonDict:
    """Our ``GET /_matrix/key/v2/server`` body, signed by every current key.

    Signing with each current key lets a receiver that knows any one of them check it.
    """
    if not signing_keys:
        raise ValueError("a server key document needs at least one signing key")
    verify_keys = {key_id_of(k): {"key": encode_verify_key(verify_key_of(k))} for k in signing_keys}
    old: JsonDict = {}
    for key_id, entry in (old_verify_keys or {}).items():
        if key_id in verify_keys:
            raise ValueError(f"{key_id} is both a current and an old key")
        old[key_id] = {"key": encode_verify_key(entry.verify_key), "expired_ts": entry.expired_ts}
    doc: JsonDict = {
        "server_name": server_name,
        "valid_until_ts": valid_until_ts,
        "verify_keys": verify_keys,
        "old_verify_keys": old,
    }
    for key in signing_keys:
        doc = sign_json(doc, key, server_name)
    return doc


# -- validating a fetched document -----------------------------------------------------------


def parse_server_keys_response(
    response: Any,
    *,
    now_ms: int,
    expected_server_name: str | None = None,
    minimum_valid_until_ts: int | None = None,
) -> ServerKeys:
    """Validate a key document (a ``/key/v2/server`` body or one ``/key/v2/query`` entry).

    Checks: the shape; ``server_name`` (equal to ``expected_server_name`` when given);
    every origin signature by a key listed in ``verify_keys`` verifies, and there is at
    least one (a server proves it holds the keys it lists; old keys cannot vouch for the
    document, as they only sign events). Keys of algorithms other than ed25519 are skipped.
    With ``minimum_valid_until_ts``, a document that expires earlier is rejected, e.g. pass
    the current time to refuse stale documents.
    """
    if not isinstance(response, dict):
        raise KeyResponseError("key response is not a JSON object")
    server_name = response.get("server_name")
    if not isinstance(server_name, str) or not is_valid_server_name(server_name):
        raise KeyResponseError(f"server_name {server_name!r} is not a server name")
    if expected_server_name is not None and server_name != expected_server_name:
        raise KeyResponseError(
            f"asked for the keys of {expected_server_name!r}, got those of {server_name!r}"
        )
    valid_until_ts = _timestamp(response.get("valid_until_ts"), "valid_until_ts")
    if minimum_valid_until_ts is not None and valid_until_ts < minimum_valid_until_ts:
        raise KeyResponseError(
            f"keys of {server_name} expired at {valid_until_ts} "
            f"(need validity until {minimum_valid_until_ts})"
        )

    capped = cap_valid_until_ts(valid_until_ts, now_ms)
    verify_keys: dict[str, ServerKey] = {}
    for key_id, key_data in _object(response.get("verify_keys"), "verify_keys").items():
        verify_key = _parse_key(key_id, key_data, "verify_keys")
        if verify_key is not None:
            verify_keys[key_id] = ServerKey(verify_key, capped)

    old_verify_keys: dict[str, ServerKey] = {}
    for key_id, key_data in _object(response.get("old_verify_keys", {}), "old_verify_keys").items():
        verify_key = _parse_key(key_id, key_data, "old_verify_keys")
        if verify_key is not None:
            expired_ts = _timestamp(
                key_data.get("expired_ts"), f"old_verify_keys.{key_id}.expired_ts"
            )
            old_verify_keys[key_id] = ServerKey(verify_key, cap_valid_until_ts(expired_ts, now_ms))

    def listed(name: str, key_id: str) -> VerifyKey | None:
        found = verify_keys.get(key_id) if name == server_name else None
        return found.verify_key if found else None

    try:
        # No valid_at_ts: the document's own validity was checked above.
        verify_json_signatures(response, server_name, listed)
    except SignatureError as e:
        raise KeyResponseError(
            f"key response of {server_name} is not self-signed: {e.reason}"
        ) from None
    return ServerKeys(server_name, valid_until_ts, verify_keys, old_verify_keys, response)


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise KeyResponseError(f"{what} is not an object")
    return value


def _timestamp(value: Any, what: str) -> int:
    # bool is an int in Python but not in JSON.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _INT64_MAX:
        raise KeyResponseError(f"{what} is not a timestamp: {value!r}")
    return value


def _parse_key(key_id: Any, key_data: Any, where: str) -> VerifyKey | None:
    """A listed key, or None for an algorithm we do not support."""
    if not isinstance(key_id, str) or ":" not in key_id:
        raise KeyResponseError(f"{where}: bad key ID {key_id!r}")
    if key_id.partition(":")[0] != ED25519:
        return None
    if not isinstance(key_data, dict) or not isinstance(key_data.get("key"), str):
        raise KeyResponseError(f"{where}.{key_id} has no 'key' string")
    try:
        return decode_verify_key(key_id, key_data["key"])
    except InvalidKey as e:
        raise KeyResponseError(f"{where}.{key_id}: {e}") from None


# -- notary: the client side -------------------------------------------------------------------


@dataclass
class NotaryResult:
    """What a notary response yielded: the valid documents, and why others were dropped."""

    keys: list[ServerKeys] = field(default_factory=list)
    rejected: list[tuple[str | None, str]] = field(default_factory=list)  # (server, reason)

    def for_server(self, server_name: str) -> dict[str, ServerKey]:
        """All keys of a server across its documents; for a key seen twice, the longer validity
        wins (one document may list it as current, an older one as old), as in Synapse."""
        merged: dict[str, ServerKey] = {}
        for doc in self.keys:
            if doc.server_name != server_name:
                continue
            for key_id, key in doc.all_keys().items():
                have = merged.get(key_id)
                if have is None or _validity(key) > _validity(have):
                    merged[key_id] = key
        return merged


def _validity(key: ServerKey) -> int:
    return _INT64_MAX if key.valid_until_ts is None else key.valid_until_ts


def parse_notary_response(
    response: Any,
    *,
    notary_name: str,
    notary_keys: KeyLookup | None,
    now_ms: int,
    requested: Collection[str] | None = None,
    minimum_valid_until_ts: int | None = None,
) -> NotaryResult:
    """Validate a ``/_matrix/key/v2/query`` response from ``notary_name``.

    Each entry must be a valid, self-signed key document (parse_server_keys_response) and,
    unless ``notary_keys`` is None (trust without checking, an explicit choice), carry a
    valid signature of the notary by a key known to ``notary_keys`` and valid now. With
    ``requested``, entries for other servers are dropped. A bad entry is dropped and
    reported, not fatal, as in Synapse: the other servers' keys are still good. A response
    that is not ``{"server_keys": [...]}`` raises KeyResponseError.
    """
    if not isinstance(response, dict) or not isinstance(response.get("server_keys"), list):
        raise KeyResponseError(f"response of notary {notary_name} has no server_keys list")
    result = NotaryResult()
    for entry in response["server_keys"]:
        server_name = entry.get("server_name") if isinstance(entry, dict) else None
        label = server_name if isinstance(server_name, str) else None
        try:
            if not isinstance(entry, dict):
                raise KeyResponseError("entry is not a JSON object")
            if requested is not None and server_name not in requested:
                raise KeyResponseError(f"keys of {server_name!r} were not asked for")
            if notary_keys is not None:
                try:
                    verify_json_signatures(entry, notary_name, notary_keys, valid_at_ts=now_ms)
                except SignatureError as e:
                    raise KeyResponseError(f"not countersigned by the notary: {e.reason}") from None
            doc = parse_server_keys_response(
                entry, now_ms=now_ms, minimum_valid_until_ts=minimum_valid_until_ts
            )
        except KeyResponseError as e:
            result.rejected.append((label, str(e)))
            continue
        result.keys.append(doc)
    return result


# -- notary: the server side -------------------------------------------------------------------


def parse_key_query_request(body: Any) -> dict[str, dict[str, int | None]]:
    """The criteria of a ``POST /_matrix/key/v2/query`` body: server -> key ID -> minimum
    ``valid_until_ts`` (None: the notary uses the current time). An empty key map means
    "all keys of that server"."""
    if not isinstance(body, dict) or not isinstance(body.get("server_keys"), dict):
        raise ValueError("server_keys must be an object")
    out: dict[str, dict[str, int | None]] = {}
    for server_name, key_ids in body["server_keys"].items():
        if not is_valid_server_name(server_name):
            raise ValueError(f"{server_name!r} is not a server name")
        if not isinstance(key_ids, dict):
            raise ValueError(f"server_keys.{server_name} must be an object")
        criteria: dict[str, int | None] = {}
        for key_id, criterion in key_ids.items():
            if not isinstance(criterion, dict):
                raise ValueError(f"server_keys.{server_name}.{key_id} must be an object")
            minimum = criterion.get("minimum_valid_until_ts")
            if minimum is not None and (isinstance(minimum, bool) or not isinstance(minimum, int)):
                raise ValueError("minimum_valid_until_ts must be an integer")
            criteria[key_id] = minimum
        out[server_name] = criteria
    return out


def cached_response_is_fresh(
    valid_until_ts: int,
    fetched_at_ms: int,
    now_ms: int,
    minimum_valid_until_ts: int | None = None,
) -> bool:
    """Whether a notary may serve a cached document instead of refetching it.

    With a requested minimum, the document must be valid until then. Without one, the
    spec has the notary use the current time, and keys_server.yaml asks notaries to cache
    a response for half of its lifetime; both hold when now is before the half-life point.
    (Even a stale document is served when the origin cannot be reached: that decision is
    the caller's.)
    """
    if minimum_valid_until_ts is not None:
        return valid_until_ts >= minimum_valid_until_ts
    return now_ms <= fetched_at_ms + (valid_until_ts - fetched_at_ms) // 2


def notary_sign(
    response: JsonDict, signing_keys: Iterable[SigningKey], notary_name: str
) -> JsonDict:
    """A copy of an origin's key document with our notary signature(s) added."""
    signed = copy.deepcopy(response)
    for key in signing_keys:
        signed = sign_json(signed, key, notary_name)
    return signed


def build_notary_response(
    responses: Iterable[JsonDict], signing_keys: Sequence[SigningKey], notary_name: str
) -> JsonDict:
    """A ``/_matrix/key/v2/query`` body: each cached document countersigned by us."""
    if not signing_keys:
        raise ValueError("a notary response needs at least one signing key")
    return {"server_keys": [notary_sign(r, signing_keys, notary_name) for r in responses]}
