from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from federation.canonical_json import encode_canonical_json
from federation.events import Event, JsonDict
from federation.hashes import add_hashes
from federation.keys import generate_signing_key
from federation.pdu_checks import (
    AuthEventsRejected,
    BadPduSignature,
    MalformedPdu,
    PduRejected,
    Verdict,
    check_auth_events,
    check_content_hash,
    check_signatures,
    check_well_formed,
    run_auth_checks,
)
from federation.room_versions import RoomVersion, get_room_version
from federation.signing import sign_event
from tests.federation._pdu_helpers import ALICE, KEY, SERVER, Room, lookup_for

V1, V5, V6, V11, V12 = (get_room_version(v) for v in ("1", "5", "6", "11", "12"))
LOOKUP = lookup_for((SERVER, KEY))
BOB = "@bob:example.org"


def _message(rv: RoomVersion) -> tuple[Room, Event]:
    room = Room(rv)
    return room, room.send("m.room.message", ALICE, {"body": "hello"})


def _resign(pdu: JsonDict, rv: RoomVersion) -> JsonDict:
    """Re-hash and re-sign, so a test isolates the one defect it introduced."""
    pdu = dict(pdu)
    pdu.pop("hashes", None)
    return sign_event(add_hashes(pdu), rv, KEY, SERVER)


# -- the full happy path ---------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1", "3", "6", "10", "11", "12"])
def test_valid_event_passes_every_step(version: str) -> None:
    rv = get_room_version(version)
    room, msg = _message(rv)
    check_well_formed(msg.pdu_json(), rv)
    check_signatures(msg, LOOKUP)
    hashed = check_content_hash(msg)
    assert not hashed.redacted and hashed.event is msg
    auth_map = check_auth_events(msg, room.by_id(), create_event=room.create)
    assert set(auth_map) >= {("m.room.create", ""), ("m.room.member", ALICE)}
    outcome = run_auth_checks(msg, auth_map, room.state, room.state)
    assert outcome.verdict is Verdict.ACCEPTED and outcome.reason is None


# -- step 1: well-formed ---------------------------------------------------------------------

Mutation = Callable[[JsonDict], None]


def _set(key: str, value: Any) -> Mutation:
    return lambda pdu: pdu.__setitem__(key, value)


def _del(key: str) -> Mutation:
    return lambda pdu: pdu.pop(key)


MALFORMED: list[tuple[str, Mutation, str]] = [
    *[
        (f"missing {k}", _del(k), f"missing required key '{k}'")
        for k in (
            "type",
            "sender",
            "content",
            "depth",
            "hashes",
            "signatures",
            "origin_server_ts",
            "prev_events",
            "auth_events",
            "room_id",
        )
    ],
    ("type not str", _set("type", 5), "'type' must be a string"),
    ("sender not str", _set("sender", ["@a:b"]), "'sender' must be a string"),
    ("content not object", _set("content", "x"), "'content' must be an object"),
    ("state_key not str", _set("state_key", 1), "'state_key' must be a string"),
    ("unsigned not object", _set("unsigned", []), "'unsigned' must be an object"),
    ("origin not str", _set("origin", 1), "'origin' must be a string"),
    ("ts not int", _set("origin_server_ts", "1"), "'origin_server_ts' must be an integer"),
    ("ts bool", _set("origin_server_ts", True), "'origin_server_ts' must be an integer"),
    ("depth negative", _set("depth", -1), "out of range"),
    ("no sha256", _set("hashes", {}), "'hashes' must be an object"),
    ("sha256 not str", _set("hashes", {"sha256": 1}), "'hashes' must be an object"),
    ("signatures shape", _set("signatures", {"x": "y"}), "'signatures' must map"),
    ("long type", _set("type", "t" * 256), "'type' exceeds 255 bytes"),
    ("long state_key", _set("state_key", "\u00e9" * 128), "'state_key' exceeds 255 bytes"),
    ("bad sender", _set("sender", "alice"), "user ID must start with '@'"),
    ("sender no domain", _set("sender", "@alice"), "user ID has no domain"),
    ("long sender", _set("sender", "@" + "a" * 250 + ":example.org"), "exceeds 255 bytes"),
    ("bad room_id", _set("room_id", "#r:example.org"), "room ID must start with '!'"),
    ("prev not list", _set("prev_events", "x"), "'prev_events' must be a list"),
    ("bad prev id", _set("prev_events", ["$short"]), "not a reference hash"),
    ("v3-style prev id", _set("prev_events", ["$" + "+" * 43]), "not a reference hash"),
    ("too many prev", _set("prev_events", ["$" + "a" * 43] * 21), "at most 20"),
    ("too many auth", _set("auth_events", ["$" + "a" * 43] * 11), "at most 10"),
    ("oversize", lambda p: p["content"].__setitem__("body", "x" * 65536), "65536"),
    ("float", lambda p: p["content"].__setitem__("n", 1.5), "floats are not allowed"),
    ("big int", lambda p: p["content"].__setitem__("n", 2**53), "outside the canonical"),
    ("lone surrogate", lambda p: p["content"].__setitem__("n", "\ud800"), "surrogate"),
]


