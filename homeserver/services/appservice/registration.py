"""Application-service registration files: parsing, validation, and the checks across files.

Every error is a ``ConfigError`` naming the file and the field, so a bad file stops start-up
with a message an operator can act on. Bridges write keys of their own (``org.matrix.msc3202``,
``io.element.msc4190``, ...): unknown keys are logged and ignored, not refused.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import yaml

from federation.transport.net import is_private_address
from homeserver.config.errors import ConfigError
from homeserver.services.appservice.namespaces import Namespace, may_overlap

logger = logging.getLogger(__name__)

_LOCALPART = re.compile(r"^[a-z0-9._=\-/+]+$")

# Keys asking for ephemeral events: the spec's, and MSC2409's spellings that bridges still use.
_EPHEMERAL_KEYS = ("receive_ephemeral", "de.sorunome.msc2409.push_ephemeral", "push_ephemeral")
# Keys asking for to-device messages (MSC2409 / MSC4203; mautrix sets org.matrix.msc3202 for
# its end-to-bridge encryption, which needs them).
_TO_DEVICE_KEYS = ("org.matrix.msc3202", "de.sorunome.msc3202", "org.matrix.msc2409.to_device",
                   "receive_to_device")
_KNOWN_KEYS = frozenset({
    "id", "url", "as_token", "hs_token", "sender_localpart", "namespaces", "rate_limited",
    "protocols", *_EPHEMERAL_KEYS, *_TO_DEVICE_KEYS,
})


@dataclass(frozen=True)
class AppService:
    id: str
    url: str | None
    as_token: str
    hs_token: str
    sender: str  # the full user ID of sender_localpart
    users: tuple[Namespace, ...] = ()
    aliases: tuple[Namespace, ...] = ()
    rooms: tuple[Namespace, ...] = ()
    rate_limited: bool = True
    protocols: tuple[str, ...] = ()
    receive_ephemeral: bool = False
    receive_to_device: bool = False
    source: str = ""
    server_name: str = field(default="", compare=False)

    # -- users ---------------------------------------------------------------------------
    def is_interested_in_user(self, user_id: str) -> bool:
        """The AS's own sender, or a user ID matching one of its user namespaces."""
        return user_id == self.sender or any(ns.matches(user_id) for ns in self.users)

    def is_exclusive_user(self, user_id: str) -> bool:
        return user_id == self.sender or any(
            ns.exclusive and ns.matches(user_id) for ns in self.users
        )

    def may_act_as(self, user_id: str) -> bool:
        """Local users in the AS's namespace (or its sender) may be masqueraded as."""
        return user_id.endswith(":" + self.server_name) and self.is_interested_in_user(user_id)

    # -- aliases and rooms ----------------------------------------------------------------
    def is_interested_in_alias(self, alias: str) -> bool:
        return any(ns.matches(alias) for ns in self.aliases)

    def is_exclusive_alias(self, alias: str) -> bool:
        return any(ns.exclusive and ns.matches(alias) for ns in self.aliases)

    def is_interested_in_room_id(self, room_id: str) -> bool:
        return any(ns.matches(room_id) for ns in self.rooms)


def load_registrations(
    paths: Sequence[str], server_name: str, *, allow_private: bool
) -> list[AppService]:
    """Read, validate and cross-check every registration file; raise ``ConfigError``."""
    services = [load_registration(p, server_name, allow_private=allow_private) for p in paths]
    check_together(services)
    return services


def load_registration(path: str, server_name: str, *, allow_private: bool) -> AppService:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"application service file {path}: cannot read: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"application service file {path}: not valid YAML: {e}") from None
    return parse_registration(data, path, server_name, allow_private=allow_private)


def parse_registration(
    data: Any, source: str, server_name: str, *, allow_private: bool = False
) -> AppService:
    def err(key: str, message: str) -> ConfigError:
        return ConfigError(f"application service file {source}: {key}: {message}")

    if not isinstance(data, Mapping):
        raise ConfigError(f"application service file {source}: expected a mapping of keys")

    def string(key: str) -> str:
        if key not in data:
            raise err(key, "required key is missing")
        value = data[key]
        if not isinstance(value, str) or not value.strip():
            # Never echo what stands where a secret should be.
            shown = type(value).__name__ if key.endswith("_token") else repr(value)
            raise err(key, f"expected a non-empty string, got {shown}")
        return value

    def flag(keys: Iterable[str], default: bool) -> bool:
        found = default
        for key in keys:
            if key in data and data[key] is not None:
                if not isinstance(data[key], bool):
                    raise err(key, f"expected true or false, got {data[key]!r}")
                found = found or data[key]
        return found

    as_id = string("id")
    if "url" not in data:
        raise err("url", "required key is missing (write `url: null` for no traffic)")
    url = data["url"]
    if url is not None:
        if not isinstance(url, str) or not url:
            raise err("url", f"expected a URL or null, got {url!r}")
        problem = check_url(url, allow_private=allow_private)
        if problem:
            raise err("url", problem)
        url = url.rstrip("/")
    as_token = string("as_token")
    hs_token = string("hs_token")
    localpart = string("sender_localpart")
    if not _LOCALPART.match(localpart):
        raise err("sender_localpart", f"{localpart!r} is not a valid user ID localpart")
    sender = f"@{localpart}:{server_name}"
    if len(sender.encode("utf-8")) > 255:
        raise err("sender_localpart", "the user ID would be longer than 255 bytes")

    if "namespaces" not in data:
        raise err("namespaces", "required key is missing")
    namespaces = data["namespaces"]
    if namespaces is None:
        namespaces = {}
    if not isinstance(namespaces, Mapping):
        raise err("namespaces", f"expected a mapping, got {namespaces!r}")
    for key in namespaces:
        if key not in ("users", "aliases", "rooms"):
            raise err(f"namespaces.{key}", "unknown namespace (expected users, aliases, rooms)")
    parsed = {kind: _namespaces(namespaces.get(kind), f"namespaces.{kind}", err)
              for kind in ("users", "aliases", "rooms")}

    protocols = data.get("protocols") or []
    if not isinstance(protocols, list) or not all(
        isinstance(p, str) and p for p in protocols
    ):
        raise err("protocols", f"expected a list of protocol names, got {protocols!r}")

    rate_limited = True
    if data.get("rate_limited") is not None:
        if not isinstance(data["rate_limited"], bool):
            raise err("rate_limited", f"expected true or false, got {data['rate_limited']!r}")
        rate_limited = data["rate_limited"]
    ephemeral = flag(_EPHEMERAL_KEYS, False)
    to_device = flag(_TO_DEVICE_KEYS, False)

    for key in data:
        if key not in _KNOWN_KEYS:
            logger.info("application service %s (%s): ignoring key %r", as_id, source, key)
    return AppService(
        id=as_id, url=url, as_token=as_token, hs_token=hs_token, sender=sender,
        users=parsed["users"], aliases=parsed["aliases"], rooms=parsed["rooms"],
        rate_limited=rate_limited, protocols=tuple(protocols),
        receive_ephemeral=ephemeral, receive_to_device=to_device,
        source=source, server_name=server_name,
    )


