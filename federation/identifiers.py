"""Identifier grammars from the spec appendices (server names, user/room/event IDs, aliases).

Pure predicates and parsers. Federation must accept what the spec accepts and no more, so the
grammars here are the spec's, not stricter "nice" ones: e.g. historical user ID localparts
(any code point except ``:`` and NUL) are accepted on received events, while the current,
stricter grammar is available for IDs this server allocates.
"""

from __future__ import annotations

import ipaddress
import re
from typing import NamedTuple

from federation.room_versions import EventFormat, RoomVersion

# Every identifier (sigil + localpart + domain) is limited to 255 bytes of UTF-8.
MAX_IDENTIFIER_BYTES = 255

_PORT_RE = re.compile(r"[0-9]{1,5}\Z")
_IPV4_RE = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\Z")
_IPV6_CHARS_RE = re.compile(r"[0-9A-Fa-f:.]{2,45}\Z")
_DNS_NAME_RE = re.compile(r"[0-9A-Za-z.\-]{1,255}\Z")
# Current (v1.8+) user ID localpart grammar.
_STRICT_LOCALPART_RE = re.compile(r"[a-z0-9._=\-/+]+\Z")
# An event ID that is a SHA-256 reference hash: 32 bytes -> 43 unpadded base64 chars.
_STANDARD_B64_HASH_RE = re.compile(r"[A-Za-z0-9+/]{43}\Z")
_URLSAFE_B64_HASH_RE = re.compile(r"[A-Za-z0-9\-_]{43}\Z")


class InvalidIdentifier(ValueError):
    """The string does not match the identifier grammar; the message says why."""


class ServerName(NamedTuple):
    host: str  # IPv6 literals keep their brackets, as they appear in the server name
    port: int | None


class UserID(NamedTuple):
    localpart: str
    domain: str


def _byte_len(s: str) -> int:
    # surrogatepass: a lone surrogate must not crash a length check; it fails elsewhere.
    return len(s.encode("utf-8", "surrogatepass"))


def _has_surrogate(s: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in s)


# -- server names ----------------------------------------------------------------------------


def parse_server_name(server_name: str) -> ServerName:
    """Split ``host[:port]`` per the appendix grammar, raising InvalidIdentifier."""
    if not isinstance(server_name, str) or not server_name:
        raise InvalidIdentifier("server name is empty or not a string")
    if server_name.startswith("["):
        end = server_name.find("]")
        if end == -1:
            raise InvalidIdentifier("unterminated IPv6 literal")
        host, rest = server_name[: end + 1], server_name[end + 1 :]
        literal = host[1:-1]
        if not _IPV6_CHARS_RE.match(literal):
            raise InvalidIdentifier("bad IPv6 literal characters")
        try:
            # The spec requires RFC 3513 syntax; the character grammar alone admits "::::".
            ipaddress.IPv6Address(literal)
        except ValueError:
            raise InvalidIdentifier(f"invalid IPv6 literal {literal!r}") from None
    else:
        host, sep, port_s = server_name.partition(":")
        rest = sep + port_s
        if _IPV4_RE.match(host):
            # A dotted quad is an IPv4 literal and each part must be 0..255.
            if any(int(part) > 255 for part in host.split(".")):
                raise InvalidIdentifier(f"IPv4 literal out of range: {host!r}")
        elif not _DNS_NAME_RE.match(host):
            raise InvalidIdentifier(f"invalid hostname {host!r}")
    if not rest:
        return ServerName(host, None)
    if not rest.startswith(":") or not _PORT_RE.match(rest[1:]):
        raise InvalidIdentifier(f"invalid port in {server_name!r}")
    return ServerName(host, int(rest[1:]))


def is_valid_server_name(server_name: str) -> bool:
    try:
        parse_server_name(server_name)
    except InvalidIdentifier:
        return False
    return True


# -- common `&localpart:domain` form ---------------------------------------------------------


def _split(identifier: str, sigil: str, what: str) -> tuple[str, str]:
    if not isinstance(identifier, str):
        raise InvalidIdentifier(f"{what} is not a string")
    if not identifier.startswith(sigil):
        raise InvalidIdentifier(f"{what} must start with {sigil!r}")
    if _byte_len(identifier) > MAX_IDENTIFIER_BYTES:
        raise InvalidIdentifier(f"{what} exceeds {MAX_IDENTIFIER_BYTES} bytes")
    # Localparts may not contain ':', so the first colon separates the domain.
    localpart, sep, domain = identifier[1:].partition(":")
    if not sep:
        raise InvalidIdentifier(f"{what} has no domain")
    if not is_valid_server_name(domain):
        raise InvalidIdentifier(f"{what} has an invalid server name {domain!r}")
    return localpart, domain


