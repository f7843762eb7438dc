"""The order of runs: per storage engine, both servers up at once and every scenario run on
one then the other, the order flipping each time; federation pairs one after the other."""

from __future__ import annotations

import asyncio
import os
import random
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field

from scripts.bench_lib import scenarios, servers
from scripts.bench_lib.client import Client
from scripts.bench_lib.scenarios import SINGLE, Figures, Scale

# kind → metric → one value per repetition
Samples = dict[str, dict[str, list[float]]]
ALL_SCENARIOS = [name for name, _ in SINGLE] + ["federation", "memory"]


@dataclass
class Options:
    scale: Scale
    engines: list[str]
    kinds: list[str]  # "ours", "synapse"
    seed: int = 1
    only: list[str] = field(default_factory=lambda: list(ALL_SCENARIOS))
    profile_dir: str | None = None  # py-spy samples of our server(s) go here


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _orders(kinds: list[str], i: int) -> list[str]:
    """Alternate who goes first, so neither server always runs on a warmer machine."""
    return list(kinds) if i % 2 == 0 else list(reversed(kinds))


def _failed(errors: list[str], engine: str, what: str, targets: list[servers.Target],
            e: BaseException) -> None:
    """A run that failed counts for nothing; the error and the servers' logs are shown and
    kept in the JSON (the table's medians come from the runs that worked)."""
    msg = f"{engine}: {what} failed: {type(e).__name__}: {e}"
    log(msg)
    for t in targets:
        log(f"{t.kind} ({t.server_name}) log tail:\n{t.log_tail()}")
    errors.append(msg)


def _record(samples: Samples, kind: str, figures: Figures) -> None:
    for metric, value in figures.items():
        samples.setdefault(kind, {}).setdefault(metric, []).append(value)


def _start(stack: ExitStack, kind: str, work: str, engine: str) -> servers.Target:
    if kind == "ours":
        return servers.start_ours(stack, work, engine)
    return servers.start_synapse(stack, work, engine)


def _start_pair(stack: ExitStack, kind: str, work: str,
                engine: str) -> tuple[servers.Target, servers.Target]:
    if kind == "ours":
        return servers.start_ours_pair(stack, work, engine)
    return servers.start_synapse_pair(stack, work, engine)


async def _single_server(opts: Options, engine: str, samples: Samples,
                         errors: list[str]) -> None:
    todo = [(name, fn) for name, fn in SINGLE if name in opts.only]
    if not todo and "memory" not in opts.only:
        return
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="bench-") as work:
        targets = {}
        for kind in opts.kinds:
            log(f"{engine}: starting {kind}")
            targets[kind] = _start(stack, kind, work, engine)
            if opts.profile_dir and kind == "ours":
                servers.profile(stack, targets[kind],
                                os.path.join(opts.profile_dir, f"ours-{engine}.txt"))
        await asyncio.sleep(1)  # let start-up work settle before reading idle memory
        for kind, target in targets.items():
            _record(samples, kind, {"rss_idle_mb": target.rss_mb()[0]})
        clients = {kind: Client(t.client_url) for kind, t in targets.items()}
        try:
            for i, (name, fn) in enumerate(todo):
                for rep in range(opts.scale.reps):
                    for kind in _orders(opts.kinds, i + rep):
                        rng = random.Random(f"{opts.seed}-{name}-{rep}")
                        start = time.perf_counter()
                        try:
                            figures = await fn(clients[kind], f"{name[:4]}{rep}", opts.scale,
                                               rng)
                        except Exception as e:
                            _failed(errors, engine, f"{name} on {kind}", [targets[kind]], e)
                            continue
                        log(f"{engine}: {name} on {kind} ({time.perf_counter() - start:.1f} s)")
                        _record(samples, kind, figures)
            for kind, target in targets.items():
                _record(samples, kind, {"rss_peak_mb": target.rss_mb()[1]})
        finally:
            for c in clients.values():
                await c.close()


async def _federation(opts: Options, engine: str, samples: Samples,
                      errors: list[str]) -> None:
    for rep in range(opts.scale.reps):
        for kind in _orders(opts.kinds, rep):
            with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="bench-") as work:
                log(f"{engine}: starting two {kind} servers")
                a, b = _start_pair(stack, kind, work, engine)
                if opts.profile_dir and kind == "ours":
                    for t, side in ((a, "a"), (b, "b")):
                        servers.profile(stack, t, os.path.join(
                            opts.profile_dir, f"ours-{engine}-federation-{side}.txt"))
                ca, cb = Client(a.client_url), Client(b.client_url)
                try:
                    rng = random.Random(f"{opts.seed}-federation-{rep}")
                    start = time.perf_counter()
                    figures = await scenarios.federation(
                        ca, cb, b.server_name, a.server_name, f"fed{rep}", opts.scale, rng)
                    log(f"{engine}: federation on {kind} ({time.perf_counter() - start:.1f} s)")
                    _record(samples, kind, figures)
                except Exception as e:
                    _failed(errors, engine, f"federation on {kind}", [a, b], e)
                finally:
                    await ca.close()
                    await cb.close()


async def run(opts: Options, errors: list[str]) -> dict[str, Samples]:
    """engine → samples; failed runs are described in ``errors``."""
    results: dict[str, Samples] = {}
    for engine in opts.engines:
        samples: Samples = {}
        await _single_server(opts, engine, samples, errors)
        if "federation" in opts.only:
            await _federation(opts, engine, samples, errors)
        results[engine] = samples
    return results
