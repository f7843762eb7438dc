from __future__ import annotations

import copy
from typing import Any

import pytest

from federation.keys import encode_verify_key, generate_signing_key, verify_key_of
from federation.server_keys import (
    DAY_MS,
    MAX_KEY_VALIDITY_MS,
    KeyResponseError,
    OldVerifyKey,
    build_notary_response,
    build_server_keys_response,
    cached_response_is_fresh,
    cap_valid_until_ts,
    notary_sign,
    parse_key_query_request,
    parse_notary_response,
    parse_server_keys_response,
)
from federation.signing import (
    ServerKey,
    SignatureError,
    sign_json,
    verify_json_signatures,
)

SERVER = "origin.example"
NOTARY = "notary.example"
NOW = 1_700_000_000_000
K1 = generate_signing_key("k1")
K2 = generate_signing_key("k2")
OLD = generate_signing_key("old")
NOTARY_KEY = generate_signing_key("n1")


def doc(server: str = SERVER, valid_until: int = NOW + DAY_MS, **kw: Any) -> dict[str, Any]:
    old = {"ed25519:old": OldVerifyKey(verify_key_of(OLD), NOW - DAY_MS)}
    return build_server_keys_response(server, kw.get("keys", [K1, K2]), valid_until, old)


def notary_keys(valid_until: int | None = None) -> Any:
    known = {"ed25519:n1": ServerKey(verify_key_of(NOTARY_KEY), valid_until)}
    return lambda server, key_id: known.get(key_id) if server == NOTARY else None


def lookup_only(key: Any) -> Any:
    known = {(SERVER, f"ed25519:{key.version}"): verify_key_of(key)}
    return lambda server, key_id: known.get((server, key_id))


def resign(d: dict[str, Any], *keys: Any, server: str = SERVER) -> dict[str, Any]:
    d = {k: v for k, v in d.items() if k != "signatures"}
    for key in keys:
        d = sign_json(d, key, server)
    return d


# -- our own document ----------------------------------------------------------------------------


def test_build_lists_keys_and_signs_with_each_current_key() -> None:
    d = doc()
    assert d["server_name"] == SERVER
    assert d["valid_until_ts"] == NOW + DAY_MS
    assert d["verify_keys"] == {
        "ed25519:k1": {"key": encode_verify_key(verify_key_of(K1))},
        "ed25519:k2": {"key": encode_verify_key(verify_key_of(K2))},
    }
    assert d["old_verify_keys"] == {
        "ed25519:old": {"key": encode_verify_key(verify_key_of(OLD)), "expired_ts": NOW - DAY_MS}
    }
    assert set(d["signatures"][SERVER]) == {"ed25519:k1", "ed25519:k2"}
    # Each signature verifies on its own with its key.
    for key in (K1, K2):
        parsed = parse_server_keys_response(resign(d, key), now_ms=NOW)
        assert parsed.server_name == SERVER
        verify_json_signatures(d, SERVER, lookup_only(key))


def test_build_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="at least one"):
        build_server_keys_response(SERVER, [], NOW)
    with pytest.raises(ValueError, match="both"):
        build_server_keys_response(
            SERVER, [K1], NOW, {"ed25519:k1": OldVerifyKey(verify_key_of(K1), NOW)}
        )


def test_own_document_round_trips() -> None:
    d = doc()
    keys = parse_server_keys_response(d, now_ms=NOW, expected_server_name=SERVER)
    assert keys.server_name == SERVER
    assert keys.valid_until_ts == NOW + DAY_MS
    assert set(keys.verify_keys) == {"ed25519:k1", "ed25519:k2"}
    assert keys.verify_keys["ed25519:k1"] == ServerKey(verify_key_of(K1), NOW + DAY_MS)
    assert keys.old_verify_keys["ed25519:old"] == ServerKey(verify_key_of(OLD), NOW - DAY_MS)
    assert keys.response == d  # kept as received, for caching and notary use


# -- validating fetched documents ------------------------------------------------------------------


def test_wrong_server_name_is_rejected() -> None:
    with pytest.raises(KeyResponseError, match=r"asked for the keys of 'other\.example'"):
        parse_server_keys_response(doc(), now_ms=NOW, expected_server_name="other.example")
    bad = resign({**doc(), "server_name": "not a name"}, K1)
    with pytest.raises(KeyResponseError, match="not a server name"):
        parse_server_keys_response(bad, now_ms=NOW)


