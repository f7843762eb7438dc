"""Email pushers with a real SMTP server: unread notifications mailed after the configured
delay, message text quoted only for unencrypted rooms, nothing for what was read meanwhile,
and only an address bound to the account as the pushkey."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest_twisted
from twisted.internet import reactor, task

from homeserver.config import DatabaseConfig
from tests.homeserver.test_threepid_email import _bind
from tests.support.client import Client, User, q
from tests.support.server import RunningServer, start_server
from tests.support.smtp import Received, SmtpServer, smtp_server
from tests.support.sync import create_room, join, send

DELAY_MS = 400
EMAIL = "alice@example.org"


@pytest_twisted.async_yield_fixture
async def mail(db_config: DatabaseConfig, tmp_path: object) -> AsyncIterator[
        tuple[RunningServer, SmtpServer]]:
    with smtp_server() as smtp:
        # Rooms are encrypted only when a test asks for it.
        server = await start_server(str(tmp_path), db_config,
                                    email=smtp.config(notification_delay_ms=DELAY_MS),
                                    encryption={"by_default": "off"})
        try:
            yield server, smtp
        finally:
            await server.stop()


async def _sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


async def _until(smtp: SmtpServer, found: Callable[[Received], bool]) -> Received:
    for _ in range(200):
        for m in smtp.to(EMAIL):
            if found(m):
                return m
        await _sleep(0.05)
    raise AssertionError(f"no such email; got {[m.text() for m in smtp.to(EMAIL)]}")


def _pusher(pushkey: str) -> dict[str, object]:
    return {"kind": "email", "app_id": "m.email", "pushkey": pushkey,
            "app_display_name": "Email Notifications", "device_display_name": pushkey,
            "lang": "en", "data": {}}


async def _dm(c: Client, bob: User, alice: User, **extra: object) -> str:
    room = await create_room(c, bob, preset="private_chat", invite=[alice.user_id], **extra)
    await join(c, alice, room)
    return room


@pytest_twisted.ensureDeferred
async def test_email_notifications(mail: tuple[RunningServer, SmtpServer]) -> None:
    hs, smtp = mail
    c = Client(hs.client_url)
    alice, bob = await c.register("alice"), await c.register("bob")
    # Only a bound address may be a pushkey.
    r = await c.call("POST", "/pushers/set", _pusher(EMAIL), token=alice.access_token)
    assert (r.status, r.json()["errcode"]) == (400, "M_THREEPID_NOT_FOUND")
    await _bind(c, smtp, alice, EMAIL, "bind")
    r = await c.call("POST", "/pushers/set", _pusher(EMAIL), token=alice.access_token)
    assert (r.status, r.json()) == (200, {})
    r = await c.call("GET", "/pushers", token=alice.access_token)
    assert [p["kind"] for p in r.json()["pushers"]] == ["email"]

    # Room names are chosen by others: a line break must not reach a header.
    plain = await _dm(c, bob, alice, name="Garden\r\nBcc: eve@example.org")
    await send(c, bob, plain, "the roses need water")
    started = reactor.seconds()
    msg = await _until(smtp, lambda m: "the roses need water" in m.text())
    assert reactor.seconds() - started >= DELAY_MS / 1000 * 0.9  # not before the delay
    assert msg.subject == "[Test Chat] 1 unread notification in Garden Bcc: eve@example.org"
    assert msg.message["Bcc"] is None and msg.recipients == [EMAIL]
    assert "bob" in msg.text()

    secret = await _dm(c, bob, alice, name="Vault", initial_state=[
        {"type": "m.room.encryption", "state_key": "",
         "content": {"algorithm": "m.megolm.v1.aes-sha2"}}])
    await send(c, bob, secret, "the eagle lands at dawn")  # plaintext in an encrypted room
    await send(c, bob, secret, "", event_type="m.room.encrypted", content={
        "algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "QUJDREVGRw", "sender_key": "k",
        "session_id": "s", "device_id": "D"})
    # Both in one email (sent together, within the delay), neither quoted.
    msg = await _until(smtp, lambda m: "Vault" in m.subject)
    assert msg.subject == "[Test Chat] 2 unread notifications in Vault"
    assert msg.plain().count("@bob:test.local sent an encrypted message") == 2
    assert not any("eagle" in m.text() or "QUJDREVGRw" in m.text() for m in smtp.to(EMAIL))

    # Read before the delay is over: never mailed.
    before = len(smtp.to(EMAIL))
    event_id = await send(c, bob, plain, "already read this one")
    r = await c.call("POST", f"/rooms/{q(plain)}/receipt/m.read/{q(event_id)}", {},
                     token=alice.access_token)
    assert r.status == 200
    await _sleep(DELAY_MS / 1000 * 3)
    assert len(smtp.to(EMAIL)) == before, [m.text()[:200] for m in smtp.to(EMAIL)]
    assert not any("already read" in m.text() for m in smtp.to(EMAIL))

    # Removing the pusher stops the emails.
    r = await c.call("POST", "/pushers/set", {"kind": None, "app_id": "m.email",
                                              "pushkey": EMAIL}, token=alice.access_token)
    assert r.status == 200
    await send(c, bob, plain, "after the pusher went")
    await _sleep(DELAY_MS / 1000 * 3)
    assert not any("after the pusher" in m.text() for m in smtp.to(EMAIL))


@pytest_twisted.ensureDeferred
async def test_unbinding_the_address_removes_its_pusher(
        mail: tuple[RunningServer, SmtpServer]) -> None:
    hs, smtp = mail
    c = Client(hs.client_url)
    alice = await c.register("alice")
    await _bind(c, smtp, alice, EMAIL, "bind")
    r = await c.call("POST", "/pushers/set", _pusher("Alice@Example.org"),
                     token=alice.access_token)
    assert r.status == 200
    r = await c.call("POST", "/account/3pid/delete", {"medium": "email", "address": EMAIL},
                     token=alice.access_token)
    assert r.status == 200
    r = await c.call("GET", "/pushers", token=alice.access_token)
    assert r.json() == {"pushers": []}
