"""recdistill.compress: prune, recover, quantize and product-quantize a student, each artefact gated.

Modules (one job each): ``prune`` (``prune_student``), ``recover`` (``recover``: fine-tune with the
unpruned parent as teacher), ``quantize`` (PyTorch dynamic int8, ``QuantizedEmbedding``),
``onnx_quant`` (ONNX Runtime dynamic/static int8, fp16, op counts), ``pq`` (``PQItemEmbedding``,
``pq_compress``), ``pq_codes`` + ``pq_train`` (RecJPQ: codes before training, ``train_joint_pq``),
``gate`` (comparison with the fp32 parent and verdict), ``pipeline``
(``run_compress``) and ``cli`` (``add_compress_commands``).

Names resolve lazily (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    "prune_student": "recdistill.compress.prune",
    "PruneReport": "recdistill.compress.prune",
    "PruningError": "recdistill.compress.prune",
    "recover": "recdistill.compress.recover",
    "QuantizedEmbedding": "recdistill.compress.quantize",
    "quantize_item_table": "recdistill.compress.quantize",
    "dynamic_int8": "recdistill.compress.quantize",
    "quantize_dynamic_onnx": "recdistill.compress.onnx_quant",
    "quantize_static_onnx": "recdistill.compress.onnx_quant",
    "convert_fp16": "recdistill.compress.onnx_quant",
    "count_ops": "recdistill.compress.onnx_quant",
    "PQItemEmbedding": "recdistill.compress.pq",
    "pq_compress": "recdistill.compress.pq",
    "save_pq_student": "recdistill.compress.pq",
    "load_pq_student": "recdistill.compress.pq",
    "svd_codes": "recdistill.compress.pq_codes",
    "assign_codes": "recdistill.compress.pq_codes",
    "train_joint_pq": "recdistill.compress.pq_train",
    "GateThresholds": "recdistill.compress.gate",
    "gate_variant": "recdistill.compress.gate",
    "evaluate": "recdistill.compress.gate",
    "topk_overlap": "recdistill.compress.gate",
    "run_compress": "recdistill.compress.pipeline",
    "add_compress_commands": "recdistill.compress.cli",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'recdistill.compress' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
