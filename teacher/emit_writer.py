"""The on-disk side of emission: the per-rank shard writer, folder preparation and the manifest merge."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor

from recdistill.atomic import sha256_file
from recdistill.teacher.cache_format import (
    ITEM_TABLE_NAME, MANIFEST_NAME, CacheMismatchError, atomic_save_safetensors, atomic_write_json,
    clear_cache_folder, compare, read_json, refuse_foreign, shard_name,
)
from recdistill.teacher.emit_plan import plan_split


class SignalShardWriter(BasePredictionWriter):
    """Per-rank prediction writer: buffers the rows of the shards this rank owns and writes each
    shard (atomically) as soon as all of its rows have arrived, recording it (with its sha256) in
    ``progress-rank<global rank>.json``. Rows of shards owned by another rank (a batch that
    straddles two shards is computed by both owners) are dropped."""

    def __init__(self, output_dir: str | Path, metadata: dict[str, str] | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.metadata = metadata or {}
        self.rank = 0
        self.own({})

    def own(self, shard_rows: dict[tuple[str, int], int], rank: int | None = None) -> None:
        """Restrict the writer to the shards ``(split, index) -> number of rows`` this rank owns."""
        self.expected = dict(shard_rows)
        self.buffers: dict[tuple[str, int], list[dict[str, Tensor]]] = {key: [] for key in self.expected}
        self.counts: dict[tuple[str, int], int] = {key: 0 for key in self.expected}
        self.written: dict[str, dict[str, Any]] = {}
        if rank is not None:
            self.rank = rank

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx=0) -> None:
        which = batch["split"]
        shards = prediction["shard"]
        for s in torch.unique(shards).tolist():
            key = (which, int(s))
            if key not in self.expected:
                continue  # another rank owns it, or it is already complete
            sel = shards == s
            part = {name: value[sel] for name, value in prediction.items() if name != "shard"}
            self.buffers[key].append(part)
            self.counts[key] += int(sel.sum())
            if self.counts[key] > self.expected[key]:
                raise RuntimeError(f"shard {s} of {which} received {self.counts[key]} rows, "
                                   f"expected {self.expected[key]}")
            if self.counts[key] == self.expected[key]:
                self._flush(key)

    def _flush(self, key: tuple[str, int]) -> None:
        which, s = key
        parts = self.buffers.pop(key)
        rows = torch.cat([p["row"] for p in parts])
        order = torch.argsort(rows)
        tensors = {name: torch.cat([p[name] for p in parts])[order] for name in parts[0] if name != "row"}
        name = shard_name(which, s)
        digest = atomic_save_safetensors(self.output_dir / name, tensors, metadata=self.metadata)
        self.written[name] = {"sha256": digest, "rows": int(len(rows)), "split": which, "index": s}
        progress_path = self.output_dir / f"progress-rank{self.rank}.json"
        progress = read_json(progress_path) or {"shards": {}}
        progress["shards"][name] = self.written[name]
        atomic_write_json(progress_path, progress)


def existing_complete_shards(out: Path, manifest: dict | None) -> dict[str, dict[str, Any]]:
    """Shards recorded (manifest or progress files) whose file exists and matches its sha256."""
    records: dict[str, dict[str, Any]] = {}
    if manifest:
        for split_info in manifest.get("splits", {}).values():
            records.update(split_info.get("shards", {}))
    for prog in sorted(out.glob("progress-rank*.json")):
        records.update((read_json(prog) or {}).get("shards", {}))
    good: dict[str, dict[str, Any]] = {}
    for name, rec in records.items():
        path = out / name
        if path.is_file() and sha256_file(path) == rec["sha256"]:
            good[name] = rec
    return good


def prepare_cache(module, split, out: Path, header: dict[str, Any], splits: list[str], *, overwrite: bool,
                  max_len: int, train_every: int, stride: int, shard_size: int, max_new_shards: int | None
                  ) -> dict[str, Any]:
    """Rank 0 only: check/clear the folder, write the manifest (incomplete) and the item table, and
    list the pending shards ``(split, index, rows)`` of this run in canonical order."""
    manifest_path = out / MANIFEST_NAME
    manifest = read_json(manifest_path)
    if manifest is None:  # a new cache: the folder must be empty (or hold only our own leftovers)
        refuse_foreign(out, None, "write a signals cache into")
    elif overwrite:  # remove exactly what the old cache owns; refuse a folder with anything else
        clear_cache_folder(out, manifest)
        manifest = None
    else:
        old_header = {key: manifest.get(key) for key in header}
        diff = compare(old_header, header)
        if diff:
            raise CacheMismatchError(
                f"signals cache {out} does not match the current run: {diff}. Rebuild it with "
                f"`recdistill teacher emit --emit.overwrite true` (emit_signals(..., overwrite=True)) "
                f"or use another output folder."
            )
    out.mkdir(parents=True, exist_ok=True)
    good = existing_complete_shards(out, manifest)
    previous = manifest or {}
    manifest = dict(header, complete=False, splits=dict(previous.get("splits", {})))
    if previous.get("item_embeddings"):
        manifest["item_embeddings"] = previous["item_embeddings"]
    atomic_write_json(manifest_path, manifest)

    # teacher item table (fp32, row 0 = padding) + the item side of the score formula
    emb_path = out / ITEM_TABLE_NAME
    emb_rec = (manifest.get("item_embeddings") or {})
    if not (emb_path.is_file() and emb_rec.get("sha256") == sha256_file(emb_path)):
        with torch.no_grad():
            table = module.item_vectors().detach().float().cpu()
            score_items = module.score_item_factors().detach().float().cpu()
            scale = module.logit_scale().detach().float().cpu().reshape(1)
        digest = atomic_save_safetensors(emb_path, {"item_embeddings": table, "score_items": score_items,
                                                    "logit_scale": scale})
        manifest["item_embeddings"] = {"file": emb_path.name, "sha256": digest, "shape": list(table.shape),
                                       "dtype": "float32", "score_items_shape": list(score_items.shape)}

    work: list[tuple[str, int, int]] = []
    for which in splits:
        n_rows = plan_split(split, which, max_len, train_every=train_every, train_stride=stride).num_rows
        n_shards = max(1, math.ceil(n_rows / shard_size))
        split_entry: dict[str, Any] = {"num_examples": n_rows, "num_shards": n_shards, "shards": {}}
        for s in range(n_shards):
            name = shard_name(which, s)
            rows = min(shard_size, n_rows - s * shard_size)
            if name in good and good[name]["rows"] == rows:
                split_entry["shards"][name] = good[name]
            elif n_rows and (max_new_shards is None or len(work) < max_new_shards):
                work.append((which, s, rows))
        manifest["splits"][which] = split_entry  # every split is listed, even past max_new_shards
    atomic_write_json(manifest_path, manifest)
    return {"work": work}


def finalize_cache(out: Path, splits: list[str], work: list[tuple[str, int, int]]) -> list[str]:
    """Rank 0 only, after every rank wrote its shards: merge the per-rank progress files into the
    manifest, decide completeness; returns the shards of ``work`` that are missing.

    Completeness is over every split the manifest lists, not only this run's ``splits``: a split an
    earlier run planned but left unfinished keeps the cache incomplete (and the progress files that
    record its shards are kept)."""
    manifest_path = out / MANIFEST_NAME
    manifest = read_json(manifest_path)
    assert manifest is not None
    good = existing_complete_shards(out, manifest)
    complete = True
    for which in dict.fromkeys([*splits, *manifest["splits"]]):
        entry = manifest["splits"][which]
        entry["shards"] = {shard_name(which, s): good[shard_name(which, s)]
                           for s in range(entry["num_shards"]) if shard_name(which, s) in good}
        if entry["num_examples"] and len(entry["shards"]) != entry["num_shards"]:
            complete = False
    manifest["complete"] = complete
    atomic_write_json(manifest_path, manifest)
    if complete:
        for prog in out.glob("progress-rank*.json"):
            prog.unlink()
    return [shard_name(which, s) for which, s, _ in work if shard_name(which, s) not in good]
