"""Hostile-client request generation for the endpoint fuzz tests.

Hypothesis strategies for path parameters, query strings and bodies (malformed JSON, invalid
UTF-8, wrong types at the top level and per field, huge arrays, deep nesting, wrong content
types), drawn with a fixed seed per route so a run is repeatable and its size is bounded; and
the checks every answer must pass.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

JSON = "application/json"


@dataclass(frozen=True)
class Case:
    """One request: a path with its parameters filled, a query string, a body."""

    params: dict[str, str]
    raw_params: bool  # put parameters into the path unescaped (traversal, bad escapes)
    query: str
    body: bytes | None
    content_type: str | None
    label: str  # what kind of body, for failure messages


# --- path parameters -------------------------------------------------------------------------

_NASTY_PARAMS = [
    "", ".", "..", "../../../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2e%2e", "\x00",
    "a\x00b", "%00", "%FF%FE", "@", "!", "$", "#", "+", ":", "@:", "!:", "$:", "#:",
    "@alice", "!room", "@a:b:c", "!x:[::1]", "@ALICE:test.local", "#alias:test.local",
    "!nonexistent:test.local", "$nonexistent:test.local", "@nobody:test.local",
    "@nobody:elsewhere.invalid", "mxc://x/y", "\u202e\u0000\ud7ff", "😀" * 10, "null", "[]",
    "{}", "-1", "99999999999999999999", "1e309", "NaN", " ", "\t\n",
]


def path_value(valid: list[str]) -> st.SearchStrategy[str]:
    """A path parameter: often valid (so the body gets looked at), else hostile."""
    strategies: list[st.SearchStrategy[str]] = [
        st.sampled_from(_NASTY_PARAMS),
        st.text(max_size=40),
        st.integers(min_value=300, max_value=5000).map(lambda n: "x" * n),
        st.sampled_from(["@", "!", "$", "#", "+", ""]).flatmap(
            lambda sigil: st.text(max_size=20).map(lambda t: sigil + t)),
    ]
    if valid:
        strategies.insert(0, st.sampled_from(valid))
    return st.one_of(*strategies)


def fill_path(template: str, params: dict[str, str], raw: bool) -> str:
    out = template
    for name, value in params.items():
        # Raw: "/" and "%" go through as they are (traversal, bad escapes); what cannot be
        # in an HTTP request line at all (spaces, controls, non-ASCII) is still escaped.
        out = out.replace("{" + name + "}", quote(value, safe="/%:@!$+&=;,'()*~" if raw
                                                  else ""))
    return out


# --- query strings ---------------------------------------------------------------------------

QUERY_NAMES = [
    "limit", "from", "to", "dir", "filter", "since", "timeout", "full_state", "set_presence",
    "version", "ts", "width", "height", "method", "url", "userid", "alias", "username",
    "token", "server_name", "via", "recurse", "max_depth", "suggested_only", "include",
    "next_batch", "membership", "not_membership", "at", "event_id", "animated", "allow_remote",
    "timeout_ms", "allow_redirect", "order_by", "access_token", "kind", "user_id",
]


def query_value() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(["-1", "0", "1", "99999999999999999999", "1.5", "true", "null", "b",
                         "f", "{}", "[]", "{\"room\":{\"limit\":-1}}", "{\"a\":", "s0_0", ""]),
        st.text(max_size=30),
        st.integers(min_value=300, max_value=3000).map(lambda n: "9" * n),
    )


def query_strategy() -> st.SearchStrategy[str]:
    pairs = st.lists(st.tuples(st.sampled_from(QUERY_NAMES), query_value()), max_size=4)
    return st.one_of(
        pairs.map(urlencode),
        st.sampled_from(["%FF=%FE", "limit=%00", "filter=%7B%22a%22%3A", "a&&b==c", "=",
                         "limit=1&limit=x"]),
    )


# --- bodies ---------------------------------------------------------------------------------

COMMON_FIELDS = [
    "user_id", "room_id", "event_id", "msgtype", "body", "type", "content", "state_key",
    "auth", "session", "identifier", "password", "username", "device_id", "devices",
    "display_name", "displayname", "avatar_url", "visibility", "presence", "status_msg",
    "typing", "timeout", "reason", "score", "limit", "filter", "search_term", "since",
    "server", "rooms", "sessions", "messages", "device_keys", "one_time_keys",
    "fallback_keys", "master_key", "self_signing_key", "user_signing_key", "algorithm",
    "auth_data", "version", "actions", "pattern", "conditions", "enabled", "kind", "app_id",
    "pushkey", "data", "append", "preset", "invite", "initial_state", "creation_content",
    "power_level_content_override", "name", "topic", "room_alias_name", "is_direct",
    "room_version", "new_version", "m.fully_read", "m.read", "m.read.private", "order",
    "refresh_token", "new_password", "logout_devices", "search_categories", "thread_id",
    "via", "server_name", "first_message_index", "forwarded_count", "is_verified",
    "session_data", "include_all_networks", "third_party_instance_id", "generic_search_term",
    "inhibit_login", "initial_device_display_name", "erase", "id_server", "medium", "address",
]

_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=2**53, max_value=2**80),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30),
    st.sampled_from(["", "\x00", "@", "!", "$", "mxc://", "m.text", "m.room.message",
                     "@alice:test.local", "!a:test.local", "global", "override", "notify"]),
)
JSON_VALUES: st.SearchStrategy[Any] = st.recursive(
    _SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=10), children, max_size=4),
    ),
    max_leaves=12,
)


def field_names(handler: Callable[..., Any]) -> list[str]:
    """Keys this route's handler reads: the short string literals in its source."""
    try:
        source = inspect.getsource(handler)
    except (OSError, TypeError):
        return []
    found = re.findall(r"""["']([a-z][a-z0-9_.]{1,40})["']""", source)
    return sorted(set(found))


