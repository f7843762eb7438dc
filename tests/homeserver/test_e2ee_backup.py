"""Server-side key backups on both engines: versions, the spec's rules for replacing a session's
key, etag and count, M_WRONG_ROOM_KEYS_VERSION, and one user's backup hidden from another."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.support.client import Client, User
from tests.support.server import RunningServer

ALG = "m.megolm_backup.v1.curve25519-aes-sha2"
ROOM = "!room:test.local"


def key(index: int = 0, forwarded: int = 0, verified: bool = False,
        data: str = "x") -> dict[str, Any]:
    return {"first_message_index": index, "forwarded_count": forwarded, "is_verified": verified,
            "session_data": {"ephemeral": "e", "ciphertext": data, "mac": "m"}}


async def _create(c: Client, u: User, public_key: str = "pk") -> str:
    r = await c.call("POST", "/room_keys/version",
                     {"algorithm": ALG, "auth_data": {"public_key": public_key}},
                     u.access_token)
    assert r.status == 200, r.body
    version: str = r.json()["version"]
    return version


@pytest_twisted.ensureDeferred
async def test_versions(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice = await c.register("alice")
    t = alice.access_token
    r = await c.call("GET", "/room_keys/version", None, t)
    assert (r.status, r.json()["errcode"]) == (404, "M_NOT_FOUND")

    v1 = await _create(c, alice, "one")
    v2 = await _create(c, alice, "two")
    assert (v1, v2) == ("1", "2")
    r = await c.call("GET", "/room_keys/version", None, t)
    assert r.json() == {"algorithm": ALG, "auth_data": {"public_key": "two"}, "count": 0,
                        "etag": "0", "version": "2"}
    r = await c.call("GET", f"/room_keys/version/{v1}", None, t)
    assert r.json()["auth_data"] == {"public_key": "one"}

    # Only auth_data may change.
    new_auth = {"public_key": "two", "signatures": {alice.user_id: {"ed25519:D": "sig"}}}
    r = await c.call("PUT", f"/room_keys/version/{v2}",
                     {"algorithm": ALG, "auth_data": new_auth, "version": v2}, t)
    assert r.status == 200, r.body
    assert (await c.call("GET", "/room_keys/version", None, t)).json()["auth_data"] == new_auth
    for body, errcode in [
        ({"algorithm": "m.other", "auth_data": {}}, "M_INVALID_PARAM"),
        ({"algorithm": ALG, "auth_data": {}, "version": v1}, "M_INVALID_PARAM"),
        ({"auth_data": {}}, "M_MISSING_PARAM"),
        ({"algorithm": ALG}, "M_MISSING_PARAM"),
    ]:
        r = await c.call("PUT", f"/room_keys/version/{v2}", body, t)
        assert (r.status, r.json()["errcode"]) == (400, errcode), body
    r = await c.call("PUT", "/room_keys/version/99", {"algorithm": ALG, "auth_data": {}}, t)
    assert (r.status, r.json()["errcode"]) == (404, "M_NOT_FOUND")

    # Deleting the current version makes the previous one current; deleting twice is fine;
    # version numbers are not reused.
    for _ in range(2):
        r = await c.call("DELETE", f"/room_keys/version/{v2}", None, t)
        assert r.status == 200, r.body
    assert (await c.call("GET", "/room_keys/version", None, t)).json()["version"] == v1
    r = await c.call("GET", f"/room_keys/version/{v2}", None, t)
    assert r.status == 404
    for missing in ("99", "abc"):
        r = await c.call("DELETE", f"/room_keys/version/{missing}", None, t)
        assert (r.status, r.json()["errcode"]) == (404, "M_NOT_FOUND")
    assert await _create(c, alice) == "3"

    for body in ({}, {"algorithm": "m.unknown", "auth_data": {}},
                 {"algorithm": ALG, "auth_data": "x"}):
        r = await c.call("POST", "/room_keys/version", body, t)
        assert r.status == 400, body


@pytest.mark.parametrize("old, new, replaced", [
    (key(verified=False, index=0), key(verified=True, index=5), True),
    (key(verified=True, index=5), key(verified=False, index=0), False),
    (key(index=5), key(index=3), True),
    (key(index=3), key(index=5), False),
    (key(index=3, forwarded=2), key(index=3, forwarded=1), True),
    (key(index=3, forwarded=1), key(index=3, forwarded=2), False),
    (key(index=3, forwarded=5), key(index=2, forwarded=9), True),
    (key(verified=True, forwarded=0), key(verified=True, forwarded=0), False),
])
@pytest_twisted.ensureDeferred
async def test_replacement_rules(hs: RunningServer, old: dict[str, Any], new: dict[str, Any],
                                 replaced: bool) -> None:
    c = Client(hs.client_url)
    alice = await c.register("alice")
    v = await _create(c, alice)
    path = f"/room_keys/keys/{ROOM}/sess?version={v}"
    r = await c.call("PUT", path, {**old, "session_data": {"ciphertext": "old"}},
                     alice.access_token)
    assert r.json() == {"etag": "1", "count": 1}
    r = await c.call("PUT", path, {**new, "session_data": {"ciphertext": "new"}},
                     alice.access_token)
    assert r.status == 200, r.body
    assert r.json() == {"etag": "2" if replaced else "1", "count": 1}
    stored = (await c.call("GET", path, None, alice.access_token)).json()
    assert stored["session_data"] == {"ciphertext": "new" if replaced else "old"}


@pytest_twisted.ensureDeferred
async def test_keys_at_every_level(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice = await c.register("alice")
    t = alice.access_token
    v = await _create(c, alice)
    other = "!other:test.local"

    r = await c.call("PUT", f"/room_keys/keys?version={v}", {"rooms": {
        ROOM: {"sessions": {"s1": key(data="1"), "s2": key(data="2")}},
        other: {"sessions": {"s3": key(data="3")}},
    }}, t)
    assert r.json() == {"etag": "1", "count": 3}
    r = await c.call("PUT", f"/room_keys/keys/{other}?version={v}",
                     {"sessions": {"s4": key(data="4")}}, t)
    assert r.json() == {"etag": "2", "count": 4}
    # Nothing better: no change, same etag.
    r = await c.call("PUT", f"/room_keys/keys/{other}/s4?version={v}", key(data="worse",
                                                                         forwarded=1), t)
    assert r.json() == {"etag": "2", "count": 4}
    info = (await c.call("GET", "/room_keys/version", None, t)).json()
    assert (info["etag"], info["count"]) == ("2", 4)

    everything = (await c.call("GET", f"/room_keys/keys?version={v}", None, t)).json()
    assert set(everything["rooms"]) == {ROOM, other}
    assert everything["rooms"][ROOM]["sessions"]["s2"] == key(data="2")
    room = (await c.call("GET", f"/room_keys/keys/{ROOM}?version={v}", None, t)).json()
    assert set(room["sessions"]) == {"s1", "s2"}
    r = await c.call("GET", f"/room_keys/keys/!empty:test.local?version={v}", None, t)
    assert r.json() == {"sessions": {}}
    r = await c.call("GET", f"/room_keys/keys/{ROOM}/nope?version={v}", None, t)
    assert (r.status, r.json()["errcode"]) == (404, "M_NOT_FOUND")

    r = await c.call("DELETE", f"/room_keys/keys/{ROOM}/s1?version={v}", None, t)
    assert r.json() == {"etag": "3", "count": 3}
    r = await c.call("DELETE", f"/room_keys/keys/{ROOM}/s1?version={v}", None, t)
    assert r.json() == {"etag": "3", "count": 3}
    r = await c.call("DELETE", f"/room_keys/keys/{other}?version={v}", None, t)
    assert r.json() == {"etag": "4", "count": 1}
    r = await c.call("DELETE", f"/room_keys/keys?version={v}", None, t)
    assert r.json() == {"etag": "5", "count": 0}
    assert (await c.call("GET", f"/room_keys/keys?version={v}", None, t)).json() == {
        "rooms": {}}


@pytest_twisted.ensureDeferred
async def test_only_the_current_version_takes_keys(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice = await c.register("alice")
    t = alice.access_token
    r = await c.call("PUT", f"/room_keys/keys/{ROOM}/s?version=1", key(), t)
    assert (r.status, r.json()["errcode"]) == (404, "M_NOT_FOUND")
    old = await _create(c, alice)
    await c.call("PUT", f"/room_keys/keys/{ROOM}/s?version={old}", key(), t)
    new = await _create(c, alice)
    r = await c.call("PUT", f"/room_keys/keys/{ROOM}/s?version={old}", key(), t)
    assert r.status == 403
    assert r.json()["errcode"] == "M_WRONG_ROOM_KEYS_VERSION"
    assert r.json()["current_version"] == new
    # The old version can still be read and cleared.
    r = await c.call("GET", f"/room_keys/keys/{ROOM}/s?version={old}", None, t)
    assert r.status == 200
    r = await c.call("PUT", f"/room_keys/keys/{ROOM}/s?version=77", key(), t)
    assert (r.status, r.json()["errcode"]) == (404, "M_NOT_FOUND")
    r = await c.call("GET", f"/room_keys/keys?version={new}&x=1", None, t)
    assert r.json() == {"rooms": {}}
    r = await c.call("GET", "/room_keys/keys", None, t)
    assert (r.status, r.json()["errcode"]) == (400, "M_MISSING_PARAM")
    # A deleted version takes nothing and shows nothing.
    await c.call("DELETE", f"/room_keys/version/{old}", None, t)
    r = await c.call("GET", f"/room_keys/keys?version={old}", None, t)
    assert (r.status, r.json()["errcode"]) == (404, "M_NOT_FOUND")


@pytest.mark.parametrize("body", [
    {"first_message_index": 0, "forwarded_count": 0, "is_verified": "yes", "session_data": {}},
    {"first_message_index": -1, "forwarded_count": 0, "is_verified": True, "session_data": {}},
    {"first_message_index": 0, "forwarded_count": 0, "is_verified": True, "session_data": "x"},
    {"forwarded_count": 0, "is_verified": True, "session_data": {}},
])
@pytest_twisted.ensureDeferred
async def test_malformed_keys(hs: RunningServer, body: Any) -> None:
    c = Client(hs.client_url)
    alice = await c.register("alice")
    v = await _create(c, alice)
    r = await c.call("PUT", f"/room_keys/keys/{ROOM}/s?version={v}", body, alice.access_token)
    assert (r.status, r.json()["errcode"]) == (400, "M_BAD_JSON")
    r = await c.call("PUT", f"/room_keys/keys?version={v}",
                     {"rooms": {ROOM: {"sessions": {"s": body}}}}, alice.access_token)
    assert (r.status, r.json()["errcode"]) == (400, "M_BAD_JSON")
    info = (await c.call("GET", "/room_keys/version", None, alice.access_token)).json()
    assert info["count"] == 0


@pytest_twisted.ensureDeferred
async def test_backups_are_per_user(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice = await c.register("alice")
    bob = await c.register("bob")
    v = await _create(c, alice)
    await c.call("PUT", f"/room_keys/keys/{ROOM}/s?version={v}", key(), alice.access_token)
    r = await c.call("GET", "/room_keys/version", None, bob.access_token)
    assert r.status == 404
    r = await c.call("GET", f"/room_keys/keys?version={v}", None, bob.access_token)
    assert r.status == 404
    r = await c.call("DELETE", f"/room_keys/version/{v}", None, bob.access_token)
    assert r.status == 404
    assert (await c.call("GET", f"/room_keys/version/{v}", None,
                         alice.access_token)).json()["count"] == 1


@pytest_twisted.ensureDeferred
async def test_concurrent_uploads_keep_the_best_key(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice = await c.register("alice")
    v = await _create(c, alice)
    path = f"/room_keys/keys/{ROOM}/s?version={v}"

    async def put(index: int) -> int:
        r = await c.call("PUT", path, key(index=index, data=str(index)), alice.access_token)
        return r.status

    statuses = await defer.gatherResults([defer.ensureDeferred(put(i)) for i in
                                          (9, 3, 7, 1, 8, 2, 6, 5, 4, 10)])
    assert set(statuses) == {200}
    stored = (await c.call("GET", path, None, alice.access_token)).json()
    assert stored["first_message_index"] == 1
    info = (await c.call("GET", "/room_keys/version", None, alice.access_token)).json()
    assert info["count"] == 1

    versions = await defer.gatherResults([defer.ensureDeferred(_create(c, alice))
                                          for _ in range(6)])
    assert sorted(int(x) for x in versions) == list(range(2, 8))
