from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from federation.canonical_json import (
    CANONICALJSON_MAX_INT,
    CANONICALJSON_MIN_INT,
    canonical_json_error,
    decode_json,
    encode_canonical_json,
    is_strict_canonical_json,
    strict_canonical_json_error,
)

# appendices.md "Canonical JSON" examples: (input as written in the spec, expected bytes)
SPEC_EXAMPLES = [
    ("{}", "{}"),
    ('{"one": 1, "two": "Two"}', '{"one":1,"two":"Two"}'),
    ('{"b": "2", "a": "1"}', '{"a":"1","b":"2"}'),
    ('{"b":"2","a":"1"}', '{"a":"1","b":"2"}'),
    (
        """{"auth": {"success": true, "mxid": "@john.doe:example.com",
            "profile": {"display_name": "John Doe", "three_pids": [
                {"medium": "email", "address": "john.doe@example.org"},
                {"medium": "msisdn", "address": "123456789"}]}}}""",
        '{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe",'
        '"three_pids":[{"address":"john.doe@example.org","medium":"email"},'
        '{"address":"123456789","medium":"msisdn"}]},"success":true}}',
    ),
    ('{"a": "日本語"}', '{"a":"日本語"}'),
    ('{"本": 2, "日": 1}', '{"日":1,"本":2}'),
    ('{"a": "\\u65E5"}', '{"a":"日"}'),
    ('{"a": null}', '{"a":null}'),
]


@pytest.mark.parametrize(("given_json", "expected"), SPEC_EXAMPLES)
def test_spec_examples(given_json: str, expected: str) -> None:
    assert encode_canonical_json(json.loads(given_json)) == expected.encode("utf-8")


def test_spec_example_negative_zero_and_exponent() -> None:
    # {"a": -0, "b": 1e10}: as integers these encode as 0 and 10000000000.
    assert encode_canonical_json({"a": -0, "b": 10**10}) == b'{"a":0,"b":10000000000}'


def test_control_characters_are_escaped_minimally() -> None:
    assert encode_canonical_json('\x00\x1f\n"\\/') == b'"\\u0000\\u001f\\n\\"\\\\/"'


def test_strict_integer_range_boundaries() -> None:
    assert strict_canonical_json_error({"a": CANONICALJSON_MAX_INT}) is None
    assert strict_canonical_json_error({"a": CANONICALJSON_MIN_INT}) is None
    too_big = strict_canonical_json_error({"a": [1, {"b": 2**53}]})
    assert too_big is not None and "$.a[1].b" in too_big and "range" in too_big
    assert strict_canonical_json_error(-(2**53)) is not None


@pytest.mark.parametrize("value", [1.0, 0.5, float("nan"), float("inf"), -0.0])
def test_strict_rejects_floats(value: float) -> None:
    reason = strict_canonical_json_error({"content": {"x": value}})
    assert reason is not None and "float" in reason and "$.content.x" in reason


def test_strict_accepts_booleans_and_null() -> None:
    # bool is an int subclass in Python; it must not be range-checked or rejected.
    assert is_strict_canonical_json({"t": True, "f": False, "n": None, "s": "x", "l": []})


def test_strict_rejects_non_json_values() -> None:
    assert "not a JSON value" in (strict_canonical_json_error({"a": b"bytes"}) or "")
    assert "not a string" in (strict_canonical_json_error({1: "x"}) or "")
    assert "surrogate" in (strict_canonical_json_error({"a": "\ud800"}) or "")


def test_strict_check_survives_deep_nesting() -> None:
    deep: Any = 1
    for _ in range(100_000):
        deep = [deep]
    assert strict_canonical_json_error(deep) is None


def test_unencodable_values_are_reported_in_any_version() -> None:
    assert canonical_json_error({"a": "\udc00"}) is not None  # no UTF-8 form
    assert canonical_json_error({"a": float("nan")}) is not None
    assert canonical_json_error({"a": 2**60}) is None  # tolerated outside strict versions


def test_decode_json_rejects_nan_and_infinity() -> None:
    assert decode_json(b'{"a": 1}') == {"a": 1}
    for bad in (b'{"a": NaN}', b'{"a": Infinity}', b'{"a": -Infinity}'):
        with pytest.raises(ValueError):
            decode_json(bad)


# -- properties ----------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(CANONICALJSON_MIN_INT, CANONICALJSON_MAX_INT)
    | st.text(alphabet=st.characters(codec="utf-8")),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(alphabet=st.characters(codec="utf-8")), children, max_size=5)
    ),
    max_leaves=30,
)


def _spec_reference(value: Any) -> bytes:
    # The Python reference implementation printed in the appendix.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode(
        "UTF-8"
    )


@given(json_values)
def test_matches_spec_reference_implementation(value: Any) -> None:
    assert encode_canonical_json(value) == _spec_reference(value)


@given(json_values)
def test_round_trip(value: Any) -> None:
    assert json.loads(encode_canonical_json(value)) == value


@given(json_values)
def test_idempotent(value: Any) -> None:
    once = encode_canonical_json(value)
    assert encode_canonical_json(json.loads(once)) == once


@given(st.dictionaries(st.text(), st.integers(0, 9), min_size=1, max_size=8), st.randoms())
def test_key_order_is_irrelevant_and_sorted_by_codepoint(
    d: dict[str, int], rnd: random.Random
) -> None:
    d = {k: v for k, v in d.items() if not any(0xD800 <= ord(c) <= 0xDFFF for c in k)}
    items = list(d.items())
    rnd.shuffle(items)
    encoded = encode_canonical_json(dict(items))
    assert encoded == encode_canonical_json(d)
    assert list(json.loads(encoded)) == sorted(d)


@given(json_values)
def test_generated_values_are_strict(value: Any) -> None:
    assert strict_canonical_json_error(value) is None


@given(
    st.integers(min_value=CANONICALJSON_MAX_INT + 1)
    | st.integers(max_value=CANONICALJSON_MIN_INT - 1)
)
def test_out_of_range_integers_always_rejected(i: int) -> None:
    assert strict_canonical_json_error({"k": [i]}) is not None
