"""Content hashes, reference hashes and hash-derived event IDs (server-server "Signing Events").

The content hash covers the full, unredacted event, so a receiver can tell when it was sent
a redacted copy. The reference hash covers the redacted event and is the v3+ event ID.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac

from unpaddedbase64 import decode_base64, encode_base64

from federation.canonical_json import encode_canonical_json
from federation.events import JsonDict
from federation.redaction import redact
from federation.room_versions import EventFormat, RoomVersion

# Keys the content hash must not cover: they change after hashing (unsigned in transit,
# signatures over the hashes, and the hashes themselves).
_CONTENT_HASH_EXCLUDED = ("unsigned", "signatures", "hashes")


def compute_content_hash(pdu: JsonDict) -> bytes:
    """SHA-256 of the canonical JSON of the event without unsigned/signatures/hashes."""
    stripped = {k: v for k, v in pdu.items() if k not in _CONTENT_HASH_EXCLUDED}
    return hashlib.sha256(encode_canonical_json(stripped)).digest()


def content_hash_error(pdu: JsonDict) -> str | None:
    """Why the event's ``hashes.sha256`` does not match its content, or None when it does."""
    hashes = pdu.get("hashes")
    if not isinstance(hashes, dict):
        return "event has no 'hashes' object"
    claimed = hashes.get("sha256")
    if not isinstance(claimed, str):
        return "event has no sha256 content hash"
    try:
        claimed_bytes = decode_base64(claimed)
    except (binascii.Error, ValueError):
        return "sha256 content hash is not valid base64"
    if not hmac.compare_digest(claimed_bytes, compute_content_hash(pdu)):
        return "sha256 content hash does not match the event"
    return None


def check_content_hash(pdu: JsonDict) -> bool:
    return content_hash_error(pdu) is None


def add_hashes(pdu: JsonDict) -> JsonDict:
    """A copy of ``pdu`` with ``hashes.sha256`` set to its content hash."""
    out = dict(pdu)
    hashes = dict(out.get("hashes") or {})
    hashes["sha256"] = encode_base64(compute_content_hash(pdu))
    out["hashes"] = hashes
    return out


def compute_reference_hash(pdu: JsonDict, room_version: RoomVersion) -> bytes:
    """SHA-256 of the canonical JSON of the redacted event minus signatures and unsigned."""
    redacted = redact(pdu, room_version)
    redacted.pop("signatures", None)
    redacted.pop("unsigned", None)
    return hashlib.sha256(encode_canonical_json(redacted)).digest()


def compute_event_id(pdu: JsonDict, room_version: RoomVersion) -> str:
    """The v3+ event ID: ``$`` + the reference hash in unpadded base64.

    v3 uses the standard alphabet; v4+ the URL-safe one (so IDs can sit in URLs). v1/v2
    event IDs are assigned by the origin server and cannot be computed.
    """
    fmt = room_version.event_format
    if fmt is EventFormat.V1:
        raise ValueError(f"room version {room_version.identifier} has server-assigned event IDs")
    digest = compute_reference_hash(pdu, room_version)
    return "$" + encode_base64(digest, urlsafe=fmt is not EventFormat.V2)
