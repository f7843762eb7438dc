from __future__ import annotations

import copy
from typing import Any

import pytest
from signedjson.types import VerifyKey

from federation.events import Event
from federation.hashes import add_hashes
from federation.keys import generate_signing_key, verify_key_of
from federation.redaction import redact
from federation.room_versions import get_room_version
from federation.signing import (
    ServerKey,
    SignatureError,
    required_signers,
    sign_event,
    sign_json,
    verify_event_signatures,
    verify_json_signatures,
)
from tests.federation._pdu_helpers import SPEC_KEY_ID, SPEC_SERVER, lookup_for, spec_key
from tests.federation.test_hashes import SPEC_MINIMAL_EVENT, SPEC_REDACTABLE_EVENT

V1, V3, V4, V5, V8, V11 = (get_room_version(v) for v in ("1", "3", "4", "5", "8", "11"))


# -- spec test vectors (appendices "Cryptographic Test Vectors") ---------------------------


def test_spec_vector_sign_empty_object() -> None:
    assert sign_json({}, spec_key(), SPEC_SERVER) == {
        "signatures": {
            "domain": {
                "ed25519:1": "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/"
                "7Xg4ahLwYGYZzuHGZKM5ZAQ"
            }
        }
    }


def test_spec_vector_sign_object_with_data() -> None:
    assert sign_json({"one": 1, "two": "Two"}, spec_key(), SPEC_SERVER) == {
        "one": 1,
        "signatures": {
            "domain": {
                "ed25519:1": "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6"
                "kYdD13EIMJpvhJI+6Bw"
            }
        },
        "two": "Two",
    }


@pytest.mark.parametrize("version", [str(n) for n in range(1, 11)])
def test_spec_vector_sign_minimal_event(version: str) -> None:
    # The vectors keep top-level `origin`, so they hold for the v1-v10 redaction rules.
    signed = sign_event(
        add_hashes(SPEC_MINIMAL_EVENT), get_room_version(version), spec_key(), SPEC_SERVER
    )
    assert signed == {
        "auth_events": [],
        "content": {},
        "depth": 3,
        "hashes": {"sha256": "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"},
        "origin": "domain",
        "origin_server_ts": 1000000,
        "prev_events": [],
        "room_id": "!x:domain",
        "sender": "@a:domain",
        "signatures": {
            "domain": {
                "ed25519:1": "KxwGjPSDEtvnFgU00fwFz+l6d2pJM6XBIaMEn81SXPTRl16AqLAYqfIReFGZlHi5KLj"
                "AWbOoMszkwsQma+lYAg"
            }
        },
        "type": "X",
        "unsigned": {"age_ts": 1000000},
    }


def test_spec_vector_sign_redactable_event() -> None:
    signed = sign_event(add_hashes(SPEC_REDACTABLE_EVENT), V1, spec_key(), SPEC_SERVER)
    assert signed == {
        "content": {"body": "Here is the message content"},
        "event_id": "$0:domain",
        "hashes": {"sha256": "onLKD1bGljeBWQhWZ1kaP9SorVmRQNdN5aM2JYU2n/g"},
        "origin": "domain",
        "origin_server_ts": 1000000,
        "type": "m.room.message",
        "room_id": "!r:domain",
        "sender": "@u:domain",
        "signatures": {
            "domain": {
                "ed25519:1": "Wm+VzmOUOz08Ds+0NTWb1d4CZrVsJSikkeRxh6aCcUwu6pNC78FunoD7KNWzqFn241e"
                "YHYMGCA5McEiVPdhzBA"
            }
        },
        "unsigned": {"age_ts": 1000000},
    }


def test_spec_vectors_verify() -> None:
    lookup = lookup_for((SPEC_SERVER, spec_key()))
    signed = sign_event(add_hashes(SPEC_REDACTABLE_EVENT), V1, spec_key(), SPEC_SERVER)
    verify_event_signatures(Event(signed, V1), lookup)
    # The signature covers the redacted form, so it survives redaction.
    verify_event_signatures(Event(redact(signed, V1), V1), lookup)


