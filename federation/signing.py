"""Signing JSON and events, and checking signatures (appendices "Signing JSON", server-server
"Signing Events").

Event signatures cover the *redacted* event (which still includes the content hash), so
they stay checkable when a server only has the redacted copy.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from nacl.exceptions import BadSignatureError
from signedjson.types import SigningKey, VerifyKey
from unpaddedbase64 import decode_base64, encode_base64

from federation.canonical_json import encode_canonical_json
from federation.events import Event, JsonDict
from federation.identifiers import InvalidIdentifier, get_domain
from federation.redaction import redact
from federation.room_versions import EventFormat, RoomVersion

# Only ed25519 exists; signatures under other algorithms are ignored, not failed.
_SUPPORTED_ALGORITHM_PREFIX = "ed25519:"


class SignatureError(Exception):
    """A signature check failed; ``reason`` is human-readable."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ServerKey:
    """A verify key as known to the key store, with its validity.

    ``valid_until_ts`` is ``valid_until_ts`` for current keys or ``expired_ts`` for old ones
    (the caller caps it at now + 7 days, per the v5 signing requirements); None means "no
    known expiry" (e.g. our own key).
    """

    verify_key: VerifyKey
    valid_until_ts: int | None = None


# (server_name, key_id) -> key or None when unknown.
KeyLookup = Callable[[str, str], "VerifyKey | ServerKey | None"]


def _signable(obj: Mapping[str, Any]) -> JsonDict:
    return {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}


def sign_json(obj: JsonDict, signing_key: SigningKey, server_name: str) -> JsonDict:
    """A copy of ``obj`` with this server's signature added (existing signatures kept)."""
    signed = signing_key.sign(encode_canonical_json(_signable(obj)))
    out = dict(obj)
    signatures = {s: dict(v) for s, v in (obj.get("signatures") or {}).items()}
    key_id = f"{signing_key.alg}:{signing_key.version}"
    signatures.setdefault(server_name, {})[key_id] = encode_base64(signed.signature)
    out["signatures"] = signatures
    return out


def sign_event(
    pdu: JsonDict, room_version: RoomVersion, signing_key: SigningKey, server_name: str
) -> JsonDict:
    """A copy of ``pdu`` signed by ``server_name``; the signature covers the redacted form.

    ``pdu`` must already carry its content hash (see hashes.add_hashes).
    """
    signed_redacted = sign_json(redact(pdu, room_version), signing_key, server_name)
    out = dict(pdu)
    out["signatures"] = signed_redacted["signatures"]
    return out


def verify_signature_with_key(
    obj: Mapping[str, Any], server_name: str, key_id: str, verify_key: VerifyKey
) -> None:
    """Check one named signature with a known key; raise SignatureError if it is bad."""
    sig_b64 = _server_signatures(obj, server_name).get(key_id)
    if sig_b64 is None:
        raise SignatureError(f"no signature from {server_name} with key {key_id}")
    _verify_one(obj, server_name, key_id, sig_b64, verify_key)


def verify_json_signatures(
    obj: Mapping[str, Any],
    server_name: str,
    key_lookup: KeyLookup,
    *,
    valid_at_ts: int | None = None,
) -> None:
    """The appendix "Checking for a Signature", for one signing server.

    Signatures under unsupported algorithms and from unknown keys are skipped, as are keys
    known to have expired before ``valid_at_ts`` (when given). Every remaining signature
    must verify, and at least one must remain; otherwise SignatureError.
    """
    checked = 0
    for key_id, sig_b64 in sorted(_server_signatures(obj, server_name).items()):
        if not key_id.startswith(_SUPPORTED_ALGORITHM_PREFIX):
            continue
        found = key_lookup(server_name, key_id)
        if found is None:
            continue
        if isinstance(found, ServerKey):
            verify_key, valid_until = found.verify_key, found.valid_until_ts
        else:
            verify_key, valid_until = found, None
        if valid_at_ts is not None and valid_until is not None and valid_until < valid_at_ts:
            continue
        _verify_one(obj, server_name, key_id, sig_b64, verify_key)
        checked += 1
    if checked == 0:
        raise SignatureError(f"no signature from {server_name} with a known, unexpired key")


