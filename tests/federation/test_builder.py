from __future__ import annotations

import pytest
from unpaddedbase64 import encode_base64

from federation.builder import (
    MAX_DEPTH_V6,
    EventBuildError,
    build_event,
    membership_from_template,
)
from federation.hashes import check_content_hash, compute_reference_hash
from federation.identifiers import is_valid_event_id
from federation.pdu_checks import check_well_formed
from federation.room_versions import get_room_version
from federation.signing import verify_event_signatures
from tests.federation._pdu_helpers import ALICE, KEY, SERVER, Room, lookup_for

V1, V3, V10, V11, V12 = (get_room_version(v) for v in ("1", "3", "10", "11", "12"))
LOOKUP = lookup_for((SERVER, KEY))


@pytest.mark.parametrize("version", [str(n) for n in range(1, 13)])
def test_built_events_are_valid_signed_and_hashed(version: str) -> None:
    room = Room(get_room_version(version))
    msg = room.send("m.room.message", ALICE, {"body": "hi"})
    for ev in [room.create, *room.state.values(), msg]:
        check_well_formed(ev.pdu_json(), room.rv)
        assert check_content_hash(ev.pdu_json())
        verify_event_signatures(ev, LOOKUP)
        assert is_valid_event_id(ev.event_id, room.rv)
        assert ev.room_id == room.room_id
    assert msg.depth == 5
    assert msg.prev_event_ids == [room.state[("m.room.join_rules", "")].event_id]


def test_v12_create_event_has_no_room_id_and_is_never_an_auth_event() -> None:
    room = Room(V12)
    assert "room_id" not in room.create.pdu_json()
    assert room.create.auth_event_ids == []
    assert room.room_id == "!" + room.create.event_id[1:]
    msg = room.send("m.room.message", ALICE, {"body": "hi"})
    assert room.create.event_id not in msg.auth_event_ids
    assert set(msg.auth_event_ids) == {
        room.state[("m.room.power_levels", "")].event_id,
        room.state[("m.room.member", ALICE)].event_id,
    }


def test_pre_v12_auth_events_include_create() -> None:
    room = Room(V10)
    bob = "@bob:example.org"
    join = room.send("m.room.member", bob, {"membership": "join"}, bob)
    assert set(join.auth_event_ids) == {
        room.create.event_id,
        room.state[("m.room.power_levels", "")].event_id,
        room.state[("m.room.join_rules", "")].event_id,
    }  # bob has no membership yet; the sender/target member event is absent


def test_v1_event_ids_and_edge_hashes() -> None:
    room = Room(V1)
    msg = room.send("m.room.message", ALICE, {"body": "hi"})
    assert msg.event_id.startswith("$") and msg.event_id.endswith(":" + SERVER)
    prev = room.state[("m.room.join_rules", "")]
    ref = encode_base64(compute_reference_hash(prev.pdu_json(), V1))
    assert msg.get("prev_events") == [[prev.event_id, {"sha256": ref}]]
    assert all(isinstance(e, list) and "sha256" in e[1] for e in msg.get("auth_events"))


def test_v1_needs_events_not_ids_for_edges() -> None:
    with pytest.raises(EventBuildError, match="reference hash"):
        build_event(
            room_version=V1,
            event_type="m.room.message",
            sender=ALICE,
            content={},
            room_id="!r:example.org",
            prev_events=["$x:example.org"],
            current_state={},
            origin_server_ts=1,
            signing_key=KEY,
            server_name=SERVER,
            depth=2,
        )


def test_ids_need_explicit_depth_and_depth_is_capped() -> None:
    common = dict(
        room_version=V11,
        event_type="m.room.message",
        sender=ALICE,
        content={},
        room_id="!r:example.org",
        prev_events=["$" + "a" * 43],
        current_state={},
        origin_server_ts=1,
        signing_key=KEY,
        server_name=SERVER,
    )
    with pytest.raises(EventBuildError, match="depth"):
        build_event(**common)  # type: ignore[arg-type]
    ev = build_event(**common, depth=2**60)  # type: ignore[arg-type]
    assert ev.depth == MAX_DEPTH_V6


