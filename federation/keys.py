"""Server signing keys: generation, key IDs, and the signing key file format.

The file format is Synapse's, one key per line: ``ed25519 <version> <unpadded-base64 seed>``,
where the key ID is ``ed25519:<version>``. Keeping it means key files move between servers.
"""

from __future__ import annotations

import binascii
import re
import secrets
import string
from collections.abc import Iterable

from signedjson.key import (
    decode_signing_key_base64,
    decode_verify_key_bytes,
    encode_signing_key_base64,
    encode_verify_key_base64,
    get_verify_key,
)
from signedjson.key import (
    generate_signing_key as _generate,
)
from signedjson.types import SigningKey, VerifyKey
from unpaddedbase64 import decode_base64, encode_base64

ED25519 = "ed25519"
# Server-server "Publishing Keys": a key version is made of [a-zA-Z0-9_].
_KEY_VERSION_RE = re.compile(r"[a-zA-Z0-9_]+\Z")


class InvalidKey(ValueError):
    pass


def is_valid_key_version(version: str) -> bool:
    return bool(_KEY_VERSION_RE.match(version))


def make_key_id(version: str, algorithm: str = ED25519) -> str:
    return f"{algorithm}:{version}"


def parse_key_id(key_id: str) -> tuple[str, str]:
    """Split ``algorithm:version``, raising InvalidKey."""
    algorithm, sep, version = key_id.partition(":")
    if not sep or not algorithm or not version:
        raise InvalidKey(f"key ID {key_id!r} is not of the form algorithm:version")
    return algorithm, version


def key_id_of(key: SigningKey | VerifyKey) -> str:
    return make_key_id(key.version, key.alg)


def generate_signing_key(version: str | None = None) -> SigningKey:
    """A fresh ed25519 key; the default version is ``a_`` + 4 random letters, like Synapse."""
    if version is None:
        version = "a_" + "".join(secrets.choice(string.ascii_letters) for _ in range(4))
    if not is_valid_key_version(version):
        raise InvalidKey(f"key version {version!r} must match [a-zA-Z0-9_]+")
    key: SigningKey = _generate(version)
    return key


def signing_key_from_seed(seed: bytes, version: str) -> SigningKey:
    """A signing key from its 32-byte seed (e.g. the spec's test vector key)."""
    if len(seed) != 32:
        raise InvalidKey("an ed25519 seed is 32 bytes")
    key: SigningKey = decode_signing_key_base64(ED25519, version, encode_base64(seed))
    return key


def format_signing_key(key: SigningKey) -> str:
    """One line of the key file, with trailing newline."""
    return f"{key.alg} {key.version} {encode_signing_key_base64(key)}\n"


def format_signing_keys(keys: Iterable[SigningKey]) -> str:
    return "".join(format_signing_key(k) for k in keys)


def parse_signing_keys(text: str) -> list[SigningKey]:
    """Parse a key file; blank lines are skipped, anything else malformed raises InvalidKey."""
    keys: list[SigningKey] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 3:
            raise InvalidKey(f"line {lineno}: expected '<algorithm> <version> <seed>'")
        algorithm, version, seed_b64 = parts
        if algorithm != ED25519:
            raise InvalidKey(f"line {lineno}: unsupported algorithm {algorithm!r}")
        if not is_valid_key_version(version):
            raise InvalidKey(f"line {lineno}: invalid key version {version!r}")
        try:
            seed = decode_base64(seed_b64)
        except (binascii.Error, ValueError):
            raise InvalidKey(f"line {lineno}: seed is not valid base64") from None
        if len(seed) != 32:
            raise InvalidKey(f"line {lineno}: seed must decode to 32 bytes")
        keys.append(signing_key_from_seed(seed, version))
    return keys


def verify_key_of(signing_key: SigningKey) -> VerifyKey:
    key: VerifyKey = get_verify_key(signing_key)
    return key


def encode_verify_key(key: VerifyKey) -> str:
    """Unpadded standard base64 of the public key, as published in ``verify_keys``."""
    encoded: str = encode_verify_key_base64(key)
    return encoded


def decode_verify_key(key_id: str, key_base64: str) -> VerifyKey:
    """Parse a published verify key, raising InvalidKey for bad IDs, base64 or lengths."""
    algorithm, _ = parse_key_id(key_id)
    if algorithm != ED25519:
        raise InvalidKey(f"unsupported key algorithm {algorithm!r}")
    try:
        raw = decode_base64(key_base64)
    except (binascii.Error, ValueError):
        raise InvalidKey("verify key is not valid base64") from None
    if len(raw) != 32:
        raise InvalidKey("an ed25519 verify key is 32 bytes")
    key: VerifyKey = decode_verify_key_bytes(key_id, raw)
    return key
