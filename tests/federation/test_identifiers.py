from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from federation.identifiers import (
    InvalidIdentifier,
    ServerName,
    UserID,
    check_room_id,
    create_event_id_from_room_id,
    get_domain,
    is_valid_event_id,
    is_valid_room_alias,
    is_valid_room_id,
    is_valid_server_name,
    is_valid_user_id,
    parse_server_name,
    parse_user_id,
    room_id_from_create_event_id,
)
from federation.room_versions import get_room_version

V1, V3, V4, V11, V12 = (get_room_version(v) for v in ("1", "3", "4", "11", "12"))
HASH43 = "Rqnc-F-dvnEYJTyHq_iKxU2bZ1CI92-kuZq3a5lr5Zg"  # the spec's v4 example event ID


# -- server names ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # the spec's examples
        ("matrix.org", ServerName("matrix.org", None)),
        ("matrix.org:8888", ServerName("matrix.org", 8888)),
        ("1.2.3.4", ServerName("1.2.3.4", None)),
        ("1.2.3.4:1234", ServerName("1.2.3.4", 1234)),
        ("[1234:5678::abcd]", ServerName("[1234:5678::abcd]", None)),
        ("[1234:5678::abcd]:5678", ServerName("[1234:5678::abcd]", 5678)),
        ("localhost", ServerName("localhost", None)),
        ("[::ffff:1.2.3.4]", ServerName("[::ffff:1.2.3.4]", None)),
        ("EXAMPLE.org", ServerName("EXAMPLE.org", None)),  # case-sensitive, still valid
    ],
)
def test_valid_server_names_parse(name: str, expected: ServerName) -> None:
    assert parse_server_name(name) == expected
    assert is_valid_server_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "exa mple.org",
        "example.org:",
        "example.org:123456",  # port is 1*5DIGIT
        "example.org:80a",
        "example.org:-1",
        "ex_ample.org",  # '_' is not a dns-char
        "1.2.3.256",  # IPv4 octets are 0..255
        "[1234:5678::abcd",
        "[1234:5678::abcd]x",
        "[::1]:",
        "[not:ipv6]",
        "[1:2:3:4:5:6:7:8:9]",  # right characters, not RFC 3513
        "[]",
        "a" * 256,  # dns-name is 1*255
        "example.org/path",
        "ex\u00e4mple.org",
    ],
)
def test_invalid_server_names(name: str) -> None:
    assert not is_valid_server_name(name)
    with pytest.raises(InvalidIdentifier):
        parse_server_name(name)


_dns_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
server_names = st.one_of(
    st.lists(_dns_label, min_size=1, max_size=4).map(".".join),
    st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t))),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
)


@given(server_names, st.one_of(st.none(), st.integers(0, 99999)))
def test_server_name_round_trip(host: str, port: int | None) -> None:
    name = host if port is None else f"{host}:{port}"
    assert parse_server_name(name) == ServerName(host, port)


# -- user IDs ------------------------------------------------------------------------------


def test_user_id_parse() -> None:
    assert parse_user_id("@alice:example.org") == UserID("alice", "example.org")
    assert parse_user_id("@a.b_c=d-e/f+g:[::1]:8448") == UserID("a.b_c=d-e/f+g", "[::1]:8448")


def test_historical_vs_current_localpart_grammar() -> None:
    # Historical IDs (accepted on received events) allow nearly anything except ':' and NUL.
    for uid in ("@Alice:example.org", "@:example.org", "@caf\u00e9 \x01:example.org"):
        assert is_valid_user_id(uid)
        assert not is_valid_user_id(uid, historical=False)
    assert is_valid_user_id("@alice:example.org", historical=False)


@pytest.mark.parametrize(
    "uid",
    [
        "alice:example.org",  # no sigil
        "@alice",  # no domain
        "@alice:",  # empty domain
        "@al\x00ice:example.org",  # NUL
        "@al\ud800ice:example.org",  # lone surrogate
        "@alice:bad domain",
        "#alice:example.org",
    ],
)
def test_invalid_user_ids(uid: str) -> None:
    assert not is_valid_user_id(uid)
    with pytest.raises(InvalidIdentifier):
        parse_user_id(uid)


def test_user_id_255_byte_limit_counts_bytes() -> None:
    domain = ":example.org"
    at_limit = "@" + "a" * (255 - 1 - len(domain)) + domain
    assert len(at_limit.encode()) == 255
    assert is_valid_user_id(at_limit, historical=False)
    assert not is_valid_user_id("@a" + at_limit[1:])
    # 2-byte characters: fits in characters, not in bytes.
    multibyte = "@" + "\u00e9" * 125 + domain
    assert len(multibyte) < 255 < len(multibyte.encode())
    assert not is_valid_user_id(multibyte)


