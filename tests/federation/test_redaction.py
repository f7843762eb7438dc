from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from federation.events import Event
from federation.redaction import redact, redact_event
from federation.room_versions import KNOWN_ROOM_VERSIONS, get_room_version

ALL_VERSIONS = [str(n) for n in range(1, 13)]


def rv(n: int | str) -> Any:
    return get_room_version(str(n))


def _event(event_type: str, content: dict[str, Any], **extra: Any) -> dict[str, Any]:
    pdu = {
        "type": event_type,
        "room_id": "!r:example.org",
        "sender": "@a:example.org",
        "origin": "example.org",
        "origin_server_ts": 1,
        "depth": 2,
        "prev_events": ["$p"],
        "auth_events": ["$a"],
        "hashes": {"sha256": "h"},
        "signatures": {"example.org": {"ed25519:1": "s"}},
        "unsigned": {"age": 1},
        "content": content,
        "membership": "join",
        "prev_state": [],
        "redacts": "$x",
        "custom_top_level": True,
    }
    pdu.update(extra)
    return pdu


ESSENTIAL = {
    "type",
    "room_id",
    "sender",
    "origin_server_ts",
    "depth",
    "prev_events",
    "auth_events",
    "hashes",
    "signatures",
    "content",
}


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_top_level_keys(version: str) -> None:
    out = redact(
        _event("m.room.message", {"body": "hi"}, state_key="", event_id="$e:x"), rv(version)
    )
    kept = ESSENTIAL | {"state_key", "event_id"}
    if int(version) <= 10:
        # v1-v10 protect origin, membership and prev_state; v11 stopped.
        kept |= {"origin", "membership", "prev_state"}
    assert set(out) == kept
    assert out["content"] == {}


# (event type, content, {version range: expected content}) straight from the spec fragments.
CONTENT_CASES: list[tuple[str, dict[str, Any], dict[range, dict[str, Any]]]] = [
    (
        "m.room.member",
        {
            "membership": "join",
            "displayname": "A",
            "join_authorised_via_users_server": "@b:x",
            "third_party_invite": {"display_name": "d", "signed": {"token": "t"}},
        },
        {
            range(1, 9): {"membership": "join"},
            range(9, 11): {"membership": "join", "join_authorised_via_users_server": "@b:x"},
            range(11, 13): {
                "membership": "join",
                "join_authorised_via_users_server": "@b:x",
                "third_party_invite": {"signed": {"token": "t"}},
            },
        },
    ),
    (
        "m.room.create",
        {"creator": "@a:x", "room_version": "9", "m.federate": False, "predecessor": {}},
        {
            range(1, 11): {"creator": "@a:x"},
            range(11, 13): {
                "creator": "@a:x",
                "room_version": "9",
                "m.federate": False,
                "predecessor": {},
            },
        },
    ),
    (
        "m.room.join_rules",
        {"join_rule": "restricted", "allow": [{"type": "m.room_membership"}], "x": 1},
        {
            range(1, 8): {"join_rule": "restricted"},
            # v8 (redaction rules otherwise as v6) already keeps `allow`.
            range(8, 13): {"join_rule": "restricted", "allow": [{"type": "m.room_membership"}]},
        },
    ),
    (
        "m.room.power_levels",
        {
            "ban": 1,
            "events": {},
            "events_default": 2,
            "kick": 3,
            "redact": 4,
            "state_default": 5,
            "users": {},
            "users_default": 6,
            "invite": 7,
            "notifications": {"room": 50},
            "historical": 100,
        },
        {
            range(1, 11): {
                "ban": 1,
                "events": {},
                "events_default": 2,
                "kick": 3,
                "redact": 4,
                "state_default": 5,
                "users": {},
                "users_default": 6,
            },
            range(11, 13): {
                "ban": 1,
                "events": {},
                "events_default": 2,
                "kick": 3,
                "redact": 4,
                "state_default": 5,
                "users": {},
                "users_default": 6,
                "invite": 7,
            },
        },
    ),
    (
        "m.room.aliases",
        {"aliases": ["#a:x"], "other": 1},
        {range(1, 6): {"aliases": ["#a:x"]}, range(6, 13): {}},
    ),
    (
        "m.room.history_visibility",
        {"history_visibility": "shared", "other": 1},
        {range(1, 13): {"history_visibility": "shared"}},
    ),
    (
        "m.room.redaction",
        {"redacts": "$x", "reason": "spam"},
        {range(1, 11): {}, range(11, 13): {"redacts": "$x"}},
    ),
    (
        "m.room.message",
        {"body": "secret", "msgtype": "m.text"},
        {range(1, 13): {}},
    ),
    (
        "m.room.topic",
        {"topic": "t"},
        {range(1, 13): {}},
    ),
]


