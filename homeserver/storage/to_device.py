"""To-device messages: an inbox per local device on the to_device stream, messages for remote
users queued as m.direct_to_device EDUs in the federation outbox (storage/federation_queue.py,
in the same commit), and the transaction IDs that make sending idempotent."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from homeserver.storage import streams
from homeserver.storage.engine import Database, Txn
from homeserver.storage.federation_queue import enqueue_txn

TO_DEVICE = "to_device"
JsonDict = dict[str, Any]


@dataclass(frozen=True)
class LocalMessage:
    user_id: str
    device_id: str  # a device ID, or "*" for every device the user has when it is stored
    content: JsonDict


@dataclass(frozen=True)
class ToDeviceMessage:
    stream_id: int
    sender: str
    type: str
    content: JsonDict

    def event(self) -> JsonDict:
        """The event as /sync delivers it."""
        return {"sender": self.sender, "type": self.type, "content": self.content}


class ToDeviceStore:
    def __init__(self, db: Database, max_per_device: int = 10_000) -> None:
        self.db = db
        # A device's inbox keeps its newest ``max_per_device`` messages: one that never
        # syncs (abandoned, lost) cannot grow the table without end.
        self.max_per_device = max_per_device

    async def send(
        self,
        sender: str,
        sender_device: str,
        txn_id: str,
        event_type: str,
        local: list[LocalMessage],
        remote: dict[str, JsonDict],
        now: int,
    ) -> int | None:
        """Store one /sendToDevice request; None if this device already sent this txn ID
        (nothing is stored again). Messages to unknown local devices are dropped. A device
        named explicitly gets its own message even if ``*`` is also given for its user."""

        def txn_fn(txn: Txn) -> int | None:
            txn.execute(
                "INSERT INTO to_device_txns (user_id, device_id, txn_id, created_ts)"
                " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (sender, sender_device, txn_id, now),
            )
            if txn.rowcount == 0:
                return None
            position = streams.advance(txn, TO_DEVICE)
            targets: dict[tuple[str, str], JsonDict] = {}
            for m in local:
                if m.device_id == "*":
                    rows = txn.execute(
                        "SELECT device_id FROM devices WHERE user_id = ?", (m.user_id,)
                    ).fetchall()
                    for (device_id,) in rows:
                        targets.setdefault((m.user_id, device_id), m.content)
                elif txn.execute(
                    "SELECT 1 FROM devices WHERE user_id = ? AND device_id = ?",
                    (m.user_id, m.device_id),
                ).fetchone():
                    targets[(m.user_id, m.device_id)] = m.content
            txn.executemany(
                "INSERT INTO to_device_inbox (user_id, device_id, stream_id, sender,"
                " event_type, content) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (user_id, device_id, position, sender, event_type,
                     json.dumps(content, ensure_ascii=False))
                    for (user_id, device_id), content in sorted(targets.items())
                ],
            )
            for user_id, device_id in sorted(targets):
                # Past the bound, the oldest go (an index range: cheap while the inbox is
                # small, at most max_per_device steps when it is full).
                txn.execute(
                    "DELETE FROM to_device_inbox WHERE user_id = ? AND device_id = ?"
                    " AND stream_id <= (SELECT stream_id FROM to_device_inbox"
                    "  WHERE user_id = ? AND device_id = ?"
                    "  ORDER BY stream_id DESC LIMIT 1 OFFSET ?)",
                    (user_id, device_id, user_id, device_id, self.max_per_device),
                )
            # Remote users' messages go into the federation outbox in the same commit.
            enqueue_txn(txn, [
                (destination, "edu", {"edu_type": "m.direct_to_device", "content": edu})
                for destination, edu in sorted(remote.items())
            ], now)
            txn.note(TO_DEVICE, position, users={user_id for user_id, _ in targets})
            return position

        return await self.db.run("send_to_device", txn_fn)

    async def get_messages(
        self, user_id: str, device_id: str, since: int, limit: int
    ) -> list[ToDeviceMessage]:
        def txn_fn(txn: Txn) -> list[ToDeviceMessage]:
            rows = txn.execute(
                "SELECT stream_id, sender, event_type, content FROM to_device_inbox"
                " WHERE user_id = ? AND device_id = ? AND stream_id > ?"
                " ORDER BY stream_id LIMIT ?",
                (user_id, device_id, since, limit),
            ).fetchall()
            return [ToDeviceMessage(int(r[0]), r[1], r[2], json.loads(r[3])) for r in rows]

        return await self.db.run("get_to_device", txn_fn)

    async def delete_up_to(self, user_id: str, device_id: str, position: int) -> int:
        def txn_fn(txn: Txn) -> int:
            txn.execute(
                "DELETE FROM to_device_inbox"
                " WHERE user_id = ? AND device_id = ? AND stream_id <= ?",
                (user_id, device_id, position),
            )
            return txn.rowcount

        return await self.db.run("delete_to_device", txn_fn)

    async def current_position(self) -> int:
        return await streams.current_position(self.db, TO_DEVICE)

    async def forget_txns_before(self, ts: int) -> None:
        await self.db.run(
            "forget_to_device_txns",
            lambda txn: txn.execute("DELETE FROM to_device_txns WHERE created_ts < ?", (ts,)),
        )
