"""Sending email through the configured SMTP server with Twisted's ESMTP client.

TLS modes: ``starttls`` (the server must offer STARTTLS; its certificate is checked against
the system CAs), ``tls`` (implicit TLS from the first byte, usually port 465) and ``none``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from io import BytesIO
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.ssl import optionsForClientTLS
from twisted.mail.smtp import ESMTPSenderFactory

from homeserver.config.model import EmailConfig

logger = logging.getLogger(__name__)

SEND_TIMEOUT_S = 30


class EmailError(Exception):
    """The SMTP server could not be reached or refused the message."""


def build_message(from_address: str, to: str, subject: str, text: str, html: str | None,
                  now: datetime | None = None) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = from_address
    msg["To"] = str(Address(addr_spec=to))
    msg["Subject"] = subject
    msg["Date"] = format_datetime(now or datetime.now(UTC))
    domain = parseaddr(from_address)[1].rpartition("@")[2] or None
    msg["Message-ID"] = make_msgid(domain=domain)
    msg.set_content(text)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    return msg


class Mailer:
    def __init__(self, config: EmailConfig, reactor: Any) -> None:
        self.config = config
        self.reactor = reactor
        self.sent = 0  # messages handed to the SMTP server (for tests and metrics)

    async def send(self, to: str, subject: str, text: str, html: str | None = None) -> None:
        c = self.config
        msg = build_message(c.from_address, to, subject, text, html)
        sender = parseaddr(c.from_address)[1]
        done: defer.Deferred[Any] = defer.Deferred()
        factory = ESMTPSenderFactory(
            c.smtp_user, c.smtp_password.encode() if c.smtp_password else None,
            sender, [to], BytesIO(msg.as_bytes()), done, retries=0, timeout=SEND_TIMEOUT_S,
            requireAuthentication=c.smtp_user is not None,
            requireTransportSecurity=c.tls == "starttls",
            hostname=c.smtp_host if c.tls == "starttls" else None,
        )
        endpoint: Any = HostnameEndpoint(self.reactor, c.smtp_host, c.smtp_port,
                                         timeout=SEND_TIMEOUT_S)
        if c.tls == "tls":
            endpoint = wrapClientTLS(optionsForClientTLS(c.smtp_host), endpoint)
        try:
            await endpoint.connect(factory)
            await done
        except Exception as e:
            raise EmailError(f"sending email via {c.smtp_host}:{c.smtp_port} failed: {e}") from e
        self.sent += 1
        logger.info("sent email %r to %s", subject, to)
