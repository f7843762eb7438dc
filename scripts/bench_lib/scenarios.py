"""What is measured: each scenario drives one server through the client-server API only and
returns its figures (``Metric`` names below). Every scenario makes its own users and rooms
(prefixed by ``tag``), so repetitions and the other server never share anything."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from scripts.bench_lib.client import Account, Client, timed, timeline_bodies


@dataclass(frozen=True)
class Scale:
    register_users: int  # 1: N
    senders: int  # 2: C
    sends_each: int
    receivers: int  # 3: K
    fanout_messages: int
    sync_rooms: int  # 4: R
    sync_history: int  # messages per room
    sync_repeats: int
    join_members: int  # 5: S
    joins: int
    paginate_events: int
    federation_messages: int  # 6
    reps: int  # runs of every scenario on each server; the table shows medians


QUICK = Scale(register_users=15, senders=4, sends_each=20, receivers=10, fanout_messages=10,
              sync_rooms=10, sync_history=10, sync_repeats=5, join_members=20, joins=5,
              paginate_events=200, federation_messages=30, reps=1)
FULL = Scale(register_users=100, senders=16, sends_each=40, receivers=30, fanout_messages=30,
             sync_rooms=40, sync_history=20, sync_repeats=10, join_members=150, joins=10,
             paginate_events=1000, federation_messages=200, reps=3)
# A few seconds against one server: only proves the driver still works (tests run it).
SMOKE = Scale(register_users=3, senders=2, sends_each=3, receivers=2, fanout_messages=2,
              sync_rooms=2, sync_history=2, sync_repeats=2, join_members=3, joins=2,
              paginate_events=20, federation_messages=3, reps=1)
SCALES = {"quick": QUICK, "full": FULL, "smoke": SMOKE}


@dataclass(frozen=True)
class Metric:
    label: str
    unit: str
    higher_is_better: bool
    goal: float | None = None  # the ratio ours/Synapse issue #12 asks for


METRICS: dict[str, Metric] = {
    "register_per_s": Metric("1 registration", "users/s", True),
    "register_p50_ms": Metric("1 registration p50", "ms", False),
    "send_one_room_eps": Metric("2 send, C senders, 1 room", "events/s", True, 2.0),
    "send_one_room_p50_ms": Metric("2 send, 1 room p50", "ms", False),
    "send_one_room_p99_ms": Metric("2 send, 1 room p99", "ms", False),
    "send_many_rooms_eps": Metric("2 send, C senders, C rooms", "events/s", True, 2.0),
    "send_many_rooms_p50_ms": Metric("2 send, C rooms p50", "ms", False),
    "send_many_rooms_p99_ms": Metric("2 send, C rooms p99", "ms", False),
    "fanout_p50_ms": Metric("3 fan-out 200→receipt p50", "ms", False, 0.5),
    "fanout_p99_ms": Metric("3 fan-out 200→receipt p99", "ms", False, 0.5),
    "fanout_e2e_p50_ms": Metric("3 fan-out send→receipt p50", "ms", False, 0.5),
    "fanout_e2e_p99_ms": Metric("3 fan-out send→receipt p99", "ms", False, 0.5),
    "initial_sync_ms": Metric("4 initial sync, R rooms", "ms", False, 0.5),
    "incremental_sync_ms": Metric("4 incremental sync, no change", "ms", False, 0.5),
    "join_ms": Metric("5 join a room of S members", "ms", False, 0.5),
    "send_big_room_eps": Metric("5 send, 8 senders, room of S members", "events/s", True, 2.0),
    "paginate_ms": Metric("5 paginate back P events", "ms", False),
    "federation_eps": Metric("6 federation send across", "events/s", True, 2.0),
    "federation_p50_ms": Metric("6 federation send→remote sync p50", "ms", False, 0.5),
    "rss_idle_mb": Metric("7 RSS idle", "MB", False, 0.5),
    "rss_peak_mb": Metric("7 RSS peak", "MB", False, 0.5),
}

Figures = dict[str, float]
# Sync filter without presence and account data, so only room events wake a long poll.
QUIET = {"presence": {"not_types": ["*"]}, "account_data": {"not_types": ["*"]}}


def percentile(values: list[float], p: float) -> float:
    """Linear interpolation between closest ranks (p in 0..100)."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def ms(seconds: float) -> float:
    return seconds * 1000


