"""The /sync token: a position on every stream a sync reads.

``s<events>_<account_data>_<to_device>_<device_lists>_<typing>_<receipts>_<presence>``: opaque
to clients, but it starts like the ``s<stream>`` room pagination token, so /messages accepts a
``next_batch`` as ``from``/``to`` (it uses the events position), as the spec allows.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

STREAMS = (
    "events", "account_data", "to_device", "device_lists", "typing", "receipts", "presence",
)


class InvalidToken(ValueError):
    pass


@dataclass(frozen=True)
class SyncToken:
    events: int = 0
    account_data: int = 0
    to_device: int = 0
    device_lists: int = 0
    typing: int = 0
    receipts: int = 0
    presence: int = 0

    def encode(self) -> str:
        return "s" + "_".join(str(getattr(self, name)) for name in STREAMS)

    def __str__(self) -> str:
        return self.encode()

    @staticmethod
    def parse(token: str) -> SyncToken:
        if not token.startswith("s"):
            raise InvalidToken(token)
        parts = token[1:].split("_")
        if len(parts) != len(STREAMS) or not all(p.isdigit() and len(p) <= 18 for p in parts):
            raise InvalidToken(token)
        return SyncToken(*(int(p) for p in parts))

    @staticmethod
    def from_positions(positions: dict[str, int], typing: int) -> SyncToken:
        return SyncToken(
            events=positions.get("events", 0),
            account_data=positions.get("account_data", 0),
            to_device=positions.get("to_device", 0),
            device_lists=positions.get("device_lists", 0),
            typing=typing,
            receipts=positions.get("receipts", 0),
            presence=positions.get("presence", 0),
        )

    def streams(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def with_(self, **changes: int) -> SyncToken:
        return replace(self, **changes)

    def covers(self, other: SyncToken) -> bool:
        """Whether every position here is at or past ``other``'s."""
        return all(getattr(self, n) >= getattr(other, n) for n in STREAMS)

