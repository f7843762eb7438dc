"""Request authentication with the ``X-Matrix`` scheme (server-server "Request Authentication").

The sender signs ``{method, uri, origin, destination, content}`` with the JSON signing
algorithm and puts the signature in ``Authorization: X-Matrix origin=…,destination=…,key=…,
sig=…``. The receiver rebuilds that JSON from the request it got (with its *own* name as the
destination) and checks the signature against the origin's keys.

Pure functions: key fetching is the caller's job. Verification is split so the caller can
fetch the keys a header names (``RequestAuthorization.key_ids``) before checking.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from signedjson.types import SigningKey

from federation.events import JsonDict
from federation.identifiers import is_valid_server_name
from federation.signing import KeyLookup, SignatureError, sign_json, verify_json_signatures

SCHEME = "X-Matrix"

# RFC 9110 5.6.2: tchar.
_TCHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_WS = " \t"


class XMatrixError(Exception):
    """The request is not authenticated; ``status`` and ``errcode`` are the reply to send.

    Malformed headers are 400 (as Synapse answers), everything else 401. The errcode is
    ``M_UNAUTHORIZED`` throughout, as in Synapse.
    """

    def __init__(self, status: int, message: str, errcode: str = "M_UNAUTHORIZED"):
        super().__init__(message)
        self.status = status
        self.errcode = errcode
        self.message = message


class MalformedAuthorization(XMatrixError):
    def __init__(self, message: str):
        super().__init__(400, f"Malformed X-Matrix Authorization header: {message}")


class NotXMatrix(MalformedAuthorization):
    """The header uses another scheme (e.g. ``Bearer``); callers skip such headers."""


@dataclass(frozen=True)
class XMatrixAuth:
    """One parsed ``X-Matrix`` header."""

    origin: str
    key_id: str
    signature: str
    destination: str | None = None  # optional for senders older than v1.3


@dataclass(frozen=True)
class RequestAuthorization:
    """All ``X-Matrix`` headers of a request, merged: one origin, one or more signatures."""

    origin: str
    destination: str | None
    signatures: Mapping[str, str] = field(default_factory=dict)  # key ID -> signature

    @property
    def key_ids(self) -> list[str]:
        return sorted(self.signatures)


# -- signing (sender side) ------------------------------------------------------------------


def request_json(
    method: str, uri: str, origin: str, destination: str, content: Any = None
) -> JsonDict:
    """The object that is signed for a request.

    ``uri`` is the request target exactly as sent: path from ``/_matrix/...`` plus ``?`` and
    the query string if any, without scheme or host. ``content`` is omitted when None (e.g.
    GET); the server names are the ones before any delegation.
    """
    obj: JsonDict = {"method": method, "uri": uri, "origin": origin, "destination": destination}
    if content is not None:
        obj["content"] = content
    return obj


def sign_request(
    signing_key: SigningKey,
    origin: str,
    destination: str,
    method: str,
    uri: str,
    content: Any = None,
) -> XMatrixAuth:
    signed = sign_json(request_json(method, uri, origin, destination, content), signing_key, origin)
    key_id = f"{signing_key.alg}:{signing_key.version}"
    return XMatrixAuth(origin, key_id, signed["signatures"][origin][key_id], destination)


def authorization_header(
    signing_key: SigningKey,
    origin: str,
    destination: str,
    method: str,
    uri: str,
    content: Any = None,
) -> str:
    """The ``Authorization`` header value for a request."""
    return format_authorization(
        sign_request(signing_key, origin, destination, method, uri, content)
    )


def format_authorization(auth: XMatrixAuth) -> str:
    # What the spec asks senders to emit for old receivers: one space after the scheme,
    # lower-case names, every value quoted, no whitespace around commas.
    params = [("origin", auth.origin)]
    if auth.destination is not None:
        params.append(("destination", auth.destination))
    params += [("key", auth.key_id), ("sig", auth.signature)]
    return f"{SCHEME} " + ",".join(f"{name}={_quote(value)}" for name, value in params)


def _quote(value: str) -> str:
    # Server names, key IDs and base64 never need escaping; escape anyway so that a value
    # can never end the quoted-string early.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- parsing (receiver side) ------------------------------------------------------------------


def parse_authorization(header: str | bytes) -> XMatrixAuth:
    """Parse one ``Authorization`` header value per RFC 9110 11.4 as profiled by the spec.

    Accepted: case-insensitive scheme and parameter names, one or more spaces after the
    scheme, spaces/tabs around commas and ``=``, empty list elements, token or quoted-string
    values (backslash escapes undone), unknown parameters (ignored). For older senders an
    unquoted value may hold any visible character but ``,`` and ``"`` (colons in server
    names, ``/`` and ``+`` in base64), as Synapse accepts. Rejected: duplicate parameters
    (which one would count is ambiguous), a missing origin/key/sig, an origin or destination
    that is not a server name.
    """
    text = _decode(header)
    scheme_end = _scan_token(text, 0)
    if scheme_end == 0:
        raise MalformedAuthorization("missing auth scheme")
    if text[:scheme_end].lower() != SCHEME.lower():
        raise NotXMatrix(f"scheme is {text[:scheme_end]!r}, not {SCHEME}")
    if scheme_end == len(text) or text[scheme_end] not in _WS:
        raise MalformedAuthorization("expected a space after the scheme")
    params = _parse_params(text, scheme_end)

    for required in ("origin", "key", "sig"):
        if not params.get(required):
            raise MalformedAuthorization(f"missing {required!r}")
    origin, key_id, sig = params["origin"], params["key"], params["sig"]
    destination = params.get("destination")
    if not is_valid_server_name(origin):
        raise MalformedAuthorization(f"origin {origin!r} is not a server name")
    if destination is not None and not is_valid_server_name(destination):
        raise MalformedAuthorization(f"destination {destination!r} is not a server name")
    algorithm, sep, version = key_id.partition(":")
    if not sep or not algorithm or not version:
        raise MalformedAuthorization(f"key {key_id!r} is not of the form algorithm:version")
    return XMatrixAuth(origin, key_id, sig, destination)


def _decode(header: str | bytes) -> str:
    if isinstance(header, str):
        return header
    try:
        return header.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedAuthorization("header is not UTF-8") from None


def _scan_token(text: str, i: int) -> int:
    while i < len(text) and text[i] in _TCHARS:
        i += 1
    return i


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def _parse_params(text: str, i: int) -> dict[str, str]:
    params: dict[str, str] = {}
    n = len(text)
    while True:
        # Skip whitespace and empty list elements (RFC 9110 5.6.1 lets recipients accept them).
        while i < n and (text[i] in _WS or text[i] == ","):
            i += 1
        if i == n:
            return params
        name_end = _scan_token(text, i)
        if name_end == i:
            raise MalformedAuthorization(f"expected a parameter name at offset {i}")
        name = text[i:name_end].lower()
        i = _skip_ws(text, name_end)
        if i == n or text[i] != "=":
            raise MalformedAuthorization(f"parameter {name!r} has no '='")
        i = _skip_ws(text, i + 1)
        if i < n and text[i] == '"':
            value, i = _parse_quoted(text, i)
        else:
            start = i
            while i < n and text[i] not in ',"' and 0x21 <= ord(text[i]) <= 0x7E:
                i += 1
            if i == start:
                raise MalformedAuthorization(f"parameter {name!r} has an empty value")
            value = text[start:i]
        if name in params:
            raise MalformedAuthorization(f"parameter {name!r} given twice")
        params[name] = value
        i = _skip_ws(text, i)
        if i < n and text[i] != ",":
            raise MalformedAuthorization(f"expected ',' at offset {i}")


def _parse_quoted(text: str, i: int) -> tuple[str, int]:
    """Parse the quoted-string starting at ``text[i] == '"'``; return (value, next index)."""
    out: list[str] = []
    i += 1
    n = len(text)
    while i < n:
        c = text[i]
        if c == '"':
            return "".join(out), i + 1
        if c == "\\":
            if i + 1 == n:
                break
            out.append(text[i + 1])
            i += 2
            continue
        if (ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F:
            raise MalformedAuthorization("control character in a quoted value")
        out.append(c)
        i += 1
    raise MalformedAuthorization("unterminated quoted value")


# -- verification (receiver side) -------------------------------------------------------------


def parse_request_authorization(
    headers: Iterable[str | bytes], our_server_name: str
) -> RequestAuthorization:
    """Merge a request's ``Authorization`` headers and check the destination.

    Headers of other schemes are ignored. A request may carry several ``X-Matrix`` headers
    (one per signing key), which must agree on the origin. A destination that is present
    must be ``our_server_name`` (spec: deny with 401); an absent one is accepted for senders
    older than v1.3.
    """
    origin: str | None = None
    destination: str | None = None
    signatures: dict[str, str] = {}
    for header in headers:
        try:
            auth = parse_authorization(header)
        except NotXMatrix:
            continue
        if origin is not None and auth.origin != origin:
            raise XMatrixError(401, "X-Matrix headers name different origins")
        origin = auth.origin
        if auth.destination is not None:
            if auth.destination != our_server_name:
                raise XMatrixError(401, f"request is for {auth.destination!r}, not this server")
            destination = auth.destination
        signatures[auth.key_id] = auth.signature
    if origin is None:
        raise XMatrixError(401, "missing X-Matrix Authorization header")
    return RequestAuthorization(origin, destination, signatures)


def verify_request(
    authorization: RequestAuthorization,
    *,
    method: str,
    uri: str,
    content: Any,
    our_server_name: str,
    key_lookup: KeyLookup,
    now_ms: int,
) -> str:
    """Check the signatures of a request; return the authenticated origin.

    The signed JSON is rebuilt from what we received, with our own name as destination (an
    old sender without the header parameter still signed it). Keys must be valid at
    ``now_ms``: old keys (``expired_ts`` in the past) only sign events, never requests.
    ``content`` is the parsed JSON body, or None when the request had none.
    """
    signed = request_json(method, uri, authorization.origin, our_server_name, content)
    signed["signatures"] = {authorization.origin: dict(authorization.signatures)}
    try:
        verify_json_signatures(signed, authorization.origin, key_lookup, valid_at_ts=now_ms)
    except SignatureError as e:
        raise XMatrixError(401, f"invalid request signature: {e.reason}") from None
    return authorization.origin


def authenticate_request(
    headers: Iterable[str | bytes],
    *,
    method: str,
    uri: str,
    content: Any,
    our_server_name: str,
    key_lookup: KeyLookup,
    now_ms: int,
) -> str:
    """parse_request_authorization + verify_request, for callers whose keys are at hand."""
    authorization = parse_request_authorization(headers, our_server_name)
    return verify_request(
        authorization,
        method=method,
        uri=uri,
        content=content,
        our_server_name=our_server_name,
        key_lookup=key_lookup,
        now_ms=now_ms,
    )