async def bounded(n: int, limit: int, fn: Callable[[int], Awaitable[Any]]) -> list[Any]:
    """``fn(0..n-1)`` with at most ``limit`` in flight, results in order."""
    sem = asyncio.Semaphore(limit)

    async def one(i: int) -> Any:
        async with sem:
            return await fn(i)

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def make_users(c: Client, tag: str, n: int) -> list[Account]:
    return await bounded(n, 8, lambda i: c.register(f"{tag}u{i}"))


async def fill_room(c: Client, room: str, senders: list[Account], count: int, tag: str) -> None:
    """``count`` messages into ``room``, spread over ``senders`` sending concurrently."""
    async def one(i: int) -> None:
        await c.send(senders[i % len(senders)], room, f"{tag} history {i}")

    await bounded(count, len(senders), one)


# -- 1 -------------------------------------------------------------------------------------


async def registration(c: Client, tag: str, scale: Scale, rng: random.Random) -> Figures:
    async def one(i: int) -> float:
        return (await timed(c.register(f"{tag}reg{i}")))[1]

    start = time.perf_counter()
    lat = await bounded(scale.register_users, 4, one)
    wall = time.perf_counter() - start
    return {"register_per_s": scale.register_users / wall,
            "register_p50_ms": ms(percentile(lat, 50))}


# -- 2 -------------------------------------------------------------------------------------


async def _send_burst(c: Client, pairs: list[tuple[Account, str]], each: int,
                      tag: str) -> tuple[float, list[float]]:
    """Every (sender, room) sends ``each`` messages in turn, all pairs at once."""
    lat: list[float] = []

    async def sender(k: int, who: Account, room: str) -> None:
        for i in range(each):
            lat.append((await timed(c.send(who, room, f"{tag} {k}.{i}")))[1])

    start = time.perf_counter()
    await asyncio.gather(*(sender(k, w, r) for k, (w, r) in enumerate(pairs)))
    return len(pairs) * each / (time.perf_counter() - start), lat


async def send_throughput(c: Client, tag: str, scale: Scale, rng: random.Random) -> Figures:
    users = await make_users(c, tag, scale.senders)
    shared = await c.create_room(users[0])
    await asyncio.gather(*(c.join(u, shared) for u in users[1:]))
    own = await asyncio.gather(*(c.create_room(u) for u in users))
    # One warm-up message each, so both servers have every room's state cached.
    await asyncio.gather(*(c.send(u, r, "warm-up") for u, r in zip(users, own, strict=True)))
    await asyncio.gather(*(c.send(u, shared, "warm-up") for u in users))
    one_eps, one_lat = await _send_burst(c, [(u, shared) for u in users], scale.sends_each, tag)
    many_eps, many_lat = await _send_burst(c, list(zip(users, own, strict=True)),
                                           scale.sends_each, tag)
    return {
        "send_one_room_eps": one_eps,
        "send_one_room_p50_ms": ms(percentile(one_lat, 50)),
        "send_one_room_p99_ms": ms(percentile(one_lat, 99)),
        "send_many_rooms_eps": many_eps,
        "send_many_rooms_p50_ms": ms(percentile(many_lat, 50)),
        "send_many_rooms_p99_ms": ms(percentile(many_lat, 99)),
    }


# -- 3 -------------------------------------------------------------------------------------


