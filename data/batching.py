"""Vectorised batch building from ragged sequences stored flat (one array + offsets)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate


def left_pad(flat: np.ndarray, starts: np.ndarray, ends: np.ndarray, width: int | None = None) -> np.ndarray:
    """Rows ``flat[starts[i]:ends[i]]`` left-padded with 0 to ``width`` (default: the longest row).

    Longer rows keep their last ``width`` entries. Returns int64 ``[len(starts), width]``.
    """
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    if width is None:
        width = max(int((ends - starts).max(initial=0)), 1)
    idx = ends[:, None] - width + np.arange(width, dtype=np.int64)[None, :]
    valid = idx >= starts[:, None]
    if len(flat) == 0:
        return np.zeros(idx.shape, dtype=np.int64)
    return np.where(valid, flat[np.where(valid, idx, 0)], 0).astype(np.int64, copy=False)


def offsets_of(lengths: np.ndarray) -> np.ndarray:
    """Start of each row in the flat array."""
    lengths = np.asarray(lengths, dtype=np.int64)
    return np.cumsum(lengths) - lengths


def to_tensors(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}


def collate(data: Any) -> Any:
    """Batches built by ``__getitems__`` are already dicts of tensors; anything else is default-collated."""
    return data if isinstance(data, dict) else default_collate(data)


class BatchedDataset(torch.utils.data.Dataset):
    """A map-style dataset that builds whole batches at once through ``__getitems__``."""

    def __len__(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def batch(self, idx: np.ndarray) -> dict[str, np.ndarray]:  # pragma: no cover - overridden
        raise NotImplementedError

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return to_tensors(self.batch(np.asarray(indices, dtype=np.int64)))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([int(index)]).items()}
