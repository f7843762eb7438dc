"""Two real servers over TLS on loopback: key documents, key fetching, the notary, signed
requests between servers, and remote profile lookups."""

from __future__ import annotations

from typing import Any

import pytest_twisted

from federation.keys import key_id_of
from federation.server_keys import parse_notary_response, parse_server_keys_response
from federation.transport.client import HttpResponseError
from homeserver.config import DatabaseConfig
from tests.support.client import Client, q
from tests.support.databases import fresh_database
from tests.support.http import request
from tests.support.server import RunningServer


@pytest_twisted.ensureDeferred
async def test_own_key_document_is_valid_and_self_signed(
    pair: tuple[RunningServer, RunningServer],
) -> None:
    a, _ = pair
    r = await request("GET", f"{a.federation_url}/_matrix/key/v2/server")
    assert r.status == 200
    doc = parse_server_keys_response(r.json(), now_ms=r.json()["valid_until_ts"] - 1,
                                     expected_server_name="a.test")
    assert a.hs.signing_key is not None
    assert key_id_of(a.hs.signing_key) in doc.verify_keys
    # The client listener does not serve keys.
    r = await request("GET", f"{a.client_url}/_matrix/key/v2/server")
    assert r.status == 404


@pytest_twisted.ensureDeferred
async def test_fetching_keys_and_notary(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    assert a.hs.services is not None and b.hs.signing_key is not None
    key_id = key_id_of(b.hs.signing_key)
    keys = await a.hs.services.keyring.get_keys("b.test", [key_id])
    assert keys[key_id].verify_key.encode() == b.hs.signing_key.verify_key.encode()
    stored = await a.hs.services.keyring.store.get("b.test")
    assert stored[key_id].key.verify_key.encode() == keys[key_id].verify_key.encode()

    # a as a notary vouches for b's keys, countersigned by a.
    r = await request("POST", f"{a.federation_url}/_matrix/key/v2/query",
                      {"server_keys": {"b.test": {}}})
    assert r.status == 200
    assert b.hs.services is not None and a.hs.signing_key is not None
    a_keys = await b.hs.services.keyring.get_keys("a.test", [key_id_of(a.hs.signing_key)])
    result = parse_notary_response(
        r.json(), notary_name="a.test",
        notary_keys=lambda server, kid: a_keys.get(kid) if server == "a.test" else None,
        now_ms=a.hs.services.clock.time_ms(), requested={"b.test"})
    assert not result.rejected
    assert key_id in result.for_server("b.test")
    r = await request("GET", f"{a.federation_url}/_matrix/key/v2/query/b.test")
    assert r.status == 200 and len(r.json()["server_keys"]) == 1
    r = await request("POST", f"{a.federation_url}/_matrix/key/v2/query", {"server_keys": 5})
    assert (r.status, r.json()["errcode"]) == (400, "M_BAD_JSON")


@pytest_twisted.ensureDeferred
async def test_signed_requests_and_remote_profiles(
    pair: tuple[RunningServer, RunningServer],
) -> None:
    a, b = pair
    ca, cb = Client(a.client_url), Client(b.client_url)
    alice = await ca.register("alice")
    bob = await cb.register("bob")
    await cb.call("PUT", f"/profile/{q(bob.user_id)}/displayname", {"displayname": "Bob B"},
                  token=bob.access_token)
    # Alice on a.test reads Bob's profile: a asks b over signed federation.
    r = await ca.call("GET", f"/profile/{q(bob.user_id)}", token=alice.access_token)
    assert (r.status, r.json()) == (200, {"displayname": "Bob B"})
    r = await ca.call("GET", f"/profile/{q(bob.user_id)}/displayname")
    assert r.json() == {"displayname": "Bob B"}
    r = await ca.call("GET", f"/profile/{q('@nobody:b.test')}")
    assert (r.status, r.json()["errcode"]) == (404, "M_NOT_FOUND")
    r = await ca.call("GET", f"/profile/{q('@x:unknown.invalid')}")
    assert r.status == 502

    # An unsigned request, or one signed for another destination, is refused.
    url = f"{b.federation_url}/_matrix/federation/v1/query/profile?user_id={q(bob.user_id)}"
    r = await request("GET", url)
    assert (r.status, r.json()["errcode"]) == (401, "M_UNAUTHORIZED")
    assert a.hs.services is not None
    client = a.hs.services.federation_client
    got = await client.get_json("b.test", "/_matrix/federation/v1/query/profile",
                                {"user_id": bob.user_id})
    assert got == {"displayname": "Bob B"}
    forged = {"Authorization": 'X-Matrix origin="a.test",destination="b.test",'
              'key="ed25519:a_fake",sig="AAAA"'}
    r = await request("GET", url, headers=forged)
    assert (r.status, r.json()["errcode"]) == (401, "M_UNAUTHORIZED")
    wrong_dest = {"Authorization": 'X-Matrix origin="a.test",destination="c.test",'
                  'key="ed25519:a_fake",sig="AAAA"'}
    r = await request("GET", url, headers=wrong_dest)
    assert r.status == 401
    try:
        await client.get_json("b.test", "/_matrix/federation/v1/query/profile",
                              {"user_id": "@bob:a.test"})
        raise AssertionError("expected an error")
    except HttpResponseError as e:
        assert e.status == 400


@pytest_twisted.ensureDeferred
async def test_version(hs: RunningServer) -> None:
    r = await request("GET", f"{hs.federation_url}/_matrix/federation/v1/version")
    assert r.status == 200 and r.json()["server"]["name"] == "homeserver"


def test_db_configs_are_distinct(tmp_path: Any) -> None:
    with fresh_database("sqlite", str(tmp_path / "x")) as one, \
            fresh_database("sqlite", str(tmp_path / "y")) as two:
        assert isinstance(one, DatabaseConfig) and one.target != two.target