def deep(levels: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * levels + b"]" * levels
    return b'{"a":' * levels + b"1" + b"}" * levels


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


def body_strategy(fields: list[str], seed_body: dict[str, Any] | None
                  ) -> st.SearchStrategy[tuple[str, bytes | None]]:
    names = st.sampled_from(sorted(set(fields) | set(COMMON_FIELDS)))
    # An object of known keys with values of any type: wrong types per field.
    typed = st.dictionaries(names, JSON_VALUES, min_size=1, max_size=6).map(
        lambda d: ("fields", _dumps(d)))
    strategies = [
        typed, typed,
        st.binary(max_size=64).map(lambda b: ("bytes", b)),
        st.sampled_from([b"", b"{", b"{'a': 1}", b"[1,]", b"NaN", b"Infinity", b"{\"a\":NaN}",
                         b"\xff\xfe{}", b'{"a":"\xff"}', b'{"a": "\\ud800"}', b"{}{}",
                         b'{"a":1,"a":2}', b"\x00", b"null", b"true", b"1e999",
                         b'{"user_id": 1e999}']).map(lambda b: ("malformed", b)),
        JSON_VALUES.map(lambda v: ("top-level", _dumps(v))),
        st.tuples(names, st.sampled_from([10, 100, 2000, 20000])).map(
            lambda t: ("huge-array", _dumps({t[0]: [0] * t[1]}))),
        st.tuples(names, st.sampled_from([50, 200, 900])).map(
            lambda t: ("deep-field", b'{"' + t[0].encode() + b'":' + deep(t[1], "dict")
                       + b"}")),
    ]
    if seed_body:
        # A valid body with one field given a wrong value, or taken away.
        keys = sorted(seed_body)
        strategies += [st.tuples(st.sampled_from(keys), JSON_VALUES).map(
            lambda kv: ("mutated", _dumps({**seed_body, kv[0]: kv[1]}))),
            st.sampled_from(keys).map(
                lambda k: ("missing", _dumps({x: v for x, v in seed_body.items() if x != k})))]
    return st.one_of(*strategies)


CONTENT_TYPES = st.one_of(
    st.just(JSON), st.just(JSON),
    st.sampled_from([None, "text/plain", "application/x-www-form-urlencoded",
                     "multipart/form-data; boundary=x", "application/json; charset=latin1",
                     "image/png", "\u00ff/\u00fe"]),
)


def case_strategy(param_names: list[str], valid: dict[str, list[str]], fields: list[str],
                  seed_body: dict[str, Any] | None, with_body: bool
                  ) -> st.SearchStrategy[Case]:
    params = st.fixed_dictionaries({n: path_value(valid.get(n, [])) for n in param_names})
    body = body_strategy(fields, seed_body) if with_body else st.just(("none", None))
    return st.builds(
        lambda p, raw, query, b, ctype: Case(p, raw, query, b[1], ctype, b[0]),
        params, st.booleans().map(lambda x: x and bool(param_names)) if param_names
        else st.just(False),
        st.one_of(st.just(""), query_strategy()), body, CONTENT_TYPES,
    )


def draw(strategy: st.SearchStrategy[Case], n: int, route_seed: int) -> list[Case]:
    """n examples of a strategy, the same every run (a fixed seed, no example database)."""
    out: list[Case] = []

    @seed(route_seed)
    @settings(max_examples=n, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(case: Case) -> None:
        out.append(case)

    collect()
    return out[:n]


def _with_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value + "\x00"
    if isinstance(value, dict):
        return {k: _with_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_nul(v) for v in value]
    return value


def fixed_cases(param_names: list[str], valid: dict[str, list[str]], limit: int,
                seed_body: dict[str, Any] | None = None) -> list[Case]:
    """The cases every route gets: oversized, 10,000-deep and invalid UTF-8 bodies, NUL in
    every string, wrong content types, and traversal in every path parameter at once."""
    good = {n: (valid.get(n) or ["x"])[0] for n in param_names}
    bodies: list[tuple[str, bytes | None, str | None]] = [
        ("oversized", b'{"a":"' + b"x" * limit + b'"}', JSON),
        ("deep-10000-list", deep(10_000, "list"), JSON),
        ("deep-10000-object", deep(10_000, "dict"), JSON),
        ("invalid-utf8", b'{"body": "\xc3\x28\xa0\xa1"}', JSON),
        ("form", b"a=b&c=d", "application/x-www-form-urlencoded"),
        ("multipart-garbage", b"\xde\xad", "multipart/form-data; boundary=x"),
        ("no-content-type", b"{}", None),
        ("empty", b"", JSON),
        ("nul-in-strings", _dumps(_with_nul(seed_body or {"body": "x", "a": ["b"]})), JSON),
    ]
    cases = [Case(good, False, "", b, ct, label) for label, b, ct in bodies]
    if param_names:
        cases.append(Case({n: "../../.." for n in param_names}, True, "", b"{}", JSON,
                          "traversal-raw"))
        cases.append(Case({n: "%00%FF" for n in param_names}, True, "", b"{}", JSON,
                          "nul-and-bad-utf8"))
    return cases


# --- checks ---------------------------------------------------------------------------------

_LEAKS = re.compile(
    r"Traceback \(most recent|File \"/|\.py\", line \d|object at 0x[0-9a-f]+|<class '|"
    r"\b[A-Z][A-Za-z]+(Error|Exception)\(|psycopg|sqlite3\.|twisted\.|NoneType"
)


# A remote server that cannot be reached (a profile or media of another server) is a gateway
# failure, answered 502/504 with an errcode like Synapse does; every other 5xx is ours.
UPSTREAM = frozenset({502, 504})


def problems(status: int, content_type: str | None, body: bytes, *, html: bool = False
             ) -> list[str]:
    """What is wrong with an answer to a hostile request (empty when it is fine). ``html``:
    the route is a page for a browser, whose errors are HTML pages."""
    found = []
    if status >= 500 and status not in UPSTREAM:
        found.append(f"status {status}")
    is_json = (content_type or "").startswith(JSON)
    text = body.decode("utf-8", "replace") if is_json or status >= 400 else ""
    if status >= 400 and not (html and (content_type or "").startswith("text/html")):
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        uia = status == 401 and isinstance(parsed, dict) and "flows" in parsed
        if not uia and not (isinstance(parsed, dict) and isinstance(parsed.get("errcode"), str)):
            found.append("error answer is not JSON with an errcode")
    m = _LEAKS.search(text)
    if m:
        found.append(f"internals in the answer: {m.group(0)!r}")
    return found
