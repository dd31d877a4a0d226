"""Write a complete signals cache from tensors in memory (no teacher model, no Lightning).

For teachers computed elsewhere (an external model, an oracle in a test, a converted file): rows
keyed by example id go into shards of ``shard_size``, the item tables into
``item_embeddings.safetensors``, and a format-``FORMAT_VERSION`` manifest is written last, so
the folder is read by :class:`~recdistill.teacher.cache_reader.TeacherSignals` like an emitted one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from recdistill.teacher.cache_format import (
    FORMAT_VERSION, ITEM_TABLE_NAME, MANIFEST_NAME, SCORING, SIGNAL_KEYS, atomic_save_safetensors, atomic_write_json,
    clear_cache_folder, item_space_hash, read_json, shard_name,
)


def write_cache(directory: str | Path, rows: Mapping[str, Mapping[str, Tensor]], *, split: Any,
                item_tables: Mapping[str, Tensor], teacher: Mapping[str, Any], k: int | None = None,
                layers: list[int] | None = None, shard_size: int = 4096) -> Path:
    """``rows[split_name][signal]``: per-example tensors (``example_id`` required, any of
    ``SIGNAL_KEYS``); ``item_tables``: ``item_embeddings`` [N+1, d] and optionally ``score_items``;
    ``split``: the :class:`~recdistill.data.SequentialSplit` the ids refer to (fingerprint, item space)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    existing = read_json(out / MANIFEST_NAME)  # a cache written here before is replaced, nothing else is touched
    clear_cache_folder(out, existing)
    splits: dict[str, Any] = {}
    present: set[str] = set()
    for split_name, tensors in rows.items():
        unknown = set(tensors) - set(SIGNAL_KEYS) - {"example_id"}
        if unknown or "example_id" not in tensors:
            raise ValueError(f"rows[{split_name!r}] must hold example_id and signals among {SIGNAL_KEYS}; got {sorted(tensors)}")
        n = len(tensors["example_id"])
        present |= set(tensors)
        shards: dict[str, Any] = {}
        for index, start in enumerate(range(0, n, shard_size)):
            name = shard_name(split_name, index)
            part = {key: value[start:start + shard_size] for key, value in tensors.items()}
            shards[name] = {"sha256": atomic_save_safetensors(out / name, part), "rows": len(part["example_id"]),
                            "split": split_name, "index": index}
        splits[split_name] = {"num_examples": n, "num_shards": len(shards), "shards": shards}
    table = item_tables["item_embeddings"]
    digest = atomic_save_safetensors(out / ITEM_TABLE_NAME, {key: value.contiguous() for key, value in item_tables.items()})
    topk = next((t["topk_items"] for t in rows.values() if "topk_items" in t), None)
    atomic_write_json(out / MANIFEST_NAME, {
        "format_version": FORMAT_VERSION, "complete": True, "teacher": dict(teacher),
        "k": int(k if k is not None else (topk.shape[1] if topk is not None else 0)),
        "layers": list(layers or []), "signals": sorted(present), "scoring": SCORING if "score_user" in present else None,
        "shard_size": shard_size,
        "dataset": {"name": split.name, "fingerprint": split.fingerprint, "num_users": split.num_users,
                    "num_items": split.num_items, "item_space_sha256": item_space_hash(split.item_ids)},
        "splits": splits,
        "item_embeddings": {"file": ITEM_TABLE_NAME, "sha256": digest, "shape": list(table.shape)},
    })
    return out


__all__ = ["write_cache"]
