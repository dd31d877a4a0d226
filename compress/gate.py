"""The gate: every compressed artefact against its fp32 parent, with a verdict and its reasons.

A *scorer* is any callable ``batch dict -> scores`` (sequential: ``[B, N+1]`` logits from
``batch["input_ids"]``; CTR: ``[B]`` logits from ``sparse``/``dense``/``history``), so PyTorch
modules (``torch_scorer``) and ONNX Runtime sessions (``onnx_scorer``) are gated the same way.

``evaluate`` runs a scorer over evaluation batches: sequential -> full-ranking NDCG@10 (history
masked) and the scores kept for the top-10 overlap; CTR -> AUC. ``gate_variant`` compares one
variant with the parent: top-10 overlap (sequential; the mean fraction of the parent's top-10
items, padding column and history masked, that the variant also ranks in its top-10), relative
NDCG@10 drop (or absolute AUC drop), file size, parameter count and latency; the verdict fails,
with a reason per broken threshold, when the variant ranks worse or runs slower than allowed.
Nothing is ever silently chosen: ``pick_best`` only picks among passing variants and says so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recdistill.metrics import auc, mask_history, ranking_metrics_from_ranks, target_ranks

Scorer = Callable[[Mapping[str, torch.Tensor]], torch.Tensor]


@dataclass
class GateThresholds:
    min_top10_overlap: float = 0.9
    max_ndcg_drop: float = 0.02  # relative: variant NDCG@10 >= (1 - max_ndcg_drop) * parent
    max_auc_drop: float = 0.005  # absolute, CTR students
    must_be_faster: bool = False  # latency p50 strictly below the parent's
    max_latency_ratio: float | None = None  # e.g. 1.1: at most 10% slower than the parent
    max_size_ratio: float | None = None  # e.g. 0.3: at most 30% of the parent's file

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "GateThresholds":
        values = dict(values or {})
        from recdistill.errors import ConfigError

        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unknown gate threshold(s) {sorted(unknown)} under gate; "
                              f"known: {sorted(cls.__dataclass_fields__)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def torch_scorer(model: torch.nn.Module) -> Scorer:
    model.eval()

    def score(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            if "input_ids" in batch:
                return model(batch["input_ids"]).float()
            return model(batch["sparse"], batch["dense"], batch["history"]).float()

    return score


def onnx_scorer(path: str | Path, threads: int = 1) -> tuple[Scorer, Any]:
    """``(scorer, session)`` for an ONNX file (inputs named as in the graph: ``input_ids`` or the CTR trio)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    types = {i.name: i.type for i in session.get_inputs()}

    def feed(batch: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
        out = {}
        for name in names:
            value = batch[name].numpy()
            if types[name] == "tensor(float16)":
                value = value.astype(np.float16)
            elif types[name] == "tensor(float)":
                value = value.astype(np.float32)
            out[name] = value
        return out

    def score(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return torch.from_numpy(np.asarray(session.run(None, feed(batch))[0], dtype=np.float32))

    score.feed = feed  # type: ignore[attr-defined]
    return score, session


def _ranked(scores: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    history = batch.get("history")
    if history is not None and "target" in batch:
        return mask_history(scores, history, batch["target"])
    masked = scores.clone()
    masked[:, 0] = -torch.inf
    return masked


def evaluate(scorer: Scorer, batches: Iterable[Mapping[str, torch.Tensor]], k: int = 10) -> dict[str, Any]:
    """``{"kind", "ndcg@k" | "auc", "scores": [...]}`` (scores kept for the overlap, then dropped)."""
    scores, ranks, logits, labels = [], [], [], []
    kind = None
    for batch in batches:
        s = scorer(batch)
        if "input_ids" in batch:
            kind = "sequential"
            masked = _ranked(s, batch)
            scores.append(masked)
            if "target" in batch:
                ranks.append(target_ranks(masked, batch["target"]))
        else:
            kind = "ctr"
            logits.append(s.flatten())
            labels.append(batch["label"].flatten())
    if kind is None:
        raise ValueError("no evaluation batches")
    if kind == "sequential":
        out: dict[str, Any] = {"kind": kind, "scores": scores}
        if ranks:
            metrics = ranking_metrics_from_ranks(torch.cat(ranks), (k,))
            out[f"ndcg@{k}"] = metrics[f"ndcg@{k}"]
            out[f"hr@{k}"] = metrics[f"hr@{k}"]
        return out
    return {"kind": kind, "auc": auc(torch.cat(logits), torch.cat(labels)), "scores": logits}


def topk_overlap(reference: list[torch.Tensor] | torch.Tensor, other: list[torch.Tensor] | torch.Tensor,
                 k: int = 10) -> float:
    """Mean over rows of |top-k(reference) ∩ top-k(other)| / k (scores already masked)."""
    ref = torch.cat(reference) if isinstance(reference, list) else reference
    oth = torch.cat(other) if isinstance(other, list) else other
    a = torch.topk(ref, k, dim=1).indices
    b = torch.topk(oth, k, dim=1).indices
    hits = (a[:, :, None] == b[:, None, :]).any(dim=2).float().sum(dim=1)
    return float((hits / k).mean())


def median_latency_ms(fn: Callable[[], Any], runs: int = 30, warmup: int = 5) -> float:
    """Simple median of ``runs`` timed calls after ``warmup`` (the export profiler gives full percentiles)."""
    import time

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def gate_variant(
    name: str,
    parent: Mapping[str, Any],
    variant: Mapping[str, Any],
    thresholds: GateThresholds,
    *,
    size_bytes: int | None = None,
    parent_size_bytes: int | None = None,
    params: int | None = None,
    parent_params: int | None = None,
    latency_ms: float | None = None,
    parent_latency_ms: float | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Compare ``variant`` with ``parent`` (both from ``evaluate``) and return the JSON-ready verdict."""
    reasons: list[str] = []
    record: dict[str, Any] = {"name": name, "kind": parent["kind"]}
    if parent["kind"] == "sequential":
        overlap = topk_overlap(parent["scores"], variant["scores"], 10)
        record["top10_overlap"] = overlap
        if overlap < thresholds.min_top10_overlap:
            reasons.append(f"top-10 overlap {overlap:.3f} < {thresholds.min_top10_overlap}")
        if "ndcg@10" in parent:
            p, v = parent["ndcg@10"], variant["ndcg@10"]
            drop = (p - v) / p if p > 0 else 0.0
            record.update(ndcg10=v, parent_ndcg10=p, ndcg10_ratio=v / p if p > 0 else None, ndcg10_rel_drop=drop)
            if drop > thresholds.max_ndcg_drop:
                reasons.append(f"NDCG@10 {v:.4f} is {drop:.1%} below the parent's {p:.4f} "
                               f"(max drop {thresholds.max_ndcg_drop:.1%})")
    else:
        p, v = parent["auc"], variant["auc"]
        record.update(auc=v, parent_auc=p, auc_delta=v - p)
        if p - v > thresholds.max_auc_drop:
            reasons.append(f"AUC {v:.4f} is {p - v:.4f} below the parent's {p:.4f} (max {thresholds.max_auc_drop})")
    record.update(size_bytes=size_bytes, parent_size_bytes=parent_size_bytes, params=params,
                  parent_params=parent_params, latency_p50_ms=latency_ms, parent_latency_p50_ms=parent_latency_ms)
    if size_bytes and parent_size_bytes:
        record["size_ratio"] = size_bytes / parent_size_bytes
        if thresholds.max_size_ratio is not None and record["size_ratio"] > thresholds.max_size_ratio:
            reasons.append(f"size {record['size_ratio']:.3f}x of the parent > {thresholds.max_size_ratio}")
    if latency_ms is not None and parent_latency_ms:
        ratio = latency_ms / parent_latency_ms
        record["latency_ratio"] = ratio
        if thresholds.must_be_faster and ratio >= 1.0:
            reasons.append(f"not faster than the parent: p50 {latency_ms:.3f} ms vs {parent_latency_ms:.3f} ms")
        if thresholds.max_latency_ratio is not None and ratio > thresholds.max_latency_ratio:
            reasons.append(f"latency {ratio:.2f}x the parent's > {thresholds.max_latency_ratio}")
    elif thresholds.must_be_faster:
        reasons.append("latency not measured, so must_be_faster cannot be confirmed")
    record.update(extra or {})
    record["passed"] = not reasons
    record["reasons"] = reasons
    return record


def pick_best(records: list[dict[str, Any]], key: str = "top10_overlap") -> dict[str, Any]:
    """The passing record with the highest ``key``; ``{"chosen": None, "why": ...}`` when none passes."""
    passing = [r for r in records if r["passed"] and r.get(key) is not None]
    if not passing:
        return {"chosen": None, "why": "no variant passed the gate: " +
                "; ".join(f"{r['name']}: {', '.join(r['reasons']) or 'no ' + key}" for r in records)}
    best = max(passing, key=lambda r: r[key])
    return {"chosen": best["name"], "why": f"highest {key} ({best[key]:.3f}) among passing variants "
                                           f"{[r['name'] for r in passing]}"}
