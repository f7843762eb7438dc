"""End-to-end encryption, ephemeral events, profiles and media between our server and a real
Synapse on loopback: device keys queried and one-time keys claimed across, to-device messages
both ways, device list changes and cross-signing keys seen by the other side, typing and read
receipts, profile lookups, and media uploaded on one side downloaded through the other.

One Synapse (SQLite) serves the module; each test starts a fresh server of ours."""

from __future__ import annotations

import secrets
from typing import Any

import pytest_twisted

from tests.support.client import Client, q
from tests.support.e2ee import Device
from tests.support.interop import (
    SQLITE_ONLY,
    AnyUser,
    as_user,
    call_ok,
    event_on,
    eventually,
    fresh,
    join,
    joined_pair,
    name_of,
    ours,
    send_text,
    state_of,
    synapse,
    to_device_events,
)
from tests.support.server import RunningServer
from tests.support.synapse import SynapseProcess

__all__ = ["ours", "synapse"]


@SQLITE_ONLY
@pytest_twisted.ensureDeferred
async def test_device_keys_and_to_device_across(
    ours: RunningServer, synapse: SynapseProcess,
) -> None:
    co, cs = Client(ours.client_url), Client(synapse.client_url)
    alice = Device(await co.register(fresh("alice")))
    bob = Device(as_user(synapse.register_user(fresh("bob"))))
    for dev, c in ((alice, co), (bob, cs)):
        r = await dev.upload(c, {"device_keys": dev.device_keys(),
                                 "one_time_keys": dev.one_time_keys(2)})
        assert r.status == 200, r.body

    # Each side queries the other's user through its own server, then claims a one-time key.
    for (me, c), them in (((alice, co), bob), ((bob, cs), alice)):
        j = await call_ok(c, "POST", "/keys/query", me.user,
                          {"device_keys": {them.user_id: []}})
        assert j["failures"] == {}, j
        got = j["device_keys"][them.user_id][them.device_id]
        got.pop("unsigned", None)
        assert got == them.device_keys()
        j = await call_ok(c, "POST", "/keys/claim", me.user, {
            "one_time_keys": {them.user_id: {them.device_id: "signed_curve25519"}}})
        assert j["failures"] == {}, j
        claimed = j["one_time_keys"][them.user_id][them.device_id]
        assert len(claimed) == 1
        (key_id, key), = claimed.items()
        assert key_id.startswith("signed_curve25519:")
        assert them.user_id in key["signatures"]

    # To-device both ways, each seen in the recipient's /sync.
    _, since_a = await to_device_events(co, alice.user, None)
    _, since_b = await to_device_events(cs, bob.user, None)
    for (me, c), them, since, rc in (((alice, co), bob, since_b, cs),
                                     ((bob, cs), alice, since_a, co)):
        content = {"algorithm": "m.olm.v1.curve25519-aes-sha2", "ciphertext": me.user_id}
        await call_ok(c, "PUT", f"/sendToDevice/m.room.encrypted/{secrets.token_hex(4)}",
                      me.user, {"messages": {them.user_id: {them.device_id: content}}})
        seen: list[dict[str, Any]] = []

        async def delivered(them: Device = them, rc: Client = rc, since: str = since,
                            seen: list[dict[str, Any]] = seen) -> bool:
            events, _ = await to_device_events(rc, them.user, since)
            seen[:] = events
            return bool(events)

        await eventually(delivered, what=f"to-device message for {them.user_id}")
        assert [(e["type"], e["sender"], e["content"]) for e in seen] == [
            ("m.room.encrypted", me.user_id, content)]


@SQLITE_ONLY
@pytest_twisted.ensureDeferred
async def test_device_list_changes_reach_synapse(
    ours: RunningServer, synapse: SynapseProcess,
) -> None:
    """A new device of a user in a room shared with Synapse shows in the Synapse user's
    ``device_lists.changed``, and Synapse then serves the new keys."""
    co, cs = Client(ours.client_url), Client(synapse.client_url)
    alice = await co.register(fresh("alice"))
    bob = synapse.register_user(fresh("bob"))
    room_id = (await call_ok(co, "POST", "/createRoom", alice, {"preset": "public_chat"}))[
        "room_id"]
    await join(cs, bob, room_id, name_of(ours))
    j = await call_ok(cs, "POST", "/keys/query", bob, {"device_keys": {alice.user_id: []}})
    # Synapse now caches alice's (keyless) device list: only our update can change it.
    assert alice.device_id not in j["device_keys"].get(alice.user_id, {})
    since = (await call_ok(cs, "GET", "/sync?timeout=0", bob))["next_batch"]
    device = Device(alice)
    assert (await device.upload(co, {"device_keys": device.device_keys()})).status == 200

    async def changed_on_synapse() -> bool:
        nonlocal since
        body = await call_ok(cs, "GET", f"/sync?timeout=0&since={q(since)}", bob)
        since = body["next_batch"]
        return alice.user_id in body.get("device_lists", {}).get("changed", [])

    await eventually(changed_on_synapse, what="alice in bob's device_lists.changed")
    j = await call_ok(cs, "POST", "/keys/query", bob, {"device_keys": {alice.user_id: []}})
    got = j["device_keys"][alice.user_id][alice.device_id]
    got.pop("unsigned", None)
    assert got == device.device_keys()


