"""Parity gate: PyTorch against ONNX Runtime over a grid of shapes other than the export shape.

For every ``(batch, length)`` of the grid (``length`` = sequence length, or history length for
CTR students), the same random inputs (left-padded, one full and one fully padded row) go
through the student in PyTorch and through the ONNX file in ONNX Runtime. Per shape:

- **values**: ``max |onnx - torch| <= atol + rtol * max |torch|`` (logits, serving scores or
  CTR logits; ``atol=None`` skips the check, for int8 artefacts);
- **ranking** (sequential students): the top-``k`` items of each row, padding column excluded
  (serving graphs: after history masking). With ``min_topk_overlap=None`` (fp32) the ONNX
  top-``k`` must be identical *up to ties*: every item ONNX returns must score, in PyTorch, at
  least the PyTorch ``k``-th score minus the value tolerance, so near-equal scores may swap
  places. With a threshold (int8), the mean per-row overlap ``|onnx ∩ torch| / k`` must reach it.

A failing shape raises ``ParityError`` naming the student and the shape; the full
``ParityResult`` (every shape, pass or fail) rides on the error so it can be recorded.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from recdistill.export.graphs import (
    CTR, ServingGraph, example_inputs, num_items, student_kind, student_max_len, student_name,
)
from recdistill.export.metadata import decode_metadata

DEFAULT_BATCHES = (1, 3, 17)
DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-4
DEFAULT_K = 10


class ParityError(RuntimeError):
    """ONNX Runtime disagrees with PyTorch for ``student`` at ``shape`` = ``(batch, length)``."""

    def __init__(self, student: str, shape: tuple[int, int], detail: str, result: ParityResult | None = None):
        self.student, self.shape, self.detail, self.result = student, shape, detail, result
        where = f"shape (batch={shape[0]}, length={shape[1]})"
        super().__init__(f"parity failed for student {student!r} at {where}: {detail}")


@dataclass
class ShapeResult:
    batch: int
    length: int
    max_abs_diff: float
    tolerance: float | None
    values_ok: bool
    topk_identical: bool | None = None  # tie-aware; None for CTR
    topk_overlap_mean: float | None = None
    topk_overlap_min: float | None = None
    passed: bool = True
    detail: str = ""


@dataclass
class ParityResult:
    student: str
    graph: str
    passed: bool
    atol: float | None
    rtol: float
    k: int | None
    min_topk_overlap: float | None
    shapes: list[ShapeResult] = field(default_factory=list)

    @property
    def first_failure(self) -> ShapeResult | None:
        return next((s for s in self.shapes if not s.passed), None)

    @property
    def max_abs_diff(self) -> float:
        return max((s.max_abs_diff for s in self.shapes), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "max_abs_diff": self.max_abs_diff}


def default_shapes(student: nn.Module, max_len: int | None = None) -> list[tuple[int, int]]:
    """Batches 1, 3, 17 x lengths 1, 5 and ``max_len`` (the export uses batch 2)."""
    longest = max_len or student_max_len(student)
    lengths = sorted({min(1, longest), min(5, longest), longest})
    return [(b, n) for b in DEFAULT_BATCHES for n in lengths]


def _session(onnx_path: str | Path) -> Any:
    from recdistill.export.runtime import make_session

    return make_session(onnx_path, threads=1)


def check_parity(
    student: nn.Module,
    onnx_path: str | Path,
    shapes: Iterable[tuple[int, int]] | None = None,
    atol: float | None = DEFAULT_ATOL,
    min_topk_overlap: float | None = None,
    *,
    rtol: float = DEFAULT_RTOL,
    k: int = DEFAULT_K,
    seed: int = 0,
    raise_on_failure: bool = True,
    session: Any = None,
) -> ParityResult:
    """Compare ``student`` (PyTorch, eval) with ``onnx_path`` (ONNX Runtime) over ``shapes``.

    Returns a ``ParityResult``; raises ``ParityError`` at the first failing shape (after checking
    them all, so the attached result is complete) unless ``raise_on_failure=False``.
    """
    student = student.eval()
    session = session or _session(onnx_path)
    meta = decode_metadata(session.get_modelmeta().custom_metadata_map)
    graph = meta.get("graph", "ctr" if student_kind(student) == CTR else "logits")
    name = student_name(student)
    shapes = list(shapes) if shapes is not None else default_shapes(student, meta.get("max_len"))
    topk = {"ctr": None, "serving": meta.get("k")}.get(graph, min(k, max(num_items(student), 1)))
    result = ParityResult(name, graph, True, atol, rtol, topk, min_topk_overlap)
    feed_names = [i.name for i in session.get_inputs()]
    for i, (batch, length) in enumerate(shapes):
        inputs = example_inputs(student, batch, length, seed=seed + 1 + i)
        feed = {n: t.numpy() for n, t in zip(("sparse", "dense", "history"), inputs)} if graph == "ctr" else {
            "input_ids": inputs[0].numpy()}
        outputs = session.run(None, {n: feed[n] for n in feed_names})
        with torch.inference_mode():
            result.shapes.append(_compare(student, graph, inputs, outputs, batch, length, result))
    result.passed = all(s.passed for s in result.shapes)
    failure = result.first_failure
    if failure is not None and raise_on_failure:
        raise ParityError(name, (failure.batch, failure.length), failure.detail, result)
    return result


def _compare(student: nn.Module, graph: str, inputs: Sequence[torch.Tensor], outputs: list[np.ndarray],
             batch: int, length: int, result: ParityResult) -> ShapeResult:
    if graph == "ctr":
        reference = student(*inputs).numpy()
        return _values(reference, outputs[0], batch, length, result)
    if graph == "serving":
        masked = ServingGraph(student, outputs[0].shape[1]).masked_logits(inputs[0]).numpy()
        ref_scores = -np.sort(-masked, axis=1)[:, : outputs[0].shape[1]]
        shape = _values(ref_scores, outputs[0], batch, length, result)
        return _ranking(shape, masked, outputs[1], result)
    reference = student(inputs[0]).numpy()
    shape = _values(reference, outputs[0], batch, length, result)
    ref_masked, onnx_masked = reference.copy(), outputs[0].astype(np.float64)
    ref_masked[:, 0] = onnx_masked[:, 0] = -np.inf  # padding column
    onnx_ids = np.argsort(-onnx_masked, axis=1, kind="stable")[:, : result.k]
    return _ranking(shape, ref_masked, onnx_ids, result)


def _values(reference: np.ndarray, got: np.ndarray, batch: int, length: int, result: ParityResult) -> ShapeResult:
    reference, got = reference.astype(np.float64), got.astype(np.float64)
    if reference.shape != got.shape:
        return ShapeResult(batch, length, float("inf"), None, False, passed=False,
                           detail=f"output shape {got.shape} != PyTorch {reference.shape}")
    both_inf = np.isinf(reference) & np.isinf(got) & (np.sign(reference) == np.sign(got))
    with np.errstate(invalid="ignore"):  # -inf - -inf on masked columns
        diff = np.where(both_inf, 0.0, np.abs(got - reference))
    finite = reference[np.isfinite(reference)]
    max_diff = float(np.nan_to_num(diff, nan=np.inf).max(initial=0.0))
    if np.isnan(got).any():
        return ShapeResult(batch, length, max_diff, None, False, passed=False, detail="ONNX output contains NaN")
    if result.atol is None:
        return ShapeResult(batch, length, max_diff, None, True)
    tolerance = result.atol + result.rtol * float(np.abs(finite).max(initial=0.0))
    ok = max_diff <= tolerance
    detail = "" if ok else f"max |onnx - torch| = {max_diff:.3g} > tolerance {tolerance:.3g}"
    return ShapeResult(batch, length, max_diff, tolerance, ok, passed=ok, detail=detail)


def _ranking(shape: ShapeResult, ref_scores: np.ndarray, onnx_ids: np.ndarray, result: ParityResult) -> ShapeResult:
    """Tie-aware top-k identity and top-k overlap of ``onnx_ids`` against full reference scores."""
    k = onnx_ids.shape[1]
    ref_ids = np.argsort(-ref_scores, axis=1, kind="stable")[:, :k]
    kth = np.take_along_axis(ref_scores, ref_ids[:, -1:], axis=1)  # [B, 1]
    slack = shape.tolerance if shape.tolerance is not None else 0.0
    picked = np.take_along_axis(ref_scores, onnx_ids.astype(np.int64), axis=1)
    distinct = np.array([len(set(row)) == k for row in onnx_ids.tolist()])
    identical = bool((distinct & (picked >= kth - slack).all(axis=1)).all())
    overlap = np.array([len(set(a) & set(b)) / k for a, b in zip(onnx_ids.tolist(), ref_ids.tolist())])
    shape.topk_identical = identical
    shape.topk_overlap_mean = float(overlap.mean()) if overlap.size else 1.0
    shape.topk_overlap_min = float(overlap.min()) if overlap.size else 1.0
    if result.min_topk_overlap is None:
        ranking_ok, why = identical, f"top-{k} differs from PyTorch beyond ties"
    else:
        ranking_ok = shape.topk_overlap_mean >= result.min_topk_overlap
        why = f"top-{k} overlap {shape.topk_overlap_mean:.3f} < {result.min_topk_overlap}"
    if not ranking_ok:
        shape.passed = False
        shape.detail = "; ".join(d for d in (shape.detail, why) if d)
    return shape
