"""The ordered checks on a received PDU (server-server "Checks performed on receipt of a PDU").

Each step is a pure function so the caller can fetch what the next one needs in between:

1. ``check_well_formed``      -> MalformedPdu (drop)
2. ``check_signatures``       -> BadPduSignature (drop)
3. ``check_content_hash``     -> the event, or its redacted copy on mismatch
4. ``check_auth_events``      -> AuthEventsRejected (reject): the cited auth events themselves
5-6. ``run_auth_checks``      -> accepted, rejected or soft-failed, via auth_rules.check_auth
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from federation.auth_rules import AuthError, check_auth, check_auth_events_selection
from federation.canonical_json import encode_canonical_json, strict_canonical_json_error
from federation.events import Event, JsonDict, StateKey
from federation.hashes import content_hash_error
from federation.identifiers import (
    InvalidIdentifier,
    check_event_id,
    check_room_id,
    create_event_id_from_room_id,
    parse_user_id,
)
from federation.redaction import redact_event
from federation.room_versions import EventFormat, RoomVersion
from federation.signing import KeyLookup, SignatureError, verify_event_signatures

MAX_PDU_BYTES = 65536
MAX_KEY_BYTES = 255  # type and state_key; IDs have the same limit via their grammars
MAX_PREV_EVENTS = 20
MAX_AUTH_EVENTS = 10
MAX_DEPTH_V1 = 2**63 - 1  # v6+ is capped at 2**53 - 1 by the canonical JSON check


class PduRejected(Exception):
    """A PDU failed a check; ``reason`` is human-readable."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class MalformedPdu(PduRejected):
    """Step 1: not a valid event for its room version; drop it."""


class BadPduSignature(PduRejected):
    """Step 2: required signatures missing or invalid; drop it."""


class AuthEventsRejected(PduRejected):
    """Step 4 (selection part): the cited auth events are wrong; reject the event."""


# -- step 1: well-formed -----------------------------------------------------------------------


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _byte_len(s: str) -> int:
    return len(s.encode("utf-8", "surrogatepass"))


def _check_edges(pdu: JsonDict, key: str, limit: int, rv: RoomVersion) -> None:
    edges = pdu.get(key)
    if not isinstance(edges, list):
        raise MalformedPdu(f"'{key}' must be a list")
    if len(edges) > limit:
        raise MalformedPdu(f"'{key}' has {len(edges)} entries; at most {limit} allowed")
    for edge in edges:
        if rv.event_format is EventFormat.V1:
            # [event_id, {"sha256": reference hash}]
            if not (isinstance(edge, list) and len(edge) == 2 and isinstance(edge[1], dict)):
                raise MalformedPdu(f"'{key}' entries must be [event_id, hashes] pairs")
            # No server checks these hashes, and Synapse sends some empty ({}) in v1 rooms'
            # make_join templates and events: only a hash of the wrong type is refused.
            if not isinstance(edge[1].get("sha256", ""), str):
                raise MalformedPdu(f"'{key}' entry for {edge[0]!r} has a malformed sha256 hash")
            event_id = edge[0]
        else:
            event_id = edge
        try:
            check_event_id(event_id, rv)
        except InvalidIdentifier as e:
            raise MalformedPdu(f"'{key}': {e}") from None


