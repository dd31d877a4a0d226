"""recdistill.export: ONNX export, parity gate, serving runtime and latency profiler.

Modules (one job each): ``graphs`` (what is exported), ``onnx_export`` (``export_onnx``),
``parity`` (``check_parity``, ``ParityError``), ``metadata`` (ONNX metadata, sidecars),
``runtime`` (``OnnxRecommender``; numpy + onnxruntime only), ``profile`` (``profile_latency``),
``profile_suite`` (side-by-side profiles, JSON + Markdown), ``cli`` (``export``/``profile``).

Names resolve lazily (PEP 562), so ``from recdistill.export import OnnxRecommender`` imports
neither torch nor onnx.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    "export_onnx": "recdistill.export.onnx_export",
    "ExportResult": "recdistill.export.onnx_export",
    "check_parity": "recdistill.export.parity",
    "ParityError": "recdistill.export.parity",
    "ParityResult": "recdistill.export.parity",
    "OnnxRecommender": "recdistill.export.runtime",
    "Recommender": "recdistill.export.runtime",
    "make_session": "recdistill.export.runtime",
    "VocabularyMismatchError": "recdistill.export.runtime",
    "profile_latency": "recdistill.export.profile",
    "latency_stats": "recdistill.export.profile",
    "profile_models": "recdistill.export.profile_suite",
    "read_onnx_metadata": "recdistill.export.metadata",
    "add_export_commands": "recdistill.export.cli",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'recdistill.export' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
