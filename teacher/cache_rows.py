"""Row storage of a signals cache: memory-mapped shards, the example-id index and in-memory tables."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from recdistill.data.schema import EXAMPLE_STRIDE
from recdistill.teacher.cache_format import CacheMismatchError, safetensors_arrays


def default_memory_budget() -> int:
    """A quarter of the physical memory, at most 4 GiB (2 GiB if unknown)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2 << 30
    return int(min(4 << 30, total // 4))


def as_numpy_ids(example_ids: Sequence[int] | np.ndarray | Tensor) -> np.ndarray:
    if isinstance(example_ids, Tensor):
        return example_ids.detach().to("cpu", torch.int64).numpy()
    return np.asarray(example_ids, dtype=np.int64)


class ShardRows:
    """The rows of the shards ``shard_files`` of ``directory``, found by example id.

    Ids are indexed once (sorted, with an O(1) dense map when it is small enough); a signal is
    read either from one contiguous in-memory table (``in_memory`` True, or ``"auto"`` within
    ``memory_budget`` bytes) or per lookup from the memory-mapped shards (see
    :class:`~recdistill.teacher.cache_reader.TeacherSignals` for the trade-off).
    """

    def __init__(self, directory: Path, shard_files: Sequence[str], *, in_memory: bool | str = "auto",
                 memory_budget: int | None = None) -> None:
        self.directory = Path(directory)
        self.in_memory = in_memory
        self.memory_budget = int(memory_budget) if memory_budget is not None else default_memory_budget()
        self._arrays: dict[str, dict[str, np.ndarray]] = {}
        self._tables: dict[str, Tensor] = {}  # key -> [1 + rows, ...] (row 0 = zeros), sorted-id order
        self.loaded_bytes = 0
        ids, lengths = [], []
        self._shard_files: list[str] = []
        for name in shard_files:
            eid = np.asarray(self._shard_arrays(name)["example_id"], dtype=np.int64)
            ids.append(eid)
            lengths.append(len(eid))
            self._shard_files.append(name)
        all_ids = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
        order = np.argsort(all_ids, kind="stable")
        self._ids = all_ids[order]
        if len(self._ids) > 1 and bool((np.diff(self._ids) == 0).any()):
            dup = self._ids[1:][np.diff(self._ids) == 0][:5]
            raise CacheMismatchError(f"signals cache {self.directory} holds duplicate example ids, e.g. {dup.tolist()}")
        shard_no = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
        rows = np.concatenate([np.arange(n, dtype=np.int64) for n in lengths]) if lengths else np.zeros(0, np.int64)
        self._shard, self._row = shard_no[order], rows[order]
        self._offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self._sorted_pos = np.empty(len(order), dtype=np.int64)  # concatenated row -> sorted position
        self._sorted_pos[order] = np.arange(len(order), dtype=np.int64)
        self._build_dense_map()

    @property
    def resident_keys(self) -> list[str]:
        """Signals currently held in memory (the others are read from the memory-mapped shards)."""
        return sorted(self._tables)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, example_id: int) -> bool:
        i = np.searchsorted(self._ids, example_id)
        return bool(i < len(self._ids) and self._ids[i] == example_id)

    def __getstate__(self) -> dict[str, Any]:  # memmaps are re-opened lazily (pickling them copies them)
        state = dict(self.__dict__)
        state["_arrays"] = {}
        return state

    # ------------------------------------------------------------------ access
    def _shard_arrays(self, name: str) -> dict[str, np.ndarray]:
        arrays = self._arrays.get(name)
        if arrays is None:
            arrays = safetensors_arrays(self.directory / name)
            self._arrays[name] = arrays
        return arrays

    def _build_dense_map(self) -> None:
        """id -> sorted position in O(1): ``slot = user_base[user] + pos`` into a table with one
        entry per (user, position <= the user's last cached position); used when that table is at
        most a few times the number of rows (else binary search)."""
        self._dense: np.ndarray | None = None
        if not len(self._ids) or self._ids[0] < 0:
            return
        users, pos = np.divmod(self._ids, EXAMPLE_STRIDE)
        n_users = int(users[-1]) + 1
        span = np.zeros(n_users, dtype=np.int64)
        np.maximum.at(span, users, pos + 1)
        if int(span.sum()) > 8 * len(self._ids) + (1 << 20):
            return
        base = np.concatenate([[0], np.cumsum(span)[:-1]]).astype(np.int64)
        dense = np.full(int(span.sum()), -1, dtype=np.int64)
        dense[base[users] + pos] = np.arange(len(self._ids), dtype=np.int64)
        self._dense, self._user_base, self._user_span = dense, base, span

    def _find(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sorted positions (0 where not found) and found mask of the flat ids ``q``."""
        if not len(self._ids):
            return np.zeros(len(q), np.int64), np.zeros(len(q), bool)
        if self._dense is not None:
            users, pos = np.divmod(q, EXAMPLE_STRIDE)
            ok = (users >= 0) & (users < len(self._user_span))
            u = np.where(ok, users, 0)
            ok &= pos < self._user_span[u]
            slot = np.where(ok, self._user_base[u] + pos, 0)
            found_pos = np.where(ok, self._dense[slot], -1)
            found = found_pos >= 0
            return np.maximum(found_pos, 0), found
        pos = np.searchsorted(self._ids, q)
        np.minimum(pos, len(self._ids) - 1, out=pos)
        return pos, self._ids[pos] == q

    def locate(self, example_ids: Sequence[int] | np.ndarray | Tensor) -> tuple[np.ndarray, np.ndarray]:
        """``(shard_index, row)`` for each id; ``KeyError`` naming unknown ids."""
        q = as_numpy_ids(example_ids).reshape(-1)
        pos, found = self._find(q)
        if not found.all():
            bad = q[~found]
            raise KeyError(f"{len(bad)} example id(s) not in signals cache {self.directory}, e.g. {bad[:5].tolist()}")
        return self._shard[pos], self._row[pos]

    def _key_nbytes(self, key: str) -> int:
        return sum(int(self._shard_arrays(n)[key].nbytes) for n in self._shard_files)

    def _maybe_load(self, key: str) -> Tensor | None:
        """The in-memory table of ``key`` (loading it if the mode and budget allow), else None."""
        table = self._tables.get(key)
        if table is not None or self.in_memory is False or not self._shard_files:
            return table
        size = self._key_nbytes(key)
        if self.in_memory == "auto" and self.loaded_bytes + size > self.memory_budget:
            return None
        first = self._shard_arrays(self._shard_files[0])[key]
        out = np.zeros((len(self._ids) + 1, *first.shape[1:]), dtype=first.dtype)
        for s, name in enumerate(self._shard_files):
            dest = self._sorted_pos[self._offsets[s]:self._offsets[s + 1]] + 1
            out[dest] = self._shard_arrays(name)[key]
        table = torch.from_numpy(out)
        self._tables[key] = table
        self.loaded_bytes += size
        return table

    def _gather(self, key: str, pos: np.ndarray, found: np.ndarray) -> Tensor:
        """Rows of ``key`` for flat sorted positions (zeros where not found), read from the shards."""
        first = self._shard_arrays(self._shard_files[0])[key]
        out = np.zeros((len(pos), *first.shape[1:]), dtype=first.dtype)
        hit = np.flatnonzero(found)
        if len(hit):
            shard, row = self._shard[pos[hit]], self._row[pos[hit]]
            order = np.argsort(shard, kind="stable")
            bounds = np.flatnonzero(np.diff(shard[order])) + 1
            for group in np.split(order, bounds):
                s = int(shard[group[0]])
                rows, inverse = np.unique(row[group], return_inverse=True)  # sorted unique rows only
                data = self._shard_arrays(self._shard_files[s])[key][rows]
                out[hit[group]] = data[inverse.reshape(-1)]
        return torch.from_numpy(out)
