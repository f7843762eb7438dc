"""Every client-listener endpoint fuzzed with hostile input by an authenticated user: path
parameters (unicode, very long, traversal, NUL, bad UTF-8, wrong sigils), query strings, and
bodies (malformed JSON, invalid UTF-8, wrong types at the top level and per field, huge arrays,
deep nesting, oversized, wrong content types).

Every answer: below 500, an error is JSON with an errcode, no traceback or Python repr; and a
refused request writes nothing (stream positions and row counts of the main tables are the same
before and after it). Cases are drawn with a fixed seed per route, so runs repeat and stay
bounded: SQLite gets the full sample, PostgreSQL a smaller one.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_twisted
from twisted.web.client import PartialDownloadError

from homeserver.storage import Txn
from tests.support.client import Client, User, q
from tests.support.databases import fresh_database
from tests.support.fuzz import (
    Case,
    case_strategy,
    draw,
    field_names,
    fill_path,
    fixed_cases,
    problems,
)
from tests.support.http import request
from tests.support.media import png
from tests.support.server import RunningServer, start_server

BODY_LIMIT = 65536  # the smallest the config allows: oversized bodies stay cheap to send
# Hypothesis examples per route, besides the fixed ones; HS_FUZZ_EXAMPLES=N for a deeper run.
EXAMPLES = {"sqlite": 30, "postgres": 8}
if os.environ.get("HS_FUZZ_EXAMPLES"):
    EXAMPLES = dict.fromkeys(EXAMPLES, int(os.environ["HS_FUZZ_EXAMPLES"]))
CLIENT_RESOURCES = frozenset({"client", "media", "admin", "metrics"})
V3 = "/_matrix/client/v3"

# The tables a client request can write to, and the streams; a refused request moves none.
TABLES = [
    "users", "access_tokens", "refresh_tokens", "login_tokens", "devices", "profiles",
    "account_data", "filters", "events", "current_state", "rooms", "room_aliases",
    "room_forgotten", "receipts", "event_reports", "media", "pushers", "push_rules",
    "e2e_device_keys", "e2e_one_time_keys", "e2e_fallback_keys", "e2e_cross_signing_keys",
    "e2e_cross_signing_signatures", "e2e_room_keys", "e2e_room_keys_versions",
    "to_device_inbox", "openid_tokens", "registration_tokens", "room_blocks",
]

# Valid bodies to mutate one field at a time, so the fuzzing reaches past the first check.
SEED_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", f"{V3}/register"): {"username": "fz", "password": "pw",
                                 "auth": {"type": "m.login.dummy"}},
    ("POST", f"{V3}/login"): {"type": "m.login.password", "password": "pw",
                              "identifier": {"type": "m.id.user", "user": "fuzzer"}},
    ("POST", f"{V3}/createRoom"): {"preset": "private_chat", "name": "n", "topic": "t",
                                   "invite": ["@victim:test.local"], "room_version": "10",
                                   "initial_state": [], "creation_content": {}},
    ("PUT", f"{V3}/rooms/{{roomId}}/send/{{eventType}}/{{txnId}}"):
        {"msgtype": "m.text", "body": "hi", "m.relates_to": {"rel_type": "m.thread",
                                                             "event_id": "$x"}},
    ("PUT", f"{V3}/rooms/{{roomId}}/state/{{eventType}}/{{stateKey}}"): {"name": "n"},
    ("POST", f"{V3}/rooms/{{roomId}}/invite"): {"user_id": "@victim:test.local"},
    ("POST", f"{V3}/rooms/{{roomId}}/read_markers"): {"m.fully_read": "$x", "m.read": "$y"},
    ("PUT", f"{V3}/rooms/{{roomId}}/typing/{{userId}}"): {"typing": True, "timeout": 1000},
    ("PUT", f"{V3}/presence/{{userId}}/status"): {"presence": "online", "status_msg": "m"},
    ("POST", f"{V3}/user/{{userId}}/filter"): {"room": {"timeline": {"limit": 1}},
                                               "event_fields": ["content.body"]},
    ("POST", f"{V3}/search"): {"search_categories": {"room_events": {"search_term": "x"}}},
    ("POST", f"{V3}/user_directory/search"): {"search_term": "v", "limit": 5},
    ("POST", f"{V3}/publicRooms"): {"limit": 5, "filter": {"generic_search_term": "x"}},
    ("POST", f"{V3}/keys/upload"): {"device_keys": {
        "user_id": "@fuzzer:test.local", "device_id": "D", "algorithms": [],
        "keys": {}, "signatures": {}}, "one_time_keys": {"signed_curve25519:A": {"key": "k"}}},
    ("POST", f"{V3}/keys/query"): {"device_keys": {"@fuzzer:test.local": []}, "timeout": 10},
    ("POST", f"{V3}/keys/claim"): {"one_time_keys": {"@fuzzer:test.local": {
        "D": "signed_curve25519"}}},
    ("PUT", f"{V3}/sendToDevice/{{eventType}}/{{txnId}}"): {"messages": {
        "@fuzzer:test.local": {"*": {"a": 1}}}},
    ("POST", f"{V3}/room_keys/version"): {"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2",
                                          "auth_data": {"public_key": "k"}},
    ("PUT", f"{V3}/room_keys/keys/{{roomId}}/{{sessionId}}"): {
        "first_message_index": 0, "forwarded_count": 0, "is_verified": False,
        "session_data": {"ciphertext": "c"}},
    ("POST", f"{V3}/pushers/set"): {"kind": "http", "app_id": "a", "pushkey": "k",
                                    "app_display_name": "a", "device_display_name": "d",
                                    "lang": "en", "data": {"url": "http://127.0.0.1:9/x"}},
    ("PUT", f"{V3}/pushrules/{{scope}}/{{kind}}/{{ruleId}}"): {
        "actions": ["notify"], "pattern": "p", "conditions": []},
    ("POST", f"{V3}/rooms/{{roomId}}/report/{{eventId}}"): {"reason": "r", "score": -100},
    ("PUT", f"{V3}/user/{{userId}}/rooms/{{roomId}}/tags/{{tag}}"): {"order": 0.5},
    ("PUT", f"{V3}/devices/{{deviceId}}"): {"display_name": "d"},
    ("PUT", f"{V3}/profile/{{userId}}/{{keyName}}"): {"displayname": "d"},
    ("POST", "/_synapse/admin/v1/send_server_notice"): {
        "user_id": "@victim:test.local", "content": {"msgtype": "m.text", "body": "x"}},
    ("PUT", "/_synapse/admin/v2/users/{userId}"): {"displayname": "v", "admin": False},
}

# Routes whose success ends the caller's session or membership: fuzzed last, with a fresh
# login of a throwaway user for every case.
DESTRUCTIVE = ("/logout", "/logout/all", "/account/deactivate", "/account/password",
               "/delete_devices")
LATE = ("/leave", "/forget", "/kick", "/ban", "/upgrade")
# Long polls: a leading timeout=0 wins over any fuzzed timeout (the first value counts).
LONG_POLLS = (f"{V3}/sync", f"{V3}/events")


@dataclass
class Stats:
    cases: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    accepted: int = 0  # 2xx answers
    writes: int = 0  # accepted cases that changed the counted tables or streams
    failures: list[str] = field(default_factory=list)


# Presence moves with any authenticated request (the caller is active), whatever its answer.
IGNORED_STREAMS = ("presence",)


def _counts_txn(txn: Txn) -> tuple[Any, ...]:
    streams = [row for row in txn.execute("SELECT stream, position FROM stream_positions")
               .fetchall()
               if row[0] not in IGNORED_STREAMS]
    counts = []
    for table in TABLES:
        row = txn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
        counts.append((table, row[0] if row else 0))
    return tuple(sorted((str(s), int(p)) for s, p in streams)), tuple(counts)


async def _state(hs: RunningServer) -> tuple[Any, ...]:
    result: tuple[Any, ...] = await hs.hs.db.run("fuzz_counts", _counts_txn)
    return result


def _diff(before: tuple[Any, ...], after: tuple[Any, ...]) -> list[str]:
    out = []
    for old, new in zip(before, after, strict=True):
        b, a = dict(old), dict(new)
        out += [f"{k}: {b.get(k)} -> {a.get(k)}" for k in sorted(set(b) | set(a))
                if b.get(k) != a.get(k)]
    return out


@pytest_twisted.async_yield_fixture(params=["sqlite", "postgres"])
async def fuzz_hs(request: pytest.FixtureRequest, tmp_path: Any
                  ) -> AsyncIterator[tuple[str, RunningServer]]:
    engine: str = request.param
    if engine == "postgres":
        from tests.support.databases import postgres_unavailable_reason

        reason = postgres_unavailable_reason()
        if reason is not None:
            pytest.skip(reason)
    with fresh_database(engine, str(tmp_path)) as db:
        server = await start_server(str(tmp_path), db,
                                    limits={"max_json_body_bytes": BODY_LIMIT})
        try:
            yield engine, server
        finally:
            await server.stop()


async def _setup(hs: RunningServer) -> tuple[User, User, dict[str, list[str]]]:
    """The fuzzing user (an admin, so the admin routes get past the door), a victim, and
    valid values for each path parameter: real IDs, so bodies get looked at."""
    c = Client(hs.client_url)
    fuzzer = await c.register("fuzzer", "pw")
    victim = await c.register("victim", "pw")
    await hs.hs.services.users.set_admin(fuzzer.user_id, True)
    t = fuzzer.access_token

    async def ok(method: str, path: str, body: Any) -> Any:
        r = await c.call(method, path, body, t)
        assert r.status == 200, (path, r.body)
        return r.json()

    room = (await ok("POST", "/createRoom", {"preset": "public_chat",
                                             "room_alias_name": "fz"}))["room_id"]
    event = (await ok("PUT", f"/rooms/{q(room)}/send/m.room.message/1",
                      {"msgtype": "m.text", "body": "hello"}))["event_id"]
    filter_id = (await ok("POST", f"/user/{q(fuzzer.user_id)}/filter", {}))["filter_id"]
    version = (await ok("POST", "/room_keys/version", SEED_BODIES[
        ("POST", f"{V3}/room_keys/version")]))["version"]
    r = await request("POST", hs.client_url + "/_matrix/media/v3/upload", png(8, 8),
                      headers={"Content-Type": "image/png"}, access_token=t)
    server_name, media_id = r.json()["content_uri"][len("mxc://"):].split("/", 1)
    valid = {
        "userId": [fuzzer.user_id, victim.user_id], "roomId": [room], "eventId": [event],
        "roomIdOrAlias": [room, "#fz:test.local"], "roomAlias": ["#fz:test.local"],
        "deviceId": [fuzzer.device_id], "filterId": [filter_id], "version": [version],
        "serverName": [server_name], "mediaId": [media_id], "fileName": ["a.png"],
        "eventType": ["m.room.message", "m.room.name", "m.room.power_levels"],
        "stateKey": ["", fuzzer.user_id], "txnId": ["t1", "t2"], "type": ["m.direct"],
        "keyName": ["displayname", "avatar_url"], "receiptType": ["m.read", "m.read.private"],
        "scope": ["global"], "kind": ["override", "content", "room", "sender", "underride"],
        "ruleId": [".m.rule.master", "myrule"], "tag": ["u.work", "m.favourite"],
        "sessionId": ["s1"], "relType": ["m.thread", "m.annotation"], "protocol": ["irc"],
        "destination": ["elsewhere.invalid"], "reportId": ["1"], "token": ["abcd"],
    }
    return fuzzer, victim, valid


def _routes(hs: RunningServer) -> list[Any]:
    seen: set[Any] = set()
    out = []
    for route in hs.hs.router.routes:
        if route.resource not in CLIENT_RESOURCES or "/r0/" in route.template:
            continue
        if (route.method, route.template) in seen:
            continue
        seen.add((route.method, route.template))
        out.append(route)

    def order(route: Any) -> int:
        if any(route.template.endswith(d) for d in DESTRUCTIVE):
            return 3
        if "/admin/" in route.template:
            return 2
        return 1 if any(route.template.endswith(d) for d in LATE) else 0

    return sorted(out, key=order)


async def _send(hs: RunningServer, method: str, path: str, case: Case, token: str
                ) -> tuple[int, str | None, bytes]:
    headers = {"Content-Type": case.content_type} if case.content_type else {}
    if case.body is not None and case.content_type is None:
        # Send no Content-Type at all (our client would otherwise add application/json).
        headers = {"Content-Type": ""}
    try:
        r = await request(method, hs.client_url + path, case.body, headers=headers,
                          access_token=token)
    except PartialDownloadError as e:
        # The connection closed early (twisted refusing a request it cannot parse).
        return int(e.status or 0), None, b"PARTIAL " + (e.response or b"")
    return r.status, r.header("Content-Type"), r.body


async def _fuzz(engine: str, hs: RunningServer) -> Stats:
    fuzzer, _victim, valid = await _setup(hs)
    c = Client(hs.client_url)
    stats = Stats()
    n = EXAMPLES[engine]
    before = await _state(hs)
    for index, route in enumerate(_routes(hs)):
        names = [m for m in route.pattern.groupindex]
        with_body = route.method in ("POST", "PUT", "DELETE")
        seed_body = SEED_BODIES.get((route.method, route.template))
        strategy = case_strategy(names, valid, field_names(route.handler), seed_body,
                                 with_body)
        cases = draw(strategy, n, route_seed=index)
        cases += fixed_cases(names, valid, BODY_LIMIT, seed_body) if with_body else [
            case for case in fixed_cases(names, valid, BODY_LIMIT)
            if case.label in ("traversal-raw", "nul-and-bad-utf8")]
        key = f"{route.method} {route.template}"
        throwaway = any(route.template.endswith(d) for d in DESTRUCTIVE)
        for case in cases:
            token = fuzzer.access_token
            if throwaway:
                r = await c.login("fuzzer", "pw")
                token = r.json()["access_token"]
                before = await _state(hs)
            path = fill_path(route.template, case.params, case.raw_params)
            query = "&".join(x for x in ("timeout=0" if route.template in LONG_POLLS else "",
                                         case.query) if x)
            if query:
                path += "?" + query
            sent = time.monotonic()
            status, ctype, body = await _send(hs, route.method, path, case, token)
            stats.seconds[key] = stats.seconds.get(key, 0.0) + time.monotonic() - sent
            stats.cases[key] = stats.cases.get(key, 0) + 1
            what = f"{key} [{case.label}] {path[:200]!r} body={case.body[:200]!r}" \
                if case.body is not None else f"{key} [{case.label}] {path[:200]!r}"
            html = route.method == "GET" and route.template.endswith("/submit_token")
            for problem in problems(status, ctype, body, html=html):
                stats.failures.append(f"{what}: {problem}: {status} {body[:300]!r}")
            after = await _state(hs)
            changed = _diff(before, after)
            if status < 300:
                stats.accepted += 1
                stats.writes += bool(changed)
            elif status >= 400:
                if changed:
                    stats.failures.append(f"{what}: refused ({status}) yet wrote: {changed}")
            before = after
            if status == 401 and not throwaway and b"M_UNKNOWN_TOKEN" in body:
                # A case ended the fuzzer's session (a success we allow): log in again.
                r = await c.login("fuzzer", "pw")
                fuzzer = User(fuzzer.user_id, r.json()["access_token"], fuzzer.device_id, "pw")
                before = await _state(hs)
    return stats


@pytest_twisted.ensureDeferred
async def test_fuzz_every_endpoint(fuzz_hs: tuple[str, RunningServer]) -> None:
    engine, hs = fuzz_hs
    started = time.monotonic()
    stats = await _fuzz(engine, hs)
    elapsed = time.monotonic() - started
    counts = sorted(stats.cases.values())
    print(f"\n{engine}: {sum(counts)} fuzz cases over {len(counts)} routes "
          f"(min {counts[0]}, max {counts[-1]} per route) in {elapsed:.1f}s; "
          f"{stats.accepted} accepted, {stats.writes} of them wrote")
    slowest = sorted(stats.seconds.items(), key=lambda kv: -kv[1])[:5]
    print("slowest routes: " + ", ".join(f"{k} {v:.1f}s" for k, v in slowest))
    assert len(counts) >= 150 and counts[0] >= EXAMPLES[engine]
    assert not stats.failures, f"{len(stats.failures)} failures:\n" + "\n".join(
        stats.failures[:80])
    # The server still answers normally afterwards.
    r = await request("GET", hs.client_url + "/_matrix/client/versions")
    assert r.status == 200 and json.loads(r.body)["versions"]
