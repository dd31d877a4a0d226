"""recdistill: distil a LoRA-tuned LLM recommender into small, fast, servable recommenders.

The repository root is the package. This file must stay free of eager imports (pytest also
imports it under the checkout folder's name, which would load every submodule twice); the
public API is resolved lazily through PEP 562 ``__getattr__``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "load_dataset": "recdistill.data",
    "SequentialSplit": "recdistill.data",
    "SequentialDataModule": "recdistill.data",
    "CTRDataModule": "recdistill.data",
    "STUDENTS": "recdistill.student",
    "build_student": "recdistill.student",
    "full_ranking_metrics": "recdistill.metrics",
    "ctr_metrics": "recdistill.metrics",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'recdistill' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
