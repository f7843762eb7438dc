"""Server notices on both engines: the notice reaches the user's /sync in a room of their
own tagged m.server_notice, sent by the configured system user; later notices reuse the
room (re-inviting a user who left); retries with one transaction ID send once; bad input."""

from __future__ import annotations

from typing import Any

import pytest_twisted

from homeserver.config import DatabaseConfig
from tests.support.admin import admin_and_user, call
from tests.support.client import Client, q
from tests.support.http import request
from tests.support.server import RunningServer, start_server
from tests.support.sync import bodies, join, leave, sync, timeline

NOTICE = "/_synapse/admin/v1/send_server_notice"


def _text(body: str) -> dict[str, Any]:
    return {"msgtype": "m.text", "body": body}


@pytest_twisted.ensureDeferred
async def test_notices_reach_the_users_sync(db_config: DatabaseConfig, tmp_path: Any) -> None:
    hs = await start_server(str(tmp_path), db_config, server_notices={
        "system_mxid_localpart": "notices", "system_mxid_display_name": "Ops"})
    try:
        admin, alice = await admin_and_user(hs)
        c = Client(hs.client_url)
        tok = admin.access_token
        status, body = await call(hs, "POST", NOTICE, tok,
                                  {"user_id": alice.user_id, "content": _text("Maintenance")})
        assert status == 200 and body["event_id"].startswith("$")

        first = await sync(c, alice)
        (room,) = first["rooms"]["invite"]
        invite_state = first["rooms"]["invite"][room]["invite_state"]["events"]
        name = [e for e in invite_state if e["type"] == "m.room.name"]
        assert name[0]["content"]["name"] == "Server Notices"
        await join(c, alice, room)
        joined = await sync(c, alice, first["next_batch"])
        events = timeline(joined, room)["events"]
        notices = [e for e in events if e["type"] == "m.room.message"]
        assert [e["content"]["body"] for e in notices] == ["Maintenance"]
        assert notices[0]["sender"] == "@notices:test.local"
        # The tag was set when the room was made (before she joined): a full sync has it.
        full = await sync(c, alice)
        account_data = full["rooms"]["join"][room]["account_data"]["events"]
        tags = [e for e in account_data if e["type"] == "m.tag"]
        assert "m.server_notice" in tags[0]["content"]["tags"]
        r = await c.call("GET", f"/profile/{q('@notices:test.local')}/displayname")
        assert r.json() == {"displayname": "Ops"}
        # The room is not encrypted, and the user cannot write in it.
        r = await c.call("GET", f"/rooms/{q(room)}/state/m.room.encryption",
                         token=alice.access_token)
        assert r.status == 404
        r = await c.call("PUT", f"/rooms/{q(room)}/send/m.room.message/a1", _text("no"),
                         token=alice.access_token)
        assert r.status == 403

        # A second notice goes to the same room; one transaction ID sends once.
        path = f"{NOTICE}/txn-1"
        payload = {"user_id": alice.user_id, "content": _text("Done")}
        s1, b1 = await call(hs, "PUT", path, tok, payload)
        s2, b2 = await call(hs, "PUT", path, tok, payload)
        assert (s1, s2) == (200, 200) and b1 == b2
        later = await sync(c, alice, joined["next_batch"])
        assert bodies(timeline(later, room)["events"]) == ["Done"]

        # Left the room: the next notice invites her back into it.
        await leave(c, alice, room)
        status, _ = await call(hs, "POST", NOTICE, tok,
                               {"user_id": alice.user_id, "content": _text("Back")})
        assert status == 200
        again = await sync(c, alice, later["next_batch"])
        assert list(again["rooms"]["invite"]) == [room]

        for payload, code, errcode in (
            ({"user_id": "@x:elsewhere.org", "content": _text("x")}, 400, "M_INVALID_PARAM"),
            ({"user_id": "@ghost:test.local", "content": _text("x")}, 404, "M_NOT_FOUND"),
            ({"user_id": alice.user_id}, 400, "M_MISSING_PARAM"),
            ({"user_id": alice.user_id, "content": "text"}, 400, "M_BAD_JSON"),
            ({"content": _text("x")}, 400, "M_MISSING_PARAM"),
        ):
            status, body = await call(hs, "POST", NOTICE, tok, payload)
            assert (status, body["errcode"]) == (code, errcode), payload
        r = await request("POST", hs.client_url + NOTICE, b"{not json", access_token=tok)
        assert (r.status, r.json()["errcode"]) == (400, "M_NOT_JSON")
    finally:
        await hs.stop()


@pytest_twisted.ensureDeferred
async def test_notices_off_unless_configured(hs: RunningServer) -> None:
    admin, alice = await admin_and_user(hs)
    status, body = await call(hs, "POST", NOTICE, admin.access_token,
                              {"user_id": alice.user_id, "content": _text("x")})
    assert (status, body["errcode"]) == (400, "M_UNKNOWN")
