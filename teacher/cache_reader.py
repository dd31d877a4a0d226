"""Read a teacher-signals cache: memory-mapped shards, rows looked up by example id.

>>> signals = TeacherSignals("runs/x/signals", split=data.split)      # checks fingerprint + items
>>> batch = signals.get(example_ids, keys=("topk_items", "topk_scores"))

Only the rows asked for are read (``safe_open`` slices over the memory-mapped file). Unknown
example ids raise ``KeyError``; a cache built for another item-id space raises
:class:`~recdistill.teacher.signals.CacheMismatchError`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from torch import Tensor

from recdistill.teacher.signals import CacheMismatchError, item_space_hash, sha256_file

SIGNAL_KEYS = ("target", "hidden", "layers", "user", "topk_items", "topk_scores")


class TeacherSignals:
    """Look up emitted teacher signals by example id (see ``recdistill.teacher.signals``)."""

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
    ) -> None:
        self.directory = Path(directory)
        path = self.directory / "manifest.json"
        if not path.is_file():
            raise FileNotFoundError(f"{self.directory} has no manifest.json; run `recdistill teacher emit` first")
        self.manifest: dict[str, Any] = json.loads(path.read_text())
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
                    f"but the current data has {want!r}; rebuild the cache (`recdistill teacher emit --overwrite`)"
                )
        if verify:
            self.verify()
        self._handles: dict[str, Any] = {}
        ids, shard_no, rows = [], [], []
        self._shard_files: list[str] = []
        for split_name, entry in sorted(self.manifest.get("splits", {}).items()):
            for name in sorted(entry.get("shards", {})):
                f = self._open(name)
                eid = f.get_tensor("example_id").numpy()
                ids.append(eid)
                shard_no.append(np.full(len(eid), len(self._shard_files), dtype=np.int64))
                rows.append(np.arange(len(eid), dtype=np.int64))
                self._shard_files.append(name)
        all_ids = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
        order = np.argsort(all_ids, kind="stable")
        self._ids = all_ids[order]
        if len(self._ids) > 1 and bool((np.diff(self._ids) == 0).any()):
            dup = self._ids[1:][np.diff(self._ids) == 0][:5]
            raise CacheMismatchError(f"signals cache {self.directory} holds duplicate example ids, e.g. {dup.tolist()}")
        self._shard = (np.concatenate(shard_no) if shard_no else np.zeros(0, dtype=np.int64))[order]
        self._row = (np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64))[order]

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

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, example_id: int) -> bool:
        i = np.searchsorted(self._ids, example_id)
        return bool(i < len(self._ids) and self._ids[i] == example_id)

    def example_ids(self, split: str | None = None) -> np.ndarray:
        if split is None:
            return self._ids.copy()
        out = [self._open(n).get_tensor("example_id").numpy()
               for n in sorted(self.manifest["splits"][split]["shards"])]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    # ------------------------------------------------------------------ access
    def _open(self, name: str):
        handle = self._handles.get(name) if hasattr(self, "_handles") else None
        if handle is None:
            handle = safe_open(str(self.directory / name), framework="pt")
            self._handles[name] = handle
        return handle

    def locate(self, example_ids: Sequence[int] | np.ndarray | Tensor) -> tuple[np.ndarray, np.ndarray]:
        """``(shard_index, row)`` for each id; ``KeyError`` naming unknown ids."""
        if isinstance(example_ids, Tensor):
            example_ids = example_ids.detach().cpu().numpy()
        q = np.asarray(example_ids, dtype=np.int64).reshape(-1)
        pos = np.searchsorted(self._ids, q)
        pos_c = np.minimum(pos, max(len(self._ids) - 1, 0))
        found = (pos < len(self._ids)) & (self._ids[pos_c] == q) if len(self._ids) else np.zeros(len(q), bool)
        if not found.all():
            bad = q[~found]
            raise KeyError(f"{len(bad)} example id(s) not in signals cache {self.directory}, e.g. {bad[:5].tolist()}")
        return self._shard[pos_c], self._row[pos_c]

    def get(self, example_ids: Sequence[int] | np.ndarray | Tensor,
            keys: Sequence[str] = ("hidden", "topk_items", "topk_scores")) -> dict[str, Tensor]:
        """Rows for ``example_ids`` (in the given order) of each tensor in ``keys``."""
        for key in keys:
            if key not in SIGNAL_KEYS:
                raise KeyError(f"unknown signal {key!r}; available: {SIGNAL_KEYS}")
        shard, row = self.locate(example_ids)
        n = len(shard)
        out: dict[str, Tensor] = {}
        for key in keys:
            result: Tensor | None = None
            for s in np.unique(shard):
                sel = np.flatnonzero(shard == s)
                f = self._open(self._shard_files[s])
                if key not in f.keys():
                    raise KeyError(f"signal {key!r} was not emitted into {self.directory} (layers={self.layers})")
                r = row[sel]
                lo, hi = int(r.min()), int(r.max()) + 1
                part = f.get_slice(key)[lo:hi][torch.from_numpy(r - lo)]
                if result is None:
                    result = part.new_empty((n, *part.shape[1:]))
                result[torch.from_numpy(sel)] = part
            if result is None:
                raise KeyError("no example ids given")
            out[key] = result
        return out

    def item_embeddings(self) -> Tensor:
        """Teacher item table ``Float[N + 1, d]`` (row 0 = padding)."""
        with safe_open(str(self.directory / "item_embeddings.safetensors"), framework="pt") as f:
            return f.get_tensor("item_embeddings")

    def logit_scale(self) -> float:
        with safe_open(str(self.directory / "item_embeddings.safetensors"), framework="pt") as f:
            return float(f.get_tensor("logit_scale").reshape(-1)[0]) if "logit_scale" in f.keys() else 1.0

    def verify(self) -> None:
        """Check every shard (and the item table) against its sha256 in the manifest."""
        for split_name, entry in self.manifest.get("splits", {}).items():
            for name, rec in entry.get("shards", {}).items():
                digest = sha256_file(self.directory / name)
                if digest != rec["sha256"]:
                    raise CacheMismatchError(f"shard {name} of {self.directory} is corrupt (sha256 {digest} != {rec['sha256']})")
        emb = self.manifest.get("item_embeddings")
        if emb:
            digest = sha256_file(self.directory / emb["file"])
            if digest != emb["sha256"]:
                raise CacheMismatchError(f"{emb['file']} of {self.directory} is corrupt")
