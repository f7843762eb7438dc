"""Devices, profiles, account data, filters, capabilities and the user directory over HTTP,
and the rule that no user reads or changes another's."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted

from tests.support.client import Client, User, q
from tests.support.server import RunningServer

# (method, path template, body) for every endpoint that needs an access token.
AUTHED = [
    ("GET", "/account/whoami", None),
    ("POST", "/logout", {}),
    ("POST", "/logout/all", {}),
    ("POST", "/account/password", {"new_password": "x"}),
    ("POST", "/account/deactivate", {}),
    ("GET", "/devices", None),
    ("GET", "/devices/{device}", None),
    ("PUT", "/devices/{device}", {"display_name": "x"}),
    ("DELETE", "/devices/{device}", {}),
    ("POST", "/delete_devices", {"devices": []}),
    ("PUT", "/profile/{user}/displayname", {"displayname": "x"}),
    ("DELETE", "/profile/{user}/displayname", None),
    ("PUT", "/user/{user}/account_data/org.example.x", {}),
    ("GET", "/user/{user}/account_data/org.example.x", None),
    ("PUT", "/user/{user}/rooms/!r:test.local/account_data/org.example.x", {}),
    ("GET", "/user/{user}/rooms/!r:test.local/account_data/org.example.x", None),
    ("POST", "/user/{user}/filter", {}),
    ("GET", "/user/{user}/filter/0", None),
    ("GET", "/capabilities", None),
    ("POST", "/user_directory/search", {"search_term": "a"}),
]


async def _two_users(c: Client) -> tuple[User, User]:
    return await c.register("alice", "pw-a"), await c.register("bob", "pw-b")


def _path(template: str, user: User) -> str:
    return template.format(user=q(user.user_id), device=user.device_id)


@pytest.mark.parametrize("method, path, body", AUTHED, ids=[f"{m} {p}" for m, p, _ in AUTHED])
@pytest_twisted.ensureDeferred
async def test_missing_and_unknown_tokens(hs: RunningServer, method: str, path: str,
                                          body: Any) -> None:
    c = Client(hs.client_url)
    alice = await c.register("alice", "pw-a")
    r = await c.call(method, _path(path, alice), body)
    assert (r.status, r.json()["errcode"]) == (401, "M_MISSING_TOKEN")
    r = await c.call(method, _path(path, alice), body, token="mat_not-a-real-token")
    assert (r.status, r.json()["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    assert r.json()["soft_logout"] is False


# Endpoints naming a user in the path: another user's token is always refused.
CROSS_USER = [
    ("PUT", "/profile/{user}/displayname", {"displayname": "hacked"}),
    ("DELETE", "/profile/{user}/displayname", None),
    ("PUT", "/profile/{user}/org.example.field", {"org.example.field": 1}),
    ("PUT", "/user/{user}/account_data/org.example.x", {"a": 1}),
    ("GET", "/user/{user}/account_data/org.example.x", None),
    ("PUT", "/user/{user}/rooms/!r:test.local/account_data/org.example.x", {"a": 1}),
    ("GET", "/user/{user}/rooms/!r:test.local/account_data/org.example.x", None),
    ("POST", "/user/{user}/filter", {}),
    ("GET", "/user/{user}/filter/0", None),
]


@pytest.mark.parametrize("method, path, body", CROSS_USER,
                         ids=[f"{m} {p}" for m, p, _ in CROSS_USER])
@pytest_twisted.ensureDeferred
async def test_another_users_data_is_forbidden(hs: RunningServer, method: str, path: str,
                                               body: Any) -> None:
    c = Client(hs.client_url)
    alice, bob = await _two_users(c)
    # Alice has data of each kind, so a 403 is not just a 404 in disguise.
    await c.call("PUT", f"/user/{q(alice.user_id)}/account_data/org.example.x", {"a": 1},
                 token=alice.access_token)
    await c.call("PUT", f"/user/{q(alice.user_id)}/rooms/!r:test.local/account_data/"
                 "org.example.x", {"a": 1}, token=alice.access_token)
    await c.call("POST", f"/user/{q(alice.user_id)}/filter", {}, token=alice.access_token)
    r = await c.call(method, _path(path, alice), body, token=bob.access_token)
    assert (r.status, r.json()["errcode"]) == (403, "M_FORBIDDEN")


@pytest_twisted.ensureDeferred
async def test_devices(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, bob = await _two_users(c)
    second = (await c.login("alice", "pw-a", initial_device_display_name="Laptop")).json()
    r = await c.call("GET", "/devices", token=alice.access_token)
    devices = {d["device_id"]: d for d in r.json()["devices"]}
    assert set(devices) == {alice.device_id, second["device_id"]}
    assert devices[second["device_id"]]["display_name"] == "Laptop"
    assert devices[alice.device_id]["last_seen_ts"] is not None
    r = await c.call("PUT", f"/devices/{second['device_id']}", {"display_name": "Work"},
                     token=alice.access_token)
    assert r.status == 200
    r = await c.call("GET", f"/devices/{second['device_id']}", token=alice.access_token)
    assert r.json()["display_name"] == "Work"
    r = await c.call("PUT", f"/devices/{second['device_id']}", {"display_name": 5},
                     token=alice.access_token)
    assert (r.status, r.json()["errcode"]) == (400, "M_BAD_JSON")
    # Bob can neither see nor rename Alice's device.
    r = await c.call("GET", f"/devices/{second['device_id']}", token=bob.access_token)
    assert (r.status, r.json()["errcode"]) == (404, "M_NOT_FOUND")
    r = await c.call("PUT", f"/devices/{second['device_id']}", {"display_name": "x"},
                     token=bob.access_token)
    assert r.status == 404
    # Bob "deleting" Alice's device only ever touches his own devices: hers survives.
    r = await c.call("POST", "/delete_devices", {"devices": [second["device_id"]],
                     "auth": {"type": "m.login.password", "user": "bob", "password": "pw-b"}},
                     token=bob.access_token)
    assert r.status == 200
    assert (await c.call("GET", "/account/whoami", token=second["access_token"])).status == 200

    # Alice deletes her second device: its token dies with it.
    r = await c.call("DELETE", f"/devices/{second['device_id']}", {}, token=alice.access_token)
    assert r.status == 401
    auth = {"type": "m.login.password", "user": "alice", "password": "pw-a",
            "session": r.json()["session"]}
    r = await c.call("DELETE", f"/devices/{second['device_id']}", {"auth": auth},
                     token=alice.access_token)
    assert r.status == 200, r.body
    assert (await c.call("GET", "/account/whoami", token=second["access_token"])).status == 401
    r = await c.call("GET", "/devices", token=alice.access_token)
    assert [d["device_id"] for d in r.json()["devices"]] == [alice.device_id]


@pytest_twisted.ensureDeferred
async def test_profile(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, _bob = await _two_users(c)
    me = q(alice.user_id)
    t = alice.access_token
    assert (await c.call("PUT", f"/profile/{me}/displayname", {"displayname": "Alice"},
                         token=t)).status == 200
    assert (await c.call("PUT", f"/profile/{me}/avatar_url",
                         {"avatar_url": "mxc://test.local/abc123"}, token=t)).status == 200
    assert (await c.call("PUT", f"/profile/{me}/m.tz", {"m.tz": "Europe/Paris"},
                         token=t)).status == 200
    assert (await c.call("PUT", f"/profile/{me}/org.example.pronouns",
                         {"org.example.pronouns": {"en": "she/her"}}, token=t)).status == 200
    r = await c.call("GET", f"/profile/{me}")
    assert r.json() == {"displayname": "Alice", "avatar_url": "mxc://test.local/abc123",
                        "m.tz": "Europe/Paris", "org.example.pronouns": {"en": "she/her"}}
    r = await c.call("GET", f"/profile/{me}/displayname")
    assert r.json() == {"displayname": "Alice"}
    assert (await c.call("DELETE", f"/profile/{me}/m.tz", token=t)).status == 200
    r = await c.call("GET", f"/profile/{me}/m.tz")
    assert (r.status, r.json()["errcode"]) == (404, "M_NOT_FOUND")
    r = await c.call("GET", f"/profile/{q('@nobody:test.local')}")
    assert (r.status, r.json()["errcode"]) == (404, "M_NOT_FOUND")

    bad = [
        ("displayname", {"displayname": 5}, "M_BAD_JSON"),
        ("displayname", {"other": "x"}, "M_MISSING_PARAM"),
        ("avatar_url", {"avatar_url": "https://evil.example/x.png"}, "M_BAD_JSON"),
        ("NotNamespaced", {"NotNamespaced": 1}, "M_INVALID_PARAM"),
        ("org." + "k" * 300, {}, "M_KEY_TOO_LARGE"),
        ("org.example.big", {"org.example.big": "x" * 70000}, "M_PROFILE_TOO_LARGE"),
    ]
    for key, body, errcode in bad:
        r = await c.call("PUT", f"/profile/{me}/{key}", body, token=t)
        assert (r.status, r.json()["errcode"]) == (400, errcode), key


@pytest_twisted.ensureDeferred
async def test_account_data(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, bob = await _two_users(c)
    me, t = q(alice.user_id), alice.access_token
    r = await c.call("PUT", f"/user/{me}/account_data/m.direct", {"@bob:test.local": ["!a:b"]},
                     token=t)
    assert r.status == 200
    r = await c.call("GET", f"/user/{me}/account_data/m.direct", token=t)
    assert r.json() == {"@bob:test.local": ["!a:b"]}
    room = q("!room:test.local")
    await c.call("PUT", f"/user/{me}/rooms/{room}/account_data/m.tag", {"tags": {}}, token=t)
    r = await c.call("GET", f"/user/{me}/rooms/{room}/account_data/m.tag", token=t)
    assert r.json() == {"tags": {}}
    # Global and per-room data of the same type are separate.
    r = await c.call("GET", f"/user/{me}/account_data/m.tag", token=t)
    assert (r.status, r.json()["errcode"]) == (404, "M_NOT_FOUND")
    r = await c.call("PUT", f"/user/{me}/account_data/m.fully_read", {"event_id": "$x"},
                     token=t)
    assert (r.status, r.json()["errcode"]) == (405, "M_BAD_JSON")
    r = await c.call("PUT", f"/user/{me}/account_data/m.direct", b"[1]", token=t)
    assert (r.status, r.json()["errcode"]) == (400, "M_BAD_JSON")
    r = await c.call("PUT", f"/user/{me}/rooms/not-a-room/account_data/m.tag", {}, token=t)
    assert (r.status, r.json()["errcode"]) == (400, "M_INVALID_PARAM")
    # Bob's data of the same type is his own.
    r = await c.call("GET", f"/user/{q(bob.user_id)}/account_data/m.direct",
                     token=bob.access_token)
    assert r.status == 404


@pytest_twisted.ensureDeferred
async def test_filters(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, _ = await _two_users(c)
    me, t = q(alice.user_id), alice.access_token
    f = {"room": {"timeline": {"limit": 10, "types": ["m.room.message"]},
                  "state": {"lazy_load_members": True}}, "presence": {"not_types": ["*"]}}
    r = await c.call("POST", f"/user/{me}/filter", f, token=t)
    assert r.status == 200
    filter_id = r.json()["filter_id"]
    assert isinstance(filter_id, str)
    r = await c.call("GET", f"/user/{me}/filter/{filter_id}", token=t)
    assert r.json() == f
    # Uploading the same filter again gives the same ID.
    assert (await c.call("POST", f"/user/{me}/filter", f, token=t)).json()["filter_id"] == (
        filter_id)
    for bad in ({"room": {"timeline": {"limit": 0}}}, {"room": {"timeline": {"types": "x"}}},
                {"event_format": "xml"}, {"room": []}, {"event_fields": [1]},
                {"room": {"state": {"lazy_load_members": "yes"}}}):
        r = await c.call("POST", f"/user/{me}/filter", bad, token=t)
        assert (r.status, r.json()["errcode"]) == (400, "M_BAD_JSON"), bad
    for missing in ("99", "abc"):
        r = await c.call("GET", f"/user/{me}/filter/{missing}", token=t)
        assert (r.status, r.json()["errcode"]) == (404, "M_NOT_FOUND")


@pytest_twisted.ensureDeferred
async def test_capabilities_and_user_directory(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, bob = await _two_users(c)
    await c.call("PUT", f"/profile/{q(bob.user_id)}/displayname", {"displayname": "Bobby B"},
                 token=bob.access_token)
    r = await c.call("GET", "/capabilities", token=alice.access_token)
    caps = r.json()["capabilities"]
    assert caps["m.change_password"] == {"enabled": True}
    assert caps["m.room_versions"]["default"] == "12"
    assert set(caps["m.room_versions"]["available"]) == {str(n) for n in range(1, 13)}
    r = await c.call("POST", "/user_directory/search", {"search_term": "bobby"},
                     token=alice.access_token)
    assert r.json() == {"limited": False, "results": [
        {"user_id": "@bob:test.local", "display_name": "Bobby B"}]}
    r = await c.call("POST", "/user_directory/search", {"search_term": "o", "limit": 1},
                     token=alice.access_token)
    assert r.json()["limited"] is True and len(r.json()["results"]) == 1
    r = await c.call("POST", "/user_directory/search", {"search_term": "%"},
                     token=alice.access_token)
    assert r.json()["results"] == []  # LIKE wildcards are escaped
    r = await c.call("POST", "/user_directory/search", {}, token=alice.access_token)
    assert (r.status, r.json()["errcode"]) == (400, "M_MISSING_PARAM")
