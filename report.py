"""Teacher-vs-student report: Markdown + JSON + plots from the metrics files of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recdistill.atomic import write_json, write_text

KEYS = ("hr@10", "ndcg@10", "mrr@10", "ndcg@20")


def build_report(rows: list[dict[str, Any]], output_dir: str | Path, *, title: str, notes: list[str]) -> Path:
    """``rows``: ``{"name", "role", "metrics" (metrics.json), "latency" (optional dict)}``."""
    output_dir = Path(output_dir)
    payload = {"title": title, "notes": notes, "rows": [_row(r) for r in rows]}
    write_json(output_dir / "report.json", payload)
    _plot(payload["rows"], output_dir / "quality_vs_latency.png")
    write_text(output_dir / "report.md", _markdown(payload))
    return output_dir / "report.md"


def _row(row: dict[str, Any]) -> dict[str, Any]:
    metrics = row["metrics"]
    latency = row.get("latency") or metrics.get("latency") or {}
    return {
        "name": row["name"],
        "role": row["role"],
        "valid_ndcg@10": metrics.get("valid", {}).get("ndcg@10"),
        **{f"test_{k}": metrics.get("test", {}).get(k) for k in KEYS},
        "num_parameters": metrics.get("num_parameters"),
        "trainable_parameters": metrics.get("trainable_parameters"),
        "p50_ms": latency.get("p50_ms"),
        "p99_ms": latency.get("p99_ms"),
        "sequences_per_second": latency.get("sequences_per_second"),
        "threads": latency.get("threads"),
    }


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _markdown(payload: dict[str, Any]) -> str:
    lines = [f"# {payload['title']}", ""]
    lines += [f"- {note}" for note in payload["notes"]]
    lines += ["", "| model | role | valid NDCG@10 | test HR@10 | test NDCG@10 | test MRR@10 | params | "
              "p50 ms (batch 1) | p99 ms | seq/s (batched) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        lines.append(
            f"| {r['name']} | {r['role']} | {_fmt(r['valid_ndcg@10'], '.4f')} | {_fmt(r['test_hr@10'], '.4f')} | "
            f"{_fmt(r['test_ndcg@10'], '.4f')} | {_fmt(r['test_mrr@10'], '.4f')} | {_fmt(r['num_parameters'], ',')} | "
            f"{_fmt(r['p50_ms'], '.2f')} | {_fmt(r['p99_ms'], '.2f')} | {_fmt(r['sequences_per_second'], ',.0f')} |"
        )
    lines += ["", "![quality vs latency](quality_vs_latency.png)", ""]
    return "\n".join(lines)


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.ticker
    import matplotlib.pyplot as plt

    from recdistill.atomic import atomic_path

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    names = [r["name"] for r in rows]
    left.bar(names, [r["test_ndcg@10"] or 0.0 for r in rows], color="tab:blue")
    left.tick_params(axis="x", labelrotation=20)
    left.set_ylabel("test NDCG@10 (full ranking)")
    left.set_title("quality")
    timed = [r for r in rows if r["p50_ms"]]
    for r in timed:
        right.scatter(r["p50_ms"], r["test_ndcg@10"] or 0.0, s=60)
        right.annotate(r["name"], (r["p50_ms"], r["test_ndcg@10"] or 0.0), textcoords="offset points", xytext=(5, 5))
    right.set_xscale("log")
    right.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    right.margins(x=0.4, y=0.2)
    right.set_xlabel("p50 latency per user, ms (batch 1, log scale)")
    right.set_ylabel("test NDCG@10")
    right.set_title("quality vs latency")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