@SQLITE_ONLY
@pytest_twisted.ensureDeferred
async def test_cross_signing_keys_and_device_lists_from_synapse(
    ours: RunningServer, synapse: SynapseProcess,
) -> None:
    """Cross-signing keys of each side's user are served to the other; a device change on
    Synapse reaches our user's ``device_lists.changed``."""
    from tests.support.e2ee import CrossSigning

    co, cs, alice, bob, _ = await joined_pair(ours, synapse, on_ours=False)
    identities = {}
    for c, u in ((co, alice), (cs, bob)):
        xs = CrossSigning(u.user_id)
        body = xs.upload_body()
        r = await c.call("POST", "/_matrix/client/v3/keys/device_signing/upload", body,
                         u.access_token, raw_path=True)
        if r.status == 401:  # Synapse asks for user-interactive auth
            body["auth"] = {"type": "m.login.password", "password": u.password,
                            "identifier": {"type": "m.id.user", "user": u.user_id},
                            "session": r.json().get("session")}
            r = await c.call("POST", "/_matrix/client/v3/keys/device_signing/upload", body,
                             u.access_token, raw_path=True)
        assert r.status == 200, r.body
        identities[u.user_id] = xs
    for c, u, other in ((co, alice, bob), (cs, bob, alice)):
        xs = identities[other.user_id]

        async def has_master(c: Client = c, u: AnyUser = u, other: AnyUser = other,
                             xs: CrossSigning = xs) -> bool:
            j = await call_ok(c, "POST", "/keys/query", u, {"device_keys": {other.user_id: []}})
            master = j.get("master_keys", {}).get(other.user_id)
            ssk = j.get("self_signing_keys", {}).get(other.user_id)
            return (master is not None and master["keys"] == xs.master_key()["keys"]
                    and ssk is not None and ssk["keys"] == xs.self_signing_key()["keys"])

        await eventually(has_master, what=f"{other.user_id}'s cross-signing keys")

    since = (await call_ok(co, "GET", "/sync?timeout=0", alice))["next_batch"]
    device = Device(as_user(bob))
    assert (await device.upload(cs, {"device_keys": device.device_keys()})).status == 200

    async def changed_on_ours() -> bool:
        nonlocal since
        body = await call_ok(co, "GET", f"/sync?timeout=0&since={q(since)}", alice)
        since = body["next_batch"]
        return bob.user_id in body.get("device_lists", {}).get("changed", [])

    await eventually(changed_on_ours, what="bob in alice's device_lists.changed")
    j = await call_ok(co, "POST", "/keys/query", alice, {"device_keys": {bob.user_id: []}})
    got = j["device_keys"][bob.user_id][bob.device_id]
    got.pop("unsigned", None)
    assert got == device.device_keys()


