"""The users admin API on both engines: list/search/page, show, create-or-modify, devices,
joined rooms, whois, reset password, deactivate with erase, admin rights, bad input."""

from __future__ import annotations

import os

import pytest_twisted

from tests.support.admin import admin_and_user, call
from tests.support.client import Client, q
from tests.support.media import MediaClient
from tests.support.server import RunningServer
from tests.support.sync import create_room

V1, V2 = "/_synapse/admin/v1", "/_synapse/admin/v2"


@pytest_twisted.ensureDeferred
async def test_list_search_and_show_users(hs: RunningServer) -> None:
    admin, alice = await admin_and_user(hs)
    c = Client(hs.client_url)
    bob = await c.register("bob")
    r = await c.call("PUT", f"/profile/{q(bob.user_id)}/displayname", {"displayname": "Bobby"},
                     token=bob.access_token)
    assert r.status == 200
    tok = admin.access_token

    status, body = await call(hs, "GET", f"{V2}/users", tok)
    assert status == 200 and body["total"] == 3
    assert [u["name"] for u in body["users"]] == sorted(
        [admin.user_id, alice.user_id, bob.user_id])
    status, body = await call(hs, "GET", f"{V2}/users?name=bobb", tok)
    assert [u["name"] for u in body["users"]] == [bob.user_id]
    assert body["users"][0]["displayname"] == "Bobby"
    status, body = await call(hs, "GET", f"{V2}/users?limit=2&order_by=creation_ts&dir=b", tok)
    assert [u["name"] for u in body["users"]] == [bob.user_id, alice.user_id]
    assert (body["total"], body["next_token"]) == (3, "2")
    status, body = await call(hs, "GET", f"{V2}/users?from=2&limit=2&order_by=creation_ts"
                                         "&dir=b", tok)
    assert [u["name"] for u in body["users"]] == [admin.user_id] and "next_token" not in body
    status, body = await call(hs, "GET", f"{V2}/users?admins=true", tok)
    assert [u["name"] for u in body["users"]] == [admin.user_id]
    # LIKE wildcards are literal.
    status, body = await call(hs, "GET", f"{V2}/users?name=%25", tok)
    assert body["total"] == 0

    status, body = await call(hs, "GET", f"{V2}/users/{q(alice.user_id)}", tok)
    assert status == 200
    assert body["name"] == alice.user_id and body["admin"] is False
    assert body["deactivated"] is False and body["devices"] == 1 and body["threepids"] == []

    for path, code, errcode in (
        (f"{V2}/users?order_by=nope", 400, "M_INVALID_PARAM"),
        (f"{V2}/users?limit=x", 400, "M_INVALID_PARAM"),
        (f"{V2}/users?guests=maybe", 400, "M_INVALID_PARAM"),
        (f"{V2}/users?dir=up", 400, "M_INVALID_PARAM"),
        (f"{V2}/users/{q('@nobody:test.local')}", 404, "M_NOT_FOUND"),
        (f"{V2}/users/{q('@someone:elsewhere.org')}", 400, "M_INVALID_PARAM"),
        (f"{V2}/users/not-a-user", 400, "M_INVALID_PARAM"),
    ):
        status, body = await call(hs, "GET", path, tok)
        assert (status, body["errcode"]) == (code, errcode), path


