"""A real SMTP server on a free loopback port (aiosmtpd, in its own thread) that keeps what it
receives, for tests of the email features."""

from __future__ import annotations

import email
import email.policy
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from twisted.internet import reactor, task

from tests.support.server import free_port


@dataclass(frozen=True)
class Received:
    sender: str
    recipients: list[str]
    message: EmailMessage

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    def plain(self) -> str:
        body = self.message.get_body(("plain",))
        return str(body.get_content()) if body is not None else ""

    def text(self) -> str:
        """Every text part (plain and HTML) of the message, decoded."""
        return "\n".join(str(part.get_content()) for part in self.message.walk()
                         if part.get_content_maintype() == "text")


class _Handler:
    def __init__(self, box: SmtpServer) -> None:
        self.box = box

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        with self.box.lock:
            self.box.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos), msg))
        return "250 OK"


class SmtpServer:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[Received] = []
        self.port = free_port("127.0.0.1")
        self.controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port)

    def config(self, **extra: Any) -> dict[str, Any]:
        """The ``email`` config section for a server sending here."""
        return {"enabled": True, "smtp_host": "127.0.0.1", "smtp_port": self.port,
                "tls": "none", "from": "Test Chat <noreply@test.local>",
                "app_name": "Test Chat", **extra}

    def to(self, address: str) -> list[Received]:
        with self.lock:
            return [m for m in self.messages if address in m.recipients]

    async def wait_for(self, address: str, count: int = 1, timeout: float = 10.0) -> list[Received]:
        """The messages to ``address`` once there are at least ``count`` of them."""
        waited = 0.0
        while len(self.to(address)) < count:
            if waited >= timeout:
                raise AssertionError(f"no email to {address} after {timeout}s")
            await task.deferLater(reactor, 0.05, lambda: None)
            waited += 0.05
        return self.to(address)


@contextmanager
def smtp_server() -> Iterator[SmtpServer]:
    server = SmtpServer()
    server.controller.start()
    try:
        yield server
    finally:
        server.controller.stop()