@SQLITE_ONLY
@pytest_twisted.ensureDeferred
async def test_typing_receipts_and_profiles_across(
    ours: RunningServer, synapse: SynapseProcess,
) -> None:
    co, cs, alice, bob, room_id = await joined_pair(ours, synapse, on_ours=True)
    await call_ok(co, "PUT", f"/profile/{q(alice.user_id)}/displayname", alice,
                  {"displayname": "Alice of ours"})
    await call_ok(cs, "PUT", f"/profile/{q(bob.user_id)}/displayname", bob,
                  {"displayname": "Bob of Synapse"})
    # Profiles asked across (/query/profile), and carried by the member events.
    for c, u, other, name in ((cs, bob, alice, "Alice of ours"),
                              (co, alice, bob, "Bob of Synapse")):
        assert (await call_ok(c, "GET", f"/profile/{q(other.user_id)}", u)).get(
            "displayname") == name

        async def member_named(c: Client = c, u: AnyUser = u, other: AnyUser = other,
                               name: str = name) -> bool:
            m = await state_of(c, u, room_id, "m.room.member", other.user_id)
            return m is not None and m.get("displayname") == name

        await eventually(member_named, what=f"{name} in the member event")

    # Typing and read receipts, each way, seen in the other side's /sync.
    for (c, u), (rc, ru) in (((co, alice), (cs, bob)), ((cs, bob), (co, alice))):
        since = (await call_ok(rc, "GET", "/sync?timeout=0", ru))["next_batch"]
        await call_ok(c, "PUT", f"/rooms/{q(room_id)}/typing/{q(u.user_id)}", u,
                      {"typing": True, "timeout": 30000})
        event_id = await send_text(rc, ru, room_id, f"read me, {u.user_id}")

        async def seen_by(c: Client = c, u: AnyUser = u, event_id: str = event_id) -> bool:
            return await event_on(c, u, room_id, event_id) is not None

        await eventually(seen_by, what="the message to read")
        await call_ok(c, "POST", f"/rooms/{q(room_id)}/receipt/m.read/{q(event_id)}", u, {})
        typing_seen, receipt_seen = False, False

        async def ephemeral_arrived(rc: Client = rc, ru: AnyUser = ru, u: AnyUser = u,
                                    event_id: str = event_id) -> bool:
            nonlocal since, typing_seen, receipt_seen
            body = await call_ok(rc, "GET", f"/sync?timeout=0&since={q(since)}", ru)
            since = body["next_batch"]
            room = body.get("rooms", {}).get("join", {}).get(room_id, {})
            for e in room.get("ephemeral", {}).get("events", []):
                if e["type"] == "m.typing" and u.user_id in e["content"]["user_ids"]:
                    typing_seen = True
                if e["type"] == "m.receipt" and u.user_id in e["content"].get(
                        event_id, {}).get("m.read", {}):
                    receipt_seen = True
            return typing_seen and receipt_seen

        await eventually(ephemeral_arrived, what=f"typing and receipt of {u.user_id}")


@SQLITE_ONLY
@pytest_twisted.ensureDeferred
async def test_media_fetched_across_both_ways(
    ours: RunningServer, synapse: SynapseProcess,
) -> None:
    """A file uploaded to one server is downloaded by a user of the other through their own
    server (authenticated federation media, ``/_matrix/federation/v1/media/download``),
    with its bytes, type and name; then a thumbnail of it."""
    from tests.support.media import MediaClient, png

    mo, ms = MediaClient(ours.client_url), MediaClient(synapse.client_url)
    alice = await Client(ours.client_url).register(fresh("alice"))
    bob = synapse.register_user(fresh("bob"))
    for (up, uploader), (down, downloader), origin in (
            ((ms, bob), (mo, alice), synapse.server_name),
            ((mo, alice), (ms, bob), name_of(ours))):
        data = png(64, 48)
        r = await up.upload(data, uploader.access_token, "image/png", filename="pic.png")
        assert r.status == 200, r.body
        uri = r.json()["content_uri"]
        assert uri.startswith(f"mxc://{origin}/")
        r = await down.download(uri, downloader.access_token)
        assert r.status == 200, r.body[:300]
        assert r.body == data
        assert r.header("Content-Type") == "image/png"
        assert "pic.png" in (r.header("Content-Disposition") or "")
        r = await down.thumbnail(uri, downloader.access_token, 32, 32)
        assert r.status == 200, r.body[:300]
        assert (r.header("Content-Type") or "").startswith("image/")
        # A media ID the origin never issued: 404 through the other server.
        missing = uri.rsplit("/", 1)[0] + "/nosuchmedia" + secrets.token_hex(4)
        r = await down.download(missing, downloader.access_token)
        assert r.status == 404, (r.status, r.body[:300])


@SQLITE_ONLY
@pytest_twisted.ensureDeferred
async def test_presence_across(ours: RunningServer, synapse: SynapseProcess) -> None:
    """Users sharing a room see each other's presence and status message in /sync
    (m.presence EDUs). /sync, not GET /presence: Synapse can cache a remote user's presence
    read while the EDU is being stored, and then answers the stale state for a while."""
    co, cs, alice, bob, _ = await joined_pair(ours, synapse, on_ours=True)
    for (c, u), (rc, ru), status in (((co, alice), (cs, bob), "on ours"),
                                     ((cs, bob), (co, alice), "on synapse")):
        since = (await call_ok(rc, "GET", "/sync?timeout=0", ru))["next_batch"]
        await call_ok(c, "PUT", f"/presence/{q(u.user_id)}/status", u,
                      {"presence": "online", "status_msg": status})

        async def seen(rc: Client = rc, ru: AnyUser = ru, u: AnyUser = u,
                       status: str = status) -> bool:
            nonlocal since
            body = await call_ok(rc, "GET", f"/sync?timeout=0&since={q(since)}", ru)
            since = body["next_batch"]
            return any(e["sender"] == u.user_id and e["content"].get("presence") == "online"
                       and e["content"].get("status_msg") == status
                       for e in body.get("presence", {}).get("events", []))

        await eventually(seen, what=f"{u.user_id}'s presence on the other side")
