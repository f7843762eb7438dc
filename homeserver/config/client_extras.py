"""Config of what clients discover about the server: the support contacts of
``/.well-known/matrix/support`` and the TURN servers of ``/voip/turnServer``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from homeserver.config.reader import Section

# The spec's common namespaced identifier grammar, loosely: m.role.admin, org.example.role.
_ROLE = re.compile(r"^[a-z0-9][a-z0-9._\-]{0,254}$")


@dataclass(frozen=True)
class SupportContact:
    role: str
    matrix_id: str | None = None
    email_address: str | None = None


@dataclass(frozen=True)
class SupportConfig:
    contacts: tuple[SupportContact, ...] = ()
    support_page: str | None = None

    @property
    def configured(self) -> bool:
        return bool(self.contacts) or self.support_page is not None


@dataclass(frozen=True)
class VoipConfig:
    turn_uris: tuple[str, ...] = ()
    # Shared secret of coturn's "use-auth-secret" REST API: time-limited credentials.
    turn_shared_secret: str | None = None
    # Or one fixed username and password for everyone.
    turn_username: str | None = None
    turn_password: str | None = None
    turn_user_lifetime_ms: int = 3_600_000
    turn_allow_guests: bool = True


def parse_support(s: Section) -> SupportConfig:
    contacts = []
    for c in s.sections("contacts", []):
        contact = SupportContact(
            role=c.string("role"),
            matrix_id=c.string("matrix_id", None),
            email_address=c.string("email_address", None),
        )
        c.done()
        if not _ROLE.match(contact.role):
            raise c.error("role", "expected a namespaced identifier such as m.role.admin")
        if contact.matrix_id is None and contact.email_address is None:
            raise c.error("matrix_id", "a contact needs a matrix_id or an email_address")
        if contact.matrix_id is not None and (
            not contact.matrix_id.startswith("@") or ":" not in contact.matrix_id
        ):
            raise c.error("matrix_id", f"expected a user ID, got {contact.matrix_id!r}")
        if contact.email_address is not None and "@" not in contact.email_address:
            raise c.error("email_address", f"expected an email address, "
                                           f"got {contact.email_address!r}")
        contacts.append(contact)
    page = s.string("support_page", None)
    if page is not None and not page.startswith(("https://", "http://")):
        raise s.error("support_page", f"expected an http(s) URL, got {page!r}")
    s.done()
    return SupportConfig(contacts=tuple(contacts), support_page=page)


def parse_voip(s: Section) -> VoipConfig:
    lifetime = s.integer("turn_user_lifetime_ms", 3_600_000, min=1000, max=7 * 86_400_000)
    config = VoipConfig(
        turn_uris=tuple(s.str_list("turn_uris", [])),
        turn_shared_secret=s.string("turn_shared_secret", None),
        turn_username=s.string("turn_username", None),
        turn_password=s.string("turn_password", None),
        turn_user_lifetime_ms=lifetime,
        turn_allow_guests=s.boolean("turn_allow_guests", True),
    )
    s.done()
    for uri in config.turn_uris:
        if not uri.startswith(("turn:", "turns:", "stun:")):
            raise s.error("turn_uris", f"expected turn:, turns: or stun: URIs, got {uri!r}")
    if (config.turn_username is None) != (config.turn_password is None):
        raise s.error("turn_username", "turn_username and turn_password go together")
    return config
