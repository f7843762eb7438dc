"""Pushers: ``POST /pushers/set`` and ``GET /pushers``, and delivery of notifications to
push gateways.

Each HTTP pusher walks the user's notifications past its ``last_stream_ordering`` (persisted,
so a restart resumes where it stopped; notifications read meanwhile are skipped) and POSTs
each one to its gateway: in full, or ``event_id_only`` when its ``data.format`` says so.
A failure (no connection, timeout, 5xx, 429) is retried with exponential backoff from
``INITIAL_BACKOFF_S`` up to ``MAX_BACKOFF_S``; a notification still failing after
``GIVE_UP_AFTER_MS`` is skipped. A gateway that refuses the request (another 4xx) gets the
next one. A pushkey the gateway lists in ``rejected`` has its pusher deleted.

A pusher lives as long as the device that set it: it is removed with the device (logout,
device deletion) and with the account (deactivation). Email pushers are stored and listed;
this server sends no email, so they deliver nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

from twisted.internet import defer

from homeserver.clock import Clock
from homeserver.http.errors import Codes, MatrixError
from homeserver.services.events import EventsService
from homeserver.services.push.evaluator import tweaks_of
from homeserver.services.push.gateway import (
    GatewayError,
    GatewayRefused,
    PushGatewayClient,
    check_gateway_url,
)
from homeserver.storage.push import PushAction, Pusher, PushStore

logger = logging.getLogger(__name__)

MAX_APP_ID_CHARS = 64
MAX_PUSHKEY_BYTES = 512
MAX_DATA_BYTES = 8192
BATCH = 20


def _missing(name: str) -> MatrixError:
    return MatrixError(400, Codes.MISSING_PARAM, f"Missing parameter: {name}")


def _bad_json(message: str) -> MatrixError:
    return MatrixError(400, Codes.BAD_JSON, message)


def _invalid(message: str) -> MatrixError:
    return MatrixError(400, Codes.INVALID_PARAM, message)


def _string(body: dict[str, Any], key: str, *, required: bool) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise _missing(key)
        return None
    if not isinstance(value, str):
        raise _bad_json(f"'{key}' must be a string")
    return value


@dataclass(frozen=True)
class PusherRequest:
    """A validated ``POST /pushers/set`` body; ``kind`` None deletes."""

    kind: str | None
    app_id: str
    pushkey: str
    app_display_name: str = ""
    device_display_name: str = ""
    profile_tag: str | None = None
    lang: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    append: bool = False


def validate_pusher_request(body: dict[str, Any]) -> PusherRequest:
    import json

    if "kind" not in body:
        raise _missing("kind")
    kind = body["kind"]
    if kind is not None and not isinstance(kind, str):
        raise _bad_json("'kind' must be a string or null")
    app_id = _string(body, "app_id", required=True)
    pushkey = _string(body, "pushkey", required=True)
    assert app_id is not None and pushkey is not None
    if not app_id or len(app_id) > MAX_APP_ID_CHARS:
        raise _invalid(f"'app_id' must be 1 to {MAX_APP_ID_CHARS} characters")
    if not pushkey or len(pushkey.encode("utf-8")) > MAX_PUSHKEY_BYTES:
        raise _invalid(f"'pushkey' must be 1 to {MAX_PUSHKEY_BYTES} bytes")
    if kind is None:
        return PusherRequest(None, app_id, pushkey)
    if kind not in ("http", "email"):
        raise _invalid(f"Unknown pusher kind {kind!r}: expected 'http', 'email' or null")
    app_display_name = _string(body, "app_display_name", required=True)
    device_display_name = _string(body, "device_display_name", required=True)
    lang = _string(body, "lang", required=True)
    profile_tag = _string(body, "profile_tag", required=False)
    if "data" not in body or body["data"] is None:
        raise _missing("data")
    data = body["data"]
    if not isinstance(data, dict):
        raise _bad_json("'data' must be an object")
    if len(json.dumps(data)) > MAX_DATA_BYTES:
        raise _invalid(f"'data' is larger than {MAX_DATA_BYTES} bytes")
    append = body.get("append", False)
    if not isinstance(append, bool):
        raise _bad_json("'append' must be true or false")
    fmt = data.get("format")
    if fmt is not None and not isinstance(fmt, str):
        raise _bad_json("'data.format' must be a string")
    if kind == "http":
        url = data.get("url")
        if url is None:
            raise _missing("data.url")
        if not isinstance(url, str):
            raise _bad_json("'data.url' must be a string")
        problem = check_gateway_url(url)
        if problem is not None:
            raise _invalid(problem)
    else:
        if app_id != "m.email":
            raise _invalid("The app_id of an email pusher is 'm.email'")
        if "@" not in pushkey:
            raise _invalid("The pushkey of an email pusher is an email address")
    assert app_display_name is not None and device_display_name is not None
    assert lang is not None
    return PusherRequest(kind, app_id, pushkey, app_display_name, device_display_name,
                         profile_tag, lang, data, append)


def pusher_json(p: Pusher) -> dict[str, Any]:
    out: dict[str, Any] = {
        "pushkey": p.pushkey,
        "kind": p.kind,
        "app_id": p.app_id,
        "app_display_name": p.app_display_name,
        "device_display_name": p.device_display_name,
        "lang": p.lang,
        "data": p.data,
    }
    if p.profile_tag is not None:
        out["profile_tag"] = p.profile_tag
    return out


@dataclass(eq=False)
class _Running:
    pusher: Pusher
    running: bool = False
    # More notifications arrived while running.
    dirty: bool = False
    retry: Any = None  # IDelayedCall while backing off
    backoff_s: float = 0.0
    forgotten: bool = False


class PusherPool:
    INITIAL_BACKOFF_S = 1.0
    MAX_BACKOFF_S = 3600.0
    GIVE_UP_AFTER_MS = 24 * 3600 * 1000

    def __init__(
        self,
        *,
        store: PushStore,
        gateway: PushGatewayClient,
        pipeline: EventsService,
        clock: Clock,
        reactor: Any,
        include_content: bool = True,
        badge_counts_rooms: bool = False,
    ) -> None:
        self.store = store
        self.gateway = gateway
        self.pipeline = pipeline
        self.events = pipeline.store
        self.clock = clock
        self.reactor = reactor
        self.include_content = include_content
        self.badge_counts_rooms = badge_counts_rooms
        self._pushers: dict[tuple[str, str, str], _Running] = {}
        self._by_user: dict[str, set[tuple[str, str, str]]] = {}
        self._stopped = False
        self.sent = 0  # notifications delivered (for tests and metrics)

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the HTTP pushers and send whatever they have pending."""
        for p in await self.store.all_pushers():
            if p.kind == "http":
                self._track(p)
        for key in list(self._pushers):
            self._kick(key)

    def stop(self) -> None:
        self._stopped = True
        for st in self._pushers.values():
            if st.retry is not None and st.retry.active():
                st.retry.cancel()

    def _track(self, p: Pusher) -> _Running:
        st = self._pushers.get(p.key)
        if st is None:
            st = self._pushers[p.key] = _Running(p, backoff_s=self.INITIAL_BACKOFF_S)
            self._by_user.setdefault(p.user_id, set()).add(p.key)
        else:
            st.pusher = p
        return st

    def _forget(self, key: tuple[str, str, str]) -> None:
        st = self._pushers.pop(key, None)
        if st is None:
            return
        st.forgotten = True
        if st.retry is not None and st.retry.active():
            st.retry.cancel()
        keys = self._by_user.get(key[0])
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_user[key[0]]

    def has_pushers(self, user_id: str) -> bool:
        return user_id in self._by_user

    # -- the API -----------------------------------------------------------------------------------
    async def set_pusher(self, user_id: str, device_id: str | None, req: PusherRequest) -> None:
        if req.kind is None:
            await self.store.delete_pusher(user_id, req.app_id, req.pushkey)
            self._forget((user_id, req.app_id, req.pushkey))
            return
        pusher = Pusher(
            user_id=user_id, app_id=req.app_id, pushkey=req.pushkey, kind=req.kind,
            app_display_name=req.app_display_name,
            device_display_name=req.device_display_name, profile_tag=req.profile_tag,
            lang=req.lang, data=req.data, device_id=device_id,
            pushkey_ts=self.clock.time_ms(), last_stream_ordering=0, failing_since=None,
        )
        removed = await self.store.set_pusher(pusher, req.append)
        for key in removed:
            self._forget(key)
        if req.kind == "http":
            stored = await self.store.get_pusher(user_id, req.app_id, req.pushkey)
            if stored is not None:
                self._track(stored)
        else:
            self._forget(pusher.key)

    async def get_pushers(self, user_id: str) -> list[dict[str, Any]]:
        live, removed = await self.store.pushers_for_user(user_id)
        for key in removed:
            self._forget(key)
        return [pusher_json(p) for p in live]

    async def on_deactivate(self, user_id: str) -> None:
        await self.store.delete_user_pushers(user_id)
        for key in list(self._by_user.get(user_id, ())):
            self._forget(key)

    # -- delivery ----------------------------------------------------------------------------------
    def on_notified(self, actions: list[PushAction]) -> None:
        """PushEvaluator hook: new notifications for these users."""
        for user in {a.user_id for a in actions}:
            for key in list(self._by_user.get(user, ())):
                self._kick(key)

    def _kick(self, key: tuple[str, str, str]) -> None:
        st = self._pushers.get(key)
        if st is None or self._stopped:
            return
        if st.retry is not None and st.retry.active():
            return  # backing off: the retry will pick these up
        if st.running:
            st.dirty = True
            return
        defer.ensureDeferred(self._run(st))

    def _retry(self, key: tuple[str, str, str]) -> None:
        st = self._pushers.get(key)
        if st is not None:
            st.retry = None
            self._kick(key)

    async def _run(self, st: _Running) -> None:
        st.running = True
        try:
            while not st.forgotten and not self._stopped:
                st.dirty = False
                key = st.pusher.key
                fresh = await self.store.get_pusher(*key)
                if fresh is None:
                    self._forget(key)  # deleted, or its device is gone
                    return
                st.pusher = fresh
                batch = await self.store.pending_for_pusher(
                    fresh.user_id, fresh.last_stream_ordering, BATCH
                )
                if not batch:
                    if st.dirty:
                        continue
                    return
                for action in batch:
                    if not await self._deliver(st, action):
                        return
        except Exception:
            logger.exception("pusher %s failed", st.pusher.key)
        finally:
            st.running = False

    async def _deliver(self, st: _Running, action: PushAction) -> bool:
        """Send one notification; False to stop (backing off, or the pusher is gone)."""
        p = st.pusher
        try:
            payload = await self._payload(p, action)
            reply = await self.gateway.notify(p.data["url"], payload)
        except GatewayRefused as e:
            logger.warning("push gateway of %s refused %s: %s", p.key, action.event_id, e)
        except GatewayError as e:
            now = self.clock.time_ms()
            since = p.failing_since if p.failing_since is not None else now
            if now - since < self.GIVE_UP_AFTER_MS:
                logger.info("push to %s failed (%s); retrying in %.0fs", p.key, e, st.backoff_s)
                st.pusher = replace(p, failing_since=since)
                await self.store.update_pusher_progress(p.key, p.last_stream_ordering, since)
                if not st.forgotten and not self._stopped:
                    st.retry = self.reactor.callLater(st.backoff_s, self._retry, p.key)
                    st.backoff_s = min(st.backoff_s * 2, self.MAX_BACKOFF_S)
                return False
            logger.warning("giving up on pushing %s to %s after %s", action.event_id, p.key, e)
        else:
            if p.pushkey in reply.rejected:
                logger.info("push gateway rejected pushkey of %s: removing the pusher", p.key)
                await self.store.delete_pushers_by_pushkey(p.app_id, [p.pushkey], p.user_id)
                self._forget(p.key)
                return False
            self.sent += 1
        st.backoff_s = self.INITIAL_BACKOFF_S
        st.pusher = replace(p, last_stream_ordering=action.stream_ordering, failing_since=None)
        await self.store.update_pusher_progress(p.key, action.stream_ordering, None)
        return True

    async def _badge(self, user_id: str) -> int:
        notifications, rooms = await self.store.total_unread(user_id)
        return rooms if self.badge_counts_rooms else notifications

    def _device(self, p: Pusher, tweaks: dict[str, Any]) -> dict[str, Any]:
        return {
            "app_id": p.app_id,
            "pushkey": p.pushkey,
            "pushkey_ts": p.pushkey_ts // 1000,
            "data": {k: v for k, v in p.data.items() if k != "url"},
            "tweaks": tweaks,
        }

    async def _payload(self, p: Pusher, action: PushAction) -> dict[str, Any]:
        tweaks = tweaks_of(action.actions)
        stored = await self.events.get_event(action.event_id)
        ev = stored.event if stored is not None else None
        high = bool(tweaks.get("highlight") or tweaks.get("sound")) or (
            ev is not None and ev.type == "m.room.encrypted"
        )
        n: dict[str, Any] = {
            "event_id": action.event_id,
            "room_id": action.room_id,
            "counts": {"unread": await self._badge(p.user_id)},
            "prio": "high" if high else "low",
            "devices": [self._device(p, tweaks)],
        }
        if p.data.get("format") == "event_id_only" or ev is None:
            return {"notification": n}
        n["type"] = ev.type
        n["sender"] = ev.sender
        if self.include_content and ev.content:
            n["content"] = ev.content
        if ev.type == "m.room.member":
            n["user_is_target"] = ev.state_key == p.user_id
        room = action.room_id
        member = await self.pipeline.current_state_event(room, ("m.room.member", ev.sender))
        name = member.event.content.get("displayname") if member is not None else None
        if isinstance(name, str) and name:
            n["sender_display_name"] = name
        room_name = await self.pipeline.current_state_event(room, ("m.room.name", ""))
        value = room_name.event.content.get("name") if room_name is not None else None
        if isinstance(value, str) and value:
            n["room_name"] = value
        alias = await self.pipeline.current_state_event(room, ("m.room.canonical_alias", ""))
        value = alias.event.content.get("alias") if alias is not None else None
        if isinstance(value, str) and value:
            n["room_alias"] = value
        return {"notification": n}

    async def send_badge(self, user_id: str) -> None:
        """Tell the user's gateways the new unread count (after a read receipt); once, no
        retries: the next notification carries it anyway."""
        keys = list(self._by_user.get(user_id, ()))
        if not keys or self._stopped:
            return
        badge = await self._badge(user_id)
        for key in keys:
            st = self._pushers.get(key)
            if st is None:
                continue
            p = st.pusher
            payload = {"notification": {"counts": {"unread": badge}, "prio": "low",
                                        "devices": [self._device(p, {})]}}
            try:
                reply = await self.gateway.notify(p.data["url"], payload)
            except (GatewayError, GatewayRefused) as e:
                logger.info("badge update to %s failed: %s", key, e)
                continue
            if p.pushkey in reply.rejected:
                await self.store.delete_pushers_by_pushkey(p.app_id, [p.pushkey], p.user_id)
                self._forget(key)
