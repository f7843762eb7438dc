"""Build rooms of Events with explicit event IDs for authorisation-rule tests.

A ``Room`` tracks its current state; ``send`` checks an event against the state selected by
``auth_types_for_event`` (as a server does on receipt) and applies it, ``force`` applies it
unchecked to set up a scenario, ``check`` only checks.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from federation.auth_rules import auth_types_for_event, check_auth
from federation.events import Event, StateKey
from federation.identifiers import get_domain
from federation.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion

ALL_VERSIONS = [str(n) for n in range(1, 13)]

CREATOR = "@creator:a.test"
MOD = "@mod:a.test"  # power level 100 in the standard room
HALF = "@half:b.test"  # power level 50
ALICE = "@alice:b.test"  # default power level (0)
BOB = "@bob:c.test"
CAROL = "@carol:c.test"

_ids = itertools.count(1)


def versions(predicate: Any = None) -> list[str]:
    """Room version identifiers whose RoomVersion satisfies ``predicate``."""
    return [v for v in ALL_VERSIONS if predicate is None or predicate(KNOWN_ROOM_VERSIONS[v])]


class Room:
    def __init__(
        self,
        version: str,
        *,
        creator: str = CREATOR,
        create_content: Mapping[str, Any] | None = None,
    ):
        self.rv: RoomVersion = KNOWN_ROOM_VERSIONS[version]
        self.state: dict[StateKey, Event] = {}
        self.last: str | None = None
        content: dict[str, Any] = {"room_version": version}
        if not self.rv.implicit_room_creator:
            content["creator"] = creator
        content.update(create_content or {})
        if self.rv.room_id_is_create_event_hash:
            create_id = self.new_id(creator)
            self.room_id = "!" + create_id[1:]
            self.create = self.make(
                "m.room.create", creator, content, "", prev_events=[], event_id=create_id
            )
        else:
            self.room_id = f"!room{next(_ids)}:{get_domain(creator)}"
            self.create = self.make("m.room.create", creator, content, "", prev_events=[])
        self.apply(self.create)

    # -- building ------------------------------------------------------------------------------
    def new_id(self, sender: str) -> str:
        n = next(_ids)
        if self.rv.uses_server_assigned_event_ids:
            # v1/v2 event IDs carry the originating server's domain (used by the v1
            # redaction rule).
            return f"$ev{n}:{get_domain(sender)}"
        return f"$ev{n}hash"

    def pdu(
        self,
        type: str,
        sender: str,
        content: Mapping[str, Any],
        state_key: str | None = None,
        *,
        prev_events: list[str] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        if prev_events is None:
            prev_events = [self.last] if self.last else []
        pdu: dict[str, Any] = {
            "type": type,
            "sender": sender,
            "content": dict(content),
            "room_id": self.room_id,
            "depth": 1,
            "origin_server_ts": 0,
            "signatures": {get_domain(sender): {"ed25519:k": "sig"}},
        }
        if self.rv.uses_server_assigned_event_ids:
            pdu["prev_events"] = [[p, {}] for p in prev_events]
        else:
            pdu["prev_events"] = list(prev_events)
        if state_key is not None:
            pdu["state_key"] = state_key
        if type == "m.room.create" and self.rv.room_id_is_create_event_hash:
            del pdu["room_id"]
        pdu.update(extra)
        return pdu

    def make(
        self,
        type: str,
        sender: str,
        content: Mapping[str, Any],
        state_key: str | None = None,
        *,
        event_id: str | None = None,
        prev_events: list[str] | None = None,
        **extra: Any,
    ) -> Event:
        pdu = self.pdu(type, sender, content, state_key, prev_events=prev_events, **extra)
        eid = event_id or self.new_id(sender)
        if self.rv.uses_server_assigned_event_ids:
            pdu["event_id"] = eid
        return Event(pdu, self.rv, event_id=eid)

    def member_event(
        self, user: str, membership: str, sender: str | None = None, **content: Any
    ) -> Event:
        return self.make(
            "m.room.member", sender or user, {"membership": membership, **content}, user
        )

    # -- state ---------------------------------------------------------------------------------
    def apply(self, event: Event) -> Event:
        if event.is_state():
            self.state[event.state_tuple] = event
        self.last = event.event_id
        return event

    def auth_for(self, event: Event) -> dict[StateKey, Event]:
        """The current state the event's auth events would cite, plus the create event."""
        keys = auth_types_for_event(
            self.rv, event.type, event.state_key, event.sender, event.content
        )
        selected = {k: self.state[k] for k in keys if k in self.state}
        selected[("m.room.create", "")] = self.create
        return selected

    def check(self, event: Event) -> None:
        check_auth(event, self.auth_for(event))

    def send(self, event: Event) -> Event:
        self.check(event)
        return self.apply(event)

    def force(self, event: Event) -> Event:
        return self.apply(event)

    def set_member(self, user: str, membership: str, sender: str | None = None) -> Event:
        return self.force(self.member_event(user, membership, sender))

    def power_levels_content(self, **overrides: Any) -> dict[str, Any]:
        """The standard room's power levels: MOD 100, HALF 50, the creator 100 (v1-v11)."""
        users: dict[str, Any] = {MOD: 100, HALF: 50}
        if not self.rv.creators_infinite_power:
            users[CREATOR] = 100
        content: dict[str, Any] = {"users": users}
        content.update(overrides)
        return content

    @property
    def power_levels(self) -> Event | None:
        return self.state.get(("m.room.power_levels", ""))


def standard_room(
    version: str,
    *,
    join_rule: str | None = "public",
    members: tuple[str, ...] = (MOD, HALF),
    create_content: Mapping[str, Any] | None = None,
    **pl_overrides: Any,
) -> Room:
    """A room with the creator joined, power levels (MOD 100, HALF 50), a join rule, and
    ``members`` joined."""
    room = Room(version, create_content=create_content)
    room.send(room.member_event(CREATOR, "join"))
    room.send(
        room.make("m.room.power_levels", CREATOR, room.power_levels_content(**pl_overrides), "")
    )
    if join_rule is not None:
        room.send(room.make("m.room.join_rules", CREATOR, {"join_rule": join_rule}, ""))
    for user in members:
        room.set_member(user, "join")
    return room