def test_tampered_document_fails_self_signature() -> None:
    d = doc()
    d["valid_until_ts"] += 1
    with pytest.raises(KeyResponseError, match="bad signature"):
        parse_server_keys_response(d, now_ms=NOW)


def test_document_swapping_in_a_key_fails() -> None:
    # An attacker replaces a listed key with their own but keeps the signatures.
    d = doc()
    d["verify_keys"]["ed25519:k2"] = {"key": encode_verify_key(verify_key_of(OLD))}
    with pytest.raises(KeyResponseError, match="not self-signed"):
        parse_server_keys_response(d, now_ms=NOW)


def test_every_listed_key_signature_must_verify() -> None:
    d = doc()
    d["signatures"][SERVER]["ed25519:k2"] = d["signatures"][SERVER]["ed25519:k1"]
    with pytest.raises(KeyResponseError, match="ed25519:k2"):
        parse_server_keys_response(d, now_ms=NOW)


def test_signature_by_unlisted_or_old_key_does_not_count() -> None:
    for signer in (generate_signing_key("k1"), OLD):
        d = resign(doc(), signer)
        with pytest.raises(KeyResponseError, match="not self-signed"):
            parse_server_keys_response(d, now_ms=NOW)
    unsigned = {k: v for k, v in doc().items() if k != "signatures"}
    with pytest.raises(KeyResponseError, match="signatures"):
        parse_server_keys_response(unsigned, now_ms=NOW)


def test_signature_by_one_listed_key_suffices() -> None:
    d = resign(doc(), K2)
    keys = parse_server_keys_response(d, now_ms=NOW)
    assert set(keys.verify_keys) == {"ed25519:k1", "ed25519:k2"}


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("valid_until_ts", None, "valid_until_ts"),
        ("valid_until_ts", True, "valid_until_ts"),
        ("valid_until_ts", 1.5, "valid_until_ts"),
        ("valid_until_ts", -1, "valid_until_ts"),
        ("verify_keys", [], "verify_keys is not an object"),
        ("verify_keys", {"ed25519:k1": {}}, "no 'key'"),
        ("verify_keys", {"ed25519:k1": {"key": "A"}}, "base64"),
        ("verify_keys", {"ed25519:k1": {"key": "AAAA"}}, "32 bytes"),
        ("verify_keys", {"nocolon": {"key": "AAAA"}}, "bad key ID"),
        ("old_verify_keys", {"ed25519:old": {"key": "AAAA"}}, "32 bytes"),
        (
            "old_verify_keys",
            {"ed25519:o": {"key": encode_verify_key(verify_key_of(OLD))}},
            "expired_ts",
        ),
    ],
)
def test_malformed_documents_are_rejected(field: str, value: Any, match: str) -> None:
    d = doc()
    d[field] = value
    d = resign(d, K1)
    with pytest.raises(KeyResponseError, match=match):
        parse_server_keys_response(d, now_ms=NOW)


def test_non_object_is_rejected() -> None:
    with pytest.raises(KeyResponseError, match="not a JSON object"):
        parse_server_keys_response([], now_ms=NOW)


def test_unsupported_algorithms_are_skipped() -> None:
    d = doc()
    d["verify_keys"]["curve9999:x"] = {"whatever": 1}
    d = resign(d, K1)
    keys = parse_server_keys_response(d, now_ms=NOW)
    assert set(keys.verify_keys) == {"ed25519:k1", "ed25519:k2"}


def test_expired_document() -> None:
    d = doc(valid_until=NOW - 1)
    # Parsed fine (old events may still need it), with its validity for callers to apply...
    keys = parse_server_keys_response(d, now_ms=NOW)
    assert keys.verify_keys["ed25519:k1"].valid_until_ts == NOW - 1
    # ...and refused when the caller needs keys valid now.
    with pytest.raises(KeyResponseError, match="expired"):
        parse_server_keys_response(d, now_ms=NOW, minimum_valid_until_ts=NOW)
    assert parse_server_keys_response(doc(), now_ms=NOW, minimum_valid_until_ts=NOW)