def test_room_id_rules() -> None:
    with pytest.raises(EventBuildError, match="no room_id"):
        build_event(
            room_version=V12,
            event_type="m.room.create",
            state_key="",
            sender=ALICE,
            content={},
            room_id="!x:example.org",
            prev_events=[],
            current_state={},
            origin_server_ts=1,
            signing_key=KEY,
            server_name=SERVER,
        )
    with pytest.raises(EventBuildError, match="required"):
        build_event(
            room_version=V11,
            event_type="m.room.message",
            sender=ALICE,
            content={},
            room_id=None,
            prev_events=[],
            current_state={},
            origin_server_ts=1,
            signing_key=KEY,
            server_name=SERVER,
            depth=1,
        )


def test_redacts_placement_by_version() -> None:
    for rv, in_content in ((V10, False), (V11, True)):
        room = Room(rv)
        ev = build_event(
            room_version=rv,
            event_type="m.room.redaction",
            sender=ALICE,
            content={},
            room_id=room.room_id,
            prev_events=room.tip,
            current_state=room.state,
            origin_server_ts=9,
            signing_key=KEY,
            server_name=SERVER,
            redacts="$target",
        )
        assert ev.redacts == "$target"
        assert ("redacts" in ev.content) is in_content
        assert ("redacts" in ev.pdu_json()) is not in_content


def test_unsigned_is_outside_hash_and_signature() -> None:
    room = Room(V11)
    ev = build_event(
        room_version=V11,
        event_type="m.room.message",
        sender=ALICE,
        content={"body": "x"},
        room_id=room.room_id,
        prev_events=room.tip,
        current_state=room.state,
        origin_server_ts=9,
        signing_key=KEY,
        server_name=SERVER,
        unsigned={"transaction_id": "t1"},
    )
    assert ev.unsigned == {"transaction_id": "t1"}
    assert check_content_hash(ev.pdu_json())
    verify_event_signatures(ev, LOOKUP)


def test_oversized_event_is_refused() -> None:
    room = Room(V11)
    with pytest.raises(EventBuildError, match="65536"):
        room.send("m.room.message", ALICE, {"body": "x" * 70_000})


def test_caller_content_not_mutated() -> None:
    room = Room(V11)
    content: dict[str, str] = {}
    build_event(
        room_version=V11,
        event_type="m.room.redaction",
        sender=ALICE,
        content=content,
        room_id=room.room_id,
        prev_events=room.tip,
        current_state=room.state,
        origin_server_ts=9,
        signing_key=KEY,
        server_name=SERVER,
        redacts="$t",
    )
    assert content == {}


@pytest.mark.parametrize("version", ["1", "10", "12"])
def test_membership_from_template(version: str) -> None:
    """make_join/make_leave/make_knock templates: only the DAG fields are taken, the content
    is ours, the event is hashed and signed by us, and v1-format events get our ID."""
    room = Room(get_room_version(version))
    bob = "@bob:example.org"
    prev = room.send("m.room.message", ALICE, {"body": "hi"})
    template = {
        "type": "m.room.member", "room_id": room.room_id, "sender": bob, "state_key": bob,
        "depth": prev.depth + 1, "prev_events": prev.pdu_json()["prev_events"],
        "auth_events": prev.pdu_json()["auth_events"], "origin": "evil.example",
        "content": {"membership": "join", "displayname": "theirs"},
        "hashes": {"sha256": "forged"}, "signatures": {"evil.example": {}},
    }
    ev = membership_from_template(
        room_version=room.rv, template=template, room_id=room.room_id, user_id=bob,
        content={"membership": "join"}, origin_server_ts=1234, signing_key=KEY,
        server_name=SERVER)
    assert ev.content == {"membership": "join"} and ev.origin_server_ts == 1234
    assert "origin" not in ev.pdu_json() and "evil.example" not in ev.signatures
    assert check_content_hash(ev.pdu_json())
    verify_event_signatures(ev, LOOKUP)
    check_well_formed(ev.pdu_json(), room.rv)
    for field, value in (("sender", ALICE), ("state_key", ALICE), ("type", "m.room.message"),
                         ("room_id", "!other:example.org")):
        with pytest.raises(EventBuildError):
            membership_from_template(
                room_version=room.rv, template={**template, field: value},
                room_id=room.room_id, user_id=bob, content={"membership": "join"},
                origin_server_ts=1, signing_key=KEY, server_name=SERVER)
    with pytest.raises(EventBuildError):
        membership_from_template(
            room_version=room.rv, template=["not", "a", "dict"], room_id=room.room_id,
            user_id=bob, content={"membership": "leave"}, origin_server_ts=1,
            signing_key=KEY, server_name=SERVER)
