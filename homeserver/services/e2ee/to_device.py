"""Send-to-device messaging (client-server "Send-to-Device messaging").

For the sync engineer: ``get_to_device(user, device, since, limit)`` returns the waiting
messages in order of arrival with the stream position of the last one; once the client syncs
again with a token past that position, ``delete_to_device_up_to(user, device, position)``
deletes what it has acknowledged. Messages to remote users are queued as ``m.direct_to_device``
EDUs in the federation outbox in the same commit; ``on_remote`` hooks wake the sender.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from federation.identifiers import InvalidIdentifier, get_domain, is_valid_user_id
from homeserver.clock import Clock
from homeserver.services.e2ee.validation import bad_json, invalid
from homeserver.storage.to_device import LocalMessage, ToDeviceStore

JsonDict = dict[str, Any]

# The spec recommends at most 100 messages per /sync response.
DEFAULT_SYNC_LIMIT = 100
MAX_TARGET_DEVICES = 10_000
# Transaction IDs are remembered this long; a retry after that is a new request.
TXN_LIFETIME_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class ToDeviceBatch:
    events: list[JsonDict]  # {"sender", "type", "content"}, oldest first
    position: int  # the stream position of the last event; ``since`` when there are none


class ToDeviceService:
    def __init__(self, store: ToDeviceStore, server_name: str, clock: Clock) -> None:
        self.store = store
        self.server_name = server_name
        self.clock = clock
        self._last_cleanup = 0
        # Called with the destinations whose m.direct_to_device EDUs were just queued in the
        # federation outbox (the federation sender wakes them).
        self.on_remote: list[Callable[[list[str]], None]] = []

    async def send(
        self, sender: str, sender_device: str, event_type: str, txn_id: str, body: JsonDict
    ) -> None:
        if not event_type or len(event_type) > 255:
            raise invalid("The event type must be 1 to 255 characters")
        if len(txn_id) > 255:
            raise invalid("The transaction ID must be at most 255 characters")
        messages = body.get("messages")
        if not isinstance(messages, dict):
            raise bad_json("'messages' must map user IDs to device IDs to message contents")
        local: list[LocalMessage] = []
        remote: dict[str, JsonDict] = {}
        count = 0
        for user_id, devices in messages.items():
            if not isinstance(devices, dict) or not all(
                isinstance(c, dict) for c in devices.values()
            ):
                raise bad_json("'messages' values must map device IDs to message objects")
            count += len(devices)
            if not is_valid_user_id(user_id):
                raise invalid(f"Invalid user ID {user_id[:300]!r}")
            try:
                domain = get_domain(user_id)
            except InvalidIdentifier:
                raise invalid(f"Invalid user ID {user_id[:300]!r}") from None
            if domain == self.server_name:
                local.extend(LocalMessage(user_id, d, c) for d, c in devices.items())
            else:
                edu = remote.setdefault(domain, {
                    "sender": sender,
                    "type": event_type,
                    "message_id": secrets.token_urlsafe(16),
                    "messages": {},
                })
                edu["messages"][user_id] = devices
        if count > MAX_TARGET_DEVICES:
            raise invalid(f"At most {MAX_TARGET_DEVICES} devices per request")
        now = self.clock.time_ms()
        stored = await self.store.send(sender, sender_device, txn_id, event_type, local, remote,
                                       now)
        if stored is not None and remote:
            for hook in self.on_remote:
                hook(sorted(remote))
        if now - self._last_cleanup > 3600 * 1000:
            self._last_cleanup = now
            await self.store.forget_txns_before(now - TXN_LIFETIME_MS)

    async def get_to_device(
        self, user_id: str, device_id: str, since: int, limit: int = DEFAULT_SYNC_LIMIT
    ) -> ToDeviceBatch:
        messages = await self.store.get_messages(user_id, device_id, since, limit)
        position = messages[-1].stream_id if messages else since
        return ToDeviceBatch([m.event() for m in messages], position)

    async def delete_to_device_up_to(self, user_id: str, device_id: str, position: int) -> int:
        """Delete messages the device has acknowledged; returns how many."""
        return await self.store.delete_up_to(user_id, device_id, position)

    async def current_position(self) -> int:
        return await self.store.current_position()

