"""Building a local event: DAG edges, auth events, content hash and signature.

The caller supplies everything that needs storage (forward extremities, current state, the
clock); this module only shapes the PDU for the room version and signs it.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Mapping, Sequence
from typing import Any

from signedjson.types import SigningKey
from unpaddedbase64 import encode_base64

from federation.auth_rules import auth_types_for_event
from federation.events import Event, JsonDict, StateKey
from federation.hashes import add_hashes, compute_reference_hash
from federation.pdu_checks import PduRejected, check_well_formed
from federation.room_versions import EventFormat, RoomVersion
from federation.signing import sign_event

# PDU "depth": below 2**63 - 1 in v1-v5; canonical JSON caps it at 2**53 - 1 from v6.
MAX_DEPTH_V1 = 2**63 - 1
MAX_DEPTH_V6 = 2**53 - 1
CREATE_KEY: StateKey = ("m.room.create", "")


class EventBuildError(ValueError):
    pass


def max_depth(room_version: RoomVersion) -> int:
    return MAX_DEPTH_V6 if room_version.strict_canonicaljson else MAX_DEPTH_V1


def _random_localpart(length: int = 18) -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


def _edges(events: Sequence[Event | str], room_version: RoomVersion) -> list[Any]:
    if room_version.event_format is not EventFormat.V1:
        return [e if isinstance(e, str) else e.event_id for e in events]
    # v1/v2: [event_id, {"sha256": reference hash}] pairs; the hash needs the event itself.
    edges: list[Any] = []
    for e in events:
        if isinstance(e, str):
            raise EventBuildError(
                f"room version {room_version.identifier} needs the event "
                f"{e}, not just its ID, to cite its reference hash"
            )
        ref = encode_base64(compute_reference_hash(e.pdu_json(), room_version))
        edges.append([e.event_id, {"sha256": ref}])
    return edges


def select_auth_events(
    room_version: RoomVersion,
    event_type: str,
    state_key: str | None,
    sender: str,
    content: Mapping[str, Any],
    current_state: Mapping[StateKey, Event],
) -> list[Event]:
    """The auth events selection applied to the state the new event will follow."""
    if event_type == "m.room.create" and state_key == "":
        return []
    wanted = auth_types_for_event(room_version, event_type, state_key, sender, content)
    if room_version.room_id_is_create_event_hash:
        # v12: the room ID stands for the create event, which must never be cited.
        wanted.discard(CREATE_KEY)
    return [current_state[k] for k in sorted(wanted) if k in current_state]


def build_event(
    *,
    room_version: RoomVersion,
    event_type: str,
    sender: str,
    content: JsonDict,
    room_id: str | None,
    prev_events: Sequence[Event | str],
    current_state: Mapping[StateKey, Event],
    origin_server_ts: int,
    signing_key: SigningKey,
    server_name: str,
    state_key: str | None = None,
    depth: int | None = None,
    redacts: str | None = None,
    unsigned: JsonDict | None = None,
) -> Event:
    """Build, hash and sign a new event.

    ``prev_events`` are the forward extremities (Events, or bare IDs when ``depth`` is given
    and the room version does not need their reference hashes). ``current_state`` is the
    state the event follows, from which its auth events are picked. ``room_id`` must be None
    for a v12 create event (its room ID is derived from its own hash) and set otherwise.
    """
    is_create = event_type == "m.room.create" and state_key == ""
    if room_version.room_id_is_create_event_hash and is_create:
        if room_id is not None:
            raise EventBuildError("a v12 create event has no room_id")
    elif room_id is None:
        raise EventBuildError("room_id is required")

    if depth is None:
        if any(isinstance(p, str) for p in prev_events):
            raise EventBuildError("depth is required when prev_events are given as IDs")
        depth = max((p.depth for p in prev_events if isinstance(p, Event)), default=0) + 1
    depth = min(depth, max_depth(room_version))

    auth = select_auth_events(room_version, event_type, state_key, sender, content, current_state)
    content = dict(content)
    pdu: JsonDict = {
        "type": event_type,
        "sender": sender,
        "content": content,
        "depth": depth,
        "origin_server_ts": origin_server_ts,
        "prev_events": _edges(prev_events, room_version),
        "auth_events": _edges(auth, room_version),
    }
    if room_id is not None:
        pdu["room_id"] = room_id
    if state_key is not None:
        pdu["state_key"] = state_key
    if redacts is not None:
        # v11 moved `redacts` into content (and a top-level one would be unprotected).
        if room_version.updated_redaction_rules:
            content["redacts"] = redacts
        else:
            pdu["redacts"] = redacts
    if room_version.event_format is EventFormat.V1:
        pdu["event_id"] = f"${_random_localpart()}:{server_name}"

    pdu = sign_event(add_hashes(pdu), room_version, signing_key, server_name)
    if unsigned:
        # Added after signing: unsigned is covered by neither hash nor signature.
        pdu["unsigned"] = dict(unsigned)

    # Never emit an event our own (and every other) server would drop.
    try:
        check_well_formed(pdu, room_version)
    except PduRejected as e:
        raise EventBuildError(e.reason) from None
    return Event(pdu, room_version)


def membership_from_template(
    *,
    room_version: RoomVersion,
    template: Any,
    room_id: str,
    user_id: str,
    content: JsonDict,
    origin_server_ts: int,
    signing_key: SigningKey,
    server_name: str,
) -> Event:
    """Our signed membership event from a resident server's ``make_join`` / ``make_leave`` /
    ``make_knock`` template: only the template's DAG fields are taken (type, room, sender,
    state key, depth, prev and auth events), and it must be for ``user_id``'s membership in
    ``room_id``; ``content`` (with its ``membership``) is ours. Raises EventBuildError for a
    template about something else."""
    if not isinstance(template, dict):
        raise EventBuildError("the template is not an object")
    pdu: JsonDict = {
        k: template[k] for k in ("type", "room_id", "sender", "state_key", "depth",
                                 "prev_events", "auth_events") if k in template
    }
    if (pdu.get("type") != "m.room.member" or pdu.get("sender") != user_id
            or pdu.get("state_key") != user_id or pdu.get("room_id") != room_id):
        raise EventBuildError("the template is for another event than this membership")
    pdu["content"] = dict(content)
    pdu["origin_server_ts"] = origin_server_ts
    if room_version.event_format is EventFormat.V1:
        # v1/v2: the sending server names its event (a template carries no ID).
        pdu["event_id"] = f"${_random_localpart()}:{server_name}"
    return Event(sign_event(add_hashes(pdu), room_version, signing_key, server_name),
                 room_version)
