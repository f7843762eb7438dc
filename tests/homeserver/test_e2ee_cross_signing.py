"""Cross-signing over HTTP on both engines: key upload (UIA except the first time), validation,
signature uploads checked against the right key, and who sees which signature."""

from __future__ import annotations

from typing import Any

import pytest_twisted

from homeserver.services.registry import Services
from tests.support.client import Client
from tests.support.e2ee import CrossSigning, Device, Ed25519
from tests.support.server import RunningServer


def services(hs: RunningServer) -> Services:
    assert hs.hs.services is not None
    return hs.hs.services


async def _setup(c: Client, name: str, *, cross_signing: bool = True) -> tuple[Device,
                                                                               CrossSigning]:
    d = Device(await c.register(name))
    r = await d.upload(c, {"device_keys": d.device_keys()})
    assert r.status == 200, r.body
    cs = CrossSigning(d.user_id)
    if cross_signing:
        r = await c.call("POST", "/keys/device_signing/upload", cs.upload_body(), d.token)
        assert r.status == 200, r.body
    return d, cs


def _password_auth(d: Device, session: str) -> dict[str, Any]:
    return {"type": "m.login.password", "session": session, "password": d.user.password,
            "identifier": {"type": "m.id.user", "user": d.user_id}}


async def _query(c: Client, viewer: Device, users: list[str]) -> Any:
    r = await c.call("POST", "/keys/query", {"device_keys": {u: [] for u in users}},
                     viewer.token)
    assert r.status == 200, r.body
    return r.json()