def _namespaces(value: Any, path: str, err: Any) -> tuple[Namespace, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise err(path, f"expected a list of {{regex, exclusive}}, got {value!r}")
    out: list[Namespace] = []
    for i, item in enumerate(value):
        here = f"{path}[{i}]"
        if not isinstance(item, Mapping):
            raise err(here, f"expected a mapping with regex and exclusive, got {item!r}")
        regex = item.get("regex")
        if not isinstance(regex, str) or not regex:
            raise err(f"{here}.regex", f"expected a regular expression, got {regex!r}")
        exclusive = item.get("exclusive", False)
        if not isinstance(exclusive, bool):
            raise err(f"{here}.exclusive", f"expected true or false, got {exclusive!r}")
        try:
            compiled = re.compile(regex)
        except re.error as e:
            raise err(f"{here}.regex", f"not a valid regular expression: {e}") from None
        for key in item:
            if key not in ("regex", "exclusive"):
                logger.info("application service registration: ignoring key %s.%s", here, key)
        out.append(Namespace(regex=regex, exclusive=exclusive, pattern=compiled))
    return tuple(out)


def check_url(url: str, *, allow_private: bool) -> str | None:
    """Why ``url`` cannot be an application service's address, or None."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises on a bad port
    except ValueError:
        return f"{url!r} is not a valid URL"
    if parts.scheme not in ("http", "https"):
        return f"{url!r} must be an http or https URL"
    if not parts.hostname:
        return f"{url!r} has no host"
    if parts.query or parts.fragment or parts.username is not None:
        return f"{url!r} may not have a query, fragment or credentials"
    if allow_private:
        return None
    host = parts.hostname
    if host == "localhost" or host.endswith(".localhost"):
        return (f"{url!r} is on loopback, which outbound requests may not reach "
                "(outbound_requests.allow_private_addresses, set by --dev-federation)")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if is_private_address(ip):
        return (f"{url!r} is a private or loopback address, which outbound requests may not "
                "reach (outbound_requests.allow_private_addresses, set by --dev-federation)")
    return None


def check_together(services: Sequence[AppService]) -> None:
    """Refuse duplicate IDs, tokens and senders, and exclusive namespaces that overlap."""
    seen: dict[str, AppService] = {}
    for svc in services:
        for kind, value in (("id", svc.id), ("as_token", svc.as_token),
                            ("hs_token", svc.hs_token), ("sender_localpart", svc.sender)):
            key = f"{kind}\0{value}"
            other = seen.get(key)
            if other is not None:
                raise ConfigError(
                    f"application service files {other.source} and {svc.source}: "
                    f"both use the same {kind}"
                )
            seen[key] = svc
        if svc.as_token == svc.hs_token:
            raise ConfigError(f"application service file {svc.source}: as_token and hs_token "
                              "must differ")
    for i, a in enumerate(services):
        for b in services[i + 1:]:
            for kind in ("users", "aliases", "rooms"):
                clash = _overlap(getattr(a, kind), getattr(b, kind))
                if clash:
                    raise ConfigError(
                        f"application service files {a.source} and {b.source}: exclusive "
                        f"namespaces.{kind} overlap ({clash})"
                    )
            for x, y in ((a, b), (b, a)):
                if y.is_exclusive_user(x.sender):
                    raise ConfigError(
                        f"application service files {x.source} and {y.source}: the sender "
                        f"{x.sender} of {x.id} is in an exclusive user namespace of {y.id}"
                    )


def _overlap(left: Sequence[Namespace], right: Sequence[Namespace]) -> str | None:
    """The first pair of exclusive namespaces that may match the same ID. A non-exclusive
    namespace may cover an exclusive one: mautrix's double-puppeting registration
    (``@.*:server``, not exclusive, no URL) sits beside every bridge."""
    for a in left:
        for b in right:
            if a.exclusive and b.exclusive:
                clash = may_overlap(a, b)
                if clash:
                    return clash
    return None