def test_validity_is_capped_at_seven_days() -> None:
    far = NOW + 365 * DAY_MS
    keys = parse_server_keys_response(doc(valid_until=far), now_ms=NOW)
    assert keys.valid_until_ts == far  # as published
    assert keys.verify_keys["ed25519:k1"].valid_until_ts == NOW + MAX_KEY_VALIDITY_MS
    assert cap_valid_until_ts(far, NOW) == NOW + 7 * DAY_MS
    assert cap_valid_until_ts(NOW + 1, NOW) == NOW + 1


def test_parsed_keys_work_as_a_key_lookup() -> None:
    keys = parse_server_keys_response(doc(), now_ms=NOW)
    lookup = keys.lookup()
    assert lookup(SERVER, "ed25519:k1") == keys.verify_keys["ed25519:k1"]
    assert lookup(SERVER, "ed25519:old") == keys.old_verify_keys["ed25519:old"]
    assert lookup("other.example", "ed25519:k1") is None
    # An object signed by the old key verifies before its expiry, not after.
    signed = sign_json({"x": 1}, OLD, SERVER)
    verify_json_signatures(signed, SERVER, lookup, valid_at_ts=NOW - DAY_MS - 1)
    with pytest.raises(SignatureError):
        verify_json_signatures(signed, SERVER, lookup, valid_at_ts=NOW)


# -- notary: client side ---------------------------------------------------------------------------


def notary_response(*docs: dict[str, Any], signer: Any = NOTARY_KEY) -> dict[str, Any]:
    return build_notary_response(list(docs), [signer], NOTARY)


def test_notary_response_validates() -> None:
    other = doc("other.example", keys=[K2])
    result = parse_notary_response(
        notary_response(doc(), other), notary_name=NOTARY, notary_keys=notary_keys(), now_ms=NOW
    )
    assert result.rejected == []
    assert [k.server_name for k in result.keys] == [SERVER, "other.example"]
    assert set(result.for_server(SERVER)) == {"ed25519:k1", "ed25519:k2", "ed25519:old"}


def test_notary_entry_without_notary_signature_is_dropped() -> None:
    resp = {"server_keys": [doc(), notary_sign(doc("other.example"), [NOTARY_KEY], NOTARY)]}
    result = parse_notary_response(resp, notary_name=NOTARY, notary_keys=notary_keys(), now_ms=NOW)
    assert [k.server_name for k in result.keys] == ["other.example"]
    assert result.rejected == [(SERVER, f"not countersigned by the notary: not signed by {NOTARY}")]


def test_notary_signature_by_unknown_or_expired_key_is_dropped() -> None:
    resp = notary_response(doc(), signer=generate_signing_key("n1"))
    result = parse_notary_response(resp, notary_name=NOTARY, notary_keys=notary_keys(), now_ms=NOW)
    assert result.keys == [] and "bad signature" in result.rejected[0][1]
    resp = notary_response(doc())
    expired = notary_keys(valid_until=NOW - 1)
    result = parse_notary_response(resp, notary_name=NOTARY, notary_keys=expired, now_ms=NOW)
    assert result.keys == [] and "unexpired" in result.rejected[0][1]


def test_notary_cannot_forge_origin_keys() -> None:
    # The notary countersigns a document whose origin signature does not match its keys.
    forged = doc()
    forged["verify_keys"]["ed25519:k1"] = {"key": encode_verify_key(verify_key_of(NOTARY_KEY))}
    result = parse_notary_response(
        notary_response(forged, doc("other.example")),
        notary_name=NOTARY,
        notary_keys=notary_keys(),
        now_ms=NOW,
    )
    assert [k.server_name for k in result.keys] == ["other.example"]
    assert result.rejected[0][0] == SERVER and "not self-signed" in result.rejected[0][1]


def test_notary_checks_can_be_explicitly_skipped() -> None:
    result = parse_notary_response(
        {"server_keys": [doc()]}, notary_name=NOTARY, notary_keys=None, now_ms=NOW
    )
    assert [k.server_name for k in result.keys] == [SERVER]


def test_notary_entries_not_asked_for_are_dropped() -> None:
    result = parse_notary_response(
        notary_response(doc(), doc("other.example")),
        notary_name=NOTARY,
        notary_keys=notary_keys(),
        now_ms=NOW,
        requested={"other.example"},
    )
    assert [k.server_name for k in result.keys] == ["other.example"]
    assert result.rejected[0][0] == SERVER


