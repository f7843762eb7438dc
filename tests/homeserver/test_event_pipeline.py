"""The event pipeline on both engines: ordering, batching, idempotency, errors, notification."""

from __future__ import annotations

import json
import threading
from itertools import pairwise
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from federation.events import Event
from homeserver.config import DatabaseConfig
from homeserver.http.errors import MatrixError
from homeserver.services.events import EventSpec
from homeserver.services.registry import Services
from homeserver.storage import Txn
from homeserver.storage import events as events_storage
from tests.support.rooms import count, services, user

ALICE = user("alice")
BOB = user("bob")


async def _room(s: Services, **kwargs: object) -> str:
    created = await s.rooms.create_room(ALICE, **kwargs)  # type: ignore[arg-type]
    return created.room_id


async def _chain(s: Services, room_id: str) -> list[tuple[str, list[str], int, int]]:
    """(event_id, prev event IDs, depth, stream) of every event in the room, by stream."""

    def txn_fn(txn: Txn) -> list[tuple[str, list[str], int, int]]:
        rows = txn.execute(
            "SELECT n.event_id, e.json, e.depth, e.stream_ordering FROM events e"
            " JOIN event_nids n ON n.event_nid = e.event_nid WHERE e.room_id = ?"
            " ORDER BY e.stream_ordering",
            (room_id,),
        ).fetchall()
        out = []
        for eid, raw, depth, stream in rows:
            pdu = json.loads(raw)
            prev = [p if isinstance(p, str) else p[0] for p in pdu["prev_events"]]
            out.append((eid, prev, int(depth), int(stream)))
        return out

    return await s.db.run("chain", txn_fn)


async def _extremities(s: Services, room_id: str) -> list[str]:
    def txn_fn(txn: Txn) -> list[str]:
        row = txn.execute("SELECT extremities FROM rooms WHERE room_id = ?", (room_id,)).fetchone()
        assert row is not None
        return list(json.loads(row[0]))

    return await s.db.run("extremities", txn_fn)


@pytest_twisted.ensureDeferred
async def test_concurrent_sends_make_one_linear_chain(db_config: DatabaseConfig, tmp_path) -> None:
    async with services(db_config, str(tmp_path)) as s:
        room_id = await _room(s)
        before = len(await _chain(s, room_id))
        batches_before = s.pipeline.batches
        results = await defer.gatherResults([
            defer.ensureDeferred(
                s.rooms.send_event(room_id, ALICE, "m.room.message",
                                   {"msgtype": "m.text", "body": f"message {i}"})
            )
            for i in range(50)
        ])
        assert len(set(results)) == 50
        chain = await _chain(s, room_id)
        assert len(chain) == before + 50
        # Every event cites exactly the one before it: no fork, nothing persisted twice.
        for (prev_id, _, prev_depth, prev_stream), (_, prev, depth, stream) in pairwise(chain):
            assert prev == [prev_id]
            assert depth == prev_depth + 1
            assert stream > prev_stream
        assert await _extremities(s, room_id) == [chain[-1][0]]
        assert await count(s, "event_edges") == await count(s, "events") - 1
        # The queue put concurrent sends into few transactions, not 50.
        assert s.pipeline.batches - batches_before < 50
        bodies = [
            e["content"]["body"]
            for e in (await s.rooms.paginate(room_id, ALICE, limit=50)).chunk
        ]
        assert sorted(bodies) == sorted(f"message {i}" for i in range(50))
        assert not s.pipeline.queues  # the room's queue went away when idle


@pytest_twisted.ensureDeferred
async def test_concurrent_sends_in_many_rooms(db_config: DatabaseConfig, tmp_path) -> None:
    async with services(db_config, str(tmp_path)) as s:
        rooms = [await _room(s) for _ in range(4)]
        await defer.gatherResults([
            defer.ensureDeferred(
                s.rooms.send_event(r, ALICE, "m.room.message", {"msgtype": "m.text", "body": "x"})
            )
            for r in rooms
            for _ in range(10)
        ])
        for r in rooms:
            chain = await _chain(s, r)
            assert all(prev == [chain[i][0]] for i, (_, prev, _, _) in enumerate(chain[1:]))
            assert len(await _extremities(s, r)) == 1
        # Stream positions are unique and gap-free across rooms.
        def streams(txn: Txn) -> list[int]:
            rows = txn.execute("SELECT stream_ordering FROM events ORDER BY 1").fetchall()
            return [int(r[0]) for r in rows]

        positions = await s.db.run("streams", streams)
        assert positions == list(range(1, len(positions) + 1))


