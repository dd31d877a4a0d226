"""Reports from the JSON files of runs: ``recdistill compare RUN_DIR [RUN_DIR ...]``.

``compare_runs(run_dirs, output_dir)`` reads, per run folder (layout of ``run.py``):
``teacher/metrics.json`` (the teacher and, for a hybrid teacher, each part from its ``fusion``
entry), ``students/{vanilla,distilled}/seed*/metrics.json`` (mean and spread over seeds),
``compressed/compress.json`` (pruned, quantized, pruned+quantized: gate evaluation) and
``profile/profile.json`` (ONNX Runtime latency and throughput), and writes

    report.json              # every row, with the file and key each number came from
    report.md                # the table, the per-stage change with noise marks, the protocol
    quality_vs_latency.png   # quality vs p99 latency (batch 1), Pareto front marked
    size.png                 # file size per model
    stages.png               # teacher -> vanilla -> distilled -> pruned -> quantized

No number is computed here that is not in those files, except means/spreads over seeds.
``build_report`` (rows given directly) is the older single-table entry point.

This module writes the report (JSON, Markdown); the rows, noise bands and stage changes are read in
:mod:`recdistill.report_rows`, the plots drawn in :mod:`recdistill.report_plots`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from recdistill.atomic import write_json, write_text
from recdistill.report_plots import plot_quality_latency, plot_single_table, plot_size, plot_stages
from recdistill.report_rows import (  # noqa: F401  (re-exported: the report's data side)
    CTR, NOISE_ONE_SEED, RANKING, SHORT, SLICES, STAGE_CHAIN, collect_run, noise_band, pareto_front, primary_metric,
    stage_changes,
)

KEYS = ("hr@10", "ndcg@10", "mrr@10", "ndcg@20")


# ----------------------------------------------------------------------------- compare
def compare_runs(run_dirs: Sequence[str | Path], output_dir: str | Path, *, title: str | None = None) -> Path:
    """Write report.md, report.json and the plots for one or several run folders; returns report.md."""
    output_dir = Path(output_dir)
    runs = [collect_run(d) for d in run_dirs]
    many = len(runs) > 1
    rows = []
    for run in runs:
        for row in run["rows"]:
            rows.append({**row, "run": run["run"], "label": (f"{run['run']}: " if many else "") + SHORT.get(
                row["key"], row["key"])})
    metric = primary_metric(rows)
    changes = {run["run"]: stage_changes([r for r in rows if r["run"] == run["run"]], metric) for run in runs}
    protocol = _protocol(runs, metric)
    names = [r.get("name") or r["run"] for r in runs]
    payload = {"title": title or ("recdistill report: " + " vs ".join(names)),
               "metric": metric, "protocol": protocol, "rows": rows, "stage_changes": changes,
               "pareto_front": [], "runs": [{k: v for k, v in r.items() if k != "rows"} for r in runs]}
    timed = [r for r in rows if r.get("p99_ms") and metric in r["metrics"]]
    front = pareto_front([(r["p99_ms"], _better(r["metrics"][metric], metric)) for r in timed])
    payload["pareto_front"] = [timed[i]["label"] for i in front]
    output_dir.mkdir(parents=True, exist_ok=True)
    plots = {"quality_vs_latency": plot_quality_latency(timed, front, metric, output_dir / "quality_vs_latency.png"),
             "size": plot_size(rows, output_dir / "size.png"),
             "stages": plot_stages(rows, runs, metric, output_dir / "stages.png")}
    payload["plots"] = {k: v for k, v in plots.items() if v}
    write_json(output_dir / "report.json", payload)
    write_text(output_dir / "report.md", _compare_markdown(payload))
    return output_dir / "report.md"


def _better(value: float, metric: str) -> float:
    return -value if metric == "logloss" else value


def _protocol(runs: list[dict[str, Any]], metric: str) -> list[str]:
    lines = []
    for run in runs:
        ds = run.get("dataset") or {}
        seeds = run.get("seeds") or []
        lines.append(f"{run['run']}: dataset {ds.get('source')} (fingerprint {str(ds.get('fingerprint'))[:12]}), "
                     f"seeds {seeds} for the vanilla and distilled students (mean shown, ± the sample standard "
                     f"deviation), one teacher fit, compression and export of the first seed's distilled student")
    if metric == "ndcg@10":
        lines.append("quality: leave-one-out by time, full ranking over the whole catalogue, items already in the "
                     "history masked, model selected on validation, test evaluated once; cold/rare/warm = targets "
                     "with 0 / 1-10 / >10 training interactions; the teacher's tail = targets with <= 10")
    else:
        lines.append("quality: AUC / GAUC / LogLoss on the test split, model selected on validation")
    lines.append("compressed rows: the compression gate's evaluation of the artefact on the test split (same "
                 "protocol, overall metric only), against the distilled student it was made from")
    profile = next((r["profile_protocol"] for r in runs if r.get("profile_protocol")), None)
    if profile:
        lines.append(f"students' latency: {profile}; throughput at the largest batch")
    lines.append("teacher's latency: PyTorch eager, batch of 1 per user (p50/p99 over users), throughput over "
                 "its evaluation batches; not comparable in runtime with the ONNX rows")
    lines.append(f"a difference is marked 'within noise' when it is no larger than the seeds' spread, or "
                 f"{NOISE_ONE_SEED} {metric} with one seed")
    return lines


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def _size(nbytes: int | None) -> str:
    if nbytes is None:
        return "-"
    return f"{nbytes / 1024:,.0f} KiB" if nbytes < 10 * 1024 ** 2 else f"{nbytes / 1024 ** 2:,.1f} MiB"


def _compare_markdown(payload: dict[str, Any]) -> str:
    rows = payload["rows"]
    metric = payload["metric"]
    quality = [k for k in (RANKING if metric == "ndcg@10" else CTR) if any(k in r["metrics"] for r in rows)]
    slices = [k for k in (*SLICES, "tail/ndcg@10") if any(k in r["metrics"] for r in rows)]
    lines = [f"# {payload['title']}", "", "## Protocol", ""] + [f"- {p}" for p in payload["protocol"]] + [""]
    head = ["model", "what it is", *[k.upper() for k in quality], *slices, "params", "file",
            "p50 ms (b=1)", "p99 ms (b=1)", "rows/s (batch)", "threads", "runtime"]
    lines += ["## Results", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["label"], r["description"]]
        for k in quality + slices:
            value = r["metrics"].get(k)
            cell = _fmt(value, ".4f")
            if k in r.get("std", {}):
                cell += f" ± {r['std'][k]:.4f}"
            cells.append(cell)
        throughput = r.get("throughput")
        cells += [_fmt(r.get("params"), ","), _size(r.get("file_bytes")), _fmt(r.get("p50_ms"), ".2f"),
                  _fmt(r.get("p99_ms"), ".2f"),
                  "-" if throughput is None else f"{throughput:,.0f} (b={r.get('throughput_batch')})",
                  _fmt(r.get("threads"), "d"), r.get("runtime", "-")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Pareto front (quality vs p99 latency at batch 1): {', '.join(payload['pareto_front']) or '-'}", ""]
    lines += ["## Change per stage", "", f"| run | from | to | Δ {metric.upper()} | noise band | verdict |",
              "|---|---|---|---|---|---|"]
    for run, changes in payload["stage_changes"].items():
        for c in changes:
            verdict = "within noise" if c["within_noise"] else ("better" if c["delta"] > 0 else "worse")
            lines.append(f"| {run} | {SHORT.get(c['from'], c['from'])} | {SHORT.get(c['to'], c['to'])} | "
                         f"{c['delta']:+.4f} | ±{c['noise_band']:.4f} ({c['noise_rule']}) | {verdict} |")
    gated = [r for r in rows if r.get("gate")]
    if gated:
        lines += ["", "## Compression gate", "", "| model | passed | top-10 overlap | reasons |", "|---|---|---|---|"]
        for r in gated:
            g = r["gate"]
            lines.append(f"| {r['label']} | {g['passed']} | {_fmt(g.get('top10_overlap'), '.3f')} | "
                         f"{'; '.join(g.get('reasons') or []) or '-'} |")
    exports = [(run["run"], name, e) for run in payload["runs"] for name, e in (run.get("export") or {}).items()]
    if exports:
        lines += ["", "## ONNX export parity", "", "| run | student | parity | max abs diff |", "|---|---|---|---|"]
        lines += [f"| {run} | {name} | {e['parity']} | {_fmt(e.get('max_abs_diff'), '.2e')} |" for run, name, e in exports]
    lines += [""] + [f"![{name}]({Path(path).name})" for name, path in payload["plots"].items()] + [""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- older single-table report
def build_report(rows: list[dict[str, Any]], output_dir: str | Path, *, title: str, notes: list[str]) -> Path:
    """``rows``: ``{"name", "role", "metrics" (metrics.json), "latency" (optional dict)}``."""
    output_dir = Path(output_dir)
    payload = {"title": title, "notes": notes, "rows": [_row(r) for r in rows]}
    write_json(output_dir / "report.json", payload)
    plot_single_table(payload["rows"], output_dir / "quality_vs_latency.png")
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
