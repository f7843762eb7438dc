"""Email pushers: unread notifications mailed after a delay, several in one email.

An email pusher (``kind: "email"``, ``app_id: "m.email"``, the pushkey an address bound to
the user) is not told about each notification as it happens: a notification starts a timer
of ``email.notification_delay_ms`` (10 minutes by default, as in Synapse) for its user; once
the oldest unread notification past the pusher's ``last_stream_ordering`` is that old, it and
every newer unread one go into one email, and the position moves on. Notifications read in
the meantime are never mailed. Messages of encrypted rooms are never quoted (an
``m.room.encrypted`` event has no plaintext, and a plaintext event in an encrypted room is
mentioned without its body). A failed send is retried with backoff (a minute doubling to an
hour); nothing is lost since the position only moves after a send.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer

from homeserver.clock import Clock
from homeserver.services.email.mailer import EmailError, Mailer
from homeserver.services.events import EventsService
from homeserver.storage.push import PushAction, Pusher, PushStore

logger = logging.getLogger(__name__)

MAX_PER_EMAIL = 50
MAX_BODY_CHARS = 300
INITIAL_BACKOFF_S = 60.0
MAX_BACKOFF_S = 3600.0


@dataclass(frozen=True)
class _Line:
    room: str
    sender: str
    text: str


class EmailPushers:
    def __init__(self, *, store: PushStore, pipeline: EventsService, mailer: Mailer,
                 clock: Clock, reactor: Any, delay_ms: int, app_name: str,
                 include_content: bool) -> None:
        self.store = store
        self.pipeline = pipeline
        self.events = pipeline.store
        self.mailer = mailer
        self.clock = clock
        self.reactor = reactor
        self.delay_ms = delay_ms
        self.app_name = app_name
        self.include_content = include_content
        self._users: set[str] = set()  # users with an email pusher (as far as we know)
        self._timers: dict[str, Any] = {}
        self._running: set[str] = set()
        self._backoff: dict[str, float] = {}
        self._stopped = False
        self.sent = 0  # notification emails sent (for tests)

    async def start(self) -> None:
        for p in await self.store.all_pushers():
            if p.kind == "email" and p.user_id not in self._users:
                self._users.add(p.user_id)
                self._schedule(p.user_id, 0)  # whatever was pending before a restart

    def stop(self) -> None:
        self._stopped = True
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()

    def pusher_set(self, user_id: str) -> None:
        """A user set an email pusher: their next notifications are mailed."""
        self._users.add(user_id)

    def on_notified(self, actions: list[PushAction]) -> None:
        """PushEvaluator hook."""
        for user in {a.user_id for a in actions}:
            if user in self._users:
                self._schedule(user, self.delay_ms)

    def _schedule(self, user_id: str, delay_ms: float) -> None:
        timer = self._timers.get(user_id)
        if self._stopped or (timer is not None and timer.active()):
            return
        self._timers[user_id] = self.reactor.callLater(delay_ms / 1000, self._fire, user_id)

    def _fire(self, user_id: str) -> None:
        self._timers.pop(user_id, None)
        if user_id not in self._running:
            defer.ensureDeferred(self._run(user_id))

    async def _run(self, user_id: str) -> None:
        self._running.add(user_id)
        try:
            live, _ = await self.store.pushers_for_user(user_id)
            pushers = [p for p in live if p.kind == "email"]
            if not pushers:
                self._users.discard(user_id)
                return
            for p in pushers:
                await self._deliver(p)
        except EmailError as e:
            backoff = self._backoff.get(user_id, INITIAL_BACKOFF_S)
            logger.warning("email notification for %s failed (%s); retrying in %.0fs",
                           user_id, e, backoff)
            self._backoff[user_id] = min(backoff * 2, MAX_BACKOFF_S)
            self._schedule(user_id, backoff * 1000)
        except Exception:
            logger.exception("email notifications of %s failed", user_id)
        else:
            self._backoff.pop(user_id, None)
        finally:
            self._running.discard(user_id)

    async def _deliver(self, p: Pusher) -> None:
        pending = await self.store.pending_for_pusher(
            p.user_id, p.last_stream_ordering, MAX_PER_EMAIL
        )
        if not pending:
            return
        now = self.clock.time_ms()
        if now - pending[0].ts < self.delay_ms:
            self._schedule(p.user_id, pending[0].ts + self.delay_ms - now)
            return
        # The oldest has waited long enough: it takes every newer one along (one email).
        due = pending
        lines = [await self._line(p.user_id, a) for a in due]
        subject, text, body_html = self._compose(lines)
        await self.mailer.send(p.pushkey, subject, text, body_html)
        self.sent += 1
        await self.store.update_pusher_progress(p.key, due[-1].stream_ordering, None)
        if len(pending) == MAX_PER_EMAIL:
            self._schedule(p.user_id, 0)  # more than fit in one email

    async def _state_value(self, room_id: str, key: tuple[str, str], field: str) -> str | None:
        ev = await self.pipeline.current_state_event(room_id, key)
        value = ev.event.content.get(field) if ev is not None else None
        return value if isinstance(value, str) and value else None

    async def _line(self, user_id: str, action: PushAction) -> _Line:
        room_id = action.room_id
        room = (await self._state_value(room_id, ("m.room.name", ""), "name")
                or await self._state_value(room_id, ("m.room.canonical_alias", ""), "alias")
                or room_id)
        stored = await self.events.get_event(action.event_id)
        if stored is None:
            return _Line(room, "Someone", "sent a message")
        ev = stored.event
        sender = await self._state_value(room_id, ("m.room.member", ev.sender),
                                         "displayname") or ev.sender
        encrypted = ev.type == "m.room.encrypted" or (
            await self.pipeline.current_state_event(room_id, ("m.room.encryption", ""))
            is not None
        )
        body = ev.content.get("body")
        if ev.type == "m.room.member" and ev.state_key == user_id:
            invited = ev.content.get("membership") == "invite"
            text = "invited you" if invited else "changed your membership"
        elif encrypted:
            text = "sent an encrypted message"
        elif ev.type == "m.room.message" and isinstance(body, str) and self.include_content:
            text = "said: " + (body if len(body) <= MAX_BODY_CHARS
                              else body[:MAX_BODY_CHARS] + "…")
        else:
            text = "sent a message"
        return _Line(_one_line(room), _one_line(sender), text)

    def _compose(self, lines: list[_Line]) -> tuple[str, str, str]:
        rooms = list(dict.fromkeys(line.room for line in lines))
        n = len(lines)
        plural = "s" if n > 1 else ""
        subject = (f"[{self.app_name}] {n} unread notification{plural} in {rooms[0]}"
                   if len(rooms) == 1 else
                   f"[{self.app_name}] {n} unread notifications in {len(rooms)} rooms")
        text = [f"You have {n} unread notification{plural} on {self.app_name}:", ""]
        parts = [f"<p>You have {n} unread notification{plural} on "
                 f"{html.escape(self.app_name)}:</p>"]
        for room in rooms:
            text.append(f"{room}:")
            parts.append(f"<h3>{html.escape(room)}</h3><ul>")
            for line in lines:
                if line.room == room:
                    text.append(f"  {line.sender} {line.text}")
                    parts.append(f"<li><b>{html.escape(line.sender)}</b> "
                                 f"{html.escape(line.text)}</li>")
            text.append("")
            parts.append("</ul>")
        footer = ("You are receiving this because an email pusher is set on your account; "
                  "remove it in your client's notification settings.")
        text.append(footer)
        parts.append(f"<p><small>{html.escape(footer)}</small></p>")
        return subject, "\n".join(text) + "\n", "\n".join(parts)


def _one_line(name: str, limit: int = 80) -> str:
    """A room or sender name fit for a subject line: others choose these names, and a line
    break in a header would be an injection (the email library refuses it outright)."""
    flat = " ".join(name.split())
    return flat if len(flat) <= limit else flat[:limit] + "…"