@given(
    st.from_regex(r"[a-z0-9._=\-/+]{1,40}", fullmatch=True),
    server_names,
)
def test_strict_user_ids_round_trip(localpart: str, domain: str) -> None:
    uid = f"@{localpart}:{domain}"
    assert parse_user_id(uid, historical=False) == UserID(localpart, domain)
    assert parse_user_id(uid) == UserID(localpart, domain)


@given(
    st.text(
        alphabet=st.characters(codec="utf-8", blacklist_characters=":\x00"),
        max_size=30,
    ),
    server_names,
)
def test_historical_user_ids_round_trip(localpart: str, domain: str) -> None:
    uid = f"@{localpart}:{domain}"
    if len(uid.encode()) <= 255:
        assert parse_user_id(uid) == UserID(localpart, domain)
    else:
        assert not is_valid_user_id(uid)


@given(st.text(max_size=40))
def test_user_id_parser_never_crashes(s: str) -> None:
    # Any string is either a valid ID or a clean InvalidIdentifier.
    try:
        uid = parse_user_id(s)
    except InvalidIdentifier:
        return
    assert s == f"@{uid.localpart}:{uid.domain}"


# -- room IDs ------------------------------------------------------------------------------


def test_room_ids_by_version() -> None:
    assert is_valid_room_id("!abc:example.org", V11)
    assert is_valid_room_id("!" + HASH43, V12)
    # Each version insists on its own form.
    assert not is_valid_room_id("!abc:example.org", V12)
    assert not is_valid_room_id("!" + HASH43, V11)
    # Without a version either form is fine.
    assert is_valid_room_id("!abc:example.org")
    assert is_valid_room_id("!" + HASH43)


@pytest.mark.parametrize(
    "rid",
    ["abc:example.org", "!abc", "!a\x00:example.org", "!" + HASH43[:-1], "!" + HASH43 + "A"],
)
def test_invalid_room_ids(rid: str) -> None:
    assert not is_valid_room_id(rid)


def test_room_id_length_limit() -> None:
    rid = "!" + "a" * 243 + ":example.org"
    assert len(rid) == 256
    with pytest.raises(InvalidIdentifier, match="255 bytes"):
        check_room_id(rid, V1)


def test_room_id_create_event_id_mapping() -> None:
    assert room_id_from_create_event_id("$" + HASH43) == "!" + HASH43
    assert create_event_id_from_room_id("!" + HASH43) == "$" + HASH43


# -- event IDs -----------------------------------------------------------------------------


def test_event_id_formats() -> None:
    std = "$" + "a+/b" * 10 + "abc"  # 43 chars, standard alphabet
    url = "$" + "a-_b" * 10 + "abc"  # 43 chars, URL-safe alphabet
    assert is_valid_event_id("$a4ecee13e2accdadf56c1025:example.com", V1)
    assert not is_valid_event_id("$a4ecee13e2accdadf56c1025", V1)  # v1 needs a domain
    assert is_valid_event_id(std, V3)
    assert not is_valid_event_id(url, V3)
    assert is_valid_event_id(url, V4)
    assert not is_valid_event_id(std, V4)
    assert is_valid_event_id("$" + HASH43, V12)
    assert not is_valid_event_id("$" + HASH43[:-1], V4)  # a SHA-256 hash is 43 chars
    assert not is_valid_event_id("!" + HASH43, V4)
    assert not is_valid_event_id("$" + "a" * 250 + ":x.org", V1)  # > 255 bytes


# -- aliases and domains --------------------------------------------------------------------


def test_room_aliases() -> None:
    assert is_valid_room_alias("#room:example.org")
    assert is_valid_room_alias("#R\u00f6\u00f6m with spaces:example.org")
    assert not is_valid_room_alias("#room")
    assert not is_valid_room_alias("!room:example.org")
    assert not is_valid_room_alias("#r\x00:example.org")
    assert not is_valid_room_alias("#" + "a" * 250 + ":example.org")


def test_get_domain() -> None:
    assert get_domain("@a:example.org:8448") == "example.org:8448"
    assert get_domain("$x:[::1]") == "[::1]"
    with pytest.raises(InvalidIdentifier):
        get_domain("$nodomain")
