"""Profile a student in PyTorch eager and/or an ONNX file side by side; write JSON + Markdown.

``profile_models(student=DIR_or_module, onnx_path=FILE, batch_sizes=(1, 256), threads=(1, 2))``
times every runtime at every batch size and thread count on the *same* inputs (full
sequences of ``seq_len`` items, or CTR rows built from the model's field sizes), records file
size and parameter count, and the ONNX-Runtime-over-PyTorch speed-up on p50 where both ran.
With a student and no ONNX file, the student is exported (fp32, parity-gated) to a temporary
file first, so PyTorch and ONNX Runtime are always compared in one run. The two are timed in
alternating blocks of calls (same machine load); ONNX Runtime at batch 1 uses the fixed-shape
session ``OnnxRecommender`` serves one-user requests with.
"""

from __future__ import annotations

import json
import platform
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recdistill.atomic import write_json, write_text
from recdistill.export.metadata import read_onnx_metadata
from recdistill.export.profile import profile_interleaved

DEFAULT_SEQ_LEN = 50


def numpy_inputs(meta: dict[str, Any], batch: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs by ONNX input name from metadata (``kind``, ``num_items``, ``init_args``); torch-free."""
    rng = np.random.default_rng(seed)
    n = max(int(meta.get("num_items") or 0), 1)
    if meta.get("kind") != "ctr":
        return {"input_ids": rng.integers(1, n + 1, size=(batch, length), dtype=np.int64)}
    init_args = meta.get("init_args") or {}
    dims = list(init_args.get("field_dims", []))
    sparse = np.stack([rng.integers(0, d, size=batch) for d in dims], axis=1) if dims else np.zeros((batch, 0))
    return {
        "sparse": sparse.astype(np.int64),
        "dense": rng.standard_normal((batch, int(init_args.get("dense_dim", 0) or 0))).astype(np.float32),
        "history": rng.integers(1, n + 1, size=(batch, length), dtype=np.int64),
    }


def profile_models(
    student: Any = None,
    onnx_path: str | Path | None = None,
    *,
    batch_sizes: Sequence[int] = (1, 256),
    threads: Sequence[int] = (1,),
    seq_len: int | None = None,
    warmup: int = 10,
    min_iters: int = 50,
    min_seconds: float = 1.0,
    clock: Callable[[], float] | None = None,
    fixed_single: bool = True,
) -> dict[str, Any]:
    """Profile ``student`` (module or folder; PyTorch eager) and ``onnx_path`` (ONNX Runtime).

    PyTorch and ONNX Runtime are timed interleaved (``profile_interleaved``: alternating blocks,
    the same load for both); at batch 1 ONNX Runtime runs the fixed-shape session that
    ``OnnxRecommender`` serves single histories with (``fixed_single=False``: the dynamic one)."""
    if student is None and onnx_path is None:
        raise ValueError("give a student, an ONNX file, or both")
    timer = {"warmup": warmup, "min_iters": min_iters, "min_seconds": min_seconds}
    if clock is not None:
        timer["clock"] = clock
    models: dict[str, Any] = {}
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="recdistill-profile-") as scratch:
        model = None
        if student is not None:
            from recdistill.export.onnx_export import export_onnx, resolve_student

            model, folder, _ = resolve_student(student)
            models["torch"] = {"source": str(folder) if folder else type(model).__name__,
                               "parameters": sum(p.numel() for p in model.parameters())}
            if onnx_path is None:
                onnx_path = export_onnx(model, Path(scratch) / "student.onnx").path
                models["exported_for_profile"] = True
        meta = read_onnx_metadata(onnx_path)
        models["onnx"] = {"path": str(onnx_path), "bytes": Path(onnx_path).stat().st_size,
                          "graph": meta.get("graph"), "student": meta.get("student")}
        length = min(seq_len or DEFAULT_SEQ_LEN, int(meta.get("max_len") or seq_len or DEFAULT_SEQ_LEN))
        if meta.get("kind") == "ctr" and seq_len is None:
            length = 20
        from recdistill.export.runtime import fixed_shape_dims, make_session

        for n_threads in threads:
            session = make_session(onnx_path, threads=n_threads)
            names = [i.name for i in session.get_inputs()]
            for batch in batch_sizes:
                feed = numpy_inputs(meta, batch, length)
                ort_feed = {k: feed[k] for k in names}
                # batch 1: the fixed-shape session OnnxRecommender serves one-user requests with
                ort_session = make_session(onnx_path, threads=n_threads, fixed_dims=fixed_shape_dims(
                    session, 1, length)) if batch == 1 and fixed_single else session
                targets = [("onnxruntime-fp32", ort_session, ort_feed)]
                if model is not None:
                    import torch

                    order = ("sparse", "dense", "history") if meta.get("kind") == "ctr" else ("input_ids",)
                    args = [torch.from_numpy(feed[k]) for k in order]
                    targets.insert(0, ("pytorch-eager", model, args))
                for record in profile_interleaved(targets, threads=n_threads, **timer):
                    if record["label"] != "pytorch-eager":
                        record["session"] = "fixed shape (batch 1)" if ort_session is not session else "dynamic shape"
                    runs.append(record)
    for run in runs:
        run["seq_len"] = length
    return {
        "models": models,
        "seq_len": length,
        "batch_sizes": list(batch_sizes),
        "threads": list(threads),
        "runs": runs,
        "speedup_p50": _speedups(runs),
        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine()},
    }


def _speedups(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """ONNX Runtime over PyTorch on p50, per (batch, threads) where both ran."""
    by_key = {(r["label"], r["batch_size"], r["threads"]): r for r in runs}
    out = []
    for (label, batch, threads), run in by_key.items():
        torch_run = by_key.get(("pytorch-eager", batch, threads))
        if label == "pytorch-eager" or torch_run is None:
            continue
        out.append({"batch_size": batch, "threads": threads, "onnx": label,
                    "speedup": torch_run["latency_ms"]["p50"] / run["latency_ms"]["p50"]})
    return out


def render_markdown(report: dict[str, Any]) -> str:
    """A Markdown table: one row per runtime x batch x threads."""
    lines = [
        "# Latency profile",
        "",
        f"Sequence/history length {report['seq_len']}; percentiles over single calls after warm-up.",
        "",
        "| runtime | batch | threads | p50 ms | p90 ms | p95 ms | p99 ms | mean ms | std ms | iters | rows/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in report["runs"]:
        lat = run["latency_ms"]
        lines.append(
            f"| {run['label']} | {run['batch_size']} | {run['threads']} | {lat['p50']:.3f} | {lat['p90']:.3f} | "
            f"{lat['p95']:.3f} | {lat['p99']:.3f} | {lat['mean']:.3f} | {lat['std']:.3f} | {run['iterations']} | "
            f"{run['throughput_per_s']:.0f} |"
        )
    if report.get("speedup_p50"):
        lines += ["", "| batch | threads | ONNX Runtime speed-up over PyTorch (p50) |", "|---:|---:|---:|"]
        lines += [f"| {s['batch_size']} | {s['threads']} | {s['speedup']:.2f}x |" for s in report["speedup_p50"]]
    models = report.get("models", {})
    if "onnx" in models:
        lines += ["", f"ONNX file: {models['onnx']['bytes'] / 1024:.1f} KiB"]
    if "torch" in models:
        lines += [f"Parameters: {models['torch']['parameters']:,}"]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], json_path: str | Path) -> tuple[Path, Path]:
    """Write ``report`` as JSON and as Markdown (same name, ``.md``)."""
    json_path = Path(json_path)
    markdown_path = json_path.with_suffix(".md")
    write_json(json_path, report)
    write_text(markdown_path, render_markdown(report))
    return json_path, markdown_path


def load_report(json_path: str | Path) -> dict[str, Any]:
    return json.loads(Path(json_path).read_text())
