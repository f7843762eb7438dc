"""scripts/bench must not rot: run its driver for a few seconds against our server alone (no
Synapse, no timing assertions) and check it produced every figure. About 5 s per engine."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from scripts.bench_lib import report
from scripts.bench_lib.scenarios import METRICS
from tests.support.process import ROOT


def test_bench_driver_runs_every_scenario_against_our_server(engine: str, tmp_path: str) -> None:
    out = os.path.join(tmp_path, "bench.json")
    run = subprocess.run(
        [sys.executable, "-m", "scripts.bench_lib", "--scale", "smoke", "--servers", "ours",
         "--engines", engine, "--no-chart", "--out", out],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr[-5000:]
    with open(out) as f:
        result = json.load(f)
    assert result["engines"] == [engine]
    assert result["errors"] == []
    ours = result["samples"][engine]["ours"]
    assert set(ours) == set(METRICS), set(METRICS) ^ set(ours)
    for metric, values in ours.items():
        assert len(values) == 1 and math.isfinite(values[0]) and values[0] >= 0, (metric, values)
    # The printed table names every figure.
    for m in METRICS.values():
        assert m.label in run.stdout


def test_bench_table_and_chart_show_ratios(tmp_path: str) -> None:
    samples = {"sqlite": {"ours": {"send_one_room_eps": [300.0, 200.0, 250.0],
                                   "rss_peak_mb": [50.0]},
                          "synapse": {"send_one_room_eps": [100.0, 100.0, 120.0],
                                      "rss_peak_mb": [150.0]}}}
    summary = report.summarise(samples)
    assert summary["sqlite"]["send_one_room_eps"] == {"ours": 250.0, "synapse": 100.0,
                                                      "ratio": 2.5}
    text = report.table(summary)
    assert "| 2 send, C senders, 1 room | events/s | 250 | 100 | 2.50 ✓ | ≥ 2 |" in text
    assert "| 7 RSS peak | MB | 50.0 | 150 | 0.33 ✓ | ≤ 0.5 |" in text
    pytest.importorskip("matplotlib")
    png = os.path.join(tmp_path, "chart.png")
    assert report.chart(png, summary)
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
