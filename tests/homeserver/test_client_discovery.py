"""What clients discover about the server beyond /versions, over real HTTP on both engines:
``/.well-known/matrix/support``, ``/auth_metadata`` (404 ``M_UNRECOGNIZED``: no OAuth 2.0),
``/voip/turnServer`` (none, shared-secret and fixed credentials), the client-API copy of
``/admin/whois``, and ``/mutual_rooms`` with its pagination and bad input."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

import pytest
import pytest_twisted

from homeserver.config import parse_config
from homeserver.config.errors import ConfigError
from homeserver.services.mutual_rooms import MutualRoomsService
from tests.support.client import Client, User, q
from tests.support.databases import fresh_database
from tests.support.http import request
from tests.support.server import RunningServer, make_config_dict, start_server
from tests.support.sync import create_room, join, leave

SECRET = "turn-shared-secret"


async def _get(hs: RunningServer, path: str, user: User | None = None) -> tuple[int, Any]:
    r = await request("GET", hs.client_url + path,
                      access_token=user.access_token if user else None)
    return r.status, r.json()


@pytest_twisted.ensureDeferred
async def test_unconfigured_discovery(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice = await c.register("alice")
    # No support contacts configured: the spec's 404.
    status, body = await _get(hs, "/.well-known/matrix/support")
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    # No OAuth 2.0 server: clients fall back to /login, exactly on M_UNRECOGNIZED.
    for user in (None, alice):
        status, body = await _get(hs, "/_matrix/client/v1/auth_metadata", user)
        assert (status, body["errcode"]) == (404, "M_UNRECOGNIZED")
    # No TURN server: an empty object, but only for a signed-in user.
    assert await _get(hs, "/_matrix/client/v3/voip/turnServer", alice) == (200, {})
    status, body = await _get(hs, "/_matrix/client/v3/voip/turnServer")
    assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")


@pytest_twisted.ensureDeferred
async def test_configured_support_and_turn(engine: str, tmp_path: Any) -> None:
    support = {"contacts": [
        {"role": "m.role.admin", "matrix_id": "@admin:test.local"},
        {"role": "m.role.security", "email_address": "security@example.com"},
    ], "support_page": "https://example.com/help"}
    voip = {"turn_uris": ["turn:turn.example.com:3478?transport=udp",
                          "turns:turn.example.com:5349"],
            "turn_shared_secret": SECRET, "turn_user_lifetime_ms": 86_400_000,
            "turn_allow_guests": False}
    with fresh_database(engine, str(tmp_path)) as db:
        hs = await start_server(str(tmp_path), db, support=support, voip=voip)
        try:
            status, body = await _get(hs, "/.well-known/matrix/support")
            assert status == 200
            assert body == {"contacts": support["contacts"],
                            "support_page": "https://example.com/help"}

            c = Client(hs.client_url)
            alice = await c.register("alice")
            before = int(time.time())
            status, turn = await _get(hs, "/_matrix/client/v3/voip/turnServer", alice)
            assert status == 200
            assert turn["uris"] == voip["turn_uris"] and turn["ttl"] == 86_400
            expiry, user_id = turn["username"].split(":", 1)
            assert user_id == alice.user_id
            assert before + 86_400 - 5 <= int(expiry) <= int(time.time()) + 86_400 + 5
            # The password is what a TURN server with the same secret computes.
            mac = hmac.new(SECRET.encode(), turn["username"].encode(), hashlib.sha1).digest()
            assert turn["password"] == base64.b64encode(mac).decode()
            # The r0 alias answers too.
            assert (await _get(hs, "/_matrix/client/r0/voip/turnServer", alice))[0] == 200

            # turn_allow_guests: false refuses guests.
            r = await c.call("POST", "/register?kind=guest", {})
            assert r.status == 200, r.body
            guest = User(r.json()["user_id"], r.json()["access_token"], "", "")
            status, body = await _get(hs, "/_matrix/client/v3/voip/turnServer", guest)
            assert (status, body["errcode"]) == (403, "M_GUEST_ACCESS_FORBIDDEN")
        finally:
            await hs.stop()


@pytest_twisted.ensureDeferred
async def test_fixed_turn_credentials(tmp_path: Any) -> None:
    voip = {"turn_uris": ["turn:turn.example.com"], "turn_username": "u",
            "turn_password": "p"}
    with fresh_database("sqlite", str(tmp_path)) as db:
        hs = await start_server(str(tmp_path), db, voip=voip)
        try:
            alice = await Client(hs.client_url).register("alice")
            status, turn = await _get(hs, "/_matrix/client/v3/voip/turnServer", alice)
            assert (status, turn) == (200, {"username": "u", "password": "p", "ttl": 3600,
                                            "uris": ["turn:turn.example.com"]})
        finally:
            await hs.stop()


@pytest.mark.parametrize(("section", "value", "message"), [
    ("support", {"contacts": [{"role": "m.role.admin"}]}, "matrix_id or an email_address"),
    ("support", {"contacts": [{"role": "Admin!", "matrix_id": "@a:b"}]}, "namespaced"),
    ("support", {"contacts": [{"role": "m.role.admin", "matrix_id": "admin"}]}, "user ID"),
    ("support", {"contacts": [{"role": "m.role.admin", "email_address": "x"}]}, "email"),
    ("support", {"support_page": "ftp://example.com"}, "http"),
    ("support", {"contacts": [{"role": "m.role.admin", "colour": "red"}]}, "unknown key"),
    ("voip", {"turn_uris": ["http://turn.example.com"]}, "turn:"),
    ("voip", {"turn_uris": ["turn:x"], "turn_username": "u"}, "go together"),
    ("voip", {"turn_user_lifetime_ms": 10}, "from 1000"),
])
def test_bad_config(tmp_path: Any, section: str, value: Any, message: str) -> None:
    with fresh_database("sqlite", str(tmp_path)) as db:
        data = make_config_dict(str(tmp_path), db, **{section: value})
    with pytest.raises(ConfigError, match=message):
        parse_config(data)


@pytest_twisted.ensureDeferred
async def test_whois_on_the_client_api(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, bob = await c.register("alice"), await c.register("bob")
    path = "/_matrix/client/v3/admin/whois/"
    # Users may ask about themselves, not about others, unless they are server admins.
    status, body = await _get(hs, path + q(alice.user_id), alice)
    assert status == 200 and body["user_id"] == alice.user_id
    assert alice.device_id in body["devices"]
    status, body = await _get(hs, path + q(bob.user_id), alice)
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    await hs.hs.services.users.set_admin(alice.user_id, True)
    status, body = await _get(hs, path + q(bob.user_id), alice)
    assert status == 200 and list(body["devices"]) == [bob.device_id]
    status, body = await _get(hs, path + q("@nobody:test.local"), alice)
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    assert (await _get(hs, path + q(bob.user_id)))[0] == 401


@pytest_twisted.ensureDeferred
async def test_mutual_rooms(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, bob, carol = [await c.register(n) for n in ("alice", "bob", "carol")]
    shared = sorted([await create_room(c, alice, preset="public_chat") for _ in range(3)])
    for room in shared:
        await join(c, bob, room)
    await create_room(c, alice, preset="public_chat")  # alice alone
    left = await create_room(c, alice, preset="public_chat")
    await join(c, bob, left)
    await leave(c, bob, left)
    invited = await create_room(c, alice, preset="private_chat", invite=[bob.user_id])

    def path(user_id: str, frm: str | None = None) -> str:
        p = f"/_matrix/client/v1/mutual_rooms?user_id={q(user_id)}"
        return p + (f"&from={q(frm)}" if frm else "")

    # Only rooms where both are joined (not left, not merely invited), from either side.
    status, body = await _get(hs, path(bob.user_id), alice)
    assert status == 200
    assert body == {"joined": shared, "count": 3}
    assert (await _get(hs, path(alice.user_id), bob))[1]["joined"] == shared
    assert invited not in body["joined"] and left not in body["joined"]
    # Unknown and remote users share nothing: an empty list, not an error.
    for other in ("@nobody:test.local", "@someone:elsewhere.example"):
        assert await _get(hs, path(other), alice) == (200, {"joined": [], "count": 0})
    assert (await _get(hs, path(bob.user_id), carol))[1] == {"joined": [], "count": 0}

    # Pages: the service's page size made small to see the tokens at work.
    service = MutualRoomsService(hs.hs.services.state_store)
    first = await service.mutual_rooms(alice.user_id, bob.user_id, None, page_size=2)
    assert first.joined == shared[:2] and first.count == 3 and first.next_batch is not None
    second = await service.mutual_rooms(alice.user_id, bob.user_id, first.next_batch, 2)
    assert second.joined == shared[2:] and second.next_batch is None
    # The HTTP token is honoured the same way.
    status, body = await _get(hs, path(bob.user_id, shared[0]), alice)
    assert body == {"joined": shared[1:], "count": 3}

    # Bad input.
    for bad, code in ((path(alice.user_id), "M_INVALID_PARAM"),  # oneself
                      (path("not-a-user"), "M_INVALID_PARAM"),
                      (path("@UPPER:test.local"), "M_INVALID_PARAM"),  # non-compliant
                      (path(bob.user_id, "garbage"), "M_INVALID_PARAM"),
                      ("/_matrix/client/v1/mutual_rooms", "M_MISSING_PARAM")):
        status, body = await _get(hs, bad, alice)
        assert (status, body["errcode"]) == (400, code), bad
    status, body = await _get(hs, path(bob.user_id))
    assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")
