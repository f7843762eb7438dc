from __future__ import annotations

from typing import Any

import pytest

from federation.keys import generate_signing_key, verify_key_of
from federation.signing import ServerKey, sign_json
from federation.x_matrix import (
    MalformedAuthorization,
    NotXMatrix,
    XMatrixAuth,
    XMatrixError,
    authenticate_request,
    authorization_header,
    format_authorization,
    parse_authorization,
    parse_request_authorization,
    request_json,
    sign_request,
    verify_request,
)

ORIGIN = "origin.hs.example.com"
DEST = "destination.hs.example.com"
KEY = generate_signing_key("key1")
OTHER_KEY = generate_signing_key("key1")  # same key ID, different key
SECOND_KEY = generate_signing_key("key2")
NOW = 1_700_000_000_000
URI = "/_matrix/federation/v1/send/txn1?limit=10&dir=b"
CONTENT = {"pdus": [], "edus": [{"edu_type": "m.typing"}]}


def lookup(*keys: Any, server: str = ORIGIN, valid_until: int | None = None) -> Any:
    known = {f"ed25519:{k.version}": ServerKey(verify_key_of(k), valid_until) for k in keys}
    return lambda s, key_id: known.get(key_id) if s == server else None


def auth(
    *,
    key: Any = KEY,
    method: str = "PUT",
    uri: str = URI,
    content: Any = CONTENT,
    destination: str = DEST,
) -> str:
    return authorization_header(key, ORIGIN, destination, method, uri, content)


def check(headers: list[str], **overrides: Any) -> str:
    kwargs: dict[str, Any] = {
        "method": "PUT",
        "uri": URI,
        "content": CONTENT,
        "our_server_name": DEST,
        "key_lookup": lookup(KEY),
        "now_ms": NOW,
    }
    kwargs.update(overrides)
    return authenticate_request(headers, **kwargs)


# -- building ------------------------------------------------------------------------------------


def test_request_json_matches_spec_shape() -> None:
    assert request_json("POST", "/target", ORIGIN, DEST, {"a": 1}) == {
        "method": "POST",
        "uri": "/target",
        "origin": ORIGIN,
        "destination": DEST,
        "content": {"a": 1},
    }
    # No body: no "content" key at all (not null).
    assert "content" not in request_json("GET", "/target", ORIGIN, DEST)


def test_header_has_the_spec_form_and_the_spec_example_signature() -> None:
    header = auth(method="POST", uri="/target", content={"a": 1})
    # The spec's example code signs the same object; the signature must be identical.
    signed = sign_json(request_json("POST", "/target", ORIGIN, DEST, {"a": 1}), KEY, ORIGIN)
    sig = signed["signatures"][ORIGIN]["ed25519:key1"]
    assert header == (
        f'X-Matrix origin="{ORIGIN}",destination="{DEST}",key="ed25519:key1",sig="{sig}"'
    )


def test_round_trip() -> None:
    parsed = parse_authorization(auth())
    assert parsed == sign_request(KEY, ORIGIN, DEST, "PUT", URI, CONTENT)
    assert parsed.origin == ORIGIN and parsed.destination == DEST
    assert parsed.key_id == "ed25519:key1"
    assert check([auth()]) == ORIGIN


def test_format_escapes_quotes_and_backslashes() -> None:
    header = format_authorization(XMatrixAuth('a"b\\c', "ed25519:k", "sig", None))
    assert header == 'X-Matrix origin="a\\"b\\\\c",key="ed25519:k",sig="sig"'
    assert "destination" not in header


# -- parsing -------------------------------------------------------------------------------------

SIG = "aGVsbG8/+x"