async def fanout(c: Client, tag: str, scale: Scale, rng: random.Random) -> Figures:
    sender, *receivers = await make_users(c, tag, scale.receivers + 1)
    room = await c.create_room(sender)
    await bounded(len(receivers), 8, lambda i: c.join(receivers[i], room))
    filt = json.dumps({**QUIET, "room": {"rooms": [room], "timeline": {"limit": 50},
                                         "ephemeral": {"not_types": ["*"]}}})
    seen: list[dict[str, float]] = [{} for _ in receivers]
    arrived: dict[str, asyncio.Event] = {}
    counts: dict[str, int] = {}

    async def receive(k: int, who: Account) -> None:
        since = (await c.sync(who, filter_json=filt))["next_batch"]
        started.append(k)
        if len(started) == len(receivers):
            ready.set()
        while True:
            resp = await c.sync(who, since, 30_000, filt)
            now = time.perf_counter()
            since = resp["next_batch"]
            for body in timeline_bodies(resp, room):
                if body in arrived and body not in seen[k]:
                    seen[k][body] = now
                    counts[body] += 1
                    if counts[body] == len(receivers):
                        arrived[body].set()

    ready, started = asyncio.Event(), []
    tasks = [asyncio.ensure_future(receive(k, r)) for k, r in enumerate(receivers)]
    after_200: list[float] = []
    end_to_end: list[float] = []
    try:
        await asyncio.wait_for(ready.wait(), 60)
        await asyncio.sleep(0.2)  # let the last receivers enter their long poll
        for i in range(scale.fanout_messages):
            body = f"{tag} fan-out {i} {rng.random():.6f}"
            arrived[body], counts[body] = asyncio.Event(), 0
            t0 = time.perf_counter()
            await c.send(sender, room, body)
            t200 = time.perf_counter()
            await asyncio.wait_for(arrived[body].wait(), 30)
            for k in range(len(receivers)):
                # Receivers may see the event before the sender reads its 200.
                after_200.append(max(0.0, seen[k][body] - t200))
                end_to_end.append(seen[k][body] - t0)
            await asyncio.sleep(0.05)  # every receiver back in its long poll
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"fanout_p50_ms": ms(percentile(after_200, 50)),
            "fanout_p99_ms": ms(percentile(after_200, 99)),
            "fanout_e2e_p50_ms": ms(percentile(end_to_end, 50)),
            "fanout_e2e_p99_ms": ms(percentile(end_to_end, 99))}


# -- 4 -------------------------------------------------------------------------------------


async def sync_times(c: Client, tag: str, scale: Scale, rng: random.Random) -> Figures:
    owner, helper = await make_users(c, tag, 2)
    rooms = await bounded(scale.sync_rooms, 4, lambda i: c.create_room(owner, name=f"{tag} {i}"))
    await bounded(len(rooms), 4, lambda i: c.join(helper, rooms[i]))
    await bounded(len(rooms), 4,
                  lambda i: fill_room(c, rooms[i], [owner, helper], scale.sync_history, tag))

    def filt(i: int) -> str:
        # A different filter each time, so no response cache answers a repeat.
        return json.dumps({**QUIET, "room": {"timeline": {"limit": 10,
                                                          "not_types": [f"bench.{tag}.{i}"]}}})

    initial: list[float] = []
    token = ""
    for i in range(scale.sync_repeats):
        resp, took = await timed(c.sync(owner, filter_json=filt(i)))
        joined = resp.get("rooms", {}).get("join", {})
        if len(joined) < scale.sync_rooms:
            raise AssertionError(f"initial sync shows {len(joined)} of {scale.sync_rooms} rooms")
        initial.append(took)
        token = resp["next_batch"]
    incremental: list[float] = []
    for i in range(scale.sync_repeats):
        _, took = await timed(c.sync(owner, token, 0, filt(scale.sync_repeats + i)))
        incremental.append(took)
    return {"initial_sync_ms": ms(percentile(initial, 50)),
            "incremental_sync_ms": ms(percentile(incremental, 50))}


# -- 5 -------------------------------------------------------------------------------------


