"""Typed access to request JSON: wrong types are 400 M_BAD_JSON, absent required keys
400 M_MISSING_PARAM, so handlers never index a body blindly."""

from __future__ import annotations

from typing import Any

from homeserver.http.errors import Codes, MatrixError


def _bad(key: str, expected: str) -> MatrixError:
    return MatrixError(400, Codes.BAD_JSON, f"'{key}' must be {expected}")


def require_str(body: dict[str, Any], key: str, *, max_len: int = 65536) -> str:
    if key not in body or body[key] is None:
        raise MatrixError(400, Codes.MISSING_PARAM, f"Missing parameter: {key}")
    return _string(body[key], key, max_len)


def optional_str(body: dict[str, Any], key: str, *, max_len: int = 65536) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    return _string(value, key, max_len)


def _string(value: Any, key: str, max_len: int) -> str:
    if not isinstance(value, str):
        raise _bad(key, "a string")
    if len(value) > max_len:
        raise _bad(key, f"at most {max_len} characters")
    return value


def optional_bool(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _bad(key, "true or false")
    return value


def optional_int(
    body: dict[str, Any], key: str, default: int | None, *, min: int = 0, max: int = 2**53 - 1
) -> int | None:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not min <= value <= max:
        raise _bad(key, f"an integer from {min} to {max}")
    return value


def optional_object(body: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _bad(key, "an object")
    return value


def optional_str_list(body: dict[str, Any], key: str, *, max_items: int = 1000) -> list[str] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > max_items:
        raise _bad(key, f"a list of at most {max_items} strings")
    if not all(isinstance(v, str) for v in value):
        raise _bad(key, "a list of strings")
    return value


def query_int(raw: str | None, name: str, default: int, *, min: int = 0, max: int = 10_000) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise MatrixError(400, Codes.INVALID_PARAM, f"{name} must be an integer") from None
    if not min <= value <= max:
        raise MatrixError(400, Codes.INVALID_PARAM, f"{name} must be from {min} to {max}")
    return value
