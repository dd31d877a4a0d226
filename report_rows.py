"""Report data: the rows of a run folder read from its JSON files, noise bands, stage changes, Pareto front."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any, Iterable, Sequence

RANKING = ("ndcg@10", "hr@10")
CTR = ("auc", "gauc", "logloss")
SLICES = ("cold/ndcg@10", "rare/ndcg@10", "warm/ndcg@10")
NOISE_ONE_SEED = 0.01  # NDCG@10 differences below this are within noise when there is one seed
STAGE_CHAIN = ("teacher", "vanilla", "distilled", "pruned", "quantized", "pruned+quantized")
SHORT = {"teacher": "teacher", "teacher-llm": "LLM part", "teacher-cf": "CF part", "vanilla": "vanilla",
         "distilled": "distilled", "pruned": "pruned", "quantized": "int8", "pruned+quantized": "pruned+int8"}


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


def _seed_metrics(run_dir: Path, key: str, seeds: Sequence[int] | None) -> list[Path]:
    """``students/<key>/seed<S>/metrics.json`` of the run's ``seeds`` (``run.json``), in their order; a folder
    of a seed the run no longer has (left by an earlier run of the same folder) is not this run's result.
    Without ``seeds`` (an older run folder): every seed folder, by seed."""
    root = run_dir / "students" / key
    if seeds is not None:
        return [f for f in (root / f"seed{int(s)}" / "metrics.json" for s in seeds) if f.is_file()]
    return sorted(root.glob("seed*/metrics.json"),
                  key=lambda p: int(p.parent.name[4:]) if p.parent.name[4:].isdigit() else 0)


def _student_row(run_dir: Path, key: str, description: str,
                 seeds: Sequence[int] | None = None) -> dict[str, Any] | None:
    files = _seed_metrics(run_dir, key, seeds)
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
    seeds = info.get("seeds")
    seeds = seeds if isinstance(seeds, list) and all(isinstance(s, int) for s in seeds) else None
    distill_metrics = _seed_metrics(run_dir, "distilled", seeds)
    terms = ""
    if distill_metrics:
        distill = json.loads(distill_metrics[0].read_text()).get("distill", {})
        terms = ", ".join(f"{t['name']}x{t.get('weight', 1.0)}" for t in distill.get("terms") or [])
    vanilla = _student_row(run_dir, "vanilla", "student trained on the data alone", seeds)
    distilled = _student_row(run_dir, "distilled", f"student distilled from the teacher's signals ({terms or 'no terms'})",
                             seeds)
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
