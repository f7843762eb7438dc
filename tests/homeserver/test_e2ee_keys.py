"""Device keys over HTTP on both engines: upload, query, claim (exactly once, even under
concurrent claims), fallback keys, /keys/changes, and bad input that must be refused and
stored nowhere."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer

from homeserver.services.registry import Services
from homeserver.services.sync import SyncToken
from tests.support.client import Client, User, q
from tests.support.e2ee import Device, Ed25519, random_key
from tests.support.server import RunningServer
from tests.support.sync import create_room, join, leave, sync

AUTHED = [
    ("POST", "/keys/upload", {}),
    ("POST", "/keys/query", {"device_keys": {}}),
    ("POST", "/keys/claim", {"one_time_keys": {}}),
    ("GET", "/keys/changes?from=0&to=0", None),
    ("POST", "/keys/device_signing/upload", {}),
    ("POST", "/keys/signatures/upload", {}),
    ("PUT", "/sendToDevice/m.test/t1", {"messages": {}}),
    ("POST", "/room_keys/version", {}),
    ("GET", "/room_keys/version", None),
    ("GET", "/room_keys/keys?version=1", None),
]


def services(hs: RunningServer) -> Services:
    assert hs.hs.services is not None
    return hs.hs.services


async def _device(c: Client, name: str) -> Device:
    return Device(await c.register(name))


async def _query(c: Client, who: Device | User, users: dict[str, list[str]]) -> Any:
    token = who.token if isinstance(who, Device) else who.access_token
    r = await c.call("POST", "/keys/query", {"device_keys": users}, token)
    assert r.status == 200, r.body
    return r.json()


async def _counts(c: Client, d: Device) -> dict[str, int]:
    r = await d.upload(c, {})
    assert r.status == 200, r.body
    counts: dict[str, int] = r.json()["one_time_key_counts"]
    return counts


@pytest.mark.parametrize("method, path, body", AUTHED, ids=[f"{m} {p}" for m, p, _ in AUTHED])
@pytest_twisted.ensureDeferred
async def test_endpoints_need_a_token(hs: RunningServer, method: str, path: str,
                                      body: Any) -> None:
    c = Client(hs.client_url)
    r = await c.call(method, path, body)
    assert (r.status, r.json()["errcode"]) == (401, "M_MISSING_TOKEN")


@pytest_twisted.ensureDeferred
async def test_upload_query_and_counts(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice = await _device(c, "alice")
    bob = await _device(c, "bob")
    await c.call("PUT", f"/devices/{alice.device_id}", {"display_name": "Alice's phone"},
                 alice.token)
    body = {"device_keys": alice.device_keys(), "one_time_keys": alice.one_time_keys(5),
            "fallback_keys": alice.one_time_keys(1, fallback=True)}
    r = await alice.upload(c, body)
    assert r.status == 200, r.body
    assert r.json() == {"one_time_key_counts": {"signed_curve25519": 5}}
    # The same upload again is idempotent.
    r = await alice.upload(c, body)
    assert r.json() == {"one_time_key_counts": {"signed_curve25519": 5}}

    result = await _query(c, bob, {alice.user_id: [], "@nobody:test.local": [],
                                   "@carol:remote.example": []})
    device = result["device_keys"][alice.user_id][alice.device_id]
    assert device["keys"] == body["device_keys"]["keys"]
    assert device["signatures"] == body["device_keys"]["signatures"]
    assert device["unsigned"] == {"device_display_name": "Alice's phone"}
    assert result["device_keys"]["@nobody:test.local"] == {}
    # Remote servers cannot be asked until federation exists: reported, not hidden.
    assert "remote.example" in result["failures"]
    assert "federation" in result["failures"]["remote.example"]["message"]
    # Asking for specific devices.
    result = await _query(c, bob, {alice.user_id: ["NOPE"]})
    assert result["device_keys"][alice.user_id] == {}
    assert services(hs).e2ee.keys is not None
    assert await services(hs).e2ee.keys.unused_fallback_key_types(
        alice.user_id, alice.device_id) == ["signed_curve25519"]


@pytest_twisted.ensureDeferred
async def test_claim_in_upload_order_then_fallback(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice = await _device(c, "alice")
    bob = await _device(c, "bob")
    first = alice.one_time_keys(2)
    await alice.upload(c, {"device_keys": alice.device_keys(), "one_time_keys": first})
    second = alice.one_time_keys(1)
    await alice.upload(c, {"one_time_keys": second})
    fallback = alice.one_time_keys(1, fallback=True)
    await alice.upload(c, {"fallback_keys": fallback})
    keys = services(hs).e2ee.keys

    claimed = []
    for _ in range(3):
        r = await c.call("POST", "/keys/claim",
                         {"one_time_keys": {alice.user_id: {alice.device_id: "signed_curve25519"}}},
                         bob.token)
        assert r.status == 200, r.body
        got = r.json()["one_time_keys"][alice.user_id][alice.device_id]
        assert len(got) == 1
        claimed.append(got)
    assert {k for g in claimed[:2] for k in g} == set(first)
    assert claimed[2] == second
    assert await _counts(c, alice) == {}
    assert await keys.unused_fallback_key_types(alice.user_id, alice.device_id) == [
        "signed_curve25519"]

    # None left: the fallback key, every time, now marked used.
    for _ in range(2):
        r = await c.call("POST", "/keys/claim",
                         {"one_time_keys": {alice.user_id: {alice.device_id: "signed_curve25519"}}},
                         bob.token)
        assert r.json()["one_time_keys"][alice.user_id][alice.device_id] == fallback
    assert await keys.unused_fallback_key_types(alice.user_id, alice.device_id) == []

    # Re-uploading the same fallback key does not make it unused again; a new one does.
    await alice.upload(c, {"fallback_keys": fallback})
    assert await keys.unused_fallback_key_types(alice.user_id, alice.device_id) == []
    await alice.upload(c, {"fallback_keys": alice.one_time_keys(1, fallback=True)})
    assert await keys.unused_fallback_key_types(alice.user_id, alice.device_id) == [
        "signed_curve25519"]

    # Unknown devices, users and algorithms are simply absent; remote servers are failures.
    r = await c.call("POST", "/keys/claim", {"one_time_keys": {
        alice.user_id: {"NOPE": "signed_curve25519", alice.device_id: "other_alg"},
        "@nobody:test.local": {"X": "signed_curve25519"},
        "@carol:remote.example": {"X": "signed_curve25519"},
    }}, bob.token)
    assert r.status == 200
    assert r.json()["one_time_keys"] == {}
    assert "remote.example" in r.json()["failures"]


@pytest_twisted.ensureDeferred
async def test_concurrent_claims_hand_out_each_key_once(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice = await _device(c, "alice")
    claimers = [await _device(c, f"claimer{i}") for i in range(4)]
    otks = alice.one_time_keys(30)
    fallback = alice.one_time_keys(1, fallback=True)
    r = await alice.upload(c, {"device_keys": alice.device_keys(), "one_time_keys": otks,
                               "fallback_keys": fallback})
    assert r.status == 200

    async def claim(token: str) -> dict[str, Any]:
        r = await c.call("POST", "/keys/claim", {"one_time_keys": {
            alice.user_id: {alice.device_id: "signed_curve25519"}}}, token)
        assert r.status == 200, r.body
        got: dict[str, Any] = r.json()["one_time_keys"][alice.user_id][alice.device_id]
        return got

    results = await defer.gatherResults([
        defer.ensureDeferred(claim(claimers[i % len(claimers)].token)) for i in range(45)
    ])
    ids = [next(iter(g)) for g in results]
    fallback_id = next(iter(fallback))
    handed_out = [i for i in ids if i != fallback_id]
    assert sorted(handed_out) == sorted(otks)  # every key exactly once
    assert ids.count(fallback_id) == 15
    assert await _counts(c, alice) == {}


@pytest_twisted.ensureDeferred
async def test_concurrent_claims_in_the_store(hs: RunningServer) -> None:
    """Straight at the store, many transactions at once (PostgreSQL runs them in parallel)."""
    c = Client(hs.client_url)
    alice = await _device(c, "alice")
    otks = alice.one_time_keys(40)
    await alice.upload(c, {"device_keys": alice.device_keys(), "one_time_keys": otks})
    store = services(hs).e2ee.keys.store
    claim = [(alice.user_id, alice.device_id, "signed_curve25519")]
    results = await defer.gatherResults([
        defer.ensureDeferred(store.claim(claim)) for _ in range(60)
    ])
    ids = [k for r in results for k in r.get(alice.user_id, {}).get(alice.device_id, {})]
    assert sorted(ids) == sorted(otks)


@pytest_twisted.ensureDeferred
async def test_keys_for_another_user_or_device_are_refused(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice = await _device(c, "alice")
    bob = await _device(c, "bob")
    for keys in (bob.device_keys(), alice.device_keys(device_id="OTHER")):
        # Bob's keys uploaded with Alice's token; or Alice's claiming another device ID.
        r = await alice.upload(c, {"device_keys": keys})
        assert (r.status, r.json()["errcode"]) == (400, "M_BAD_JSON"), r.body
    wrong_user = {**alice.device_keys(), "user_id": bob.user_id}
    r = await alice.upload(c, {"device_keys": wrong_user})
    assert (r.status, r.json()["errcode"]) == (400, "M_BAD_JSON")
    result = await _query(c, alice, {alice.user_id: [], bob.user_id: []})
    assert result["device_keys"] == {alice.user_id: {}, bob.user_id: {}}


def _bad_device_keys(d: Device) -> list[tuple[str, Any]]:
    other = Ed25519(d.device_id)
    unsigned_keys = {"user_id": d.user_id, "device_id": d.device_id, "algorithms": ["a"],
                     "keys": {f"ed25519:{d.device_id}": d.ed.public}}
    good = d.device_keys()
    return [
        ("signed by another key", other.sign({k: v for k, v in good.items()
                                              if k != "signatures"}, d.user_id)),
        ("not signed", unsigned_keys),
        ("tampered after signing", {**good, "algorithms": ["m.megolm.v1.aes-sha2"]}),
        ("algorithms not a list", {**good, "algorithms": "m.megolm.v1.aes-sha2"}),
        ("empty algorithms", {**good, "algorithms": []}),
        ("malformed algorithm", {**good, "algorithms": ["bad algorithm!"]}),
        ("no ed25519 key", {**good, "keys": {f"curve25519:{d.device_id}": d.curve}}),
        ("key named for another device",
         {**good, "keys": {**good["keys"], "curve25519:OTHER": d.curve}}),
        ("malformed key ID", {**good, "keys": {**good["keys"], "curve25519": d.curve}}),
        ("short key", {**good, "keys": {**good["keys"], f"curve25519:{d.device_id}": "AAAA"}}),
        ("keys not an object", {**good, "keys": ["x"]}),
        ("not an object", "keys"),
    ]


@pytest_twisted.ensureDeferred
async def test_bad_device_keys_are_refused_and_stored_nowhere(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice = await _device(c, "alice")
    for what, keys in _bad_device_keys(alice):
        r = await alice.upload(c, {"device_keys": keys, "one_time_keys": alice.one_time_keys(1)})
        assert r.status == 400, what
        assert r.json()["errcode"] in ("M_BAD_JSON", "M_INVALID_PARAM"), what
    result = await _query(c, alice, {alice.user_id: []})
    assert result["device_keys"][alice.user_id] == {}
    assert await _counts(c, alice) == {}
    assert await services(hs).e2ee.keys.current_device_list_position() == 0


@pytest_twisted.ensureDeferred
async def test_device_keys_cannot_change_once_uploaded(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice = await _device(c, "alice")
    original = alice.device_keys()
    assert (await alice.upload(c, {"device_keys": original})).status == 200
    alice.curve = random_key()
    r = await alice.upload(c, {"device_keys": alice.device_keys()})
    assert (r.status, r.json()["errcode"]) == (400, "M_INVALID_PARAM")
    result = await _query(c, alice, {alice.user_id: []})
    assert result["device_keys"][alice.user_id][alice.device_id]["keys"] == original["keys"]


def _bad_one_time_keys(d: Device) -> list[tuple[str, Any]]:
    other = Ed25519(d.device_id)
    return [
        ("signed by another key", {"signed_curve25519:X1": other.sign({"key": random_key()},
                                                                      d.user_id)}),
        ("signed as another user", {"signed_curve25519:X1": d.ed.sign({"key": random_key()},
                                                                      "@bob:test.local")}),
        ("not signed", {"signed_curve25519:X1": {"key": random_key()}}),
        ("signed algorithm as a string", {"signed_curve25519:X1": random_key()}),
        ("no key ID", {"signed_curve25519": d.ed.sign({"key": random_key()}, d.user_id)}),
        ("two colons", {"signed_curve25519:a:b": d.ed.sign({"key": random_key()}, d.user_id)}),
        ("malformed algorithm", {"bad alg:X1": random_key()}),
        ("short key", {"signed_curve25519:X1": d.ed.sign({"key": "AAAA"}, d.user_id)}),
        ("key not a string", {"signed_curve25519:X1": d.ed.sign({"key": 5}, d.user_id)}),
        ("not an object", ["signed_curve25519:X1"]),
        ("value neither string nor object", {"curve25519:X1": 7}),
    ]


@pytest_twisted.ensureDeferred
async def test_bad_one_time_and_fallback_keys_are_refused(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice = await _device(c, "alice")
    assert (await alice.upload(c, {"device_keys": alice.device_keys()})).status == 200
    for field in ("one_time_keys", "fallback_keys"):
        for what, keys in _bad_one_time_keys(alice):
            r = await alice.upload(c, {field: keys})
            assert r.status == 400, (field, what, r.body)
            assert r.json()["errcode"] in ("M_BAD_JSON", "M_INVALID_PARAM"), what
    two = alice.one_time_keys(2, fallback=True)
    r = await alice.upload(c, {"fallback_keys": two})
    assert (r.status, r.json()["errcode"]) == (400, "M_INVALID_PARAM")
    assert await _counts(c, alice) == {}
    keys = services(hs).e2ee.keys
    assert await keys.unused_fallback_key_types(alice.user_id, alice.device_id) == []


@pytest_twisted.ensureDeferred
async def test_signed_keys_need_device_keys_first(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice = await _device(c, "alice")
    r = await alice.upload(c, {"one_time_keys": alice.one_time_keys(1)})
    assert (r.status, r.json()["errcode"]) == (400, "M_INVALID_PARAM")
    assert await _counts(c, alice) == {}


@pytest_twisted.ensureDeferred
async def test_reused_one_time_key_id(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice = await _device(c, "alice")
    first = alice.one_time_keys(2)
    await alice.upload(c, {"device_keys": alice.device_keys(), "one_time_keys": first})
    key_id = next(iter(first))
    # Same ID, same key, signed again: fine, nothing added.
    resigned = {key_id: alice.ed.sign({"key": first[key_id]["key"]}, alice.user_id)}
    r = await alice.upload(c, {"one_time_keys": resigned})
    assert r.json() == {"one_time_key_counts": {"signed_curve25519": 2}}
    # Same ID, other key: refused, and the new key beside it is not stored either.
    clash = {key_id: alice.ed.sign({"key": random_key()}, alice.user_id),
             **alice.one_time_keys(1)}
    r = await alice.upload(c, {"one_time_keys": clash})
    assert (r.status, r.json()["errcode"]) == (400, "M_INVALID_PARAM")
    assert key_id in r.json()["error"]
    assert await _counts(c, alice) == {"signed_curve25519": 2}
    # Unsigned (curve25519) keys compare as strings.
    await alice.upload(c, {"one_time_keys": {"curve25519:U1": random_key()}})
    r = await alice.upload(c, {"one_time_keys": {"curve25519:U1": random_key()}})
    assert r.status == 400
    assert await _counts(c, alice) == {"signed_curve25519": 2, "curve25519": 1}


@pytest_twisted.ensureDeferred
async def test_one_time_key_limit(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice = await _device(c, "alice")
    await alice.upload(c, {"device_keys": alice.device_keys()})
    r = await alice.upload(c, {"one_time_keys": {f"curve25519:K{i}": random_key()
                                                 for i in range(501)}})
    assert (r.status, r.json()["errcode"]) == (400, "M_TOO_LARGE")
    assert await _counts(c, alice) == {}


@pytest.mark.parametrize("body", [
    {}, {"device_keys": []}, {"device_keys": {"@a:test.local": "DEV"}},
    {"device_keys": {"@a:test.local": [1]}},
])
@pytest_twisted.ensureDeferred
async def test_malformed_query(hs: RunningServer, body: Any) -> None:
    c = Client(hs.client_url)
    alice = await c.register("alice")
    r = await c.call("POST", "/keys/query", body, alice.access_token)
    assert (r.status, r.json()["errcode"]) == (400, "M_BAD_JSON")


@pytest.mark.parametrize("body, errcode", [
    ({}, "M_BAD_JSON"), ({"one_time_keys": []}, "M_BAD_JSON"),
    ({"one_time_keys": {"@a:test.local": ["X"]}}, "M_BAD_JSON"),
    ({"one_time_keys": {"@a:test.local": {"X": 5}}}, "M_BAD_JSON"),
    ({"one_time_keys": {"@a:test.local": {"X": "bad alg"}}}, "M_INVALID_PARAM"),
])
@pytest_twisted.ensureDeferred
async def test_malformed_claim(hs: RunningServer, body: Any, errcode: str) -> None:
    c = Client(hs.client_url)
    alice = await c.register("alice")
    r = await c.call("POST", "/keys/claim", body, alice.access_token)
    assert (r.status, r.json()["errcode"]) == (400, errcode)


@pytest_twisted.ensureDeferred
async def test_keys_changes(hs: RunningServer) -> None:
    """/keys/changes between two /sync tokens: who changed keys among the users the caller
    shares a room with (and who newly shares one), and with whom they stopped sharing
    every room (``left``)."""
    c = Client(hs.client_url)
    alice = await _device(c, "alice")
    bob = await _device(c, "bob")
    keys = services(hs).e2ee.keys
    start = (await sync(c, alice.user))["next_batch"]
    await alice.upload(c, {"device_keys": alice.device_keys()})
    await bob.upload(c, {"device_keys": bob.device_keys()})

    async def changes(frm: str, to: str | None = None) -> Any:
        path = f"/keys/changes?from={q(frm)}" + (f"&to={q(to)}" if to is not None else "")
        r = await c.call("GET", path, None, alice.token)
        assert r.status == 200, r.body
        return r.json()

    # Without a shared room alice hears only of her own change.
    assert await changes(start) == {"changed": [alice.user_id], "left": []}
    uploaded = (await sync(c, alice.user))["next_batch"]
    # bob joining a room with alice makes him someone she must query.
    room = await create_room(c, alice.user, preset="public_chat")
    await join(c, bob.user, room)
    joined = (await sync(c, alice.user))["next_batch"]
    assert await changes(uploaded) == {"changed": [bob.user_id], "left": []}
    assert await changes(uploaded, joined) == {"changed": [bob.user_id], "left": []}
    assert await changes(joined) == {"changed": [], "left": []}
    # Only keys that change count: a new OTK is not a device-list change.
    await bob.upload(c, {"one_time_keys": bob.one_time_keys(1)})
    assert await changes(joined) == {"changed": [], "left": []}
    # Renaming a device with keys is (others see its name in /keys/query).
    r = await c.call("PUT", f"/devices/{q(bob.device_id)}", {"display_name": "bob's phone"},
                     bob.token)
    assert r.status == 200, r.body
    renamed = (await sync(c, alice.user))["next_batch"]
    assert await changes(joined) == {"changed": [bob.user_id], "left": []}
    query = await _query(c, alice, {bob.user_id: []})
    assert query["device_keys"][bob.user_id][bob.device_id]["unsigned"] == {
        "device_display_name": "bob's phone"}
    # Deleting a device with keys is.
    r = await c.call("POST", "/logout", {}, bob.token)
    assert r.status == 200
    logged_out = (await sync(c, alice.user))["next_batch"]
    assert await changes(renamed) == {"changed": [bob.user_id], "left": []}
    # bob leaves: alice no longer shares a room with him, so he is "left", not "changed".
    r = await c.login("bob", bob.user.password)
    assert r.status == 200, r.body
    j = r.json()
    await leave(c, User(j["user_id"], j["access_token"], j["device_id"], bob.user.password),
                room)
    assert await changes(logged_out) == {"changed": [], "left": [bob.user_id]}
    # The function /sync calls, with its own set of interesting users.
    start_position = SyncToken.parse(start).device_lists
    assert await keys.changed_users(alice.user_id, start_position, set()) == {alice.user_id}
    assert await keys.changed_users(alice.user_id, start_position, {bob.user_id}) == {
        alice.user_id, bob.user_id}

    for bad in ("from=abc", "from=-1", "from=0", f"from={q(start)}&to=x", ""):
        r = await c.call("GET", f"/keys/changes?{bad}", None, alice.token)
        assert r.status == 400, bad
        assert r.json()["errcode"] in ("M_INVALID_PARAM", "M_MISSING_PARAM")


@pytest_twisted.ensureDeferred
async def test_deleting_a_device_removes_its_keys(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice = await _device(c, "alice")
    bob = await _device(c, "bob")
    await alice.upload(c, {"device_keys": alice.device_keys(),
                           "one_time_keys": alice.one_time_keys(3),
                           "fallback_keys": alice.one_time_keys(1, fallback=True)})
    r = await c.call("PUT", "/sendToDevice/m.test/t1",
                     {"messages": {alice.user_id: {alice.device_id: {"a": 1}}}}, bob.token)
    assert r.status == 200
    body = {"auth": {"type": "m.login.password", "password": alice.user.password,
                     "identifier": {"type": "m.id.user", "user": alice.user_id}}}
    r = await c.call("DELETE", f"/devices/{alice.device_id}", body, alice.token)
    assert r.status == 200, r.body
    result = await _query(c, bob, {alice.user_id: []})
    assert result["device_keys"][alice.user_id] == {}
    r = await c.call("POST", "/keys/claim", {"one_time_keys": {
        alice.user_id: {alice.device_id: "signed_curve25519"}}}, bob.token)
    assert r.json()["one_time_keys"] == {}
    s = services(hs)
    assert await s.e2ee.keys.one_time_key_counts(alice.user_id, alice.device_id) == {}
    batch = await s.e2ee.to_device.get_to_device(alice.user_id, alice.device_id, 0)
    assert batch.events == []


@pytest_twisted.ensureDeferred
async def test_guests_can_upload_and_query(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    r = await c.call("POST", "/register?kind=guest", {})
    assert r.status == 200, r.body
    guest = Device(User(r.json()["user_id"], r.json()["access_token"], r.json()["device_id"],
                        ""))
    assert (await guest.upload(c, {"device_keys": guest.device_keys()})).status == 200
    result = await _query(c, guest, {guest.user_id: []})
    assert guest.device_id in result["device_keys"][guest.user_id]
