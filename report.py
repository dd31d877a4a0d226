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
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any, Iterable, Sequence

from recdistill.atomic import write_json, write_text

KEYS = ("hr@10", "ndcg@10", "mrr@10", "ndcg@20")
RANKING = ("ndcg@10", "hr@10")
CTR = ("auc", "gauc", "logloss")
SLICES = ("cold/ndcg@10", "rare/ndcg@10", "warm/ndcg@10")
NOISE_ONE_SEED = 0.01  # NDCG@10 differences below this are within noise when there is one seed
STAGE_CHAIN = ("teacher", "vanilla", "distilled", "pruned", "quantized", "pruned+quantized")
SHORT = {"teacher": "teacher", "teacher-llm": "LLM part", "teacher-cf": "CF part", "vanilla": "vanilla",
         "distilled": "distilled", "pruned": "pruned", "quantized": "int8", "pruned+quantized": "pruned+int8"}
COLORS = {"teacher": "tab:red", "teacher-llm": "tab:pink", "teacher-cf": "tab:brown", "vanilla": "tab:blue",
          "distilled": "tab:green", "pruned": "tab:orange", "quantized": "tab:purple",
          "pruned+quantized": "tab:olive"}
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


# ----------------------------------------------------------------------------- Pareto front
def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points ``(latency, quality)`` no other point beats: lower-or-equal latency and
    higher-or-equal quality, one of them strictly. Sorted by latency."""
    front = []
    for i, (lat, q) in enumerate(points):
        dominated = any(
            (l2 <= lat and q2 >= q) and (l2 < lat or q2 > q) for j, (l2, q2) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


# ----------------------------------------------------------------------------- collecting rows
def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _quality_keys(test: dict[str, Any]) -> list[str]:
    keys = [k for k in RANKING + CTR + SLICES if k in test]
    return keys


def _student_row(run_dir: Path, key: str, description: str) -> dict[str, Any] | None:
    files = sorted((run_dir / "students" / key).glob("seed*/metrics.json"),
                   key=lambda p: int(p.parent.name[4:]) if p.parent.name[4:].isdigit() else 0)
    if not files:
        return None
    runs = [json.loads(f.read_text()) for f in files]
    keys = _quality_keys(runs[0].get("test", {}))
    metrics, std = {}, {}
    for k in keys:
        metrics[k], std[k] = _mean_std([r.get("test", {}).get(k) for r in runs])
    rel = [str(f.relative_to(run_dir)) for f in files]
    weights = files[0].parent / "student" / "model.safetensors"
    saved = _saved_params(weights)  # the servable student (training-only adapters are not in it)
    return {"key": key, "description": description, "metrics": metrics,
            "std": {k: v for k, v in std.items() if v is not None}, "seeds": len(runs),
            "params": saved if saved is not None else runs[0].get("num_parameters"),
            "training_params": runs[0].get("num_parameters"),
            "sources": {"metrics": [f"{r}#test" for r in rel],
                        "params": str(weights.relative_to(run_dir)) if saved is not None
                        else f"{rel[0]}#num_parameters"}}


def _saved_params(path: Path) -> int | None:
    """Number of elements in a safetensors file (read from its header only)."""
    if not path.is_file():
        return None
    import struct

    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    return int(sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__"))


def _teacher_rows(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "teacher" / "metrics.json"
    metrics = _read(path)
    if metrics is None:
        return []
    base = (metrics.get("base_model") or {}).get("name") or (metrics.get("base_model") or {}).get("id") or "LLM"
    test = metrics.get("test", {})
    rows = [{"key": "teacher", "description": f"teacher ({base} + LoRA"
             + (", fused with the vanilla student)" if "fusion" in metrics else ")"),
             "metrics": {k: test[k] for k in _quality_keys(test)}, "std": {}, "seeds": 1,
             "params": metrics.get("num_parameters"),
             "sources": {"metrics": ["teacher/metrics.json#test"], "params": "teacher/metrics.json#num_parameters"}}]
    latency = metrics.get("latency") or {}
    if latency:
        rows[0].update(p50_ms=latency.get("p50_ms"), p99_ms=latency.get("p99_ms"), threads=latency.get("threads"),
                       runtime="pytorch", throughput=latency.get("sequences_per_second"),
                       throughput_batch=latency.get("throughput_batch_size"))
        rows[0]["sources"]["latency"] = "teacher/metrics.json#latency"
    tail = (metrics.get("long_tail") or {}).get("test") or {}
    if "ndcg@10" in tail:
        rows[0]["metrics"]["tail/ndcg@10"] = tail["ndcg@10"]
    fusion = metrics.get("fusion") or {}
    for part, key, label in (("llm_only", "teacher-llm", "teacher's LLM part alone (alpha = 1)"),
                             ("collaborative_only", "teacher-cf", "teacher's collaborative part alone (alpha = 0)")):
        if part in fusion:
            ptest = fusion[part].get("test", {})
            row = {"key": key, "description": label, "metrics": {k: ptest[k] for k in _quality_keys(ptest)},
                   "std": {}, "seeds": 1, "sources": {"metrics": [f"teacher/metrics.json#fusion.{part}.test"]}}
            ptail = fusion[part].get("long_tail_test") or {}
            if "ndcg@10" in ptail:
                row["metrics"]["tail/ndcg@10"] = ptail["ndcg@10"]
            rows.append(row)
    return rows


def _compressed_rows(run_dir: Path, distilled: dict[str, Any] | None) -> list[dict[str, Any]]:
    summary = _read(run_dir / "compressed" / "compress.json")
    if summary is None:
        return []
    records = {r["name"]: r for r in summary.get("variants", [])}
    pruned_name = "pruned_recovered" if "pruned_recovered" in records else "pruned"
    wanted = (("pruned", pruned_name, "distilled student, pruned" + (" + recovered" if pruned_name ==
                                                                        "pruned_recovered" else "")),
              ("quantized", "onnx_int8_dynamic", "distilled student, ONNX dynamic int8"),
              ("pruned+quantized", "onnx_pruned_int8", "distilled student, pruned, ONNX dynamic int8"))
    rows = []
    for key, name, description in wanted:
        record = records.get(name)
        if record is None:
            continue
        metrics = {m: record[src] for m, src in (("ndcg@10", "ndcg10"), ("auc", "auc")) if record.get(src) is not None}
        if "hr@10" in record:
            metrics["hr@10"] = record["hr@10"]
        params = record.get("params")
        if params is None:  # ONNX variants: the parameters of the model they were made from
            params = records.get(pruned_name, {}).get("params") if key == "pruned+quantized" else \
                (distilled or {}).get("params")
        rows.append({"key": key, "description": description, "metrics": metrics, "std": {}, "seeds": 1,
                     "params": params, "gate": {"passed": record.get("passed"), "reasons": record.get("reasons"),
                                                "top10_overlap": record.get("top10_overlap")},
                     "sources": {"metrics": [f"compressed/compress.json#variants[{name}]"]}})
    return rows


def _attach_profile(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    profile = _read(run_dir / "profile" / "profile.json")
    if profile is None:
        return
    for row in rows:
        model = profile.get("models", {}).get(row["key"])
        if model is None:
            continue
        runs = model.get("runs", [])
        b1 = [r for r in runs if r["batch_size"] == 1]
        big = sorted((r for r in runs if r["batch_size"] > 1), key=lambda r: -r["batch_size"])
        if b1:
            threads = min(r["threads"] for r in b1)
            first = next(r for r in b1 if r["threads"] == threads)
            row.update(p50_ms=first["latency_ms"]["p50"], p99_ms=first["latency_ms"]["p99"], threads=threads,
                       runtime=first.get("runtime", "onnxruntime"))
        if big:
            same = [r for r in big if r["threads"] == row.get("threads", r["threads"])] or big
            row.update(throughput=same[0]["throughput_per_s"], throughput_batch=same[0]["batch_size"])
        row["file_bytes"] = model.get("bytes")
        row["file"] = model.get("file")
        row["sources"]["latency"] = f"profile/profile.json#models.{row['key']}"


def collect_run(run_dir: str | Path) -> dict[str, Any]:
    """Rows and protocol of one run folder (see the module docstring)."""
    run_dir = Path(run_dir)
    info = _read(run_dir / "run.json") or {}
    rows = _teacher_rows(run_dir)
    distill_metrics = sorted((run_dir / "students" / "distilled").glob("seed*/metrics.json"))
    terms = ""
    if distill_metrics:
        distill = json.loads(distill_metrics[0].read_text()).get("distill", {})
        terms = ", ".join(f"{t['name']}x{t.get('weight', 1.0)}" for t in distill.get("terms") or [])
    vanilla = _student_row(run_dir, "vanilla", "student trained on the data alone")
    distilled = _student_row(run_dir, "distilled", f"student distilled from the teacher's signals ({terms or 'no terms'})")
    rows += [r for r in (vanilla, distilled) if r is not None]
    rows += _compressed_rows(run_dir, distilled)
    _attach_profile(run_dir, rows)
    export = {}
    for name in ("vanilla", "distilled"):
        prov = _read(run_dir / "export" / f"{name}.provenance.json")
        if prov is not None:
            export[name] = {"parity": prov.get("status"), "max_abs_diff": (prov.get("parity") or {}).get("max_abs_diff")}
    profile = _read(run_dir / "profile" / "profile.json") or {}
    return {"run": run_dir.name, "name": (info.get("recipe") or {}).get("name"), "path": str(run_dir),
            "rows": rows, "export": export,
            "profile_protocol": profile.get("protocol"), "dataset": info.get("dataset"),
            "seeds": info.get("seeds"), "versions": info.get("versions"), "threads": info.get("threads"),
            "teacher": info.get("teacher"), "wall_seconds": info.get("wall_seconds")}


# ----------------------------------------------------------------------------- noise and stage changes
def primary_metric(rows: Iterable[dict[str, Any]]) -> str:
    rows = list(rows)
    return "ndcg@10" if any("ndcg@10" in r["metrics"] for r in rows) else "auc"


def noise_band(a: dict[str, Any], b: dict[str, Any], metric: str) -> tuple[float, str]:
    """The spread a difference between rows ``a`` and ``b`` must exceed to count, and how it was set."""
    spreads = [r["std"][metric] for r in (a, b) if metric in r.get("std", {})]
    if spreads:
        return max(spreads), "the larger seed standard deviation"
    return NOISE_ONE_SEED, f"{NOISE_ONE_SEED} {metric.upper()} (one seed)"


def stage_changes(rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    by_key = {r["key"]: r for r in rows}
    chain = [by_key[k] for k in STAGE_CHAIN if k in by_key and metric in by_key[k]["metrics"]]
    out = []
    for prev, cur in zip(chain, chain[1:]):
        # a compressed variant is compared with the distilled student it was made from
        ref = by_key.get("distilled", prev) if cur["key"] in ("pruned", "quantized", "pruned+quantized") else prev
        if metric not in ref["metrics"]:
            ref = prev
        delta = cur["metrics"][metric] - ref["metrics"][metric]
        band, how = noise_band(ref, cur, metric)
        spread_ref = {**ref, "std": {**ref.get("std", {})}}
        if cur["key"] in ("pruned", "quantized", "pruned+quantized") and metric in spread_ref["std"]:
            band, how = spread_ref["std"][metric], "the distilled student's seed standard deviation"
        out.append({"from": ref["key"], "to": cur["key"], "metric": metric, "delta": delta,
                    "noise_band": band, "noise_rule": how, "within_noise": abs(delta) <= band})
    return out


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
    plots = {"quality_vs_latency": _plot_quality_latency(timed, front, metric, output_dir / "quality_vs_latency.png"),
             "size": _plot_size(rows, output_dir / "size.png"),
             "stages": _plot_stages(rows, runs, metric, output_dir / "stages.png")}
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


# ----------------------------------------------------------------------------- plots
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


def _plot_quality_latency(timed: list[dict[str, Any]], front: list[int], metric: str, path: Path) -> str | None:
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


def _plot_size(rows: list[dict[str, Any]], path: Path) -> str | None:
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


def _plot_stages(rows: list[dict[str, Any]], runs: list[dict[str, Any]], metric: str, path: Path) -> str | None:
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


# ----------------------------------------------------------------------------- older single-table report
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
