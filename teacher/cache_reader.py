"""Read a teacher-signals cache: rows looked up by example id, with a validity mask.

>>> signals = TeacherSignals("runs/x/signals", split=data.split)      # checks fingerprint + items
>>> signals.require(("topk_items", "score_user"))                     # at setup: fail loudly, early
>>> rows, valid = signals.lookup(batch["example_ids"], keys=("topk_items", "topk_scores"))
>>> logits, valid = signals.teacher_logits(batch["example_ids"])      # the teacher's full scores

Light: imports numpy, torch and safetensors only (never Lightning, transformers or peft), so
distillation code can read a cache without the teacher's stack. The format is described in
:mod:`recdistill.teacher.cache_format`; the row storage (memory maps, id index, in-memory tables)
is :class:`~recdistill.teacher.cache_rows.ShardRows`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from recdistill.teacher.cache_format import (
    EMIT_SETTING, ITEM_TABLE_NAME, MANIFEST_NAME, SIGNAL_KEYS, CacheMismatchError, MissingSignalError,
    check_format_version, item_space_hash, read_json, sha256_file,
)
from recdistill.teacher.cache_rows import ShardRows, as_numpy_ids

ITEM_KEYS = ("item_embeddings", "score_items", "logit_scale")


class TeacherSignals(ShardRows):
    """Look up emitted teacher signals by example id.

    Args:
        directory: the cache folder (with ``manifest.json``).
        split / num_items / item_space_sha256 / dataset_fingerprint: what the cache must have been
            built for (a mismatch raises :class:`CacheMismatchError`, never a silent misalignment).
        require_complete: refuse a cache whose emission has not finished.
        verify: check every file's sha256 first (reads everything once).
        in_memory: ``True`` loads each signal, on first use (or at once for ``keys``), from all
            shards into one contiguous tensor and indexes it with the precomputed id -> row map
            (a 256 x 50 batch costs about a millisecond). ``False`` reads every lookup from the
            memory-mapped shards. ``"auto"`` (default) loads a signal while the signals loaded so
            far plus it stay within ``memory_budget`` bytes.
        memory_budget: bytes for ``"auto"`` (default: a quarter of physical memory, at most 4 GiB).
        keys: signals to load (``in_memory``) and :meth:`require` at construction.

    When the cache does not fit (``"auto"`` over budget, or ``in_memory=False``), a signal is read
    per lookup straight from the memory-mapped shard files: for each shard, the sorted unique rows
    asked for are gathered (numpy indexing of a ``memmap``), so only the pages holding those rows
    are read, never the span between them; the OS page cache keeps hot pages. This is slower
    (random reads, one gather per shard and key) but needs no memory beyond the batch.
    ``in_memory=True`` loads regardless of the budget (an ``OutOfMemory``/``MemoryError`` is then the
    caller's choice).

    Ids not in the cache (``train_every > 1`` leaves gaps; id 0 is padding) are never an error in
    :meth:`lookup` / :meth:`teacher_logits`: their rows are zero and ``valid`` is False. :meth:`get`
    keeps the strict behaviour (``KeyError`` for unknown ids).
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        split: Any = None,
        num_items: int | None = None,
        item_space_sha256: str | None = None,
        dataset_fingerprint: str | None = None,
        require_complete: bool = True,
        verify: bool = False,
        in_memory: bool | str = "auto",
        memory_budget: int | None = None,
        keys: Sequence[str] = (),
    ) -> None:
        if in_memory not in (True, False, "auto"):
            raise ValueError(f"in_memory must be True, False or 'auto', got {in_memory!r}")
        self.directory = Path(directory)
        path = self.directory / MANIFEST_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{self.directory} has no manifest.json; run `recdistill teacher emit` first")
        self.manifest: dict[str, Any] = read_json(path) or {}
        check_format_version(self.manifest, self.directory)
        if require_complete and not self.manifest.get("complete"):
            raise CacheMismatchError(f"signals cache {self.directory} is incomplete; resume `recdistill teacher emit`")
        ds = self.manifest["dataset"]
        if split is not None:
            num_items = split.num_items if num_items is None else num_items
            item_space_sha256 = item_space_hash(split.item_ids) if item_space_sha256 is None else item_space_sha256
            dataset_fingerprint = split.fingerprint if dataset_fingerprint is None else dataset_fingerprint
        for field, want in (("num_items", num_items), ("item_space_sha256", item_space_sha256),
                            ("fingerprint", dataset_fingerprint)):
            if want is not None and ds.get(field) != want:
                raise CacheMismatchError(
                    f"signals cache {self.directory} was built for dataset.{field}={ds.get(field)!r}, "
                    f"but the current data has {want!r}; rebuild the cache "
                    f"(`recdistill teacher emit --emit.overwrite true`)"
                )
        if verify:
            self.verify()
        self._item_cache: dict[str, Tensor] = {}
        shards = [name for _, entry in sorted(self.manifest.get("splits", {}).items())
                  for name in sorted(entry.get("shards", {}))]
        super().__init__(self.directory, shards, in_memory=in_memory, memory_budget=memory_budget)
        if keys:
            self.require(keys)
            for key in keys:
                if key in SIGNAL_KEYS:
                    self._maybe_load(key)

    # ------------------------------------------------------------------ properties
    @property
    def k(self) -> int:
        return int(self.manifest["k"])

    @property
    def layers(self) -> list[int]:
        return list(self.manifest.get("layers", []))

    @property
    def num_items(self) -> int:
        return int(self.manifest["dataset"]["num_items"])

    @property
    def splits(self) -> list[str]:
        return sorted(self.manifest.get("splits", {}))

    @property
    def signals(self) -> list[str]:
        """Per-example tensors in the shards (``example_id`` included)."""
        listed = self.manifest.get("signals")
        if listed is not None:
            return list(listed)
        return sorted(self._shard_arrays(self._shard_files[0])) if self._shard_files else []

    @property
    def scoring(self) -> str | None:
        return self.manifest.get("scoring")

    def example_ids(self, split: str | None = None) -> np.ndarray:
        if split is None:
            return self._ids.copy()
        out = [np.asarray(self._shard_arrays(n)["example_id"], dtype=np.int64)
               for n in sorted(self.manifest["splits"][split]["shards"])]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    # ------------------------------------------------------------------ checks
    def has(self, key: str) -> bool:
        """Whether signal ``key`` (per example, or an item table in ``ITEM_KEYS``) is in the cache."""
        if key in ITEM_KEYS:
            return key in self._item_arrays()
        return key in self.signals

    def require(self, keys: Iterable[str] = (), *, layers: Sequence[int] = (), k: int | None = None) -> None:
        """Raise :class:`MissingSignalError` (one line: the signal, the cache, the emit setting that
        produces it) unless every signal in ``keys`` is present, ``layers`` were stored and the top-K
        is at least ``k``. ``"teacher_logits"`` stands for ``score_user`` + ``score_items``."""
        wanted: list[str] = []
        for key in keys:
            wanted += ["score_user", "score_items"] if key == "teacher_logits" else [key]
        for key in wanted:
            if key not in SIGNAL_KEYS and key not in ITEM_KEYS:
                raise KeyError(f"unknown signal {key!r}; available: {SIGNAL_KEYS + ITEM_KEYS}")
            if not self.has(key):
                self._missing(key)
        missing_layers = [int(i) for i in layers if int(i) not in self.layers]
        if missing_layers:
            want = sorted(set(self.layers) | set(missing_layers))
            raise MissingSignalError(
                f"layer(s) {missing_layers} are not in signals cache {self.directory} (it stores layers "
                f"{self.layers}): emit with --emit.layers '{want}' (add --emit.overwrite true to rebuild it)")
        if k is not None and int(k) > self.k:
            raise MissingSignalError(f"signals cache {self.directory} holds the top-{self.k} items, top-{int(k)} were "
                                     f"asked for: emit with --emit.k {int(k)} (add --emit.overwrite true to rebuild it)")

    def _missing(self, key: str) -> None:
        how = EMIT_SETTING.get(key, "emit it with `recdistill teacher emit`")
        raise MissingSignalError(f"signal {key!r} was not emitted into signals cache {self.directory} "
                                 f"(it has {[s for s in self.signals if s != 'example_id']}): {how}")

    def coverage(self, example_ids: Sequence[int] | np.ndarray | Tensor) -> float:
        """Fraction of the non-padding ids (``> 0``) that have a row in the cache (1.0 if none)."""
        q = as_numpy_ids(example_ids).reshape(-1)
        q = q[q > 0]
        if not len(q):
            return 1.0
        return float(self._find(q)[1].mean())

    def _item_arrays(self) -> dict[str, np.ndarray]:
        path = self.directory / ITEM_TABLE_NAME
        if not path.is_file():
            return {}
        return self._shard_arrays(ITEM_TABLE_NAME)


    def lookup(self, example_ids: Sequence[int] | np.ndarray | Tensor,
               keys: Sequence[str] = ("topk_items", "topk_scores"), *,
               device: torch.device | str | None = None) -> tuple[dict[str, Tensor], Tensor]:
        """``({key: Tensor[*example_ids.shape, ...]}, valid: Bool[*example_ids.shape])``.

        Rows of ids without a teacher row (not emitted, e.g. ``train_every > 1``; padding id 0)
        are zero and ``valid`` is False; this never raises for ids. A signal the cache lacks raises
        :class:`MissingSignalError` (call :meth:`require` at setup to fail earlier).
        """
        for key in keys:
            if key not in SIGNAL_KEYS:
                raise KeyError(f"unknown signal {key!r}; available: {SIGNAL_KEYS}")
            if not self.has(key):
                self._missing(key)
        ids = as_numpy_ids(example_ids)
        shape = ids.shape
        q = ids.reshape(-1)
        pos, found = self._find(q)
        out: dict[str, Tensor] = {}
        index: Tensor | None = None
        for key in keys:
            table = self._maybe_load(key)
            if table is not None:
                if index is None:
                    index = torch.from_numpy(np.where(found, pos + 1, 0))
                value = table.index_select(0, index)
            elif self._shard_files:
                value = self._gather(key, pos, found)
            else:  # an empty cache: nothing to read, nothing found
                value = torch.zeros(len(q), 0)
            value = value.reshape(*shape, *value.shape[1:])
            out[key] = value.to(device) if device is not None else value
        valid = torch.from_numpy(found.reshape(shape))
        return out, (valid.to(device) if device is not None else valid)

    def get(self, example_ids: Sequence[int] | np.ndarray | Tensor,
            keys: Sequence[str] = ("hidden", "topk_items", "topk_scores")) -> dict[str, Tensor]:
        """Rows for ``example_ids`` (flattened, in the given order) of each tensor in ``keys``;
        ``KeyError`` if any id is not in the cache (see :meth:`lookup` for partial coverage)."""
        for key in keys:
            if key not in SIGNAL_KEYS:
                raise KeyError(f"unknown signal {key!r}; available: {SIGNAL_KEYS}")
        q = as_numpy_ids(example_ids).reshape(-1)
        if not len(q):
            raise KeyError("no example ids given")
        self.locate(q)  # raises for unknown ids
        return self.lookup(q, keys)[0]

    # ------------------------------------------------------------------ item tables and scores
    def _item_tensor(self, key: str) -> Tensor:
        cached = self._item_cache.get(key)
        if cached is None:
            arrays = self._item_arrays()
            if key not in arrays:
                self._missing(key)
            cached = torch.from_numpy(np.array(arrays[key]))
            self._item_cache[key] = cached
        return cached

    def item_embeddings(self) -> Tensor:
        """Teacher item table ``Float[N + 1, d_item]`` (row 0 = padding); loaded once."""
        return self._item_tensor("item_embeddings")

    def score_items(self) -> Tensor:
        """The item side of the score formula, ``Float[N + 1, D]`` (see ``manifest['scoring']``)."""
        return self._item_tensor("score_items")

    def logit_scale(self) -> float:
        arrays = self._item_arrays()
        return float(np.asarray(arrays["logit_scale"]).reshape(-1)[0]) if "logit_scale" in arrays else 1.0

    def teacher_logits(self, example_ids: Sequence[int] | np.ndarray | Tensor, items: Tensor | None = None, *,
                       device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        """The teacher's own logits rebuilt from the cache: ``score_user[e] . score_items[i]``.

        ``items=None``: ``Float[*example_ids.shape, N + 1]`` over the whole catalogue (column 0 =
        padding = ``-inf``; for large catalogues pass ``items`` or chunk the example ids).
        ``items`` ``Long[M]``: the same M items for every example -> ``[..., M]``;
        ``items`` ``Long[*example_ids.shape, M]``: per-example items (e.g. the top-K plus the
        target, or ``[..., 1]`` for a CTR pair) -> ``[..., M]``. Item 0 scores ``-inf``.
        Rows of examples without a teacher row are 0 (``-inf`` at item 0) and ``valid`` is False.
        """
        rows, valid = self.lookup(example_ids, ("score_user",), device=device)
        user = rows["score_user"].float()
        table = self.score_items()
        if device is not None:
            table = table.to(device)
        if items is None:
            logits = user @ table.t()
            logits[..., 0] = -math.inf
            return logits, valid
        items = torch.as_tensor(items, dtype=torch.long, device=user.device)
        if items.dim() == 1:
            logits = user @ table[items].t()
        elif tuple(items.shape[:-1]) == tuple(user.shape[:-1]):
            logits = (table[items] * user.unsqueeze(-2)).sum(-1)
        else:
            raise ValueError(f"items must be [M] or [*example_ids.shape, M]; got {tuple(items.shape)} for "
                             f"example ids of shape {tuple(user.shape[:-1])}")
        return logits.masked_fill(items == 0, -math.inf), valid

    def verify(self) -> None:
        """Check every shard (and the item table) against its sha256 in the manifest."""
        for _, entry in self.manifest.get("splits", {}).items():
            for name, rec in entry.get("shards", {}).items():
                digest = sha256_file(self.directory / name)
                if digest != rec["sha256"]:
                    raise CacheMismatchError(f"shard {name} of {self.directory} is corrupt (sha256 {digest} != {rec['sha256']})")
        emb = self.manifest.get("item_embeddings")
        if emb:
            digest = sha256_file(self.directory / emb["file"])
            if digest != emb["sha256"]:
                raise CacheMismatchError(f"{emb['file']} of {self.directory} is corrupt")
