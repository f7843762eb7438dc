"""Interop tests against a real Synapse: the module-scoped Synapse and the per-test server of
ours (fixtures, imported by the test modules), and client-side helpers that work the same
against either server.

Our server's name is the IP literal of its federation listener (``127.0.0.2:PORT``) and
Synapse's is ``127.0.0.1:PORT``: each side reaches the other with no DNS or ``.well-known``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from tests.support.client import Client, User, q
from tests.support.databases import fresh_database
from tests.support.server import RunningServer, free_port, start_server
from tests.support.synapse import SynapseProcess, SynapseUser, require_synapse

AnyUser = User | SynapseUser
Side = tuple[Client, AnyUser]
# Interop, not storage: most tests run our server on SQLite only; those that lean on its
# storage (joins, invites, catch-up, backfill) run on both engines.
SQLITE_ONLY = pytest.mark.parametrize("engine", ["sqlite"])


@pytest.fixture(scope="module")
def synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SynapseProcess]:
    require_synapse()
    s = SynapseProcess(str(tmp_path_factory.mktemp("synapse")))
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest_twisted.async_yield_fixture
async def ours(engine: str, tmp_path: Any) -> AsyncIterator[RunningServer]:
    port = free_port("127.0.0.2")
    with fresh_database(engine, str(tmp_path / "db")) as db:
        server = await start_server(
            os.path.join(str(tmp_path), "hs"), db, f"127.0.0.2:{port}", port,
            room_directory={"publish_by_anyone": True,
                            "allow_public_rooms_over_federation": True})
        try:
            yield server
        finally:
            await server.stop()


def name_of(server: RunningServer) -> str:
    assert server.hs.services is not None
    return server.hs.services.config.server_name


def fresh(name: str) -> str:
    return f"{name}{secrets.token_hex(3)}"


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 30.0,
                     what: str = "condition") -> None:
    waited = 0.0
    while not await check():
        if waited > timeout:
            raise AssertionError(f"{what} not reached in {timeout}s")
        await task.deferLater(reactor, 0.1, lambda: None)
        waited += 0.1


async def call_ok(c: Client, method: str, path: str, user: AnyUser, body: Any = None) -> Any:
    r = await c.call(method, path, body, user.access_token)
    assert r.status == 200, (method, path, r.status, r.body)
    return r.json()


async def messages(c: Client, user: AnyUser, room_id: str) -> list[str]:
    body = await call_ok(c, "GET", f"/rooms/{q(room_id)}/messages?dir=b&limit=100", user)
    return [e["content"].get("body") for e in reversed(body["chunk"])
            if e["type"] == "m.room.message"]


async def all_messages(c: Client, user: AnyUser, room_id: str) -> list[str]:
    """Every message a client can page back to, oldest first (servers may answer short
    pages while they backfill)."""
    found: list[str] = []
    token: str | None = None
    for _ in range(50):
        path = f"/rooms/{q(room_id)}/messages?dir=b&limit=10" + (
            f"&from={q(token)}" if token else "")
        body = await call_ok(c, "GET", path, user)
        found.extend(e["content"].get("body") for e in body["chunk"]
                     if e["type"] == "m.room.message")
        if "end" not in body or not body["chunk"]:
            break
        token = body["end"]
    return list(reversed(found))


async def send_text(c: Client, user: AnyUser, room_id: str, body: str) -> str:
    txn = secrets.token_hex(6)
    j = await call_ok(c, "PUT", f"/rooms/{q(room_id)}/send/m.room.message/{txn}", user,
                      {"msgtype": "m.text", "body": body})
    return str(j["event_id"])


async def state_of(c: Client, user: AnyUser, room_id: str, event_type: str,
                   state_key: str = "") -> Any:
    path = f"/rooms/{q(room_id)}/state/{event_type}"
    r = await c.call("GET", path + (f"/{q(state_key)}" if state_key else ""), None,
                     user.access_token)
    assert r.status in (200, 404), r.body
    return r.json() if r.status == 200 else None


async def membership(c: Client, user: AnyUser, room_id: str, target: str) -> str | None:
    m = await state_of(c, user, room_id, "m.room.member", target)
    return None if m is None else str(m.get("membership"))


async def join(c: Client, user: AnyUser, room_id: str, via: str) -> None:
    j = await call_ok(c, "POST", f"/join/{q(room_id)}?server_name={q(via)}", user, {})
    assert j["room_id"] == room_id


async def event_on(c: Client, user: AnyUser, room_id: str, event_id: str) -> Any:
    r = await c.call("GET", f"/rooms/{q(room_id)}/event/{q(event_id)}", None,
                     user.access_token)
    return r.json() if r.status == 200 else None


async def exchange_and_check(
    cs: list[tuple[Client, AnyUser]], room_id: str, senders: list[int],
) -> list[str]:
    """Each index in ``senders`` sends one message, waiting for it to arrive on every side
    before the next; then every side must end with the same messages in the same order."""
    expected: list[str] = []
    tag = secrets.token_hex(3)  # texts unique to this call, so no earlier one matches
    for n, i in enumerate(senders):
        c, u = cs[i]
        expected.append(f"message {n} ({tag}) from {u.user_id}")
        await send_text(c, u, room_id, expected[-1])
        for c2, u2 in cs:
            async def arrived(c2: Client = c2, u2: AnyUser = u2,
                              want: str = expected[-1]) -> bool:
                return want in await messages(c2, u2, room_id)

            await eventually(arrived, what=f"{expected[-1]!r} on {u2.user_id}")
    for c2, u2 in cs:
        have = await messages(c2, u2, room_id)
        assert have[-len(expected):] == expected, (u2.user_id, have)
    return expected


def as_user(u: SynapseUser) -> User:
    return User(u.user_id, u.access_token, u.device_id, u.password)


async def to_device_events(c: Client, user: AnyUser, since: str | None) -> tuple[
        list[dict[str, Any]], str]:
    path = "/sync?timeout=0" + (f"&since={q(since)}" if since else "")
    body = await call_ok(c, "GET", path, user)
    return body.get("to_device", {}).get("events", []), str(body["next_batch"])


async def invited_rooms(c: Client, user: AnyUser) -> dict[str, Any]:
    body = await call_ok(c, "GET", "/sync?timeout=0", user)
    invites: dict[str, Any] = body.get("rooms", {}).get("invite", {})
    return invites


async def joined_pair(
    ours: RunningServer, synapse: SynapseProcess, on_ours: bool, **create: Any,
) -> tuple[Client, Client, User, SynapseUser, str]:
    """alice on our server and bob on Synapse, both joined to a public room created on
    ``on_ours``'s side and joined from the other."""
    co, cs = Client(ours.client_url), Client(synapse.client_url)
    alice = await co.register(fresh("alice"))
    bob = synapse.register_user(fresh("bob"))
    body = {"preset": "public_chat", **create}
    if on_ours:
        room_id = (await call_ok(co, "POST", "/createRoom", alice, body))["room_id"]
        await join(cs, bob, room_id, name_of(ours))
    else:
        room_id = (await call_ok(cs, "POST", "/createRoom", bob, body))["room_id"]
        await join(co, alice, room_id, synapse.server_name)

    async def both_joined() -> bool:
        return (await membership(co, alice, room_id, bob.user_id) == "join"
                and await membership(cs, bob, room_id, alice.user_id) == "join")

    await eventually(both_joined, what="both joins on both sides")
    return co, cs, alice, bob, room_id
