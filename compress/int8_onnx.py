"""int8 ONNX of a whole student, item table included, and its top-K agreement with the fp32 file.

``int8_onnx(model, fp32_path, dst, item_table="per_row")``:

- ``per_row`` (students with an ``nn.Embedding`` item table): the table (and any other embedding
  table, e.g. positions) becomes a per-row int8 ``QuantizedEmbedding`` (one scale per row,
  ``compress/quantize.py``), exported, the scoring
  MatMul rewired to read that int8 table (``unfold_int8_item_table``), then every other
  MatMul/Gemm is dynamically quantized (int8 weights, activations quantized per call);
- ``per_tensor``: ONNX Runtime's dynamic quantization of MatMul, Gemm and Gather (one scale for
  the whole table);
- ``none`` (or a student without an item table): dynamic int8 of MatMul/Gemm only.

A CTR student's embedding tables are its field tables: ``per_row`` stores every one of at least 8
columns as per-row int8 (``quantize_embeddings``; nothing to rewire: no layer scores against them),
``per_tensor`` quantizes their Gathers with ONNX Runtime; MatMul/Gemm are dynamic int8 either way.

``topk_agreement(reference, candidate)`` runs both files with ONNX Runtime on the same seeded
inputs over a grid of batch and sequence sizes: the mean top-K overlap of the logits (sequential),
of the returned ids (serving graph), or the largest probability difference (CTR).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from recdistill.compress.onnx_quant import quantize_dynamic_onnx, unfold_int8_item_table
from recdistill.compress.quantize import quantize_embeddings, quantize_item_table

ITEM_TABLE_SCHEMES = ("per_row", "per_tensor", "none")
AGREEMENT_SHAPES = ((1, 50), (32, 50), (8, 12))


def has_item_table(model: nn.Module) -> bool:
    return isinstance(getattr(model, "item_embedding", None), nn.Embedding)


def is_ctr(model: nn.Module) -> bool:
    return getattr(model, "objective", None) == "ctr"


def has_embedding_tables(model: nn.Module) -> bool:
    """An item table (sequential) or any embedding table (CTR field tables)."""
    return has_item_table(model) or (is_ctr(model) and any(isinstance(m, nn.Embedding) for m in model.modules()))


def int8_onnx(model: nn.Module, fp32_path: str | Path, dst: str | Path, *, item_table: str = "per_row") -> dict[str, Any]:
    """Write the dynamic-int8 ONNX file of ``model`` (whose fp32 export is ``fp32_path``) to ``dst``;
    returns the quantization config (also written next to ``dst``)."""
    from recdistill.export import export_onnx

    if item_table not in ITEM_TABLE_SCHEMES:
        raise ValueError(f"item_table must be one of {ITEM_TABLE_SCHEMES}, got {item_table!r}")
    dst = Path(dst)
    if is_ctr(model) and item_table != "none" and has_embedding_tables(model):
        return _ctr_int8(model, fp32_path, dst, item_table)
    if item_table == "none" or not has_item_table(model):
        config = quantize_dynamic_onnx(fp32_path, dst)
        config["item_table"] = "not quantized" if has_item_table(model) else "no item table"
        return config
    if item_table == "per_tensor":
        config = quantize_dynamic_onnx(fp32_path, dst, operators=("MatMul", "Gemm", "Gather"))
        config["item_table"] = "per-tensor int8 Gather (ONNX Runtime dynamic quantization)"
        return config
    with tempfile.TemporaryDirectory(prefix="recdistill-int8-") as scratch:
        quantized = quantize_item_table(model, "per_row", other_tables=True)  # position tables too
        per_row = export_onnx(quantized, Path(scratch) / "per_row_fp32.onnx").path
        unfolded = Path(scratch) / "per_row_unfolded.onnx"
        score_nodes = unfold_int8_item_table(per_row, unfolded)
        config = quantize_dynamic_onnx(unfolded, dst, nodes_to_exclude=score_nodes)
    config["item_table"] = ("per-row int8 QuantizedEmbedding (compress/quantize.py) for the item table and every "
                            "other embedding table; scoring reads the same int8 item table, dequantized per row in "
                            "the graph")
    return config


def _ctr_int8(model: nn.Module, fp32_path: str | Path, dst: Path, scheme: str) -> dict[str, Any]:
    """A CTR student's int8 file with its embedding tables quantized (module docstring)."""
    from recdistill.export import export_onnx

    if scheme == "per_tensor":
        config = quantize_dynamic_onnx(fp32_path, dst, operators=("MatMul", "Gemm", "Gather"))
        config["item_table"] = "every embedding table: per-tensor int8 Gather (ONNX Runtime dynamic quantization)"
        return config
    with tempfile.TemporaryDirectory(prefix="recdistill-int8-") as scratch:
        per_row = export_onnx(quantize_embeddings(model), Path(scratch) / "per_row_fp32.onnx").path
        config = quantize_dynamic_onnx(per_row, dst)
    config["item_table"] = ("every embedding table of at least 8 columns: per-row int8 QuantizedEmbedding "
                            "(compress/quantize.py); narrower ones stay fp32")
    return config


def topk_agreement(reference: str | Path, candidate: str | Path, *, k: int = 10,
                   shapes: Sequence[tuple[int, int]] = AGREEMENT_SHAPES, seed: int = 0) -> dict[str, Any]:
    """Compare two ONNX files of one student on the same inputs (see module docstring)."""
    from recdistill.export.metadata import read_onnx_metadata
    from recdistill.export.profile_suite import numpy_inputs
    from recdistill.export.runtime import make_session

    meta = read_onnx_metadata(reference)
    ref, cand = make_session(reference, threads=1), make_session(candidate, threads=1)
    names = [i.name for i in ref.get_inputs()]
    per_shape: list[dict[str, Any]] = []
    max_len = int(meta.get("max_len") or 0)
    for batch, length in shapes:
        length = min(length, max_len) if max_len else length
        feed = {n: v for n, v in numpy_inputs(meta, batch, length, seed=seed).items() if n in names}
        a, b = ref.run(None, feed), cand.run(None, feed)
        if meta.get("kind") == "ctr":
            prob = lambda out: 1.0 / (1.0 + np.exp(-np.asarray(out[0], dtype=np.float64)))  # noqa: E731
            per_shape.append({"batch": batch, "length": length,
                              "max_probability_diff": float(np.abs(prob(a) - prob(b)).max())})
            continue
        if meta.get("graph") == "serving":  # outputs (scores, item_ids): compare the ids
            ids_a, ids_b = np.asarray(a[1])[:, :k], np.asarray(b[1])[:, :k]
        else:
            kk = min(k, a[0].shape[-1])
            ids_a = np.argpartition(-a[0], kk - 1, axis=-1)[:, :kk]
            ids_b = np.argpartition(-b[0], kk - 1, axis=-1)[:, :kk]
        overlap = [len(set(x.tolist()) & set(y.tolist())) / ids_a.shape[1] for x, y in zip(ids_a, ids_b)]
        per_shape.append({"batch": batch, "length": length, f"top{k}_overlap": float(np.mean(overlap))})
    key = "max_probability_diff" if meta.get("kind") == "ctr" else f"top{k}_overlap"
    values = [s[key] for s in per_shape]
    summary = max(values) if key == "max_probability_diff" else float(np.mean(values))
    return {"metric": key, "value": summary, "shapes": per_shape, "k": k, "inputs": "seeded random ids/fields"}