@pytest_twisted.ensureDeferred
async def test_put_user_creates_and_modifies(hs: RunningServer) -> None:
    admin, _ = await admin_and_user(hs)
    c = Client(hs.client_url)
    tok = admin.access_token
    carol = "@carol:test.local"
    status, body = await call(hs, "PUT", f"{V2}/users/{q(carol)}", tok,
                              {"password": "first-pass", "displayname": "Carol", "admin": True})
    assert status == 201
    assert body["name"] == carol and body["admin"] is True and body["displayname"] == "Carol"
    assert (await c.login("carol", "first-pass")).status == 200

    status, body = await call(hs, "PUT", f"{V2}/users/{q(carol)}", tok,
                              {"displayname": "Carol C", "admin": False})
    assert status == 200 and body["displayname"] == "Carol C" and body["admin"] is False

    status, body = await call(hs, "PUT", f"{V2}/users/{q(carol)}", tok, {"deactivated": True})
    assert status == 200 and body["deactivated"] is True
    assert (await c.login("carol", "first-pass")).status == 403
    status, body = await call(hs, "PUT", f"{V2}/users/{q(carol)}", tok, {"deactivated": False})
    assert (status, body["errcode"]) == (400, "M_MISSING_PARAM")
    status, body = await call(hs, "PUT", f"{V2}/users/{q(carol)}", tok,
                              {"deactivated": False, "password": "second-pass"})
    assert status == 200 and body["deactivated"] is False
    assert (await c.login("carol", "second-pass")).status == 200

    for bad in ({"admin": "yes"}, {"password": 5}, {"threepids": [{"medium": "email"}]}):
        status, body = await call(hs, "PUT", f"{V2}/users/{q(carol)}", tok, bad)
        assert status == 400, bad
    status, body = await call(hs, "PUT", f"{V2}/users/{q('@Not Valid:test.local')}", tok, {})
    assert status == 400
    status, body = await call(hs, "PUT", f"{V2}/users/{q('@UPPER:test.local')}", tok, {})
    assert (status, body["errcode"]) == (400, "M_INVALID_USERNAME")
    status, body = await call(hs, "PUT", f"{V2}/users/{q(admin.user_id)}", tok, {"admin": False})
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")


@pytest_twisted.ensureDeferred
async def test_devices_rooms_whois_admin_flag(hs: RunningServer) -> None:
    admin, alice = await admin_and_user(hs)
    c = Client(hs.client_url)
    tok = admin.access_token
    second = await c.login("alice", alice.password)
    assert second.status == 200
    room = await create_room(c, alice)

    status, body = await call(hs, "GET", f"{V2}/users/{q(alice.user_id)}/devices", tok)
    assert status == 200 and body["total"] == 2
    assert alice.device_id in {d["device_id"] for d in body["devices"]}
    status, body = await call(hs, "GET", f"{V1}/users/{q(alice.user_id)}/joined_rooms", tok)
    assert body == {"joined_rooms": [room], "total": 1}
    status, body = await call(hs, "GET", f"{V1}/whois/{q(alice.user_id)}", tok)
    assert status == 200 and body["user_id"] == alice.user_id
    assert set(body["devices"]) >= {alice.device_id}
    sessions = body["devices"][alice.device_id]["sessions"]
    assert sessions[0]["connections"][0]["ip"] == "127.0.0.1"
    # A user may ask about themselves.
    status, body = await call(hs, "GET", f"{V1}/whois/{q(alice.user_id)}", alice.access_token)
    assert status == 200

    # One device: read, rename, delete (its token stops working), delete several.
    dev = f"{V2}/users/{q(alice.user_id)}/devices/{q(alice.device_id)}"
    status, body = await call(hs, "GET", dev, tok)
    assert status == 200 and body["device_id"] == alice.device_id
    assert await call(hs, "PUT", dev, tok, {"display_name": "Laptop"}) == (200, {})
    status, body = await call(hs, "GET", dev, tok)
    assert body["display_name"] == "Laptop"
    assert await call(hs, "DELETE", dev, tok) == (200, {})
    assert (await c.call("GET", "/account/whoami", token=alice.access_token)).status == 401
    status, body = await call(hs, "GET", dev, tok)
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    status, body = await call(hs, "POST", f"{V2}/users/{q(alice.user_id)}/delete_devices", tok,
                              {"devices": ["nope"]})
    assert (status, body) == (200, {})
    status, body = await call(hs, "POST", f"{V2}/users/{q(alice.user_id)}/delete_devices", tok,
                              {"devices": "all"})
    assert (status, body["errcode"]) == (400, "M_BAD_JSON")
    status, body = await call(hs, "GET", f"{V2}/users/{q(alice.user_id)}/devices", tok)
    assert body["total"] == 1

    pusher = {"kind": "http", "app_id": "org.example.app", "pushkey": "key1",
              "app_display_name": "App", "device_display_name": "Phone", "lang": "en",
              "data": {"url": "https://push.example.org/_matrix/push/v1/notify"}}
    r = await c.call("POST", "/pushers/set", pusher, token=second.json()["access_token"])
    assert r.status == 200, r.body
    status, body = await call(hs, "GET", f"{V1}/users/{q(alice.user_id)}/pushers", tok)
    assert status == 200 and body["total"] == 1
    assert body["pushers"][0]["pushkey"] == "key1"

    available = f"{V1}/username_available?username="
    assert await call(hs, "GET", available + "zed", tok) == (200, {"available": True})
    for name, errcode in (("alice", "M_USER_IN_USE"), ("bad%20name", "M_INVALID_USERNAME"),
                          ("", "M_MISSING_PARAM")):
        status, body = await call(hs, "GET", available + name, tok)
        assert (status, body["errcode"]) == (400, errcode), name

    path = f"{V1}/users/{q(alice.user_id)}/admin"
    assert await call(hs, "GET", path, tok) == (200, {"admin": False})
    assert await call(hs, "PUT", path, tok, {"admin": True}) == (200, {})
    assert await call(hs, "GET", path, tok) == (200, {"admin": True})
    status, body = await call(hs, "PUT", path, tok, {"admin": "true"})
    assert (status, body["errcode"]) == (400, "M_MISSING_PARAM")


