"""Report plots: quality vs latency (Pareto front), model size, quality per stage, the older single table."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from recdistill.report_rows import NOISE_ONE_SEED, SHORT, STAGE_CHAIN

COLORS = {"teacher": "tab:red", "teacher-llm": "tab:pink", "teacher-cf": "tab:brown", "vanilla": "tab:blue",
          "distilled": "tab:green", "pruned": "tab:orange", "quantized": "tab:purple",
          "pruned+quantized": "tab:olive"}
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> str:
    from recdistill.atomic import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return str(path)


KEY_MARKERS = {"teacher": "*", "teacher-llm": "p", "teacher-cf": "h", "vanilla": "o", "distilled": "s",
               "pruned": "^", "quantized": "D", "pruned+quantized": "v"}


def _style(row: dict[str, Any], runs: list[str]) -> tuple[str, str]:
    """Colour by run when several runs are compared, else by model; marker by model (overlaps stay visible)."""
    marker = KEY_MARKERS.get(row["key"], "o")
    if len(runs) > 1:
        return f"C{runs.index(row['run']) % 10}", marker
    return COLORS.get(row["key"], "tab:gray"), marker


def _pad_ylim(ax, values: list[float], errors: list[float], minimum: float = NOISE_ONE_SEED) -> None:
    """A y-range at least ``minimum`` either side of every point (and its error bar)."""
    lo = min(v - e for v, e in zip(values, errors))
    hi = max(v + e for v, e in zip(values, errors))
    lo, hi = min(lo, min(values) - minimum), max(hi, max(values) + minimum)
    pad = 0.08 * (hi - lo)
    ax.set_ylim(lo - pad, hi + pad)


def plot_quality_latency(timed: list[dict[str, Any]], front: list[int], metric: str, path: Path) -> str | None:
    if not timed:
        return None
    plt = _pyplot()
    import matplotlib.ticker as ticker

    runs = list(dict.fromkeys(r["run"] for r in timed))
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for row in timed:
        color, marker = _style(row, runs)
        err = row.get("std", {}).get(metric, 0.0)
        ax.errorbar(row["p99_ms"], row["metrics"][metric], yerr=err or None, fmt=marker, color=color,
                    ms=13 if marker == "*" else 8, mfc="none" if marker in ("^", "v", "D") else color, mew=1.6,
                    capsize=4, label=f"{row['label']} ({row.get('runtime', '?')})")
    if front:
        xs = [timed[i]["p99_ms"] for i in front]
        ys = [timed[i]["metrics"][metric] for i in front]
        ax.step(xs, ys, where="post", color="black", lw=1, ls="--", zorder=0, label="Pareto front")
        ax.scatter(xs, ys, s=180, facecolors="none", edgecolors="black", lw=1.2, zorder=3)
    ax.set_xscale("log")
    xs_all = [r["p99_ms"] for r in timed]
    ax.set_xlim(min(xs_all) / 1.6, max(xs_all) * 1.6)
    decades = math.log10(max(xs_all) / min(xs_all) * 2.56)
    ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0) if decades < 3 else (1.0,)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    _pad_ylim(ax, [r["metrics"][metric] for r in timed], [r.get("std", {}).get(metric, 0.0) for r in timed])
    _label_points(ax, [(r["p99_ms"], r["metrics"][metric], r["label"]) for r in timed])
    ax.set_xlabel("p99 latency, ms (batch 1, log scale)")
    ax.set_ylabel(f"test {metric.upper()}")
    ax.set_title("quality vs latency (circled: Pareto front; error bars: seed std)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    return _save(fig, path)


def _label_points(ax, points: list[tuple[float, float, str]]) -> None:
    """Short labels beside the points; of two points that (nearly) coincide, one is labelled on the left."""
    low, high = ax.get_ylim()
    span = high - low
    placed: list[tuple[float, float]] = []
    for x, y, label in sorted(points, key=lambda p: (p[1], p[0])):
        crowded = any(abs(math.log(x / px)) < 0.5 and abs(y - py) < 0.05 * span for px, py in placed)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(-9, 5) if crowded else (9, 5),
                    ha="right" if crowded else "left", va="bottom", fontsize=8, color="0.25")
        placed.append((x, y))


def plot_size(rows: list[dict[str, Any]], path: Path) -> str | None:
    sized = [r for r in rows if r.get("file_bytes")]
    if not sized:
        return None
    plt = _pyplot()
    runs = list(dict.fromkeys(r["run"] for r in sized))
    fig, ax = plt.subplots(figsize=(7.0, 0.45 * len(sized) + 1.2))
    kib = [r["file_bytes"] / 1024 for r in sized]
    colors = [_style(r, runs)[0] for r in sized]
    ax.barh(range(len(sized)), kib, color=colors)
    ax.set_yticks(range(len(sized)), [r["label"] for r in sized])
    ax.invert_yaxis()
    for i, (value, row) in enumerate(zip(kib, sized)):
        params = f", {row['params']:,} params" if row.get("params") else ""
        ax.text(value, i, f" {value:,.0f} KiB{params}", va="center", fontsize=8)
    ax.set_xlim(0, max(kib) * 1.6)
    ax.set_xlabel("file size, KiB (ONNX file served)")
    ax.set_title("model size")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def plot_stages(rows: list[dict[str, Any]], runs: list[dict[str, Any]], metric: str, path: Path) -> str | None:
    names = [r["run"] for r in runs]
    series = []
    for run in names:
        by_key = {r["key"]: r for r in rows if r["run"] == run}
        chain = [by_key[k] for k in STAGE_CHAIN if k in by_key and metric in by_key[k]["metrics"]]
        if chain:
            series.append((run, chain))
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    positions = {k: i for i, k in enumerate(k for k in STAGE_CHAIN if any(k in [c["key"] for c in ch]
                                                                          for _, ch in series))}
    values, errors = [], []
    for n, (run, chain) in enumerate(series):
        xs = [positions[c["key"]] + (n - (len(series) - 1) / 2) * 0.08 for c in chain]
        ys = [c["metrics"][metric] for c in chain]
        es = [c.get("std", {}).get(metric, 0.0) for c in chain]
        ax.errorbar(xs, ys, yerr=es, fmt=MARKERS[n % len(MARKERS)] + "-", capsize=4, ms=7,
                    label=run if len(series) > 1 else f"test {metric.upper()} (error bars: seed std)")
        values += ys
        errors += es
        ref = next((c for c in chain if c["key"] == "distilled"), None)
        if ref is not None:
            band = ref.get("std", {}).get(metric) or NOISE_ONE_SEED
            ax.axhspan(ref["metrics"][metric] - band, ref["metrics"][metric] + band, color="tab:green", alpha=0.12,
                       label="distilled ± noise band" if n == 0 else None)
    ax.set_xticks(list(positions.values()), [SHORT.get(k, k) for k in positions])
    _pad_ylim(ax, values, errors)
    ax.set_ylabel(f"test {metric.upper()}")
    ax.set_title("quality at each stage\n(pruned and int8 variants are made from the distilled student)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    return _save(fig, path)


def plot_single_table(rows: list[dict[str, Any]], path: Path) -> None:
    """Quality bars (horizontal: names never overlap) and quality vs p50 latency with a legend."""
    plt = _pyplot()
    import matplotlib.ticker as ticker

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.4 * len(rows) + 3))
    values = [r["test_ndcg@10"] or 0.0 for r in rows]
    left.barh(range(len(rows)), values, color="tab:blue")
    left.set_yticks(range(len(rows)), [r["name"] for r in rows], fontsize=8)
    left.invert_yaxis()
    left.set_xlabel("test NDCG@10 (full ranking)")
    left.set_title("quality")
    timed = [r for r in rows if r["p50_ms"]]
    for i, r in enumerate(timed):
        right.scatter(r["p50_ms"], r["test_ndcg@10"] or 0.0, s=60, marker=MARKERS[i % len(MARKERS)], label=r["name"])
    if timed:
        right.set_xscale("log")
        right.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        right.xaxis.set_minor_formatter(ticker.NullFormatter())
        xs = [r["p50_ms"] for r in timed]
        right.set_xlim(min(xs) / 1.6, max(xs) * 1.6)
        _pad_ylim(right, [r["test_ndcg@10"] or 0.0 for r in timed], [0.0] * len(timed))
        right.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    right.set_xlabel("p50 latency per user, ms (batch 1, log scale)")
    right.set_ylabel("test NDCG@10")
    right.set_title("quality vs latency")
    _save(fig, path)