@pytest.mark.parametrize(
    "header",
    [
        # spec form
        f'X-Matrix origin="{ORIGIN}",destination="{DEST}",key="ed25519:key1",sig="{SIG}"',
        # scheme is case-insensitive, several spaces after it
        f'x-matrix   origin="{ORIGIN}",destination="{DEST}",key="ed25519:key1",sig="{SIG}"',
        f'X-MATRIX origin="{ORIGIN}",destination="{DEST}",key="ed25519:key1",sig="{SIG}"',
        # names are case-insensitive; order does not matter
        f'X-Matrix SIG="{SIG}",Key="ed25519:key1",DESTINATION="{DEST}",Origin="{ORIGIN}"',
        # spaces and tabs around commas, BWS around '='
        f'X-Matrix origin = "{ORIGIN}" ,\tdestination="{DEST}"\t, key="ed25519:key1" ,sig="{SIG}"',
        # unquoted values, with colons (compat) and base64 characters
        f"X-Matrix origin={ORIGIN},destination={DEST},key=ed25519:key1,sig={SIG}",
        # backslash escapes are undone
        f'X-Matrix origin="{ORIGIN}",destination="{DEST}",key="ed25519\\:key1",sig="{SIG}"',
        # unknown parameters are ignored, also quoted ones containing commas
        f'X-Matrix foo="a,b=c",origin="{ORIGIN}",destination="{DEST}",key="ed25519:key1",'
        f'sig="{SIG}",bar=baz',
        # empty list elements and a trailing comma
        f'X-Matrix ,origin="{ORIGIN}",,destination="{DEST}",key="ed25519:key1",sig="{SIG}",',
    ],
)
def test_parse_accepts_spec_grammar(header: str) -> None:
    assert parse_authorization(header) == XMatrixAuth(ORIGIN, "ed25519:key1", SIG, DEST)
    assert parse_authorization(header.encode()) == XMatrixAuth(ORIGIN, "ed25519:key1", SIG, DEST)


def test_parse_without_destination_for_old_senders() -> None:
    parsed = parse_authorization(f'X-Matrix origin="{ORIGIN}",key="ed25519:key1",sig="{SIG}"')
    assert parsed.destination is None


def test_parse_ipv6_and_port_origins() -> None:
    header = 'X-Matrix origin="[::1]:8448",destination=example.org:8448,key="ed25519:a",sig="s"'
    parsed = parse_authorization(header)
    assert (parsed.origin, parsed.destination) == ("[::1]:8448", "example.org:8448")


@pytest.mark.parametrize(
    ("header", "why"),
    [
        ('X-Matrixorigin="a.b",key="ed25519:k",sig="s"', "not X-Matrix"),
        ("X-Matrix", "space"),
        ('X-Matrix key="ed25519:k",sig="s"', "origin"),
        ('X-Matrix origin="a.b",sig="s"', "key"),
        ('X-Matrix origin="a.b",key="ed25519:k"', "sig"),
        ('X-Matrix origin="a.b",key="ed25519:k",sig=""', "sig"),
        ('X-Matrix origin="a.b",origin="c.d",key="ed25519:k",sig="s"', "twice"),
        ('X-Matrix origin "a.b",key="ed25519:k",sig="s"', "no '='"),
        ('X-Matrix origin="a.b,key="ed25519:k",sig="s"', "expected ','"),
        ('X-Matrix origin="a.b",key="ed25519:k",sig="s', "unterminated"),
        ('X-Matrix origin="a.b"x,key="ed25519:k",sig="s"', "','"),
        ('X-Matrix origin="a b",key="ed25519:k",sig="s"', "server name"),
        ('X-Matrix origin="a.b",destination="",key="ed25519:k",sig="s"', "server name"),
        ('X-Matrix origin="a.b",key="nocolon",sig="s"', "algorithm:version"),
        ('X-Matrix origin=,key="ed25519:k",sig="s"', "empty value"),
        ('X-Matrix =x,origin="a.b",key="ed25519:k",sig="s"', "parameter name"),
        ('X-Matrix origin="a.b",key="ed25519:k",sig="s\x01"', "control"),
    ],
)
def test_parse_rejects(header: str, why: str) -> None:
    with pytest.raises(MalformedAuthorization, match=why) as info:
        parse_authorization(header)
    assert info.value.status == 400


def test_parse_rejects_non_utf8_bytes() -> None:
    with pytest.raises(MalformedAuthorization, match="UTF-8"):
        parse_authorization(b'X-Matrix origin="\xff",key="ed25519:k",sig="s"')


def test_other_schemes_are_not_x_matrix() -> None:
    with pytest.raises(NotXMatrix):
        parse_authorization("Bearer abc")
    # ...and are skipped among a request's headers.
    assert check(["Bearer abc", auth()]) == ORIGIN