def check_well_formed(pdu: Any, room_version: RoomVersion) -> None:
    """Step 1: the PDU matches its room version's event format and size limits.

    Raises MalformedPdu. Only structure is judged here; signatures, hashes and auth come
    later. Lone surrogates, NaN and the like fail in every room version because such an
    event has no canonical JSON to hash or sign.
    """
    rv = room_version
    if not isinstance(pdu, dict):
        raise MalformedPdu("PDU is not a JSON object")

    if rv.strict_canonicaljson:
        reason = strict_canonical_json_error(pdu)
        if reason is not None:
            raise MalformedPdu(reason)
    try:
        size = len(encode_canonical_json(pdu))
    except (ValueError, TypeError, RecursionError) as e:
        raise MalformedPdu(f"not encodable as canonical JSON: {e}") from None
    if size > MAX_PDU_BYTES:
        raise MalformedPdu(f"PDU is {size} bytes; the limit is {MAX_PDU_BYTES}")

    required = [
        "type",
        "sender",
        "content",
        "depth",
        "hashes",
        "signatures",
        "origin_server_ts",
        "prev_events",
        "auth_events",
    ]
    if rv.event_format is EventFormat.V1:
        required.append("event_id")
    is_create = pdu.get("type") == "m.room.create" and pdu.get("state_key") == ""
    v12_create = rv.room_id_is_create_event_hash and is_create
    if not v12_create:
        required.append("room_id")
    for key in required:
        if key not in pdu:
            raise MalformedPdu(f"missing required key '{key}'")

    for key in ("type", "sender"):
        if not isinstance(pdu[key], str):
            raise MalformedPdu(f"'{key}' must be a string")
    if _byte_len(pdu["type"]) > MAX_KEY_BYTES:
        raise MalformedPdu(f"'type' exceeds {MAX_KEY_BYTES} bytes")
    if "state_key" in pdu:
        if not isinstance(pdu["state_key"], str):
            raise MalformedPdu("'state_key' must be a string")
        if _byte_len(pdu["state_key"]) > MAX_KEY_BYTES:
            raise MalformedPdu(f"'state_key' exceeds {MAX_KEY_BYTES} bytes")
    if not isinstance(pdu["content"], dict):
        raise MalformedPdu("'content' must be an object")
    for key in ("unsigned",):
        if key in pdu and not isinstance(pdu[key], dict):
            raise MalformedPdu(f"'{key}' must be an object")
    for key in ("origin", "redacts"):
        if key in pdu and not isinstance(pdu[key], str):
            raise MalformedPdu(f"'{key}' must be a string")

    if not _is_int(pdu["origin_server_ts"]):
        raise MalformedPdu("'origin_server_ts' must be an integer")
    depth = pdu["depth"]
    if not _is_int(depth):
        raise MalformedPdu("'depth' must be an integer")
    if not 0 <= depth <= MAX_DEPTH_V1:
        raise MalformedPdu(f"'depth' {depth} out of range")

    hashes = pdu["hashes"]
    if not isinstance(hashes, dict) or not isinstance(hashes.get("sha256"), str):
        raise MalformedPdu("'hashes' must be an object with a string 'sha256'")
    signatures = pdu["signatures"]
    if not isinstance(signatures, dict) or not all(
        isinstance(sigs, dict) and all(isinstance(s, str) for s in sigs.values())
        for sigs in signatures.values()
    ):
        raise MalformedPdu("'signatures' must map server names to {key_id: signature}")

    try:
        # Received events use the historical grammar: old rooms have such senders.
        parse_user_id(pdu["sender"])
        if "room_id" in pdu:
            if v12_create:
                raise MalformedPdu("a v12 m.room.create event must not have a room_id")
            check_room_id(pdu["room_id"], rv)
        if rv.event_format is EventFormat.V1:
            check_event_id(pdu["event_id"], rv)
    except InvalidIdentifier as e:
        raise MalformedPdu(str(e)) from None

    _check_edges(pdu, "prev_events", MAX_PREV_EVENTS, rv)
    _check_edges(pdu, "auth_events", MAX_AUTH_EVENTS, rv)

    if rv.room_id_is_create_event_hash and not v12_create:
        # v12: the create event is implied by the room ID and must not be cited.
        create_id = create_event_id_from_room_id(pdu["room_id"])
        if create_id in pdu["auth_events"]:
            raise MalformedPdu("auth_events must not contain the create event")


# -- step 2: signatures ------------------------------------------------------------------------


def check_signatures(event: Event, key_lookup: KeyLookup) -> None:
    """Step 2: every server that must sign has done so with a known, valid key."""
    try:
        verify_event_signatures(event, key_lookup)
    except SignatureError as e:
        raise BadPduSignature(e.reason) from None