# -- JSON signatures -------------------------------------------------------------------------


def _lookup_one(
    vk: VerifyKey | ServerKey, server: str = SPEC_SERVER, key_id: str = SPEC_KEY_ID
) -> Any:
    return lambda s, k: vk if (s, k) == (server, key_id) else None


def test_sign_json_keeps_unsigned_and_other_signatures() -> None:
    obj: dict[str, Any] = {
        "a": 1,
        "unsigned": {"age": 3},
        "signatures": {"other": {"ed25519:x": "sig"}},
    }
    signed = sign_json(obj, spec_key(), SPEC_SERVER)
    assert signed["unsigned"] == {"age": 3}
    assert signed["signatures"]["other"] == {"ed25519:x": "sig"}
    assert "domain" not in obj["signatures"]  # input untouched
    # unsigned is not covered: changing it keeps the signature valid.
    verify_json_signatures(
        dict(signed, unsigned={"age": 99}), SPEC_SERVER, _lookup_one(verify_key_of(spec_key()))
    )


def test_altered_json_is_rejected() -> None:
    signed = sign_json({"one": 1}, spec_key(), SPEC_SERVER)
    with pytest.raises(SignatureError, match="bad signature"):
        verify_json_signatures(
            dict(signed, one=2), SPEC_SERVER, _lookup_one(verify_key_of(spec_key()))
        )


def test_forged_signature_is_rejected() -> None:
    # An attacker signs with their own key but claims the victim's key ID.
    forged = sign_json({"one": 1}, generate_signing_key("1"), SPEC_SERVER)
    with pytest.raises(SignatureError, match="bad signature"):
        verify_json_signatures(forged, SPEC_SERVER, _lookup_one(verify_key_of(spec_key())))


@pytest.mark.parametrize(
    ("signatures", "reason"),
    [
        (None, "missing or not an object"),
        ({}, "not signed by domain"),
        ({"domain": "x"}, "not an object"),
        ({"domain": {"ed25519:1": 5}}, "not a string"),
        ({"domain": {"ed25519:1": "a"}}, "not valid base64"),
        ({"domain": {"ed25519:1": "AAAA"}}, "bad signature"),  # wrong length
        ({"domain": {"rsa:1": "AAAA"}}, "no signature from domain with a known"),
        ({"domain": {"ed25519:unknown": "AAAA"}}, "no signature from domain with a known"),
    ],
)
def test_signature_check_failures(signatures: Any, reason: str) -> None:
    obj: dict[str, Any] = {"one": 1}
    if signatures is not None:
        obj["signatures"] = signatures
    with pytest.raises(SignatureError, match=reason):
        verify_json_signatures(obj, SPEC_SERVER, _lookup_one(verify_key_of(spec_key())))


def test_unknown_keys_are_skipped_if_a_known_one_verifies() -> None:
    signed = sign_json({"one": 1}, spec_key(), SPEC_SERVER)
    signed["signatures"]["domain"]["ed25519:unknown"] = "garbage"
    signed["signatures"]["domain"]["foo:1"] = "garbage"
    verify_json_signatures(signed, SPEC_SERVER, _lookup_one(verify_key_of(spec_key())))


def test_expired_keys_are_ignored_when_validity_is_enforced() -> None:
    signed = sign_json({"one": 1}, spec_key(), SPEC_SERVER)
    expired = ServerKey(verify_key_of(spec_key()), valid_until_ts=999)
    with pytest.raises(SignatureError, match="unexpired"):
        verify_json_signatures(signed, SPEC_SERVER, _lookup_one(expired), valid_at_ts=1000)
    verify_json_signatures(signed, SPEC_SERVER, _lookup_one(expired), valid_at_ts=999)
    verify_json_signatures(signed, SPEC_SERVER, _lookup_one(expired))  # no enforcement


# -- events ------------------------------------------------------------------------------------