# -- verification ------------------------------------------------------------------------------


def test_missing_header_is_401() -> None:
    for headers in ([], ["Bearer abc"]):
        with pytest.raises(XMatrixError, match="missing") as info:
            check(headers)
        assert info.value.status == 401 and info.value.errcode == "M_UNAUTHORIZED"


def test_wrong_destination_is_401() -> None:
    with pytest.raises(XMatrixError, match="not this server") as info:
        check([auth(destination="someone.else")])
    assert info.value.status == 401


def test_header_without_destination_still_verifies_against_our_name() -> None:
    # An old sender signs with destination = our name but leaves it out of the header.
    signed = sign_request(KEY, ORIGIN, DEST, "PUT", URI, CONTENT)
    header = format_authorization(XMatrixAuth(signed.origin, signed.key_id, signed.signature))
    assert check([header]) == ORIGIN
    # A signature made for another destination does not verify for us.
    other = sign_request(KEY, ORIGIN, "someone.else", "PUT", URI, CONTENT)
    header = format_authorization(XMatrixAuth(other.origin, other.key_id, other.signature))
    with pytest.raises(XMatrixError, match="invalid request signature"):
        check([header])


@pytest.mark.parametrize(
    "change",
    [
        {"method": "POST"},
        {"uri": "/_matrix/federation/v1/send/txn2?limit=10&dir=b"},
        {"uri": "/_matrix/federation/v1/send/txn1?limit=11&dir=b"},
        {"uri": "/_matrix/federation/v1/send/txn1"},
        {"content": {**CONTENT, "pdus": [{"x": 1}]}},
        {"content": None},
    ],
)
def test_altered_request_fails(change: dict[str, Any]) -> None:
    with pytest.raises(XMatrixError, match="invalid request signature") as info:
        check([auth()], **change)
    assert info.value.status == 401


def test_get_without_body_differs_from_empty_object() -> None:
    header = auth(method="GET", content=None)
    assert check([header], method="GET", content=None) == ORIGIN
    with pytest.raises(XMatrixError):
        check([header], method="GET", content={})


def test_wrong_key_fails() -> None:
    with pytest.raises(XMatrixError, match="bad signature"):
        check([auth(key=OTHER_KEY)])


def test_unknown_key_fails() -> None:
    with pytest.raises(XMatrixError, match="known, unexpired key"):
        check([auth(key=SECOND_KEY)])


def test_key_of_another_server_does_not_count() -> None:
    with pytest.raises(XMatrixError):
        check([auth()], key_lookup=lookup(KEY, server="evil.example"))


def test_expired_key_fails() -> None:
    # Old keys (expired_ts in the past) sign events, never requests.
    with pytest.raises(XMatrixError, match="unexpired"):
        check([auth()], key_lookup=lookup(KEY, valid_until=NOW - 1))
    assert check([auth()], key_lookup=lookup(KEY, valid_until=NOW)) == ORIGIN


def test_several_headers_are_merged_and_all_checked() -> None:
    both = lookup(KEY, SECOND_KEY)
    headers = [auth(), auth(key=SECOND_KEY)]
    authz = parse_request_authorization(headers, DEST)
    assert authz.key_ids == ["ed25519:key1", "ed25519:key2"]
    assert check(headers, key_lookup=both) == ORIGIN
    # One bad signature among them fails the request.
    bad = auth(key=SECOND_KEY).replace('sig="', 'sig="AAAA')
    with pytest.raises(XMatrixError):
        check([auth(), bad], key_lookup=both)


def test_headers_with_different_origins_are_refused() -> None:
    other = authorization_header(KEY, "other.example", DEST, "PUT", URI, CONTENT)
    with pytest.raises(XMatrixError, match="different origins"):
        check([auth(), other])


def test_verify_request_uses_the_parsed_authorization() -> None:
    authz = parse_request_authorization([auth()], DEST)
    assert authz.origin == ORIGIN and authz.destination == DEST
    origin = verify_request(
        authz,
        method="PUT",
        uri=URI,
        content=CONTENT,
        our_server_name=DEST,
        key_lookup=lookup(KEY),
        now_ms=NOW,
    )
    assert origin == ORIGIN
