"""Results out: medians and ratios, a Markdown table, JSON, and a PNG chart."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
from typing import Any

from scripts.bench_lib.runner import Samples
from scripts.bench_lib.scenarios import METRICS


def machine(synapse_version: str | None) -> dict[str, Any]:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       "")
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu or platform.processor(),
        "cores": os.cpu_count(),
        "memory_gb": round(mem_gb, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "synapse": synapse_version,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "commit": _git_commit(),
    }


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def summarise(results: dict[str, Samples]) -> dict[str, dict[str, dict[str, float | None]]]:
    """engine → metric → {ours, synapse, ratio} (medians over repetitions)."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for engine, samples in results.items():
        rows: dict[str, dict[str, float | None]] = {}
        for metric in METRICS:
            row: dict[str, float | None] = {}
            for kind in ("ours", "synapse"):
                values = samples.get(kind, {}).get(metric)
                row[kind] = statistics.median(values) if values else None
            ours, theirs = row["ours"], row["synapse"]
            row["ratio"] = ours / theirs if ours is not None and theirs else None
            if row["ours"] is not None or row["synapse"] is not None:
                rows[metric] = row
        out[engine] = rows
    return out


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None or math.isnan(value):
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}f}"


def _verdict(metric: str, ratio: float | None) -> str:
    m = METRICS[metric]
    if ratio is None or m.goal is None:
        return ""
    met = ratio >= m.goal if m.higher_is_better else ratio <= m.goal
    return "✓" if met else "✗"


def table(summary: dict[str, dict[str, dict[str, float | None]]]) -> str:
    """One Markdown table: per engine the medians of ours and Synapse and the ratio; the goal
    column says what issue #12 asks of the ratio (✓ met, ✗ not)."""
    engines = list(summary)
    head = ["figure", "unit"]
    for e in engines:
        head += [f"ours ({e})", f"Synapse ({e})", f"ours/Synapse ({e})"]
    head.append("goal")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for metric, m in METRICS.items():
        if not any(metric in summary[e] for e in engines):
            continue
        cells = [m.label, m.unit]
        for e in engines:
            row = summary[e].get(metric, {})
            ratio = row.get("ratio")
            cells += [_fmt(row.get("ours")), _fmt(row.get("synapse")),
                      (_fmt(ratio, 2) + " " + _verdict(metric, ratio)).strip()]
        goal = ""
        if m.goal is not None:
            goal = f"≥ {m.goal:g}" if m.higher_is_better else f"≤ {m.goal:g}"
        cells.append(goal)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json(path: str, payload: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)


def chart(path: str, summary: dict[str, dict[str, dict[str, float | None]]]) -> bool:
    """Bars of how many times better we are per figure (Synapse/ours for times and memory,
    ours/Synapse for rates), log scale; False when there is nothing to compare."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    engines = [e for e in summary if any(r.get("ratio") for r in summary[e].values())]
    metrics = [m for m in METRICS if any(summary[e].get(m, {}).get("ratio") for e in engines)]
    if not metrics:
        return False
    fig, ax = plt.subplots(figsize=(9, 0.3 * len(metrics) * len(engines) + 1.5))
    height = 0.8 / len(engines)
    for j, engine in enumerate(engines):
        values = []
        for metric in metrics:
            ratio = summary[engine].get(metric, {}).get("ratio") or float("nan")
            values.append(ratio if METRICS[metric].higher_is_better else 1 / ratio)
        ys = [i + j * height for i in range(len(metrics))]
        colors = ["tab:green" if v >= 1 else "tab:red" for v in values]
        ax.barh(ys, values, height=height, color=colors, alpha=0.5 + 0.5 * (j == 0),
                label=engine)
    ax.axvline(1, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(metrics))])
    ax.set_yticklabels([METRICS[m].label for m in metrics], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("times better than Synapse (>1: ours better); one bar per engine, "
                  "top to bottom: " + ", ".join(engines))
    ax.set_title("homeserver vs Synapse (medians)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
