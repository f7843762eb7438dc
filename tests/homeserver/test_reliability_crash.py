"""Crash safety: a real server process is SIGKILLed at random moments while several clients
send into rooms, and restarted each time (issue #13).

After every restart:
- every event that got a 200 is in ``/messages`` exactly once, each sender's events in the
  order they were sent, and nothing else is (no duplicate from a retried transaction);
- each client's sync token from before the kill still works: an incremental ``/sync`` from it
  answers 200, not ``limited``, with exactly the events that client had not seen yet, so what
  a client has seen through ``/sync`` is always a prefix of the room's history.

Senders retry a request that got no answer with the same transaction ID (as real clients do),
so each message is eventually acknowledged exactly once. The kill times come from a fixed
seed. Each engine runs ``KILLS`` kill/restart cycles.
"""

from __future__ import annotations

import http.client
import json
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import pytest

from homeserver.config import DatabaseConfig
from tests.support.process import ServerProcess, write_config

KILLS = 20
SEED = 1313
SENDERS = 4
ROOMS = 2
# Each cycle lets the senders run this long (seconds, uniform) before the kill.
BURST = (0.05, 0.4)
SYNC_FILTER = json.dumps({
    "room": {"timeline": {"limit": 1000, "types": ["m.room.message"]},
             "state": {"types": []}, "ephemeral": {"types": []},
             "account_data": {"types": []}},
    "presence": {"types": []}, "account_data": {"types": []},
})


class Http:
    """One keep-alive connection to the server; reconnects after the server died."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def call(self, method: str, path: str, body: Any = None, token: str | None = None,
             timeout: float = 10) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            self.conn.request(method, path, json.dumps(body) if body is not None else None,
                              headers)
            resp = self.conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = None
            raise
        return resp.status, json.loads(data) if data else None


def _ok(status: int, body: Any) -> Any:
    assert status == 200, (status, body)
    return body


@dataclass
class Sender:
    """A client that sends numbered messages, alternating over the rooms, one at a time."""

    name: str
    token: str
    rooms: list[str]
    port: int
    acked: list[tuple[str, int, str]] = field(default_factory=list)  # (room, seq, event ID)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, stop: threading.Event) -> None:
        client = Http(self.port)
        seq = 0
        while not stop.is_set() and not self.errors:
            seq += 1
            room = self.rooms[seq % len(self.rooms)]
            path = (f"/_matrix/client/v3/rooms/{quote(room)}/send/m.room.message/"
                    f"{self.name}-{seq}")
            body = {"msgtype": "m.text", "body": f"{self.name} {seq}"}
            # Retry the same transaction until it is acknowledged: after a crash the server
            # answers with the first event's ID if the send had been committed.
            while True:
                try:
                    status, reply = client.call("PUT", path, body, self.token)
                except (OSError, http.client.HTTPException):
                    time.sleep(0.02)
                    continue
                if status != 200:
                    self.errors.append(f"{self.name} {seq}: {status} {reply}")
                    return
                with self.lock:
                    self.acked.append((room, seq, reply["event_id"]))
                break

    def snapshot(self) -> list[tuple[str, int, str]]:
        with self.lock:
            return list(self.acked)


@dataclass
class Watcher:
    """A client following the rooms through incremental /sync from one token onwards."""

    token: str
    since: str
    seen: dict[str, list[str]]


def _messages(client: Http, token: str, room: str) -> list[dict[str, Any]]:
    """The room's whole history through /messages (backwards from the end), oldest first."""
    events: list[dict[str, Any]] = []
    frm: str | None = None
    while True:
        query = {"dir": "b", "limit": 1000}
        if frm:
            query["from"] = frm
        page = _ok(*client.call(
            "GET", f"/_matrix/client/v3/rooms/{quote(room)}/messages?{urlencode(query)}",
            token=token))
        events += page["chunk"]
        if not page["chunk"] or "end" not in page:
            break
        frm = page["end"]
    events.reverse()
    return [e for e in events if e["type"] == "m.room.message"]


def _sync(client: Http, watcher: Watcher, rooms: list[str]) -> None:
    query = urlencode({"since": watcher.since, "timeout": 0, "filter": SYNC_FILTER})
    status, body = client.call("GET", f"/_matrix/client/v3/sync?{query}", token=watcher.token)
    assert status == 200, f"old sync token refused after a restart: {status} {body}"
    for room in rooms:
        joined = body.get("rooms", {}).get("join", {}).get(room)
        if joined is None:
            continue
        timeline = joined["timeline"]
        assert not timeline["limited"], "an incremental sync after a restart was limited"
        watcher.seen[room] += [e["event_id"] for e in timeline["events"]]
    watcher.since = body["next_batch"]