@pytest_twisted.ensureDeferred
async def test_first_upload_needs_no_uia_then_replacing_does(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, cs = await _setup(c, "alice")
    bob, _ = await _setup(c, "bob", cross_signing=False)

    result = await _query(c, bob, [alice.user_id])
    assert result["master_keys"][alice.user_id] == cs.master_key()
    assert result["self_signing_keys"][alice.user_id] == cs.self_signing_key()
    assert result["user_signing_keys"] == {}  # only for Alice herself
    own = await _query(c, alice, [alice.user_id])
    assert own["user_signing_keys"][alice.user_id] == cs.user_signing_key()

    # Exactly the same keys again (a retry): no UIA.
    r = await c.call("POST", "/keys/device_signing/upload", cs.upload_body(), alice.token)
    assert r.status == 200, r.body

    # New keys replace the old only after the password.
    new = CrossSigning(alice.user_id)
    r = await c.call("POST", "/keys/device_signing/upload", new.upload_body(), alice.token)
    assert r.status == 401
    session = r.json()["session"]
    assert {"stages": ["m.login.password"]} in r.json()["flows"]
    assert (await _query(c, bob, [alice.user_id]))["master_keys"][alice.user_id] == \
        cs.master_key()
    wrong = {**_password_auth(alice, session), "password": "wrong"}
    r = await c.call("POST", "/keys/device_signing/upload",
                     {**new.upload_body(), "auth": wrong}, alice.token)
    assert r.status == 401
    r = await c.call("POST", "/keys/device_signing/upload",
                     {**new.upload_body(), "auth": _password_auth(alice, session)}, alice.token)
    assert r.status == 200, r.body
    result = await _query(c, bob, [alice.user_id])
    assert result["master_keys"][alice.user_id] == new.master_key()


def _bad_uploads(d: Device, cs: CrossSigning) -> list[tuple[str, dict[str, Any], int, str]]:
    stranger = Ed25519()
    other_user = CrossSigning("@bob:test.local")
    return [
        ("self-signing key not signed",
         {"master_key": cs.master_key(),
          "self_signing_key": cs.key("self_signing", cs.self_signing)},
         400, "M_INVALID_SIGNATURE"),
        ("self-signing key signed by another key",
         {"master_key": cs.master_key(),
          "self_signing_key": cs.key("self_signing", cs.self_signing, stranger)},
         400, "M_INVALID_SIGNATURE"),
        ("user-signing key signed by the self-signing key",
         {"master_key": cs.master_key(),
          "user_signing_key": cs.key("user_signing", cs.user_signing, cs.self_signing)},
         400, "M_INVALID_SIGNATURE"),
        ("master key of another user", {"master_key": other_user.master_key()},
         400, "M_INVALID_PARAM"),
        ("wrong usage", {"master_key": cs.key("self_signing", cs.master)},
         400, "M_INVALID_PARAM"),
        ("two keys", {"master_key": {**cs.master_key(),
                                     "keys": {cs.master.key_id: cs.master.public,
                                              stranger.key_id: stranger.public}}},
         400, "M_INVALID_PARAM"),
        ("key ID not the public key",
         {"master_key": {**cs.master_key(), "keys": {stranger.key_id: cs.master.public}}},
         400, "M_INVALID_PARAM"),
        ("not an ed25519 key",
         {"master_key": {**cs.master_key(),
                         "keys": {f"curve25519:{cs.master.public}": cs.master.public}}},
         400, "M_INVALID_PARAM"),
        ("no master key yet", {"self_signing_key": cs.self_signing_key()},
         400, "M_MISSING_PARAM"),
        ("master key signed badly by the device",
         {"master_key": {**cs.master_key(),
                         "signatures": {d.user_id: {d.ed.key_id: "A" * 86}}}},
         400, "M_INVALID_SIGNATURE"),
        ("not an object", {"master_key": "key"}, 400, "M_BAD_JSON"),
    ]


@pytest_twisted.ensureDeferred
async def test_bad_cross_signing_keys_are_refused(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, cs = await _setup(c, "alice", cross_signing=False)
    for what, body, status, errcode in _bad_uploads(alice, cs):
        r = await c.call("POST", "/keys/device_signing/upload", body, alice.token)
        assert (r.status, r.json().get("errcode")) == (status, errcode), (what, r.body)
    own = await _query(c, alice, [alice.user_id])
    assert own["master_keys"] == {} and own["self_signing_keys"] == {}
    assert own["user_signing_keys"] == {}


@pytest_twisted.ensureDeferred
async def test_cross_signing_key_may_not_collide_with_a_device_id(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    cs = CrossSigning("@alice:test.local")
    alice = Device(await c.register("alice", device_id=cs.master.public))
    r = await c.call("POST", "/keys/device_signing/upload", {"master_key": cs.master_key()},
                     alice.token)
    assert (r.status, r.json()["errcode"]) == (403, "M_FORBIDDEN")


@pytest_twisted.ensureDeferred
async def test_master_key_signed_by_the_device_at_upload(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, cs = await _setup(c, "alice", cross_signing=False)
    master = alice.ed.sign(cs.master_key(), alice.user_id)
    r = await c.call("POST", "/keys/device_signing/upload", {**cs.upload_body(),
                                                             "master_key": master},
                     alice.token)
    assert r.status == 200, r.body


@pytest_twisted.ensureDeferred
async def test_signing_own_devices_and_master_key(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, cs = await _setup(c, "alice")
    bob, _ = await _setup(c, "bob")
    keys = services(hs).e2ee.keys
    before = await keys.current_device_list_position()

    signed_device = cs.self_signing.sign(alice.device_keys(), alice.user_id)
    signed_master = alice.ed.sign(cs.master_key(), alice.user_id)
    r = await c.call("POST", "/keys/signatures/upload", {alice.user_id: {
        alice.device_id: signed_device, cs.master.public: signed_master,
    }}, alice.token)
    assert r.status == 200, r.body
    assert r.json() == {"failures": {}}

    result = await _query(c, bob, [alice.user_id])
    device = result["device_keys"][alice.user_id][alice.device_id]
    assert device["signatures"][alice.user_id][cs.self_signing.key_id] == \
        signed_device["signatures"][alice.user_id][cs.self_signing.key_id]
    master = result["master_keys"][alice.user_id]
    assert master["signatures"][alice.user_id][alice.ed.key_id] == \
        signed_master["signatures"][alice.user_id][alice.ed.key_id]
    # Others' device lists learn of it.
    assert await keys.changed_users(bob.user_id, before, {alice.user_id}) == {alice.user_id}


@pytest_twisted.ensureDeferred
async def test_bad_signatures_are_reported_per_key(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, cs = await _setup(c, "alice")
    bob, bob_cs = await _setup(c, "bob")
    stranger = Ed25519(cs.self_signing.name)  # right key ID, wrong key
    body = {
        alice.user_id: {
            alice.device_id: stranger.sign(alice.device_keys(), alice.user_id),
            "UNKNOWNDEV": cs.self_signing.sign({"user_id": alice.user_id}, alice.user_id),
            cs.master.public: Ed25519(alice.device_id).sign(cs.master_key(), alice.user_id),
        },
        bob.user_id: {
            # Bob's master key signed by Alice's self-signing key instead of her USK.
            bob_cs.master.public: cs.self_signing.sign(bob_cs.master_key(), alice.user_id),
        },
        "@carol:remote.example": {"KEY": {"user_id": "@carol:remote.example"}},
    }
    r = await c.call("POST", "/keys/signatures/upload", body, alice.token)
    assert r.status == 200, r.body
    failures = r.json()["failures"]
    assert failures[alice.user_id][alice.device_id]["errcode"] == "M_INVALID_SIGNATURE"
    assert failures[alice.user_id]["UNKNOWNDEV"]["errcode"] == "M_NOT_FOUND"
    assert failures[alice.user_id][cs.master.public]["errcode"] == "M_INVALID_SIGNATURE"
    assert failures[bob.user_id][bob_cs.master.public]["errcode"] == "M_INVALID_SIGNATURE"
    assert "@carol:remote.example" in failures
    # A signed object that differs from the stored key is refused too.
    tampered = cs.self_signing.sign({**alice.device_keys(), "algorithms": ["x"]}, alice.user_id)
    r = await c.call("POST", "/keys/signatures/upload",
                     {alice.user_id: {alice.device_id: tampered}}, alice.token)
    assert r.json()["failures"][alice.user_id][alice.device_id]["errcode"] == "M_INVALID_PARAM"
    # Nothing was stored.
    result = await _query(c, alice, [alice.user_id, bob.user_id])
    device = result["device_keys"][alice.user_id][alice.device_id]
    assert set(device["signatures"][alice.user_id]) == {alice.ed.key_id}
    assert "signatures" not in result["master_keys"][alice.user_id]
    assert "signatures" not in result["master_keys"][bob.user_id]
    # The whole body must be a map of maps.
    r = await c.call("POST", "/keys/signatures/upload", {alice.user_id: ["x"]}, alice.token)
    assert (r.status, r.json()["errcode"]) == (400, "M_BAD_JSON")


@pytest_twisted.ensureDeferred
async def test_user_signing_signatures_are_seen_only_by_the_signer(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, cs = await _setup(c, "alice")
    bob, bob_cs = await _setup(c, "bob")
    carol, _ = await _setup(c, "carol")
    keys = services(hs).e2ee.keys
    before = await keys.current_device_list_position()

    signed = cs.user_signing.sign(bob_cs.master_key(), alice.user_id)
    r = await c.call("POST", "/keys/signatures/upload",
                     {bob.user_id: {bob_cs.master.public: signed}}, alice.token)
    assert r.json() == {"failures": {}}

    seen_by_alice = (await _query(c, alice, [bob.user_id]))["master_keys"][bob.user_id]
    assert seen_by_alice["signatures"][alice.user_id][cs.user_signing.key_id] == \
        signed["signatures"][alice.user_id][cs.user_signing.key_id]
    for viewer in (bob, carol):
        seen = (await _query(c, viewer, [bob.user_id]))["master_keys"][bob.user_id]
        assert alice.user_id not in seen.get("signatures", {})
    # Alice's clients re-query Bob; nobody else is told.
    assert await keys.changed_users(alice.user_id, before, set()) == {bob.user_id}
    assert await keys.changed_users(carol.user_id, before, {alice.user_id, bob.user_id}) == \
        set()

    # Only the master key of another user can be signed.
    r = await c.call("POST", "/keys/signatures/upload", {bob.user_id: {
        bob.device_id: cs.user_signing.sign(bob.device_keys(), alice.user_id)}}, alice.token)
    assert r.json()["failures"][bob.user_id][bob.device_id]["errcode"] == "M_NOT_FOUND"


@pytest_twisted.ensureDeferred
async def test_user_signing_key_changes_are_private(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, cs = await _setup(c, "alice")
    bob, _ = await _setup(c, "bob")
    keys = services(hs).e2ee.keys
    before = await keys.current_device_list_position()
    r = await c.call("POST", "/keys/device_signing/upload",
                     {"user_signing_key": cs.key("user_signing", Ed25519(), cs.master)},
                     alice.token)
    assert r.status == 401  # a replacement needs UIA
    r = await c.call("POST", "/keys/device_signing/upload",
                     {"user_signing_key": cs.key("user_signing", Ed25519(), cs.master),
                      "auth": _password_auth(alice, r.json()["session"])}, alice.token)
    assert r.status == 200, r.body
    assert await keys.changed_users(bob.user_id, before, {alice.user_id}) == set()
    assert await keys.changed_users(alice.user_id, before, set()) == {alice.user_id}


@pytest_twisted.ensureDeferred
async def test_deactivation_removes_every_key(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, cs = await _setup(c, "alice")
    bob, bob_cs = await _setup(c, "bob")
    r = await c.call("POST", "/keys/signatures/upload", {bob.user_id: {
        bob_cs.master.public: cs.user_signing.sign(bob_cs.master_key(), alice.user_id)}},
        alice.token)
    assert r.json() == {"failures": {}}
    r = await c.call("POST", "/room_keys/version", {
        "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": {"public_key": "x"}},
        alice.token)
    assert r.status == 200
    r = await c.call("POST", "/account/deactivate", {}, alice.token)
    assert r.status == 401
    r = await c.call("POST", "/account/deactivate",
                     {"auth": _password_auth(alice, r.json()["session"])}, alice.token)
    assert r.status == 200, r.body
    result = await _query(c, bob, [alice.user_id, bob.user_id])
    assert result["device_keys"][alice.user_id] == {}
    assert alice.user_id not in result["master_keys"]
    assert alice.user_id not in result["self_signing_keys"]
    s = services(hs)
    assert await s.e2ee.keys.store.get_cross_signing_key(alice.user_id, "user_signing") is None
    assert await s.e2ee.keys.store.stored_signatures(bob.user_id, bob_cs.master.public) == set()
    assert await s.e2ee.backup.store.get_version(alice.user_id, None) is None


@pytest_twisted.ensureDeferred
async def test_device_ids_taken_by_cross_signing_keys(hs: RunningServer) -> None:
    c = Client(hs.client_url)
    alice, cs = await _setup(c, "alice")
    keys = services(hs).e2ee.keys
    assert await keys.device_id_is_taken_by_a_key(alice.user_id, cs.master.public)
    assert await keys.device_id_is_taken_by_a_key(alice.user_id, cs.self_signing.public)
    assert not await keys.device_id_is_taken_by_a_key(alice.user_id, alice.device_id)