async def join_and_paginate(c: Client, tag: str, scale: Scale, rng: random.Random) -> Figures:
    users = await make_users(c, tag, scale.join_members + scale.joins)
    members, joiners = users[: scale.join_members], users[scale.join_members:]
    room = await c.create_room(members[0], name=f"{tag} big room", topic="state-heavy")
    await bounded(len(members) - 1, 8, lambda i: c.join(members[i + 1], room))
    join_lat = []
    for who in joiners:
        join_lat.append((await timed(c.join(who, room)))[1])
    # The history to paginate, sent by 8 members at once: every message is evaluated
    # against the push rules of all S members.
    _, fill = await timed(fill_room(c, room, members[:8], scale.paginate_events, tag))

    async def paginate() -> int:
        got, token = 0, None
        while got < scale.paginate_events:
            page = await c.messages(members[0], room, token, 100)
            got += len(page["chunk"])
            token = page.get("end")
            if not token or not page["chunk"]:
                break
        return got

    got, took = await timed(paginate())
    if got < scale.paginate_events:
        raise AssertionError(f"paginated {got} of {scale.paginate_events} events")
    return {"join_ms": ms(percentile(join_lat, 50)), "paginate_ms": ms(took),
            "send_big_room_eps": scale.paginate_events / fill}


# -- 6 -------------------------------------------------------------------------------------


async def federation(a: Client, b: Client, b_server: str, a_server: str, tag: str,
                     scale: Scale, rng: random.Random) -> Figures:
    """Senders on server A, one reader on server B, in a room created on A."""
    senders = await make_users(a, tag, 4)
    (reader,) = await make_users(b, tag, 1)
    room = await a.create_room(senders[0])
    await asyncio.gather(*(a.join(s, room) for s in senders[1:]))
    await b.join(reader, room, via=a_server)
    filt = json.dumps({**QUIET, "room": {"rooms": [room], "timeline": {"limit": 100},
                                         "ephemeral": {"not_types": ["*"]}}})
    since = (await b.sync(reader, filter_json=filt))["next_batch"]
    sent: dict[str, float] = {}
    seen: dict[str, float] = {}
    done = asyncio.Event()
    total = scale.federation_messages

    def note(bodies: list[str], now: float) -> None:
        for body in bodies:
            if body.startswith(f"{tag} fed ") and body not in seen:
                seen[body] = now

    async def read() -> None:
        nonlocal since
        while True:
            resp = await b.sync(reader, since, 30_000, filt)
            now = time.perf_counter()
            since = resp["next_batch"]
            note(timeline_bodies(resp, room), now)
            timeline = resp.get("rooms", {}).get("join", {}).get(room, {}).get("timeline", {})
            token = timeline.get("prev_batch") if timeline.get("limited") else None
            while token and len(seen) < total:
                # A burst larger than the timeline limit: the rest is in the history.
                page = await b.messages(reader, room, token, 100)
                note([e["content"].get("body", "") for e in page["chunk"]
                      if e.get("type") == "m.room.message"], now)
                token = page.get("end") if page["chunk"] else None
            if len(seen) == total:
                done.set()
                return

    async def send(i: int) -> None:
        body = f"{tag} fed {i}"
        t0 = time.perf_counter()
        await a.send(senders[i % len(senders)], room, body)
        sent[body] = t0

    reader_task = asyncio.ensure_future(read())
    try:
        start = time.perf_counter()
        await bounded(total, len(senders), send)
        await asyncio.wait_for(done.wait(), 120)
        elapsed = max(seen.values()) - start
    finally:
        reader_task.cancel()
        await asyncio.gather(reader_task, return_exceptions=True)
    lat = [seen[body] - sent[body] for body in sent]
    return {"federation_eps": total / elapsed, "federation_p50_ms": ms(percentile(lat, 50))}


Scenario = Callable[[Client, str, Scale, random.Random], Awaitable[Figures]]
# The single-server scenarios in the order they run (6 and 7 are the runner's).
SINGLE: list[tuple[str, Scenario]] = [
    ("registration", registration),
    ("send", send_throughput),
    ("fanout", fanout),
    ("sync", sync_times),
    ("join", join_and_paginate),
]