@pytest.mark.parametrize(("what", "mutate", "reason"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_events_are_dropped_with_reason(what: str, mutate: Mutation, reason: str) -> None:
    _, msg = _message(V11)
    pdu = copy.deepcopy(msg.pdu_json())
    mutate(pdu)
    with pytest.raises(MalformedPdu) as exc:
        check_well_formed(pdu, V11)
    assert reason in exc.value.reason


def test_non_object_pdu() -> None:
    with pytest.raises(MalformedPdu, match="not a JSON object"):
        check_well_formed([1, 2], V11)


def test_size_limit_is_on_the_whole_canonical_pdu() -> None:
    _, msg = _message(V11)
    pdu = copy.deepcopy(msg.pdu_json())
    size = len(encode_canonical_json(pdu))
    pdu["content"]["pad"] = ""
    pad_len = 65536 - size - len(',"pad":""')
    pdu["content"]["pad"] = "p" * pad_len
    check_well_formed(pdu, V11)  # exactly 65536 bytes is allowed
    pdu["content"]["pad"] += "p"
    with pytest.raises(MalformedPdu, match="65537 bytes"):
        check_well_formed(pdu, V11)


def test_strict_json_only_from_v6() -> None:
    _, msg = _message(V5)
    pdu = copy.deepcopy(msg.pdu_json())
    pdu["content"]["n"] = 2**60
    check_well_formed(pdu, V5)  # v1-v5 must tolerate it
    _, msg6 = _message(V6)
    pdu6 = copy.deepcopy(msg6.pdu_json())
    pdu6["content"]["n"] = 2**60
    with pytest.raises(MalformedPdu, match="outside the canonical JSON range"):
        check_well_formed(pdu6, V6)


def test_v1_event_id_required_and_checked() -> None:
    _, msg = _message(V1)
    pdu = copy.deepcopy(msg.pdu_json())
    del pdu["event_id"]
    with pytest.raises(MalformedPdu, match="'event_id'"):
        check_well_formed(pdu, V1)
    pdu["event_id"] = "$nodomain"
    with pytest.raises(MalformedPdu, match="event ID has no domain"):
        check_well_formed(pdu, V1)
    edge = copy.deepcopy(msg.pdu_json())
    # An edge without its hash is accepted, as Synapse sends them; a malformed one is not.
    edge["prev_events"] = [["$a:example.org", {}]]
    check_well_formed(edge, V1)
    edge["prev_events"] = [["$a:example.org", {"sha256": 5}]]
    with pytest.raises(MalformedPdu, match="malformed sha256"):
        check_well_formed(edge, V1)
    edge["prev_events"] = ["$a:example.org"]
    with pytest.raises(MalformedPdu, match="pairs"):
        check_well_formed(edge, V1)


def test_historical_sender_accepted() -> None:
    _, msg = _message(V11)
    pdu = dict(msg.pdu_json(), sender="@Old User!:example.org")
    check_well_formed(pdu, V11)


def test_v12_room_id_rules() -> None:
    room, msg = _message(V12)
    create = room.create.pdu_json()
    check_well_formed(create, V12)  # no room_id on the create event is fine
    with pytest.raises(MalformedPdu, match="must not have a room_id"):
        check_well_formed(dict(create, room_id=room.room_id), V12)
    with pytest.raises(MalformedPdu, match="'room_id'"):
        check_well_formed({k: v for k, v in msg.pdu_json().items() if k != "room_id"}, V12)
    with pytest.raises(MalformedPdu, match="not a create event hash"):
        check_well_formed(dict(msg.pdu_json(), room_id="!r:example.org"), V12)
    citing_create = dict(msg.pdu_json(), auth_events=[*msg.auth_event_ids, room.create.event_id])
    with pytest.raises(MalformedPdu, match="must not contain the create event"):
        check_well_formed(citing_create, V12)


# -- step 2: signatures ----------------------------------------------------------------------


def test_tampered_event_fails_signature_check() -> None:
    _, msg = _message(V11)
    tampered = Event(dict(msg.pdu_json(), sender="@mallory:example.org"), V11)
    with pytest.raises(BadPduSignature, match="bad signature"):
        check_signatures(tampered, LOOKUP)


def test_forged_event_fails_signature_check() -> None:
    _, msg = _message(V11)
    forger = generate_signing_key(KEY.version)  # same key ID, different key
    pdu = dict(msg.pdu_json(), signatures={})
    forged = Event(sign_event(pdu, V11, forger, SERVER), V11)
    with pytest.raises(BadPduSignature, match="bad signature"):
        check_signatures(forged, LOOKUP)
    unsigned = Event(pdu, V11)
    with pytest.raises(BadPduSignature, match=r"not signed by example\.org"):
        check_signatures(unsigned, LOOKUP)


def test_unknown_key_fails_signature_check() -> None:
    _, msg = _message(V11)
    with pytest.raises(BadPduSignature, match="known"):
        check_signatures(msg, lambda server, key_id: None)


# -- step 3: content hash --------------------------------------------------------------------


def test_content_hash_mismatch_yields_redacted_event() -> None:
    _, msg = _message(V11)
    altered = Event(dict(msg.pdu_json(), content={"body": "not what was sent"}), V11)
    # Still correctly signed: the signature covers only the redacted form.
    check_signatures(altered, LOOKUP)
    result = check_content_hash(altered)
    assert result.redacted
    assert result.reason is not None and "does not match" in result.reason
    assert result.event.content == {}
    assert result.event.event_id == msg.event_id


def test_missing_hash_yields_redacted_event() -> None:
    _, msg = _message(V11)
    result = check_content_hash(Event(dict(msg.pdu_json(), hashes={}), V11))
    assert result.redacted and result.reason == "event has no sha256 content hash"


# -- step 4: the auth events list ------------------------------------------------------------


def _with_auth(msg: Event, auth_ids: list[Any], rv: RoomVersion) -> Event:
    return Event(_resign(dict(msg.pdu_json(), auth_events=auth_ids), rv), rv)


def test_auth_events_missing_duplicate_or_rejected() -> None:
    room, msg = _message(V11)
    by_id = room.by_id()
    dup = _with_auth(msg, [*msg.auth_event_ids, msg.auth_event_ids[0]], V11)
    with pytest.raises(AuthEventsRejected, match="same event twice"):
        check_auth_events(dup, by_id)
    with pytest.raises(AuthEventsRejected, match="not available"):
        check_auth_events(msg, {})
    with pytest.raises(AuthEventsRejected, match="were rejected"):
        check_auth_events(msg, by_id, rejected={msg.auth_event_ids[0]})


def test_auth_events_outside_the_selection_are_rejected() -> None:
    room, msg = _message(V11)
    join_rules = room.state[("m.room.join_rules", "")].event_id
    extra = _with_auth(msg, [*msg.auth_event_ids, join_rules], V11)
    with pytest.raises(AuthEventsRejected, match="unexpected auth event"):
        check_auth_events(extra, room.by_id())
    no_create = _with_auth(msg, [e for e in msg.auth_event_ids if e != room.create.event_id], V11)
    with pytest.raises(AuthEventsRejected, match=r"no m\.room\.create"):
        check_auth_events(no_create, room.by_id())


def test_v12_auth_events_and_room_id() -> None:
    room, msg = _message(V12)
    by_id = {**room.by_id(), room.create.event_id: room.create}
    auth_map = check_auth_events(msg, by_id, create_event=room.create)
    assert auth_map[("m.room.create", "")] is room.create  # supplied for check_auth
    with pytest.raises(AuthEventsRejected, match="create event is needed"):
        check_auth_events(msg, by_id)
    with_create = _with_auth(msg, [*msg.auth_event_ids, room.create.event_id], V12)
    with pytest.raises(AuthEventsRejected, match="must not contain the create event"):
        check_auth_events(with_create, by_id, create_event=room.create)
    other_room = Room(V12, creator="@carol:example.org")
    with pytest.raises(AuthEventsRejected, match="is not that of create event"):
        check_auth_events(msg, by_id, create_event=other_room.create)
    with pytest.raises(AuthEventsRejected, match="create event was rejected"):
        check_auth_events(msg, by_id, create_event=room.create, rejected={room.create.event_id})


# -- steps 4-6: auth rules -------------------------------------------------------------------


def test_unauthorised_event_is_rejected() -> None:
    room = Room(V11)
    # Bob never joined, yet cites Alice's auth events.
    pdu = dict(room.send("m.room.message", ALICE, {"body": "x"}).pdu_json(), sender=BOB)
    ev = Event(_resign(pdu, V11), V11)
    outcome = run_auth_checks(ev, room.state)
    assert outcome.verdict is Verdict.REJECTED
    assert outcome.reason is not None and "auth events" in outcome.reason


def test_event_valid_then_but_not_now_is_soft_failed() -> None:
    room = Room(V11)
    room.send("m.room.member", BOB, {"membership": "join"}, BOB)
    state_before = dict(room.state)
    bob_msg = room.send("m.room.message", BOB, {"body": "before the ban"})
    room.send("m.room.member", ALICE, {"membership": "ban"}, BOB)
    outcome = run_auth_checks(bob_msg, state_before, state_before, room.state)
    assert outcome.verdict is Verdict.SOFT_FAILED
    assert outcome.reason is not None and "current state" in outcome.reason
    # Without a current state to compare against (e.g. an outlier), it is accepted.
    assert run_auth_checks(bob_msg, state_before).verdict is Verdict.ACCEPTED


def test_failure_classes_share_a_base_with_reason() -> None:
    for cls in (MalformedPdu, BadPduSignature, AuthEventsRejected):
        err = cls("why")
        assert isinstance(err, PduRejected) and err.reason == "why"