@pytest_twisted.ensureDeferred
async def test_retried_transaction_returns_the_first_event(
    db_config: DatabaseConfig, tmp_path
) -> None:
    async with services(db_config, str(tmp_path)) as s:
        room_id = await _room(s)
        content = {"msgtype": "m.text", "body": "once"}
        first = await s.rooms.send_event(room_id, ALICE, "m.room.message", content,
                                         txn_id="t1", device_id="DEV")
        events = await count(s, "events")
        again = await s.rooms.send_event(room_id, ALICE, "m.room.message", content,
                                         txn_id="t1", device_id="DEV")
        assert again == first
        assert await count(s, "events") == events
        # Concurrent retries too.
        both = await defer.gatherResults([
            defer.ensureDeferred(s.rooms.send_event(
                room_id, ALICE, "m.room.message", content, txn_id="t2", device_id="DEV"))
            for _ in range(3)
        ])
        assert len(set(both)) == 1
        assert await count(s, "events") == events + 1
        # Another device, or another user, with the same txn ID is a new request.
        other = await s.rooms.send_event(room_id, ALICE, "m.room.message", content,
                                         txn_id="t1", device_id="OTHER")
        assert other != first
        # The sender's own device sees the transaction_id, nobody else does.
        mine = await s.rooms.get_event(room_id, ALICE, first, device_id="DEV")
        assert mine["unsigned"]["transaction_id"] == "t1"
        theirs = await s.rooms.get_event(room_id, ALICE, first, device_id="OTHER")
        assert "transaction_id" not in theirs["unsigned"]


@pytest_twisted.ensureDeferred
async def test_retried_transaction_after_a_restart(db_config: DatabaseConfig, tmp_path) -> None:
    async with services(db_config, str(tmp_path)) as s:
        room_id = await _room(s)
        first = await s.rooms.send_event(room_id, ALICE, "m.room.message",
                                         {"msgtype": "m.text", "body": "x"},
                                         txn_id="t1", device_id="DEV")
    # A new process: no in-memory caches, the database alone must catch the retry.
    async with services(db_config, str(tmp_path)) as s2:
        events = await count(s2, "events")
        again = await s2.rooms.send_event(room_id, ALICE, "m.room.message",
                                          {"msgtype": "m.text", "body": "x"},
                                          txn_id="t1", device_id="DEV")
        assert again == first
        assert await count(s2, "events") == events
        # ...also when the retry shares a batch with other sends.
        results = await defer.gatherResults([
            defer.ensureDeferred(s2.pipeline.send(room_id, EventSpec(
                "m.room.message", ALICE, {"msgtype": "m.text", "body": "y"},
                txn=("DEV", "t1") if i == 1 else None)))
            for i in range(3)
        ])
        assert results[1].event_id == first and results[1].existing
        assert await count(s2, "events") == events + 2
        chain = await _chain(s2, room_id)
        assert all(prev == [chain[i][0]] for i, (_, prev, _, _) in enumerate(chain[1:]))


@pytest_twisted.ensureDeferred
async def test_errors(db_config: DatabaseConfig, tmp_path) -> None:
    async with services(db_config, str(tmp_path)) as s:
        room_id = await _room(s)
        with pytest.raises(MatrixError) as e:
            await s.rooms.send_event("!nope:test.local", ALICE, "m.room.message", {"body": "x"})
        assert (e.value.status, e.value.errcode) == (404, "M_NOT_FOUND")
        with pytest.raises(MatrixError) as e:
            await s.rooms.send_event(room_id, BOB, "m.room.message", {"body": "x"})
        assert (e.value.status, e.value.errcode) == (403, "M_FORBIDDEN")
        assert "not joined" in e.value.message
        with pytest.raises(MatrixError) as e:
            await s.rooms.send_event(room_id, ALICE, "m.room.message", {"body": "x" * 70_000})
        assert (e.value.status, e.value.errcode) == (413, "M_TOO_LARGE")
        # Content that fits but makes the whole PDU too large is caught after building.
        with pytest.raises(MatrixError) as e:
            await s.rooms.send_event(room_id, ALICE, "m.room.message", {"body": "x" * 65_400})
        assert (e.value.status, e.value.errcode) == (413, "M_TOO_LARGE")
        with pytest.raises(MatrixError) as e:
            await s.rooms.send_event(room_id, ALICE, "m.room.topic", {"topic": "t"},
                                     state_key="k" * 256)
        assert (e.value.status, e.value.errcode) == (400, "M_INVALID_PARAM")
        # None of the failures left anything behind; the room still works.
        eid = await s.rooms.send_event(room_id, ALICE, "m.room.message", {"body": "fine"})
        chain = await _chain(s, room_id)
        assert chain[-1][0] == eid and chain[-1][1] == [chain[-2][0]]