@pytest.mark.parametrize(("event_type", "content", "expected_by_range"), CONTENT_CASES)
@pytest.mark.parametrize("version", range(1, 13))
def test_content_rules(
    version: int,
    event_type: str,
    content: dict[str, Any],
    expected_by_range: dict[range, dict[str, Any]],
) -> None:
    expected = next(exp for r, exp in expected_by_range.items() if version in r)
    pdu = _event(event_type, content, state_key="")
    assert redact(pdu, rv(version))["content"] == expected


def test_top_level_redacts_is_never_kept() -> None:
    for version in ALL_VERSIONS:
        assert "redacts" not in redact(_event("m.room.redaction", {}), rv(version))


def test_v11_third_party_invite_without_signed_keeps_empty_object_like_synapse() -> None:
    # The spec says only "allows the signed key of the third_party_invite key"; Synapse
    # keeps an empty third_party_invite object when there is no `signed`. We follow it so
    # our reference hashes agree.
    pdu = _event("m.room.member", {"membership": "invite", "third_party_invite": {"x": 1}})
    assert redact(pdu, rv(11))["content"] == {"membership": "invite", "third_party_invite": {}}
    not_object = _event("m.room.member", {"membership": "invite", "third_party_invite": "x"})
    assert redact(not_object, rv(11))["content"] == {"membership": "invite"}


def test_v12_redacts_like_v11() -> None:
    for event_type, content, _ in CONTENT_CASES:
        pdu = _event(event_type, content, state_key="")
        assert redact(pdu, rv(12)) == redact(pdu, rv(11))


def test_missing_or_bad_content_becomes_empty() -> None:
    pdu = _event("m.room.member", {})
    del pdu["content"]
    assert redact(pdu, rv(1))["content"] == {}
    assert redact(_event("m.room.member", "nope"), rv(1))["content"] == {}  # type: ignore[arg-type]


def test_input_is_not_mutated() -> None:
    pdu = _event("m.room.member", {"membership": "join", "displayname": "A"})
    before = copy.deepcopy(pdu)
    redact(pdu, rv(11))
    assert pdu == before


json_leaf = st.none() | st.booleans() | st.integers(-100, 100) | st.text(max_size=5)
contents = st.dictionaries(
    st.sampled_from(
        [
            "membership",
            "creator",
            "join_rule",
            "allow",
            "users",
            "body",
            "redacts",
            "third_party_invite",
            "aliases",
            "history_visibility",
            "invite",
        ]
    ),
    json_leaf | st.dictionaries(st.sampled_from(["signed", "x"]), json_leaf, max_size=2),
    max_size=6,
)
types = st.sampled_from(
    [
        "m.room.member",
        "m.room.create",
        "m.room.join_rules",
        "m.room.power_levels",
        "m.room.aliases",
        "m.room.history_visibility",
        "m.room.redaction",
        "m.room.message",
    ]
)


@given(types, contents, st.sampled_from(sorted(KNOWN_ROOM_VERSIONS)))
def test_redaction_is_idempotent_and_only_removes(
    event_type: str, content: dict[str, Any], version: str
) -> None:
    room_version = rv(version)
    once = redact(_event(event_type, content), room_version)
    assert redact(once, room_version) == once
    assert set(once) <= set(_event(event_type, content))
    for key, value in once["content"].items():
        if key == "third_party_invite":
            continue  # may be narrowed to just `signed`
        assert content[key] == value


def test_redact_event_keeps_event_id() -> None:
    full = Event(_event("m.room.message", {"body": "secret"}), rv(10))
    redacted = redact_event(full)
    assert redacted.content == {}
    assert redacted.event_id == full.event_id
    # ...and it is genuinely the same ID when recomputed from the redacted JSON.
    assert Event(redacted.pdu_json(), rv(10)).event_id == full.event_id
    assert redacted.room_version is full.room_version
