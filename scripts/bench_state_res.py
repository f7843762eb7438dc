#!/usr/bin/env python
"""Benchmark our state resolution against Synapse's on the same synthetic room DAG.

Builds a room with thousands of members that forks into several branches, each full of
conflicting state (power level changes, bans, kicks, topic and join rule changes, joins and
leaves), resolves the branch tips with ``federation.state_res.resolve_state`` here and with
Synapse's ``synapse.state.v2.resolve_events_with_store`` in a subprocess (Synapse lives in
its own virtualenv, ``.venv-bench/`` in the repo root, created on first use), checks both
give the same state and prints timings, the ratio ours/Synapse, and how both scale with the
size of the conflicted set.

Events carry real reference-hash event IDs (``federation.hashes``) so Synapse, which always
derives v3+ IDs itself, sees the same IDs; the subprocess reports any ID it computes
differently.

Both sides get the same in-memory auth chain algorithm (memoised per-event chains), built
afresh for each "cold" run and kept for "warm" runs, so the comparison is of the
resolution algorithms rather than of storage.

    python scripts/bench_state_res.py            # full run (a few minutes)
    python scripts/bench_state_res.py --quick    # under a minute
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from federation.auth_rules import auth_types_for_event  # noqa: E402
from federation.events import Event, StateKey  # noqa: E402
from federation.hashes import add_hashes, compute_event_id  # noqa: E402
from federation.room_versions import RoomVersion, get_room_version  # noqa: E402
from federation.state_res import EventCache, InMemoryAuthChains, resolve_state  # noqa: E402
from federation.state_res._common import separate  # noqa: E402

BENCH_VENV = REPO / ".venv-bench"
SERVER = "bench.test"


# -- the synthetic room -------------------------------------------------------------------------


class DagBuilder:
    def __init__(self, rv: RoomVersion, seed: int) -> None:
        self.rv = rv
        self.rng = random.Random(seed)
        self.pdus: list[dict[str, Any]] = []
        self.ids: list[str] = []
        self.depth: dict[str, int] = {}
        # Before v12 the room ID is chosen by the creator; from v12 it is the create
        # event's hash, set when the create event is emitted.
        self.room_id = "" if rv.room_id_is_create_event_hash else f"!bench:{SERVER}"

    def emit(
        self,
        state: dict[StateKey, str],
        prev: list[str],
        sender: str,
        type_: str,
        state_key: str | None,
        content: dict[str, Any],
        ts: int,
    ) -> str:
        keys = auth_types_for_event(self.rv, type_, state_key, sender, content)
        auth = sorted(state[k] for k in keys if k in state)
        pdu: dict[str, Any] = {
            "type": type_,
            "sender": sender,
            "content": content,
            "auth_events": auth,
            "prev_events": prev,
            "depth": 1 + max((self.depth[p] for p in prev), default=0),
            "origin_server_ts": ts,
            "signatures": {},
            "unsigned": {},
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        is_create = type_ == "m.room.create"
        if not (is_create and self.rv.room_id_is_create_event_hash):
            pdu["room_id"] = self.room_id
        pdu = add_hashes(pdu)
        eid = compute_event_id(pdu, self.rv)
        if is_create and self.rv.room_id_is_create_event_hash:
            self.room_id = "!" + eid[1:]
        self.pdus.append(pdu)
        self.ids.append(eid)
        self.depth[eid] = pdu["depth"]
        if state_key is not None:
            state[(type_, state_key)] = eid
        return eid


def build_room(
    version: str, *, members: int, branches: int, steps: int, seed: int = 1
) -> dict[str, Any]:
    """A room with ``members`` joined users forking into ``branches`` branches of ``steps``
    conflicting state changes each. Returns the JSON-able DAG and the branch-tip states."""
    rv = get_room_version(version)
    b = DagBuilder(rv, seed)
    rng = b.rng
    alice = f"@alice:{SERVER}"
    mods = [f"@mod{i}:{SERVER}" for i in range(4)]
    users = [f"@m{i}:{SERVER}" for i in range(members)]
    ts = 1_000
    state: dict[StateKey, str] = {}

    def levels(extra: dict[str, int]) -> dict[str, Any]:
        base = {} if rv.creators_infinite_power else {alice: 100}
        return {"users": {**base, **extra}, "state_default": 50, "ban": 50, "kick": 50}

    content: dict[str, Any] = {"room_version": version}
    if not rv.implicit_room_creator:
        content["creator"] = alice
    tip = b.emit(state, [], alice, "m.room.create", "", content, ts)
    tip = b.emit(state, [tip], alice, "m.room.member", alice, {"membership": "join"}, ts + 1)
    mod_levels = {m: 50 for m in mods}
    tip = b.emit(state, [tip], alice, "m.room.power_levels", "", levels(mod_levels), ts + 2)
    tip = b.emit(state, [tip], alice, "m.room.join_rules", "", {"join_rule": "public"}, ts + 3)
    ts += 10
    for u in [*mods, *users]:
        ts += 1
        tip = b.emit(state, [tip], u, "m.room.member", u, {"membership": "join"}, ts)
    ts += 1
    tip = b.emit(state, [tip], alice, "m.room.topic", "", {"topic": "base"}, ts)
    base_ts = ts + 100

    tips: list[dict[StateKey, str]] = []
    for br in range(branches):
        st = dict(state)
        t = tip
        lv = dict(mod_levels)
        joined = set(users)
        outside: list[str] = []
        join_rule = "public"
        for s in range(steps):
            ets = base_ts + s * 10 + rng.randint(0, 9)  # branches interleave, some ties
            active_mods = [m for m in mods if lv.get(m, 0) >= 50]
            r = rng.random()
            if r < 0.25:  # a new user joins (or is invited, then joins)
                u = f"@b{br}s{s}:{SERVER}"
                if join_rule != "public":
                    t = b.emit(st, [t], alice, "m.room.member", u, {"membership": "invite"}, ets)
                t = b.emit(st, [t], u, "m.room.member", u, {"membership": "join"}, ets)
                joined.add(u)
            elif r < 0.37 and active_mods and joined:  # ban
                target = rng.choice(sorted(joined))
                mod = rng.choice(active_mods)
                t = b.emit(st, [t], mod, "m.room.member", target, {"membership": "ban"}, ets)
                joined.discard(target)
            elif r < 0.47 and active_mods and joined:  # kick
                target = rng.choice(sorted(joined))
                mod = rng.choice(active_mods)
                t = b.emit(st, [t], mod, "m.room.member", target, {"membership": "leave"}, ets)
                joined.discard(target)
                outside.append(target)
            elif r < 0.55 and joined:  # leave
                u = rng.choice(sorted(joined))
                t = b.emit(st, [t], u, "m.room.member", u, {"membership": "leave"}, ets)
                joined.discard(u)
                outside.append(u)
            elif r < 0.62 and outside and join_rule == "public":  # rejoin
                u = outside.pop()
                t = b.emit(st, [t], u, "m.room.member", u, {"membership": "join"}, ets)
                joined.add(u)
            elif r < 0.77:  # topic, by a moderator or Alice
                who = rng.choice([alice, *active_mods])
                t = b.emit(st, [t], who, "m.room.topic", "", {"topic": f"{br}.{s}"}, ets)
            elif r < 0.90:  # power levels: Alice promotes/demotes a moderator or a member
                who = rng.choice([*mods, rng.choice(users)])
                lv[who] = rng.choice([0, 50]) if who in mods else rng.choice([0, 10, 20])
                t = b.emit(st, [t], alice, "m.room.power_levels", "", levels(lv), ets)
            elif r < 0.95:  # join rules
                join_rule = "invite" if join_rule == "public" else "public"
                t = b.emit(st, [t], alice, "m.room.join_rules", "", {"join_rule": join_rule}, ets)
            else:  # some other state, by a moderator
                who = rng.choice([alice, *active_mods])
                t = b.emit(st, [t], who, "m.room.name", "", {"name": f"room {br}.{s}"}, ets)
        tips.append(st)

    return {
        "room_version": version,
        "room_id": b.room_id,
        "event_ids": b.ids,
        "pdus": b.pdus,
        "state_sets": [[[k[0], k[1], v] for k, v in s.items()] for s in tips],
    }


def load_ours(dag: dict[str, Any]) -> tuple[RoomVersion, dict[str, Event], list[dict]]:
    rv = get_room_version(dag["room_version"])
    events = {
        eid: Event(pdu, rv, event_id=eid)
        for eid, pdu in zip(dag["event_ids"], dag["pdus"], strict=True)
    }
    state_sets = [{(t, sk): e for t, sk, e in s} for s in dag["state_sets"]]
    return rv, events, state_sets


# -- running ours ----------------------------------------------------------------------------


def time_ours(dag: dict[str, Any], repeat: int) -> dict[str, Any]:
    rv, events, state_sets = load_ours(dag)
    cold: list[float] = []
    result: dict = {}
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        result = resolve_state(rv, state_sets, events)
        cold.append(time.perf_counter() - t0)
    cache = EventCache(events)
    chains = InMemoryAuthChains(cache)
    resolve_state(rv, state_sets, cache, auth_chains=chains)
    warm: list[float] = []
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        resolve_state(rv, state_sets, cache, auth_chains=chains)
        warm.append(time.perf_counter() - t0)
    _, conflicted = separate(state_sets)
    conflicted_ids = set().union(*conflicted.values())
    full = chains.auth_chain_difference([set(s.values()) for s in state_sets]) | conflicted_ids
    if rv.room_id_is_create_event_hash:
        full |= chains.conflicted_subgraph(conflicted_ids)
    return {
        "cold": min(cold),
        "cold_median": statistics.median(cold),
        "warm": min(warm),
        "result": {f"{k[0]}\x00{k[1]}": v for k, v in result.items()},
        "events": len(events),
        "state_size": max(len(s) for s in state_sets),
        "conflicted_keys": len(conflicted),
        "full_conflicted": len(full),
    }


# -- running Synapse ---------------------------------------------------------------------------

SYNAPSE_RUNNER = r'''
import asyncio, gc, json, statistics, sys, time

import synapse.event_auth  # noqa: F401  (import order avoids a circular import)
from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
from synapse.events import make_event_from_dict
from synapse.state.v2 import resolve_events_with_store
from synapse.storage.databases.main.event_federation import StateDifference

_EMPTY = frozenset()


class Clock:
    async def sleep(self, duration):
        return None


class Store:
    """In-memory StateResolutionStore: the same memoised auth chains as ours."""

    def __init__(self, events):
        self.events = events
        self.chains = {}
        self.auth = {}

    def auth_ids(self, eid):
        a = self.auth.get(eid)
        if a is None:
            ev = self.events.get(eid)
            a = list(ev.auth_event_ids()) if ev is not None else []
            self.auth[eid] = a
        return a

    def chain(self, event_id):
        chains = self.chains
        c = chains.get(event_id)
        if c is not None:
            return c
        visiting = set()
        stack = [(event_id, False)]
        while stack:
            eid, expanded = stack.pop()
            if eid in chains:
                continue
            parents = self.auth_ids(eid)
            if not expanded:
                if eid in visiting:
                    continue
                visiting.add(eid)
                stack.append((eid, True))
                for p in parents:
                    if p not in chains and p not in visiting:
                        stack.append((p, False))
                continue
            if not parents:
                chains[eid] = _EMPTY
            elif len(parents) == 1:
                chains[eid] = chains.get(parents[0], _EMPTY).union(parents)
            else:
                acc = set(parents)
                for p in parents:
                    acc.update(chains.get(p, _EMPTY))
                chains[eid] = frozenset(acc)
        return chains[event_id]

    def closure(self, ids):
        closure = set(ids)
        stack = list(closure)
        while stack:
            eid = stack.pop()
            c = self.chains.get(eid)
            if c is not None:
                closure.update(c)
                continue
            for p in self.auth_ids(eid):
                if p not in closure:
                    closure.add(p)
                    stack.append(p)
        return closure

    async def get_events(self, event_ids, allow_rejected=False):
        ev = self.events
        return {e: ev[e] for e in event_ids if e in ev}

    async def get_auth_chain_difference(
        self, room_id, state_sets, conflicted_state, additional_backwards_reachable
    ):
        common = state_sets[0].intersection(*state_sets[1:])
        shared = self.closure(common)
        extras = []
        for s in state_sets:
            d = set()
            for eid in s:
                if eid not in common:
                    d.add(eid)
                    d.update(self.chain(eid))
            d -= shared
            extras.append(d)
        diff = extras[0].union(*extras[1:]) - extras[0].intersection(*extras[1:])
        sub = None
        if conflicted_state is not None:
            anc = set()
            for c in conflicted_state:
                anc.update(self.chain(c))
            sub = set(conflicted_state)
            for x in anc:
                if x not in sub and not self.chain(x).isdisjoint(conflicted_state):
                    sub.add(x)
        return StateDifference(auth_difference=diff, conflicted_subgraph=sub)


async def run_one(dag, repeat):
    rv = KNOWN_ROOM_VERSIONS[dag["room_version"]]
    events = {}
    mismatched = 0
    for eid, pdu in zip(dag["event_ids"], dag["pdus"]):
        ev = make_event_from_dict(pdu, rv)
        if ev.event_id != eid:
            mismatched += 1
        events[ev.event_id] = ev
    state_sets = [{(t, sk): e for t, sk, e in s} for s in dag["state_sets"]]
    room_id = dag["room_id"]

    async def once(store):
        gc.collect()
        t0 = time.perf_counter()
        res = await resolve_events_with_store(Clock(), room_id, rv, state_sets, None, store)
        return time.perf_counter() - t0, res

    cold = []
    result = None
    for _ in range(repeat):
        dt, result = await once(Store(events))
        cold.append(dt)
    store = Store(events)
    await once(store)
    warm = []
    for _ in range(repeat):
        dt, _ = await once(store)
        warm.append(dt)
    return {
        "cold": min(cold),
        "cold_median": statistics.median(cold),
        "warm": min(warm),
        "mismatched_ids": mismatched,
        "result": {k[0] + "\x00" + k[1]: v for k, v in dict(result).items()},
    }


def main():
    jobs = json.load(open(sys.argv[1]))
    out = []
    for job in jobs:
        dag = json.load(open(job["path"]))
        out.append(asyncio.run(run_one(dag, job["repeat"])))
    json.dump(out, sys.stdout)


main()
'''


def ensure_synapse_venv() -> Path:
    python = BENCH_VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {BENCH_VENV} and installing matrix-synapse (one-off)...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
        # Keep the venv out of git without touching the repo's .gitignore.
        (BENCH_VENV / ".gitignore").write_text("*\n")
        subprocess.run([str(python), "-m", "pip", "install", "-q", "matrix-synapse"], check=True)
    return python


def run_synapse(python: Path, paths: list[Path], repeat: int, tmp: Path) -> list[dict]:
    runner = tmp / "synapse_runner.py"
    runner.write_text(SYNAPSE_RUNNER)
    jobs = tmp / "jobs.json"
    jobs.write_text(json.dumps([{"path": str(p), "repeat": repeat} for p in paths]))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(
        [str(python), str(runner), str(jobs)],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(tmp),
        check=False,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit("the Synapse subprocess failed")
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


# -- main ----------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller room, sub-minute run")
    ap.add_argument("--members", type=int, default=None)
    ap.add_argument("--branches", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="state changes per branch")
    ap.add_argument("--versions", default="11,12", help="room versions, comma-separated")
    ap.add_argument("--repeat", type=int, default=None)
    ap.add_argument("--no-synapse", action="store_true", help="time ours only")
    args = ap.parse_args()

    members = args.members or (1000 if args.quick else 5000)
    branches = args.branches or (3 if args.quick else 4)
    steps = args.steps or (100 if args.quick else 400)
    repeat = args.repeat or (5 if args.quick else 7)
    scaling_steps = [25, 50, 100, 200] if args.quick else [25, 50, 100, 200, 400, 800]
    versions = [v.strip() for v in args.versions.split(",") if v.strip()]

    python = None if args.no_synapse else ensure_synapse_venv()

    with tempfile.TemporaryDirectory(prefix="bench_state_res_") as tmpdir:
        tmp = Path(tmpdir)
        cases: list[tuple[str, str, int, int, int]] = []  # label, version, members, br, steps
        for v in versions:
            cases.append(("main", v, members, branches, steps))
        for v in versions:
            for s in scaling_steps:
                cases.append(("scaling", v, members, branches, s))

        paths: list[Path] = []
        ours: list[dict[str, Any]] = []
        t_build = time.perf_counter()
        for i, (_, v, m, br, s) in enumerate(cases):
            dag = build_room(v, members=m, branches=br, steps=s, seed=i + 1)
            path = tmp / f"dag{i}.json"
            path.write_text(json.dumps(dag))
            paths.append(path)
            ours.append(time_ours(dag, repeat))
        print(f"built and resolved {len(cases)} DAGs in {time.perf_counter() - t_build:.1f}s")

        theirs: list[dict[str, Any]] | None = None
        if python is not None:
            t0 = time.perf_counter()
            theirs = run_synapse(python, paths, repeat, tmp)
            print(f"Synapse subprocess took {time.perf_counter() - t0:.1f}s")

    all_agree = True
    header = (
        f"{'case':8} {'v':>3} {'events':>7} {'state':>6} {'confl':>6} {'full':>6} "
        f"{'ours ms':>9} {'syn ms':>9} {'ratio':>6} {'warm ours':>10} {'warm syn':>9} "
        f"{'w.ratio':>7}  agree"
    )
    print()
    print(header)
    print("-" * len(header))
    for i, (label, v, _m, _br, _s) in enumerate(cases):
        o = ours[i]
        line = (
            f"{label:8} {v:>3} {o['events']:>7} {o['state_size']:>6} "
            f"{o['conflicted_keys']:>6} {o['full_conflicted']:>6} {o['cold'] * 1e3:>9.1f}"
        )
        if theirs is not None:
            t = theirs[i]
            agree = t["result"] == o["result"] and t["mismatched_ids"] == 0
            all_agree &= agree
            note = "yes" if agree else f"NO ({t['mismatched_ids']} IDs differ)"
            if t["result"] != o["result"]:
                diff = {
                    k
                    for k in set(t["result"]) | set(o["result"])
                    if t["result"].get(k) != o["result"].get(k)
                }
                note += f" {len(diff)} keys differ"
            line += (
                f" {t['cold'] * 1e3:>9.1f} {o['cold'] / t['cold']:>6.2f}"
                f" {o['warm'] * 1e3:>10.1f} {t['warm'] * 1e3:>9.1f}"
                f" {o['warm'] / t['warm']:>7.2f}  {note}"
            )
        else:
            line += f" {'-':>9} {'-':>6} {o['warm'] * 1e3:>10.1f}"
        print(line)
    print()
    print("times are the best of", repeat, "runs; 'cold' builds the auth chain cache afresh,")
    print("'warm' reuses it; ratio = ours / Synapse (below 1 means ours is faster).")
    if theirs is not None:
        print("both implementations agree on every case:", "yes" if all_agree else "NO")
        if not all_agree:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
