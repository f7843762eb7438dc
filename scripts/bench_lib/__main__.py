"""``python -m scripts.bench_lib`` (what ``scripts/bench`` runs): see ``--help``."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

from scripts.bench_lib import report, runner, servers
from scripts.bench_lib.scenarios import SCALES


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Benchmark our homeserver against Synapse through the client-server API.")
    p.add_argument("--quick", action="store_const", const="quick", dest="scale",
                   help="small sizes, one repetition (under two minutes)")
    p.add_argument("--scale", choices=sorted(SCALES),
                   help="sizes of every scenario (default full; smoke: a few seconds)")
    p.set_defaults(scale="full")
    p.add_argument("--engines", default="sqlite,postgres",
                   help="comma-separated storage engines (PostgreSQL only when reachable)")
    p.add_argument("--servers", default="ours,synapse",
                   help="comma-separated: ours, synapse (one alone gives no ratios)")
    p.add_argument("--only", default=",".join(runner.ALL_SCENARIOS),
                   help="comma-separated scenarios: " + ", ".join(runner.ALL_SCENARIOS))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", metavar="FILE.json",
                   help="where the JSON goes (default bench-results/bench-<time>.json); "
                        "the chart is written next to it as .png")
    p.add_argument("--no-chart", action="store_true")
    p.add_argument("--profile", metavar="DIR",
                   help="sample our server(s) with py-spy: collapsed stacks (speedscope, "
                        "flamegraph.pl) into DIR")
    p.add_argument("--note", default="", help="free text kept with the machine description")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    kinds = [k for k in args.servers.split(",") if k]
    only = [s for s in args.only.split(",") if s]
    bad = [k for k in kinds if k not in ("ours", "synapse")] + [
        s for s in only if s not in runner.ALL_SCENARIOS]
    if bad:
        print(f"scripts/bench: unknown server or scenario: {', '.join(bad)}", file=sys.stderr)
        return 2
    missing = servers.synapse_missing() if "synapse" in kinds else None
    if missing:
        print(f"scripts/bench: {missing} (or run with --servers ours)", file=sys.stderr)
        return 2
    engines, notes = servers.engines_available([e for e in args.engines.split(",") if e])
    for note in notes:
        runner.log(note)
    if not engines:
        print("scripts/bench: no storage engine to run on", file=sys.stderr)
        return 2
    opts = runner.Options(SCALES[args.scale], engines, kinds, args.seed, only, args.profile)
    started = time.time()
    meta = {"machine": report.machine(servers.synapse_version() if "synapse" in kinds else None),
            "note": args.note, "scale": args.scale, "scale_sizes": opts.scale.__dict__,
            "seed": args.seed, "engines": engines, "skipped": notes,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started))}
    errors: list[str] = []
    results = asyncio.run(runner.run(opts, errors))
    summary = report.summarise(results)
    text = report.table(summary)
    meta["seconds"] = round(time.time() - started, 1)
    out = args.out or os.path.join(
        "bench-results", time.strftime("bench-%Y%m%d-%H%M%S.json", time.gmtime(started)))
    report.write_json(out, {**meta, "samples": results, "summary": summary, "table": text,
                            "errors": errors})
    print(text)
    for e in errors:
        print(f"FAILED (not counted): {e}")
    print(f"\n{meta['machine']} · {args.scale} · {meta['seconds']} s · JSON: {out}")
    if not args.no_chart and report.chart(os.path.splitext(out)[0] + ".png", summary):
        print(f"chart: {os.path.splitext(out)[0]}.png")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