def _check_opaque_localpart(localpart: str, what: str) -> None:
    # "any valid non-surrogate Unicode code points ... except ':' and NUL"
    if "\x00" in localpart:
        raise InvalidIdentifier(f"{what} localpart contains NUL")
    if _has_surrogate(localpart):
        raise InvalidIdentifier(f"{what} localpart contains a surrogate code point")


def get_domain(identifier: str) -> str:
    """The server name part of a ``&localpart:domain`` identifier (no grammar check)."""
    _, sep, domain = identifier.partition(":")
    if not sep or not domain:
        raise InvalidIdentifier(f"{identifier!r} has no domain")
    return domain


# -- user IDs --------------------------------------------------------------------------------


def parse_user_id(user_id: str, *, historical: bool = True) -> UserID:
    """Parse a user ID.

    ``historical=True`` (the default, for anything received over federation) accepts the
    legacy localpart grammar, including the empty localpart; ``historical=False`` enforces
    the current grammar, for IDs this server creates.
    """
    localpart, domain = _split(user_id, "@", "user ID")
    if historical:
        _check_opaque_localpart(localpart, "user ID")
    elif not _STRICT_LOCALPART_RE.match(localpart):
        raise InvalidIdentifier(f"user ID localpart {localpart!r} has disallowed characters")
    return UserID(localpart, domain)


def is_valid_user_id(user_id: str, *, historical: bool = True) -> bool:
    try:
        parse_user_id(user_id, historical=historical)
    except InvalidIdentifier:
        return False
    return True


# -- event IDs -------------------------------------------------------------------------------


def check_event_id(event_id: str, room_version: RoomVersion) -> None:
    """Raise InvalidIdentifier unless ``event_id`` fits the room version's event ID format."""
    if not isinstance(event_id, str):
        raise InvalidIdentifier("event ID is not a string")
    if _byte_len(event_id) > MAX_IDENTIFIER_BYTES:
        raise InvalidIdentifier(f"event ID exceeds {MAX_IDENTIFIER_BYTES} bytes")
    fmt = room_version.event_format
    if fmt is EventFormat.V1:
        localpart, _ = _split(event_id, "$", "event ID")
        _check_opaque_localpart(localpart, "event ID")
        return
    if not event_id.startswith("$"):
        raise InvalidIdentifier("event ID must start with '$'")
    # v3 uses standard base64, v4+ the URL-safe alphabet.
    pattern = _STANDARD_B64_HASH_RE if fmt is EventFormat.V2 else _URLSAFE_B64_HASH_RE
    if not pattern.match(event_id[1:]):
        raise InvalidIdentifier(
            f"event ID {event_id!r} is not a reference hash for room version "
            f"{room_version.identifier}"
        )


def is_valid_event_id(event_id: str, room_version: RoomVersion) -> bool:
    try:
        check_event_id(event_id, room_version)
    except InvalidIdentifier:
        return False
    return True


# -- room IDs --------------------------------------------------------------------------------


def check_room_id(room_id: str, room_version: RoomVersion | None = None) -> None:
    """Raise InvalidIdentifier unless ``room_id`` is valid.

    With a room version, enforce its form: ``!opaque:domain`` before v12, ``!`` + the create
    event's URL-safe reference hash from v12. Without one, accept either form (e.g. for
    client-supplied IDs before the room version is known).
    """
    if not isinstance(room_id, str):
        raise InvalidIdentifier("room ID is not a string")
    if not room_id.startswith("!"):
        raise InvalidIdentifier("room ID must start with '!'")
    hashed = room_version is None or room_version.room_id_is_create_event_hash
    with_domain = room_version is None or not room_version.room_id_is_create_event_hash
    if hashed and _URLSAFE_B64_HASH_RE.match(room_id[1:]):
        return
    if not with_domain:
        raise InvalidIdentifier(f"room ID {room_id!r} is not a create event hash")
    localpart, _ = _split(room_id, "!", "room ID")
    _check_opaque_localpart(localpart, "room ID")


def is_valid_room_id(room_id: str, room_version: RoomVersion | None = None) -> bool:
    try:
        check_room_id(room_id, room_version)
    except InvalidIdentifier:
        return False
    return True


def room_id_from_create_event_id(create_event_id: str) -> str:
    """v12+: the room ID is the create event's ID with the ``!`` sigil."""
    return "!" + create_event_id[1:]


def create_event_id_from_room_id(room_id: str) -> str:
    """v12+: the inverse of room_id_from_create_event_id."""
    return "$" + room_id[1:]


# -- room aliases ----------------------------------------------------------------------------


def check_room_alias(alias: str) -> None:
    localpart, _ = _split(alias, "#", "room alias")
    _check_opaque_localpart(localpart, "room alias")


def is_valid_room_alias(alias: str) -> bool:
    try:
        check_room_alias(alias)
    except InvalidIdentifier:
        return False
    return True