HS1, HS2 = generate_signing_key("a"), generate_signing_key("b")


def _signed_event(rv: Any, key: Any = HS1, server: str = "hs1", **fields: Any) -> dict[str, Any]:
    pdu: dict[str, Any] = {
        "type": "m.room.message",
        "room_id": "!r:hs1",
        "sender": "@u:hs1",
        "origin_server_ts": 5000,
        "depth": 3,
        "prev_events": [],
        "auth_events": [],
        "content": {"body": "hello"},
    }
    pdu.update(fields)
    return sign_event(add_hashes(pdu), rv, key, server)


def test_event_signature_ignores_redactable_content_but_covers_the_rest() -> None:
    lookup = lookup_for(("hs1", HS1))
    signed = _signed_event(V11)
    verify_event_signatures(Event(dict(signed, content={"body": "changed"}), V11), lookup)
    with pytest.raises(SignatureError, match="bad signature"):
        verify_event_signatures(Event(dict(signed, depth=4), V11), lookup)
    with pytest.raises(SignatureError, match="bad signature"):
        verify_event_signatures(Event(dict(signed, hashes={"sha256": "AAAA"}), V11), lookup)


def test_event_signed_by_wrong_server_is_rejected() -> None:
    # hs2 signs an event whose sender is on hs1.
    signed = _signed_event(V11, key=HS2, server="hs2")
    with pytest.raises(SignatureError, match="not signed by hs1"):
        verify_event_signatures(Event(signed, V11), lookup_for(("hs1", HS1), ("hs2", HS2)))


def test_v1_requires_event_id_domain_signature() -> None:
    signed = _signed_event(V1, event_id="$abc:hs2")
    assert required_signers(Event(signed, V1)) == {"hs1", "hs2"}
    lookup = lookup_for(("hs1", HS1), ("hs2", HS2))
    with pytest.raises(SignatureError, match="not signed by hs2"):
        verify_event_signatures(Event(signed, V1), lookup)
    both = sign_event(signed, V1, HS2, "hs2")
    verify_event_signatures(Event(both, V1), lookup)


def test_restricted_join_requires_authorising_server() -> None:
    content = {"membership": "join", "join_authorised_via_users_server": "@admin:hs2"}
    signed = _signed_event(V8, type="m.room.member", state_key="@u:hs1", content=content)
    assert required_signers(Event(signed, V8)) == {"hs1", "hs2"}
    lookup = lookup_for(("hs1", HS1), ("hs2", HS2))
    with pytest.raises(SignatureError, match="not signed by hs2"):
        verify_event_signatures(Event(signed, V8), lookup)
    verify_event_signatures(Event(sign_event(signed, V8, HS2, "hs2"), V8), lookup)
    # Before v8 the key means nothing.
    assert required_signers(Event(signed, get_room_version("7"))) == {"hs1"}


def test_third_party_invite_does_not_need_senders_server() -> None:
    content = {"membership": "invite", "third_party_invite": {"signed": {}}}
    pdu = _signed_event(
        V11, key=HS2, server="hs2", type="m.room.member", state_key="@x:hs2", content=content
    )
    assert required_signers(Event(pdu, V11)) == set()


def test_key_validity_enforced_from_v5_only() -> None:
    signed = _signed_event(V5)  # origin_server_ts 5000
    expired = ServerKey(verify_key_of(HS1), valid_until_ts=4999)
    lookup = _lookup_one(expired, "hs1", "ed25519:a")
    with pytest.raises(SignatureError, match="unexpired"):
        verify_event_signatures(Event(signed, V5), lookup)
    v4_signed = _signed_event(V4)
    verify_event_signatures(Event(v4_signed, V4), lookup)


def test_sign_event_does_not_mutate_input() -> None:
    pdu = add_hashes(copy.deepcopy(SPEC_MINIMAL_EVENT))
    before = copy.deepcopy(pdu)
    sign_event(pdu, V1, spec_key(), SPEC_SERVER)
    assert pdu == before
