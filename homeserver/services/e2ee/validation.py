"""Checks shared by the E2EE services: key ID grammar, public keys, signatures.

Everything a client uploads is checked before anything is stored: a malformed key, a key
for someone else's device or a signature by the wrong key is a 400 and leaves no trace.
"""

from __future__ import annotations

import binascii
import re
from typing import Any

from unpaddedbase64 import decode_base64

from federation.keys import InvalidKey, decode_verify_key
from federation.signing import SignatureError, verify_signature_with_key
from homeserver.http.errors import Codes, MatrixError

JsonDict = dict[str, Any]

INVALID_SIGNATURE = "M_INVALID_SIGNATURE"

# Key algorithm and messaging algorithm names: "ed25519", "signed_curve25519",
# "m.megolm.v1.aes-sha2", "org.example.alg".
_ALGORITHM = re.compile(r"^[A-Za-z0-9_.\-]{1,100}$")
# The part of a key ID after the colon: a device ID, a base64 key, "AAAAHg".
_KEY_NAME = re.compile(r"^[\x21-\x7e]{1,255}$")
_CURVE_ALGORITHMS = ("curve25519", "signed_curve25519")


def bad_json(message: str) -> MatrixError:
    return MatrixError(400, Codes.BAD_JSON, message)


def invalid(message: str) -> MatrixError:
    return MatrixError(400, Codes.INVALID_PARAM, message)


def is_algorithm(value: Any) -> bool:
    return isinstance(value, str) and bool(_ALGORITHM.match(value))


def split_key_id(key_id: Any, what: str) -> tuple[str, str]:
    """``<algorithm>:<name>`` -> (algorithm, name); 400 M_BAD_JSON when malformed."""
    if not isinstance(key_id, str):
        raise bad_json(f"{what}: key IDs must be strings")
    parts = key_id.split(":")
    if len(parts) != 2 or not _ALGORITHM.match(parts[0]) or not _KEY_NAME.match(parts[1]):
        raise bad_json(f"{what}: invalid key ID {key_id[:300]!r}, expected <algorithm>:<key_id>")
    return parts[0], parts[1]


def check_public_key(value: Any, what: str) -> str:
    """An unpadded base64 32-byte public key (ed25519 or curve25519)."""
    if not isinstance(value, str):
        raise bad_json(f"{what} must be a string")
    try:
        raw = decode_base64(value)
    except (binascii.Error, ValueError):
        raise invalid(f"{what} is not valid unpadded base64") from None
    if len(raw) != 32:
        raise invalid(f"{what} must be a 32-byte key")
    return value


def check_key_value(algorithm: str, value: Any, what: str) -> None:
    if algorithm in _CURVE_ALGORITHMS:
        check_public_key(value, what)
    elif not isinstance(value, str) or len(value) > 4096:
        raise bad_json(f"{what} must be a string of at most 4096 characters")


def check_signatures_shape(obj: JsonDict, what: str) -> JsonDict:
    sigs = obj.get("signatures")
    if sigs is None:
        return {}
    if not isinstance(sigs, dict) or not all(
        isinstance(v, dict) and all(isinstance(s, str) for s in v.values())
        for v in sigs.values()
    ):
        raise bad_json(f"{what}: 'signatures' must map user IDs to key IDs to strings")
    return sigs


def signature_ok(obj: JsonDict, signer: str, key_id: str, public_key: str) -> bool:
    """Whether ``obj`` carries a valid signature of ``signer`` by ``key_id`` (ed25519)."""
    try:
        verify_key = decode_verify_key(key_id, public_key)
        verify_signature_with_key(obj, signer, key_id, verify_key)
    except (SignatureError, InvalidKey, ValueError):
        return False
    return True


def strip(obj: JsonDict) -> JsonDict:
    """The part of a signed object its signatures cover."""
    return {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
