"""Shared fixtures for the protocol-core tests: the spec's test key and a tiny room builder."""

from __future__ import annotations

from collections.abc import Callable

from signedjson.types import SigningKey, VerifyKey
from unpaddedbase64 import decode_base64

from federation.builder import build_event
from federation.events import Event, JsonDict, StateKey
from federation.keys import generate_signing_key, signing_key_from_seed, verify_key_of
from federation.room_versions import RoomVersion

# appendices.md "Cryptographic Test Vectors"
SPEC_SEED = decode_base64("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1")
SPEC_SERVER = "domain"
SPEC_KEY_ID = "ed25519:1"


def spec_key() -> SigningKey:
    return signing_key_from_seed(SPEC_SEED, "1")


SERVER = "example.org"
KEY = generate_signing_key("k1")
ALICE = "@alice:example.org"


def lookup_for(*pairs: tuple[str, SigningKey]) -> Callable[[str, str], VerifyKey | None]:
    """A key_lookup that knows the given servers' keys."""
    known = {(server, f"ed25519:{k.version}"): verify_key_of(k) for server, k in pairs}
    return lambda server, key_id: known.get((server, key_id))


class Room:
    """A minimal room built with federation.builder, tracking state and the DAG tip."""

    def __init__(self, rv: RoomVersion, creator: str = ALICE, server: str = SERVER):
        self.rv = rv
        self.server = server
        self.state: dict[StateKey, Event] = {}
        self.tip: list[Event] = []
        self.ts = 1_000
        content: JsonDict = {"room_version": rv.identifier}
        if not rv.implicit_room_creator:
            content["creator"] = creator
        room_id = None if rv.room_id_is_create_event_hash else f"!room:{server}"
        self.create = self._send("m.room.create", creator, content, "", room_id)
        self.room_id = self.create.room_id
        self.send("m.room.member", creator, {"membership": "join"}, creator)
        self.send(
            "m.room.power_levels",
            creator,
            {"users": {} if rv.creators_infinite_power else {creator: 100}},
            "",
        )
        self.send("m.room.join_rules", creator, {"join_rule": "public"}, "")

    def _send(
        self, t: str, sender: str, content: JsonDict, state_key: str | None, room_id: str | None
    ) -> Event:
        self.ts += 1
        ev = build_event(
            room_version=self.rv,
            event_type=t,
            sender=sender,
            content=content,
            room_id=room_id,
            state_key=state_key,
            prev_events=self.tip,
            current_state=self.state,
            origin_server_ts=self.ts,
            signing_key=KEY,
            server_name=self.server,
        )
        self.tip = [ev]
        if state_key is not None:
            self.state[(t, state_key)] = ev
        return ev

    def send(self, t: str, sender: str, content: JsonDict, state_key: str | None = None) -> Event:
        return self._send(t, sender, content, state_key, self.room_id)

    def by_id(self) -> dict[str, Event]:
        events = [*self.state.values()]
        return {e.event_id: e for e in events}
