"""Canonical JSON (appendices, "Canonical JSON") and the strict value checks of room v6+.

Encoding is delegated to ``canonicaljson`` (sorted keys, no whitespace, UTF-8, no NaN).
Room versions 1-5 must tolerate out-of-range integers (and, historically, floats), so the
strictness check is separate and callers apply it only where the room version says so.
"""

from __future__ import annotations

import json
from typing import Any

import canonicaljson

CANONICALJSON_MAX_INT = 2**53 - 1
CANONICALJSON_MIN_INT = -CANONICALJSON_MAX_INT


def encode_canonical_json(value: object) -> bytes:
    """The canonical UTF-8 bytes of ``value``.

    Raises ValueError for NaN/Infinity and UnicodeEncodeError for lone surrogates: neither
    has a canonical encoding, so nothing containing them can be hashed or signed.
    """
    return canonicaljson.encode_canonical_json(value)


def canonical_json_error(value: object) -> str | None:
    """Why ``value`` cannot be encoded as canonical JSON at all (any room version), or None."""
    try:
        encode_canonical_json(value)
    except (ValueError, TypeError) as e:  # UnicodeEncodeError is a ValueError
        return f"not encodable as canonical JSON: {e}"
    except RecursionError:
        return "JSON nested too deeply"
    return None


def strict_canonical_json_error(value: object) -> str | None:
    """Why ``value`` breaks the v6+ rules, or None when it complies.

    v6+ rejects integers outside [-(2**53)+1, (2**53)-1] and any float (including NaN and
    infinities), plus anything that is not a JSON value. Iterative so hostile nesting cannot
    exhaust the Python stack.
    """
    stack: list[tuple[str, object]] = [("$", value)]
    while stack:
        path, v = stack.pop()
        if v is None or isinstance(v, bool | str):
            # bool is checked before int because bool is a subclass of int.
            if isinstance(v, str) and _has_lone_surrogate(v):
                return f"{path}: string contains a lone surrogate"
            continue
        if isinstance(v, int):
            if not CANONICALJSON_MIN_INT <= v <= CANONICALJSON_MAX_INT:
                return f"{path}: integer {v} outside the canonical JSON range"
            continue
        if isinstance(v, float):
            return f"{path}: floats are not allowed in canonical JSON"
        if isinstance(v, dict):
            for k, child in v.items():
                if not isinstance(k, str):
                    return f"{path}: object key {k!r} is not a string"
                if _has_lone_surrogate(k):
                    return f"{path}: object key contains a lone surrogate"
                stack.append((f"{path}.{k}", child))
            continue
        if isinstance(v, list | tuple):
            stack.extend((f"{path}[{i}]", child) for i, child in enumerate(v))
            continue
        return f"{path}: {type(v).__name__} is not a JSON value"
    return None


def is_strict_canonical_json(value: object) -> bool:
    return strict_canonical_json_error(value) is None


def _has_lone_surrogate(s: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in s)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def decode_json(data: bytes | str) -> Any:
    """Parse JSON from the wire, rejecting the NaN/Infinity extensions Python accepts."""
    return json.loads(data, parse_constant=_reject_constant)
