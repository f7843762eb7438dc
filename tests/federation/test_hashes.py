from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from federation.events import Event
from federation.hashes import (
    add_hashes,
    check_content_hash,
    compute_content_hash,
    compute_event_id,
    compute_reference_hash,
    content_hash_error,
)
from federation.room_versions import KNOWN_ROOM_VERSIONS, get_room_version

V1, V3, V4, V11, V12 = (get_room_version(v) for v in ("1", "3", "4", "11", "12"))

# appendices.md "Event Signing": the minimal event and its expected content hash
SPEC_MINIMAL_EVENT: dict[str, Any] = {
    "room_id": "!x:domain",
    "sender": "@a:domain",
    "origin": "domain",
    "origin_server_ts": 1000000,
    "signatures": {},
    "hashes": {},
    "type": "X",
    "content": {},
    "prev_events": [],
    "auth_events": [],
    "depth": 3,
    "unsigned": {"age_ts": 1000000},
}
SPEC_REDACTABLE_EVENT: dict[str, Any] = {
    "content": {"body": "Here is the message content"},
    "event_id": "$0:domain",
    "origin": "domain",
    "origin_server_ts": 1000000,
    "type": "m.room.message",
    "room_id": "!r:domain",
    "sender": "@u:domain",
    "signatures": {},
    "unsigned": {"age_ts": 1000000},
}


def _b64(data: bytes, urlsafe: bool = False) -> str:
    enc = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    return enc(data).decode().rstrip("=")


def test_spec_content_hashes() -> None:
    assert _b64(compute_content_hash(SPEC_MINIMAL_EVENT)) == (
        "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"
    )
    assert _b64(compute_content_hash(SPEC_REDACTABLE_EVENT)) == (
        "onLKD1bGljeBWQhWZ1kaP9SorVmRQNdN5aM2JYU2n/g"
    )


def test_content_hash_ignores_unsigned_signatures_and_hashes() -> None:
    base = compute_content_hash(SPEC_MINIMAL_EVENT)
    changed = dict(
        SPEC_MINIMAL_EVENT,
        unsigned={"age": 5},
        signatures={"x": {"ed25519:1": "sig"}},
        hashes={"sha256": "zzz"},
    )
    assert compute_content_hash(changed) == base
    assert compute_content_hash(dict(SPEC_MINIMAL_EVENT, depth=4)) != base


def test_add_and_check_content_hash() -> None:
    hashed = add_hashes(SPEC_REDACTABLE_EVENT)
    assert hashed["hashes"] == {"sha256": "onLKD1bGljeBWQhWZ1kaP9SorVmRQNdN5aM2JYU2n/g"}
    assert "hashes" not in SPEC_REDACTABLE_EVENT  # input untouched
    assert check_content_hash(hashed)

    tampered = dict(hashed, content={"body": "Something else"})
    assert content_hash_error(tampered) == "sha256 content hash does not match the event"


@pytest.mark.parametrize(
    ("hashes", "reason"),
    [
        (None, "no 'hashes' object"),
        ({}, "no sha256"),
        ({"sha256": 5}, "no sha256"),
        ({"sha256": "!!!"}, "does not match"),  # lenient base64 decodes to garbage
        ({"sha256": "a"}, "not valid base64"),
    ],
)
def test_malformed_hashes_fail_with_reason(hashes: Any, reason: str) -> None:
    pdu = dict(SPEC_MINIMAL_EVENT)
    if hashes is None:
        del pdu["hashes"]
    else:
        pdu["hashes"] = hashes
    assert not check_content_hash(pdu)
    assert reason in (content_hash_error(pdu) or "")


# A v4+ event and, written out by hand, the canonical JSON of its redacted form: the
# reference hash must be computed over exactly these bytes.
V4_EVENT: dict[str, Any] = {
    "type": "m.room.message",
    "room_id": "!room:example.org",
    "sender": "@alice:example.org",
    "origin": "example.org",
    "origin_server_ts": 1234,
    "depth": 5,
    "prev_events": ["$prev"],
    "auth_events": ["$auth"],
    "content": {"body": "hello", "msgtype": "m.text"},
    "hashes": {"sha256": "abc"},
    "signatures": {"example.org": {"ed25519:1": "sig"}},
    "unsigned": {"age": 10},
}
V4_REDACTED_CANONICAL = (
    b'{"auth_events":["$auth"],"content":{},"depth":5,"hashes":{"sha256":"abc"},'
    b'"origin":"example.org","origin_server_ts":1234,"prev_events":["$prev"],'
    b'"room_id":"!room:example.org","sender":"@alice:example.org","type":"m.room.message"}'
)


def test_reference_hash_is_over_redacted_event_without_signatures() -> None:
    expected = hashlib.sha256(V4_REDACTED_CANONICAL).digest()
    assert compute_reference_hash(V4_EVENT, V4) == expected


def test_event_id_v4_is_url_safe_and_v3_is_standard_base64() -> None:
    digest = hashlib.sha256(V4_REDACTED_CANONICAL).digest()
    assert compute_event_id(V4_EVENT, V4) == "$" + _b64(digest, urlsafe=True)
    assert compute_event_id(V4_EVENT, V3) == "$" + _b64(digest)


def test_v11_reference_hash_drops_origin() -> None:
    # v11 no longer protects top-level `origin`, so it leaves the reference hash.
    without_origin = V4_REDACTED_CANONICAL.replace(b'"origin":"example.org",', b"")
    assert compute_reference_hash(V4_EVENT, V11) == hashlib.sha256(without_origin).digest()


def test_event_id_alphabets_differ_when_hash_has_62nd_or_63rd_char() -> None:
    # Find an event whose hash encodes with '+' or '/', then check each version's alphabet.
    for depth in range(1, 200):
        pdu = dict(V4_EVENT, depth=depth)
        v3_id, v4_id = compute_event_id(pdu, V3), compute_event_id(pdu, V4)
        if set("+/") & set(v3_id):
            assert not set("+/") & set(v4_id)
            assert v4_id == v3_id.replace("+", "-").replace("/", "_")
            return
    pytest.fail("no hash with '+' or '/' found")


def test_event_id_unaffected_by_redactable_fields() -> None:
    other = dict(V4_EVENT, content={"body": "different"}, unsigned={}, signatures={})
    assert compute_event_id(other, V4) == compute_event_id(V4_EVENT, V4)
    assert compute_event_id(dict(V4_EVENT, depth=6), V4) != compute_event_id(V4_EVENT, V4)


def test_v1_event_ids_cannot_be_computed() -> None:
    with pytest.raises(ValueError, match="server-assigned"):
        compute_event_id(V4_EVENT, V1)


def test_event_class_uses_compute_event_id() -> None:
    for rv in KNOWN_ROOM_VERSIONS.values():
        if rv.uses_server_assigned_event_ids:
            continue
        assert Event(V4_EVENT, rv).event_id == compute_event_id(V4_EVENT, rv)
        assert len(Event(V4_EVENT, rv).event_id) == 44


@given(st.dictionaries(st.text(max_size=5), st.integers(0, 10), max_size=5))
def test_content_hash_covers_content(extra: dict[str, int]) -> None:
    pdu = dict(V4_EVENT, content={"body": "x", **extra})
    hashed = add_hashes(pdu)
    assert check_content_hash(hashed)
    changed = dict(hashed, content={**hashed["content"], "body": "y"})
    assert not check_content_hash(changed)
