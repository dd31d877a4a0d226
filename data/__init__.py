"""recdistill.data: load interactions, split them chronologically, serve batches.

``load_interactions`` (alias ``load_dataset``) reads MovieLens, RecBole atomic files or any table;
``build_sequential_split`` / ``load_split`` give the leave-one-out :class:`SequentialSplit`;
``SequentialDataModule`` and ``CTRDataModule`` serve batches; ``synthetic_interactions`` makes
seeded data with planted sequential patterns for tests and scale benchmarks.

The DataModules import torch and Lightning, so they are resolved lazily (PEP 562): reading and
splitting data (``recdistill data info``) stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from recdistill.data.planted_text import planted_text_interactions, write_planted_text_csv
from recdistill.data.readers import DataFormatError, detect_format, load_dataset, load_interactions
from recdistill.data.schema import EXAMPLE_STRIDE, PAD, Example, Interactions, SequentialSplit, split_example_id
from recdistill.data.sequential import build_sequential_split, data_info, load_split
from recdistill.data.synthetic import planted_successor, synthetic_interactions

if TYPE_CHECKING:
    from recdistill.data.datamodules import CTRDataModule, SequentialDataModule

_LAZY = {"SequentialDataModule": "recdistill.data.datamodules", "CTRDataModule": "recdistill.data.datamodules"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'recdistill.data' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "EXAMPLE_STRIDE",
    "PAD",
    "CTRDataModule",
    "DataFormatError",
    "Example",
    "Interactions",
    "SequentialDataModule",
    "SequentialSplit",
    "build_sequential_split",
    "data_info",
    "detect_format",
    "load_dataset",
    "load_interactions",
    "load_split",
    "planted_successor",
    "planted_text_interactions",
    "split_example_id",
    "synthetic_interactions",
    "write_planted_text_csv",
]