def test_notary_minimum_validity_and_garbage_entries() -> None:
    resp = notary_response(doc(valid_until=NOW - 1), doc("other.example"))
    resp["server_keys"].append("garbage")
    result = parse_notary_response(
        resp,
        notary_name=NOTARY,
        notary_keys=notary_keys(),
        now_ms=NOW,
        minimum_valid_until_ts=NOW,
    )
    assert [k.server_name for k in result.keys] == ["other.example"]
    assert [server for server, _ in result.rejected] == [SERVER, None]


def test_malformed_notary_response_raises() -> None:
    bad: Any
    for bad in ({}, {"server_keys": {}}, []):
        with pytest.raises(KeyResponseError, match="server_keys"):
            parse_notary_response(bad, notary_name=NOTARY, notary_keys=None, now_ms=NOW)


def test_notary_merge_prefers_the_longer_validity() -> None:
    # An older document lists k1 as current; a newer one retired it into old_verify_keys.
    older = build_server_keys_response(SERVER, [K1], NOW + DAY_MS)
    newer = build_server_keys_response(
        SERVER, [K2], NOW + 2 * DAY_MS, {"ed25519:k1": OldVerifyKey(verify_key_of(K1), NOW - 5)}
    )
    result = parse_notary_response(
        notary_response(newer, older), notary_name=NOTARY, notary_keys=notary_keys(), now_ms=NOW
    )
    merged = result.for_server(SERVER)
    assert merged["ed25519:k1"].valid_until_ts == NOW + DAY_MS
    assert merged["ed25519:k2"].valid_until_ts == NOW + 2 * DAY_MS


# -- notary: server side ---------------------------------------------------------------------------


def test_notary_sign_adds_our_signature_and_keeps_the_origins() -> None:
    original = doc()
    kept = copy.deepcopy(original)
    signed = notary_sign(original, [NOTARY_KEY], NOTARY)
    assert original == kept  # not mutated
    assert set(signed["signatures"]) == {SERVER, NOTARY}
    assert signed["signatures"][SERVER] == original["signatures"][SERVER]
    verify_json_signatures(signed, NOTARY, notary_keys())
    # The origin's signature still verifies too.
    parse_server_keys_response(signed, now_ms=NOW, expected_server_name=SERVER)


def test_build_notary_response_shape() -> None:
    resp = build_notary_response([doc()], [NOTARY_KEY], NOTARY)
    assert list(resp) == ["server_keys"] and len(resp["server_keys"]) == 1
    assert build_notary_response([], [NOTARY_KEY], NOTARY) == {"server_keys": []}
    with pytest.raises(ValueError):
        build_notary_response([doc()], [], NOTARY)


def test_parse_key_query_request() -> None:
    body = {
        "server_keys": {
            "a.example": {"ed25519:abc": {"minimum_valid_until_ts": 5}, "ed25519:x": {}},
            "b.example": {},
        }
    }
    assert parse_key_query_request(body) == {
        "a.example": {"ed25519:abc": 5, "ed25519:x": None},
        "b.example": {},
    }
    assert parse_key_query_request({"server_keys": {}}) == {}
    bad: Any
    for bad in (
        {},
        {"server_keys": []},
        {"server_keys": {"bad name": {}}},
        {"server_keys": {"a.example": []}},
        {"server_keys": {"a.example": {"k": 1}}},
        {"server_keys": {"a.example": {"k": {"minimum_valid_until_ts": "5"}}}},
    ):
        with pytest.raises(ValueError):
            parse_key_query_request(bad)


def test_cached_response_freshness() -> None:
    fetched, valid_until = NOW, NOW + 2 * DAY_MS
    # Half of the lifetime without a requested minimum.
    assert cached_response_is_fresh(valid_until, fetched, NOW + DAY_MS)
    assert not cached_response_is_fresh(valid_until, fetched, NOW + DAY_MS + 1)
    # A requested minimum decides on its own.
    assert cached_response_is_fresh(valid_until, fetched, NOW + DAY_MS + 1, valid_until)
    assert not cached_response_is_fresh(valid_until, fetched, NOW, valid_until + 1)
