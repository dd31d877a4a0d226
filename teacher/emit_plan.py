"""Emission planning: the windows and rows of every split, and the fixed batches that feed each shard.

The plan depends on the data and the settings alone (never on the number of processes), so a
resumed or a multi-process emission writes byte-identical shards (see :mod:`recdistill.teacher.emit`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from recdistill.data.schema import EXAMPLE_STRIDE, SequentialSplit
from recdistill.teacher.cache_format import SPLITS


@dataclass
class SplitPlan:
    """Windows (model inputs) and rows (examples) of one split, in canonical order."""

    split: str
    win_user: np.ndarray  # [W]
    win_start: np.ndarray  # [W] index into the user's sequence (inclusive)
    win_end: np.ndarray  # [W] (exclusive)
    row_window: np.ndarray  # [M] window of each row
    row_pos: np.ndarray  # [M] target position in the full sequence
    row_user: np.ndarray  # [M]

    @property
    def num_rows(self) -> int:
        return len(self.row_pos)

    @property
    def example_ids(self) -> np.ndarray:
        return self.row_user * EXAMPLE_STRIDE + self.row_pos


def plan_split(split: SequentialSplit, which: str, max_len: int, *, train_every: int = 1,
               train_stride: int | None = None) -> SplitPlan:
    """Deterministic windows and rows for ``which`` in ``("train", "valid", "test")``."""
    if which not in SPLITS:
        raise ValueError(f"unknown split {which!r}; use one of {SPLITS}")
    lengths = split.lengths
    win_user, win_start, win_end, row_window, row_pos, row_user = [], [], [], [], [], []
    if which in ("valid", "test"):
        off = 2 if which == "valid" else 1
        for u, n in enumerate(lengths):
            p = int(n) - off
            win_user.append(u), win_start.append(max(0, p - max_len)), win_end.append(p)
            row_window.append(u), row_pos.append(p), row_user.append(u)
    else:
        stride = train_stride or max(1, max_len // 2)
        if not 1 <= stride <= max_len:
            raise ValueError(f"train_stride must be in 1..max_len={max_len}, got {stride}")
        if train_every < 1:
            raise ValueError("train_every must be >= 1")
        for u, n in enumerate(lengths):
            last = int(n) - 3  # targets are positions 1..len-3
            if last < 1:
                continue
            ends = []
            e = last
            while e >= 1:
                ends.append(e)
                e -= stride
            ends.reverse()
            prev = 0
            for e in ends:
                targets = [t for t in range(prev + 1, e + 1) if (t - 1) % train_every == 0]
                prev = e
                if not targets:
                    continue
                w = len(win_user)
                win_user.append(u), win_start.append(max(0, e - max_len)), win_end.append(e)
                for t in targets:
                    row_window.append(w), row_pos.append(t), row_user.append(u)
    as_i64 = lambda x: np.asarray(x, dtype=np.int64)  # noqa: E731
    return SplitPlan(which, as_i64(win_user), as_i64(win_start), as_i64(win_end),
                     as_i64(row_window), as_i64(row_pos), as_i64(row_user))


class WindowDataset(torch.utils.data.Dataset):
    """Batches of windows with their rows; built whole-batch through ``__getitems__``."""

    def __init__(self, split: SequentialSplit, plan: SplitPlan, max_len: int, shard_size: int):
        self.split, self.plan, self.max_len, self.shard_size = split, plan, max_len, shard_size
        order = np.argsort(plan.row_window, kind="stable")
        self.rows_sorted = order
        self.row_bounds = np.searchsorted(plan.row_window[order], np.arange(len(plan.win_user) + 1))

    def __len__(self) -> int:
        return len(self.plan.win_user)

    def __getitems__(self, indices: list[int]) -> dict[str, Tensor]:
        p, L_ = self.plan, self.max_len
        input_ids = np.zeros((len(indices), L_), dtype=np.int64)
        rows: list[np.ndarray] = []
        for b, w in enumerate(indices):
            seq = self.split.sequences[p.win_user[w]]
            chunk = seq[p.win_start[w]:p.win_end[w]]
            input_ids[b, L_ - len(chunk):] = chunk
            rows.append(self.rows_sorted[self.row_bounds[w]:self.row_bounds[w + 1]])
        rows_b = np.repeat(np.arange(len(indices)), [len(r) for r in rows])
        row = np.concatenate(rows)
        pos = p.row_pos[row]
        users = p.row_user[row]
        w_end = p.win_end[p.row_window[row]]
        offset = L_ - 1 - (w_end - pos)  # padded column whose output predicts the target at ``pos``
        hist_len = int(pos.max(initial=1))
        history = np.zeros((len(row), hist_len), dtype=np.int64)
        target = np.zeros(len(row), dtype=np.int64)
        for i, (u, t) in enumerate(zip(users, pos)):
            seq = self.split.sequences[u]
            history[i, hist_len - t:] = seq[:t]
            target[i] = seq[t]
        return {
            "input_ids": torch.from_numpy(input_ids),
            "row_batch": torch.from_numpy(rows_b),
            "row_offset": torch.from_numpy(offset),
            "row": torch.from_numpy(row),
            "shard": torch.from_numpy(row // self.shard_size),
            "example_id": torch.from_numpy(users * EXAMPLE_STRIDE + pos),
            "target": torch.from_numpy(target),
            "history": torch.from_numpy(history),
        }

    def __getitem__(self, index: int) -> dict[str, Tensor]:  # pragma: no cover - batches only
        return self.__getitems__([index])


class BatchList(torch.utils.data.Dataset):
    """Item ``i`` is the whole pre-planned batch ``batches[i] = (split, window indices)`` (used with
    ``batch_size=None``); each batch carries its split name under ``"split"``. Filled in place by
    :func:`~recdistill.teacher.emit.emit_signals` once this rank's share of the work is known."""

    def __init__(self) -> None:
        self.windows: dict[str, WindowDataset] = {}
        self.batches: list[tuple[str, list[int]]] = []

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, Any]:
        which, idx = self.batches[i]
        return dict(self.windows[which].__getitems__(idx), split=which)


def rank_batches(split, mine: list[tuple[str, int, int]], *, max_len: int, train_every: int, stride: int,
                 shard_size: int, batch_size: int
                 ) -> tuple[dict[str, WindowDataset], list[tuple[str, list[int]]]]:
    """The fixed global batches (batch b = windows ``[b * batch_size, (b + 1) * batch_size)`` of a
    split) that feed the shards in ``mine``, in canonical order."""
    windows: dict[str, WindowDataset] = {}
    batches: list[tuple[str, list[int]]] = []
    for which in dict.fromkeys(w for w, _, _ in mine):
        plan = plan_split(split, which, max_len, train_every=train_every, train_stride=stride)
        windows[which] = WindowDataset(split, plan, max_len, shard_size)
        owned = np.asarray([s for w, s, _ in mine if w == which], dtype=np.int64)
        row_shard = np.arange(plan.num_rows) // shard_size
        needed = np.unique(plan.row_window[np.isin(row_shard, owned)] // batch_size)
        n_windows = len(plan.win_user)
        batches += [(which, list(range(b * batch_size, min((b + 1) * batch_size, n_windows)))) for b in needed.tolist()]
    return windows, batches