@pytest_twisted.ensureDeferred
async def test_reset_password_and_deactivate_with_erase(hs: RunningServer) -> None:
    admin, alice = await admin_and_user(hs)
    c = Client(hs.client_url)
    tok = admin.access_token
    status, body = await call(hs, "POST", f"{V1}/reset_password/{q(alice.user_id)}", tok,
                              {"new_password": "brand-new"})
    assert (status, body) == (200, {})
    # Her sessions ended with the reset; the new password works, the old one does not.
    r = await c.call("GET", "/account/whoami", token=alice.access_token)
    assert r.status == 401
    assert (await c.login("alice", alice.password)).status == 403
    login = await c.login("alice", "brand-new")
    assert login.status == 200
    status, body = await call(hs, "POST", f"{V1}/reset_password/{q(alice.user_id)}", tok, {})
    assert (status, body["errcode"]) == (400, "M_MISSING_PARAM")

    status, body = await call(hs, "POST", f"{V1}/deactivate/{q(alice.user_id)}", tok,
                              {"erase": True})
    assert (status, body) == (200, {"id_server_unbind_result": "success"})
    r = await c.call("GET", "/account/whoami", token=login.json()["access_token"])
    assert r.status == 401
    status, body = await call(hs, "GET", f"{V2}/users/{q(alice.user_id)}", tok)
    assert body["deactivated"] is True and body["erased"] is True and body["devices"] == 0
    # Deactivated accounts are listed only when asked for.
    status, body = await call(hs, "GET", f"{V2}/users", tok)
    assert alice.user_id not in [u["name"] for u in body["users"]]
    status, body = await call(hs, "GET", f"{V2}/users?deactivated=true", tok)
    assert alice.user_id in [u["name"] for u in body["users"]]
    status, body = await call(hs, "POST", f"{V1}/deactivate/{q(alice.user_id)}", tok,
                              {"erase": "yes"})
    assert (status, body["errcode"]) == (400, "M_BAD_JSON")


@pytest_twisted.ensureDeferred
async def test_media_use_per_user(hs: RunningServer) -> None:
    admin, alice = await admin_and_user(hs)
    c = Client(hs.client_url)
    bob = await c.register("bob")
    m = MediaClient(hs.client_url)
    for who, sizes in ((alice, (100, 200)), (bob, (1000,))):
        for size in sizes:
            assert (await m.upload(os.urandom(size), who.access_token)).status == 200
    tok = admin.access_token
    status, body = await call(hs, "GET", f"{V2}/users/{q(alice.user_id)}", tok)
    assert (body["media_count"], body["media_length"]) == (2, 300)

    path = f"{V1}/statistics/users/media"
    status, body = await call(hs, "GET", f"{path}?order_by=media_length&dir=b", tok)
    assert status == 200 and body["total"] == 2
    assert [(u["user_id"], u["media_count"], u["media_length"]) for u in body["users"]] == [
        (bob.user_id, 1, 1000), (alice.user_id, 2, 300)]
    status, body = await call(hs, "GET", f"{path}?search_term=ali&limit=1", tok)
    assert [u["user_id"] for u in body["users"]] == [alice.user_id] and "next_token" not in body
    status, body = await call(hs, "GET", f"{path}?until_ts=1", tok)
    assert body == {"users": [], "total": 0}
    for bad in ("order_by=size", "from_ts=x", "search_term="):
        status, body = await call(hs, "GET", f"{path}?{bad}", tok)
        assert (status, body["errcode"]) == (400, "M_INVALID_PARAM"), bad
