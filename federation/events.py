"""The event model: an immutable view over a PDU's JSON for one room version.

Protocol code (auth rules, state resolution, redaction, checks) works on ``Event``; it never
needs to know whether prev_events are v1-style ``[[id, hashes], ...]`` pairs or plain IDs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from federation.room_versions import EventFormat, RoomVersion

JsonDict = dict[str, Any]
StateKey = tuple[str, str]  # (event type, state_key)


class Event:
    """A PDU in a given room version.

    ``pdu`` is the event JSON as sent over federation (including ``hashes`` and
    ``signatures``). It must not be mutated after construction. For room versions 3+ the
    event ID is the reference hash, computed on first access.
    """

    __slots__ = ("_event_id", "_pdu", "_room_id", "room_version")

    def __init__(self, pdu: JsonDict, room_version: RoomVersion, event_id: str | None = None):
        self._pdu = pdu
        self.room_version = room_version
        self._event_id = event_id
        self._room_id: str | None = None

    # -- identity --------------------------------------------------------------------------
    @property
    def event_id(self) -> str:
        if self._event_id is None:
            if self.room_version.event_format is EventFormat.V1:
                eid = self._pdu.get("event_id")
                if not isinstance(eid, str):
                    raise ValueError("v1/v2 event has no event_id")
                self._event_id = eid
            else:
                from federation.hashes import compute_event_id

                self._event_id = compute_event_id(self._pdu, self.room_version)
        return self._event_id

    @property
    def room_id(self) -> str:
        if self._room_id is None:
            rid = self._pdu.get("room_id")
            if rid is None and self.room_version.room_id_is_create_event_hash and self.is_create():
                # v12: the create event has no room_id; the room ID is derived from its hash.
                rid = "!" + self.event_id[1:]
            if not isinstance(rid, str):
                raise ValueError("event has no room_id")
            self._room_id = rid
        return self._room_id

    # -- plain fields ------------------------------------------------------------------------
    @property
    def type(self) -> str:
        return self._pdu["type"]

    @property
    def sender(self) -> str:
        return self._pdu["sender"]

    @property
    def state_key(self) -> str | None:
        return self._pdu.get("state_key")

    @property
    def content(self) -> JsonDict:
        return self._pdu.get("content", {})

    @property
    def depth(self) -> int:
        return self._pdu.get("depth", 0)

    @property
    def origin_server_ts(self) -> int:
        return self._pdu.get("origin_server_ts", 0)

    @property
    def hashes(self) -> Mapping[str, str]:
        return self._pdu.get("hashes", {})

    @property
    def signatures(self) -> Mapping[str, Mapping[str, str]]:
        return self._pdu.get("signatures", {})

    @property
    def unsigned(self) -> JsonDict:
        return self._pdu.get("unsigned", {})

    @property
    def redacts(self) -> str | None:
        """The redacted event's ID: a top-level key before v11, a content key from v11."""
        if self.room_version.updated_redaction_rules:
            r = self.content.get("redacts", self._pdu.get("redacts"))
        else:
            r = self._pdu.get("redacts")
        return r if isinstance(r, str) else None

    @property
    def membership(self) -> str | None:
        m = self.content.get("membership")
        return m if isinstance(m, str) else None

    # -- DAG edges ----------------------------------------------------------------------------
    @property
    def prev_event_ids(self) -> list[str]:
        return _edge_ids(self._pdu.get("prev_events", []), self.room_version)

    @property
    def auth_event_ids(self) -> list[str]:
        return _edge_ids(self._pdu.get("auth_events", []), self.room_version)

    # -- helpers ---------------------------------------------------------------------------
    def is_state(self) -> bool:
        return "state_key" in self._pdu

    def is_create(self) -> bool:
        return self._pdu.get("type") == "m.room.create" and self._pdu.get("state_key") == ""

    @property
    def state_tuple(self) -> StateKey:
        sk = self.state_key
        if sk is None:
            raise ValueError("not a state event")
        return (self.type, sk)

    def get(self, key: str, default: Any = None) -> Any:
        return self._pdu.get(key, default)

    def pdu_json(self) -> JsonDict:
        """The PDU as sent over federation (a shallow copy; nested values are shared)."""
        return dict(self._pdu)

    def __repr__(self) -> str:
        return f"<Event {self._event_id or '?'} {self.type} {self.state_key!r}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Event) and other.event_id == self.event_id

    def __hash__(self) -> int:
        return hash(self.event_id)


def _edge_ids(edges: Any, room_version: RoomVersion) -> list[str]:
    if room_version.event_format is EventFormat.V1:
        # [[event_id, {"sha256": ...}], ...]
        return [e[0] for e in edges if isinstance(e, list) and e and isinstance(e[0], str)]
    return [e for e in edges if isinstance(e, str)]
