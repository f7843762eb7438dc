"""The spec's error shape: every failure the client sees is ``{"errcode", "error"}``."""

from __future__ import annotations

from typing import Any


class Codes:
    UNRECOGNIZED = "M_UNRECOGNIZED"
    NOT_JSON = "M_NOT_JSON"
    BAD_JSON = "M_BAD_JSON"
    TOO_LARGE = "M_TOO_LARGE"
    FORBIDDEN = "M_FORBIDDEN"
    NOT_FOUND = "M_NOT_FOUND"
    UNKNOWN = "M_UNKNOWN"
    MISSING_TOKEN = "M_MISSING_TOKEN"
    UNKNOWN_TOKEN = "M_UNKNOWN_TOKEN"
    LIMIT_EXCEEDED = "M_LIMIT_EXCEEDED"
    MISSING_PARAM = "M_MISSING_PARAM"
    INVALID_PARAM = "M_INVALID_PARAM"
    USER_IN_USE = "M_USER_IN_USE"
    INVALID_USERNAME = "M_INVALID_USERNAME"
    EXCLUSIVE = "M_EXCLUSIVE"


class MatrixError(Exception):
    """An error with an HTTP status and a Matrix errcode, shown to the client as is."""

    def __init__(self, status: int, errcode: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.errcode = errcode
        self.message = message
        self.extra = extra
        self.headers: dict[str, str] = {}

    def to_json(self) -> dict[str, Any]:
        return {"errcode": self.errcode, "error": self.message, **self.extra}


class UiaRequired(MatrixError):
    """401 for user-interactive auth: the body is the flows, maybe with an errcode."""

    def __init__(self, body: dict[str, Any], errcode: str | None = None,
                 message: str | None = None, status: int = 401) -> None:
        super().__init__(status, errcode or "", message or "Authentication required")
        self.body = body
        self.has_error = errcode is not None

    def to_json(self) -> dict[str, Any]:
        if not self.has_error:
            return dict(self.body)
        return {"errcode": self.errcode, "error": self.message, **self.body}


def not_found(message: str = "Not found") -> MatrixError:
    return MatrixError(404, Codes.NOT_FOUND, message)


def bad_json(message: str) -> MatrixError:
    return MatrixError(400, Codes.BAD_JSON, message)


def missing_param(name: str) -> MatrixError:
    return MatrixError(400, Codes.MISSING_PARAM, f"Missing parameter: {name}")


def invalid_param(message: str) -> MatrixError:
    return MatrixError(400, Codes.INVALID_PARAM, message)


def forbidden(message: str) -> MatrixError:
    return MatrixError(403, Codes.FORBIDDEN, message)


def too_large(limit: int) -> MatrixError:
    return MatrixError(413, Codes.TOO_LARGE, f"Request body is larger than {limit} bytes")