def _server_signatures(obj: Mapping[str, Any], server_name: str) -> Mapping[str, Any]:
    signatures = obj.get("signatures")
    if not isinstance(signatures, dict):
        raise SignatureError("'signatures' is missing or not an object")
    server_sigs = signatures.get(server_name)
    if server_sigs is None:
        raise SignatureError(f"not signed by {server_name}")
    if not isinstance(server_sigs, dict):
        raise SignatureError(f"signatures of {server_name} are not an object")
    return server_sigs


def _verify_one(
    obj: Mapping[str, Any], server_name: str, key_id: str, sig_b64: Any, verify_key: VerifyKey
) -> None:
    if not isinstance(sig_b64, str):
        raise SignatureError(f"signature {server_name}/{key_id} is not a string")
    try:
        signature = decode_base64(sig_b64)
    except (binascii.Error, ValueError):
        raise SignatureError(f"signature {server_name}/{key_id} is not valid base64") from None
    try:
        verify_key.verify(encode_canonical_json(_signable(obj)), signature)
    except (BadSignatureError, ValueError):
        # nacl raises ValueError for a signature of the wrong length.
        raise SignatureError(f"bad signature from {server_name} with key {key_id}") from None


# -- events ------------------------------------------------------------------------------------


def required_signers(event: Event) -> set[str]:
    """The servers whose signatures an event needs ("Validating hashes and signatures").

    - the sender's server, except for an invite made from a 3PID invite (the sender must
      match the 3PID invite's sender but another server may send it; as in Synapse, no
      signature is required here and the auth rules check the 3PID signature instead);
    - v1/v2: also the server in the event ID, when it differs;
    - v8+ restricted joins: also the server of ``join_authorised_via_users_server``
      (auth rule "validly signed by the homeserver of the user ID denoted by the key").
    Raises SignatureError if an ID needed here has no domain.
    """
    rv = event.room_version
    content = event.content if isinstance(event.content, dict) else {}
    servers: set[str] = set()
    try:
        is_3pid_invite = (
            event.type == "m.room.member"
            and content.get("membership") == "invite"
            and "third_party_invite" in content
        )
        if not is_3pid_invite:
            servers.add(get_domain(event.sender))
        if rv.event_format is EventFormat.V1:
            servers.add(get_domain(event.event_id))
        authoriser = content.get("join_authorised_via_users_server")
        if (
            rv.restricted_join_rule
            and event.type == "m.room.member"
            and content.get("membership") == "join"
            and authoriser is not None
        ):
            if not isinstance(authoriser, str):
                raise SignatureError("join_authorised_via_users_server is not a string")
            servers.add(get_domain(authoriser))
    except InvalidIdentifier as e:
        raise SignatureError(str(e)) from None
    return servers


def verify_event_signatures(event: Event, key_lookup: KeyLookup) -> None:
    """Check the signatures of every required server on ``event``; raise SignatureError.

    Works the same whether we hold the full event or a redacted copy, since the signed
    bytes are those of the redacted form. From v5, keys expired before the event's
    ``origin_server_ts`` do not count.
    """
    rv = event.room_version
    redacted = redact(event.pdu_json(), rv)
    valid_at = event.origin_server_ts if rv.enforce_key_validity else None
    for server in sorted(required_signers(event)):
        try:
            verify_json_signatures(redacted, server, key_lookup, valid_at_ts=valid_at)
        except SignatureError as e:
            raise SignatureError(f"event {_event_label(event)}: {e.reason}") from None


def _event_label(event: Event) -> str:
    try:
        return event.event_id
    except Exception:  # an unhashable malformed event still deserves a readable reason
        return "<unidentifiable>"