def _check(client: Http, senders: list[Sender], watchers: list[Watcher],
           rooms: list[str]) -> int:
    """Every acknowledged event exactly once, in order; watchers' /sync is a prefix."""
    acked = [(s.name, a) for s in senders for a in s.snapshot()]
    for w in watchers:
        _sync(client, w, rooms)
    checked = 0
    for room in rooms:
        history = _messages(client, senders[0].token, room)
        ids = [e["event_id"] for e in history]
        bodies = [e["content"]["body"] for e in history]
        assert len(set(ids)) == len(ids), "an event appears twice in /messages"
        assert len(set(bodies)) == len(bodies), "a message was stored twice"
        by_id = dict(zip(ids, bodies, strict=True))
        for name, (r, seq, event_id) in acked:
            if r == room:
                assert by_id.get(event_id) == f"{name} {seq}", f"acknowledged {event_id} lost"
                checked += 1
        # Each sender's messages in the order it sent them, with no gap among the acked.
        for s in senders:
            seqs = [int(b.split()[1]) for b in bodies if b.split()[0] == s.name]
            assert seqs == sorted(seqs), f"{s.name}'s messages out of order in {room}"
        for w in watchers:
            seen = w.seen[room]
            assert len(set(seen)) == len(seen), "/sync delivered an event twice"
            assert seen == ids[:len(seen)], "/sync disagrees with /messages"
    return checked


@pytest.fixture
def server(db_config: DatabaseConfig, tmp_path: Any) -> Iterator[ServerProcess]:
    proc = write_config(str(tmp_path), db_config.url, "--enable-registration")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop(signal.SIGKILL)


def test_sigkill_under_load_loses_nothing(server: ServerProcess) -> None:
    rng = random.Random(SEED)
    client = Http(server.client_port)
    users = []
    for i in range(SENDERS):
        reg = _ok(*client.call("POST", "/_matrix/client/v3/register", {
            "username": f"crash{i}", "password": "crash-password",
            "auth": {"type": "m.login.dummy"}}))
        users.append(reg)
    rooms = []
    for _ in range(ROOMS):
        room = _ok(*client.call("POST", "/_matrix/client/v3/createRoom",
                                {"preset": "public_chat"}, users[0]["access_token"]))["room_id"]
        for u in users[1:]:
            _ok(*client.call("POST", f"/_matrix/client/v3/rooms/{quote(room)}/join", {},
                             u["access_token"]))
        rooms.append(room)
    watchers = []
    for u in users:
        query = urlencode({"timeout": 0, "filter": SYNC_FILTER})
        first = _ok(*client.call("GET", f"/_matrix/client/v3/sync?{query}",
                                 token=u["access_token"]))
        watchers.append(Watcher(u["access_token"], first["next_batch"],
                                {r: [] for r in rooms}))

    senders = [Sender(f"s{i}", u["access_token"], rooms, server.client_port)
               for i, u in enumerate(users)]
    stop = threading.Event()
    threads = [threading.Thread(target=s.run, args=(stop,), daemon=True) for s in senders]
    for t in threads:
        t.start()
    started = time.monotonic()
    checked = 0
    try:
        for _ in range(KILLS):
            # Kill under load: only once the restarted server acknowledged something.
            before = sum(len(s.snapshot()) for s in senders)
            deadline = time.monotonic() + 20
            while sum(len(s.snapshot()) for s in senders) == before:
                assert time.monotonic() < deadline, "no send acknowledged after a restart"
                assert not any(s.errors for s in senders), [s.errors for s in senders]
                time.sleep(0.01)
            time.sleep(rng.uniform(*BURST))
            server.stop(signal.SIGKILL)
            server.start()
            client = Http(server.client_port)
            checked += _check(client, senders, watchers, rooms)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not any(s.errors for s in senders), [s.errors for s in senders]
    checked += _check(client, senders, watchers, rooms)
    total = sum(len(s.acked) for s in senders)
    # Every message sent was acknowledged in the end (retries included) and is accounted for.
    for w in watchers:
        assert sum(len(v) for v in w.seen.values()) == total
    print(f"\n{KILLS} kills, {total} messages, {checked} acknowledged-event checks, "
          f"{time.monotonic() - started:.1f}s")