@pytest_twisted.ensureDeferred
async def test_a_failed_send_in_a_batch_does_not_affect_the_others(
    db_config: DatabaseConfig, tmp_path
) -> None:
    async with services(db_config, str(tmp_path)) as s:
        room_id = await _room(s)
        sends = [
            defer.ensureDeferred(s.rooms.send_event(
                room_id, BOB if i == 2 else ALICE, "m.room.message", {"body": str(i)}))
            for i in range(5)
        ]
        results = await defer.DeferredList(sends, consumeErrors=True)
        ok = [r for success, r in results if success]
        failed = [r for success, r in results if not success]
        assert len(ok) == 4 and len(failed) == 1
        assert failed[0].value.errcode == "M_FORBIDDEN"
        chain = await _chain(s, room_id)
        assert [c[0] for c in chain[-4:]] == ok


@pytest_twisted.ensureDeferred
async def test_a_cancelled_caller_does_not_break_the_room(
    db_config: DatabaseConfig, tmp_path
) -> None:
    async with services(db_config, str(tmp_path)) as s:
        room_id = await _room(s)
        d = defer.ensureDeferred(
            s.rooms.send_event(room_id, ALICE, "m.room.message", {"body": "hang up"})
        )
        d.cancel()  # the client went away while its event was being persisted
        with pytest.raises(defer.CancelledError):
            await d
        await task.deferLater(reactor, 0.2, lambda: None)
        eid = await s.rooms.send_event(room_id, ALICE, "m.room.message", {"body": "next"})
        chain = await _chain(s, room_id)
        # The cancelled send still completed, and the next one followed it.
        assert chain[-1][0] == eid
        assert chain[-1][1] == [chain[-2][0]]
        stored = await s.events.get_event(chain[-2][0])
        assert stored is not None and stored.event.content["body"] == "hang up"


@pytest_twisted.ensureDeferred
async def test_notifier_wakes_a_waiting_sync(db_config: DatabaseConfig, tmp_path) -> None:
    async with services(db_config, str(tmp_path)) as s:
        room_id = await _room(s)
        since = {"events": s.notifier.position("events")}
        waiting = defer.ensureDeferred(s.notifier.wait_for(ALICE, [room_id], since, 10_000))
        other = defer.ensureDeferred(s.notifier.wait_for(BOB, [], since, 10_000))
        await task.deferLater(reactor, 0.05, lambda: None)
        assert not waiting.called
        eid = await s.rooms.send_event(room_id, ALICE, "m.room.message", {"body": "wake"})
        stored = await s.events.get_event(eid)
        # Published before the sender got its answer: a /sync right after finds it.
        assert stored is not None and s.notifier.position("events") == stored.stream_ordering
        woken = await waiting
        assert woken["events"] == stored.stream_ordering
        # Bob is in no room and was not the target of anything: still waiting...
        assert not other.called
        # ...until he is invited (a membership event wakes its target).
        await s.rooms.invite(room_id, ALICE, BOB)
        assert (await other)["events"] > since["events"]
        # A waiter that arrives late returns at once with what it missed.
        late = await s.notifier.wait_for(ALICE, [room_id], since, 10_000)
        assert late["events"] > since["events"]
        # And one with nothing new times out with its own position.
        quiet = await s.notifier.wait_for(user("carol"), [], {"events": 0}, 50)
        assert quiet == {"events": 0}
        assert s.notifier.waiting() == 0  # type: ignore[attr-defined]