# -- step 3: content hash ----------------------------------------------------------------------


@dataclass(frozen=True)
class HashCheck:
    """Step 3's result: the event to process further and, if redacted, why."""

    event: Event
    redacted: bool
    reason: str | None = None


def check_content_hash(event: Event) -> HashCheck:
    """Step 3: on a content hash mismatch, carry on with our own redacted copy."""
    reason = content_hash_error(event.pdu_json())
    if reason is None:
        return HashCheck(event, redacted=False)
    return HashCheck(redact_event(event), redacted=True, reason=reason)


# -- step 4 (part): the cited auth events ------------------------------------------------------


def check_auth_events(
    event: Event,
    auth_events: Mapping[str, Event],
    *,
    rejected: Collection[str] = (),
    create_event: Event | None = None,
) -> dict[StateKey, Event]:
    """Check the event's ``auth_events`` list and return it keyed by (type, state_key).

    ``auth_events`` maps event ID -> Event and must hold every cited ID; ``rejected`` holds
    the IDs of events that were rejected. In v12 pass the room's ``create_event`` (looked up
    from the room ID); it is added to the returned map so check_auth can use it.
    Raises AuthEventsRejected.
    """
    rv = event.room_version
    cited = event.auth_event_ids
    if len(set(cited)) != len(cited):
        raise AuthEventsRejected("auth_events lists the same event twice")
    missing = [eid for eid in cited if eid not in auth_events]
    if missing:
        raise AuthEventsRejected(f"auth events not available: {', '.join(missing)}")
    bad = [eid for eid in cited if eid in rejected]
    if bad:
        raise AuthEventsRejected(f"auth events were rejected: {', '.join(bad)}")
    events = [auth_events[eid] for eid in cited]
    for eid, ev in zip(cited, events, strict=True):
        if ev.event_id != eid:
            raise AuthEventsRejected(f"auth event {eid} has event ID {ev.event_id}")

    if rv.room_id_is_create_event_hash and not event.is_create():
        if any(ev.is_create() for ev in events):
            raise AuthEventsRejected("auth_events must not contain the create event")
        if create_event is None:
            raise AuthEventsRejected("the room's create event is needed to check the room ID")
        if create_event.event_id in rejected:
            raise AuthEventsRejected("the room's create event was rejected")
        if event.room_id != "!" + create_event.event_id[1:]:
            raise AuthEventsRejected(
                f"room ID {event.room_id} is not that of create event {create_event.event_id}"
            )
    try:
        check_auth_events_selection(event, events)
    except AuthError as e:
        raise AuthEventsRejected(e.reason) from None

    by_key = {ev.state_tuple: ev for ev in events}
    if rv.room_id_is_create_event_hash and create_event is not None:
        by_key[create_event.state_tuple] = create_event
    return by_key


# -- steps 4-6: authorisation ------------------------------------------------------------------


class Verdict(enum.Enum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"  # failed against its auth events or the state before it
    SOFT_FAILED = "soft_failed"  # valid, but not against the room's current state


@dataclass(frozen=True)
class AuthOutcome:
    verdict: Verdict
    reason: str | None = None


def run_auth_checks(
    event: Event,
    auth_events: Mapping[StateKey, Event],
    state_before: Mapping[StateKey, Event] | None = None,
    current_state: Mapping[StateKey, Event] | None = None,
) -> AuthOutcome:
    """Steps 4-6: auth rules against the auth events, the state before the event, and the
    current state. A map left as None skips its step (e.g. no current state for an outlier).
    In v12 each state map holds the create event, as state does."""
    for state, verdict, what in (
        (auth_events, Verdict.REJECTED, "auth events"),
        (state_before, Verdict.REJECTED, "state before the event"),
        (current_state, Verdict.SOFT_FAILED, "current state"),
    ):
        if state is None:
            continue
        try:
            check_auth(event, state)
        except AuthError as e:
            return AuthOutcome(verdict, f"against the {what}: {e.reason}")
    return AuthOutcome(Verdict.ACCEPTED)
