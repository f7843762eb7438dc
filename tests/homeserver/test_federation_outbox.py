"""Nothing acknowledged is kept from other servers by a crash: an event committed (and
answered with a 200) but not yet handed to the federation outbox when the process died is
queued at the next start, from the outbox cursor on the events stream."""

from __future__ import annotations

import os
from typing import Any

import pytest_twisted

from homeserver.services.federation_outbox import OutboxCursor
from homeserver.storage.events import StoredEvent
from homeserver.storage.federation_out import FederationOutStore
from tests.homeserver.test_federation_rooms import eventually, messages, services
from tests.support.client import Client, q
from tests.support.databases import fresh_database
from tests.support.server import start_many, start_server
from tests.support.sync import create_room, send


@pytest_twisted.ensureDeferred
async def test_event_committed_but_not_queued_is_sent_after_restart(
    engine: str, tmp_path: Any,
) -> None:
    with fresh_database(engine, str(tmp_path / "da")) as db_a, \
            fresh_database(engine, str(tmp_path / "db")) as db_b:
        dbs = {"a.test": db_a, "b.test": db_b}
        servers = await start_many(str(tmp_path), dbs)
        a, b = servers["a.test"], servers["b.test"]
        try:
            ca, cb = Client(a.client_url), Client(b.client_url)
            alice = await ca.register("alice")
            bob = await cb.register("bob")
            room = await create_room(ca, alice, preset="public_chat")
            r = await cb.call("POST", f"/join/{q(room)}?server_name=a.test", {},
                              bob.access_token)
            assert r.status == 200, r.body
            await send(ca, alice, room, "before")

            async def seen(expected: list[str | None]) -> bool:
                return await messages(cb, bob, room) == expected

            await eventually(lambda: seen(["before"]), timeout=20)

            # The crash window: the next event commits (the client gets its 200) but the
            # process "dies" before the post-commit hook hands it to the outbox.
            sa = services(a)
            sa.pipeline.on_persisted.remove(sa.federation._on_persisted)
            await send(ca, alice, room, "committed, not queued")
            await a.stop()
            static = {"a.test": a.federation_url.split("//")[1],
                      "b.test": b.federation_url.split("//")[1]}
            port_a = int(static["a.test"].rsplit(":", 1)[1])
            a = servers["a.test"] = await start_server(
                os.path.join(str(tmp_path), "a.test"), db_a, "a.test", port_a,
                federation={"static_servers": static})
            await eventually(lambda: seen(["before", "committed, not queued"]), timeout=20)
            # And what follows goes out as usual; nothing is sent twice.
            ca = Client(a.client_url)
            await send(ca, alice, room, "after")
            await eventually(lambda: seen(["before", "committed, not queued", "after"]),
                             timeout=20)
        finally:
            for server in servers.values():
                await server.stop()


@pytest_twisted.ensureDeferred
async def test_cursor_moves_only_past_batches_all_queued(hs: Any) -> None:
    """Batches of different rooms may finish queueing out of stream order: the cursor never
    passes a batch still being queued."""
    s = services(hs)
    # Only this test's cursor moves the position (the server's own hook is unplugged).
    s.pipeline.on_persisted.remove(s.federation._on_persisted)
    c = Client(hs.client_url)
    alice = await c.register("alice")
    room = await create_room(c, alice)
    ids = [await send(c, alice, room, f"m{i}") for i in range(3)]
    stored = await s.pipeline.store.get_events(ids)
    e1, e2, e3 = (stored[i] for i in ids)
    store = FederationOutStore(s.db)
    await store.position()

    async def rewind(position: int) -> None:
        await s.db.run("rewind", lambda txn: txn.execute(
            "UPDATE federation_out_position SET stream_ordering = ?", (position,)))

    # A fresh cursor for this test, from just before the three events, on a clock that
    # lets it write every time (it writes at most once a second).
    ticks = iter(range(0, 1000, 2))
    cursor = OutboxCursor(store, monotonic=lambda: float(next(ticks)))
    base = e1.stream_ordering - 1
    await rewind(base)
    cursor.begin([e1])
    cursor.begin([e2])
    cursor.begin([e3])
    await cursor.done([e3])
    assert await store.position() == base  # e1 and e2 still being queued
    await cursor.done([e1])
    assert await store.position() == e2.stream_ordering - 1
    await cursor.done([e2])
    assert await store.position() == e3.stream_ordering
    # Never backwards.
    await store.advance(e1.stream_ordering)
    assert await store.position() == e3.stream_ordering
    # Catch-up from behind re-queues this server's events past the cursor, in order.
    await rewind(base)
    sent: list[tuple[str, list[str]]] = []

    async def send_out(room_id: str, events: list[StoredEvent]) -> None:
        sent.append((room_id, [e.event_id for e in events]))

    count = await cursor.catch_up(lambda user: user.endswith(":test.local"), send_out)
    assert count >= 3
    flat = [i for _, batch in sent for i in batch]
    assert flat[:3] == ids
    assert await store.position() >= e3.stream_ordering
    assert await cursor.catch_up(lambda user: True, send_out) == 0