@pytest_twisted.ensureDeferred
async def test_send_is_a_few_statements_in_one_transaction(
    db_config: DatabaseConfig, tmp_path
) -> None:
    """A message costs a constant number of statements, whatever the size of the room."""
    async with services(db_config, str(tmp_path)) as s:
        room_id = await _room(s, preset="public_chat")
        for i in range(30):
            await s.rooms.join(room_id, user(f"u{i}"))
        await s.rooms.send_event(room_id, ALICE, "m.room.message", {"body": "warm"})
        executed: list[str] = []
        transactions: list[str] = []
        in_persist = threading.local()
        original_execute, original_many, original_run = Txn.execute, Txn.executemany, s.db.run
        original_persist = events_storage.persist_many_txn

        def spy_persist(txn: Txn, requests: Any) -> Any:
            in_persist.on = True
            try:
                return original_persist(txn, requests)
            finally:
                in_persist.on = False

        def spy_execute(self: Txn, sql: str, params: object = ()) -> Txn:
            if getattr(in_persist, "on", False):
                executed.append(sql)
            return original_execute(self, sql, params)  # type: ignore[arg-type]

        def spy_many(self: Txn, sql: str, rows: object) -> None:
            if getattr(in_persist, "on", False):
                executed.append(sql)
            original_many(self, sql, rows)  # type: ignore[arg-type]

        async def spy_run(desc: str, fn: object, *args: object) -> object:
            transactions.append(desc)
            return await original_run(desc, fn, *args)  # type: ignore[arg-type]

        Txn.execute = spy_execute  # type: ignore[method-assign]
        Txn.executemany = spy_many  # type: ignore[method-assign]
        events_storage.persist_many_txn = spy_persist  # type: ignore[assignment]
        s.db.run = spy_run  # type: ignore[method-assign]
        try:
            await s.rooms.send_event(room_id, ALICE, "m.room.message", {"body": "counted"})
        finally:
            Txn.execute, Txn.executemany = original_execute, original_many  # type: ignore[method-assign]
            events_storage.persist_many_txn = original_persist  # type: ignore[assignment]
            s.db.run = original_run  # type: ignore[method-assign]
        # One transaction for the event (other services may read afterwards, on their own).
        assert transactions[0] == "persist_events"
        assert transactions.count("persist_events") == 1
        # 5 for the event itself, 1 for its row in the full-text search index (a body).
        assert len(executed) <= 6, executed
        assert not any("current_state" in sql for sql in executed)


@pytest_twisted.ensureDeferred
async def test_group_commit_across_rooms(db_config: DatabaseConfig, tmp_path) -> None:
    async with services(db_config, str(tmp_path)) as s:
        rooms = [await _room(s) for _ in range(10)]
        before = s.events.transactions
        await defer.gatherResults([
            defer.ensureDeferred(s.rooms.send_event(r, ALICE, "m.room.message", {"body": "x"}))
            for r in rooms
        ])
        # Ten rooms' sends shared transactions...
        assert s.events.transactions - before < 10
        # ...and each room still has one linear chain.
        for r in rooms:
            chain = await _chain(s, r)
            assert all(prev == [chain[i][0]] for i, (_, prev, _, _) in enumerate(chain[1:]))
        # A batch that fails (a retried transaction only the database knows) does not take
        # the others down with it.
        first = await s.rooms.send_event(rooms[0], ALICE, "m.room.message", {"body": "t"},
                                         txn_id="t", device_id="D")
        s.pipeline._txns.clear()
        results = await defer.gatherResults([
            defer.ensureDeferred(s.rooms.send_event(
                r, ALICE, "m.room.message", {"body": "t"}, txn_id="t" if r == rooms[0] else None,
                device_id="D"))
            for r in rooms
        ])
        assert results[0] == first
        assert len(set(results)) == len(rooms)


def test_stored_json_is_the_pdu() -> None:
    from federation.room_versions import get_room_version
    from homeserver.storage.events import encode_json

    pdu = {"type": "m.room.message", "content": {"body": "é"}, "room_id": "!r:x"}
    assert json.loads(encode_json(pdu)) == pdu
    assert Event(json.loads(encode_json(pdu)), get_room_version("10"), "$x").content["body"] == "é"


@pytest_twisted.ensureDeferred
async def test_stream_reads_for_sync(db_config: DatabaseConfig, tmp_path) -> None:
    async with services(db_config, str(tmp_path)) as s:
        room_id = await _room(s, preset="public_chat")
        start = s.notifier.position("events")
        sent = [
            await s.rooms.send_event(room_id, ALICE, "m.room.message", {"body": str(i)})
            for i in range(5)
        ]
        await s.rooms.join(room_id, BOB)
        upto = s.notifier.position("events")
        events, limited = await s.events.room_events_by_stream(room_id, start, upto, 3)
        assert limited
        assert [e.event.content.get("body") for e in events] == ["3", "4", None]
        events, limited = await s.events.room_events_by_stream(room_id, start, upto, 10)
        assert not limited and [e.event_id for e in events][:5] == sent
        changes = await s.events.membership_changes(BOB, start, upto)
        assert [(c.room_id, c.event.membership) for c in changes] == [(room_id, "join")]
        assert await s.events.membership_changes(BOB, upto, upto) == []


def test_migration_variants_differ_only_in_identity_columns() -> None:
    from importlib import resources

    files = resources.files("homeserver.storage.migrations")
    sqlite = files.joinpath("0003_events.sqlite.sql").read_text(encoding="utf-8")
    postgres = files.joinpath("0003_events.postgres.sql").read_text(encoding="utf-8")
    identity = " BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
    assert postgres.count(identity) == 3
    assert postgres.replace(identity, " INTEGER PRIMARY KEY,") == sqlite
