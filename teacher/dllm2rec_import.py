"""Import DLLM2Rec-style teacher files into a recdistill signals cache.

DLLM2Rec ships, per split, a text matrix of top-K item ids (one row per example, whitespace
separated), optionally a matching matrix of distances or scores, and one item-embedding tensor
(``.pt``, loaded with ``weights_only=True``, or ``.npy``) whose row ``r`` is *their* item id ``r``.
Their ids are not ours: an explicit ``id_mapping`` (their id -> our item index 1..N) is required,
and an item-count mismatch or an id missing from the mapping is an error (the silent
misalignment of those files is the classic reproduction pitfall).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recdistill.data.schema import EXAMPLE_STRIDE, SequentialSplit
from recdistill.teacher.cache_format import (
    DTYPES, EXAMPLE_ID_SCHEME, FORMAT_VERSION, ITEM_TABLE_NAME, MANIFEST_NAME, CacheMismatchError,
    atomic_save_safetensors, atomic_write_json, clear_cache_folder, compare, item_space_hash, read_json,
    refuse_foreign, sha256_file, shard_name,
)


class IdMappingError(ValueError):
    """The external item ids do not map one-to-one onto this dataset's items."""


def load_id_mapping(mapping: Mapping[int, int] | Sequence[int] | np.ndarray | str | Path) -> dict[int, int]:
    """``{their_id: our_index}`` from a dict, a sequence (position = their id), a JSON object file
    or a two-column text file (``their_id our_index`` per line)."""
    if isinstance(mapping, (str, Path)):
        path = Path(mapping)
        if path.suffix == ".json":
            return {int(k): int(v) for k, v in json.loads(path.read_text()).items()}
        pairs = np.loadtxt(path, dtype=np.int64, ndmin=2)
        if pairs.shape[1] != 2:
            raise IdMappingError(f"{path} must have two columns: their_id our_index")
        return {int(a): int(b) for a, b in pairs}
    if isinstance(mapping, Mapping):
        return {int(k): int(v) for k, v in mapping.items()}
    return {i: int(v) for i, v in enumerate(np.asarray(mapping).tolist())}


def _check_mapping(mapping: dict[int, int], num_items: int) -> None:
    if len(mapping) != num_items:
        raise IdMappingError(f"id mapping has {len(mapping)} items but the dataset has {num_items}")
    ours = np.fromiter(mapping.values(), dtype=np.int64, count=len(mapping))
    if ours.min(initial=1) < 1 or ours.max(initial=1) > num_items:
        raise IdMappingError(f"id mapping targets must be item indices 1..{num_items}")
    if len(np.unique(ours)) != len(ours):
        raise IdMappingError("id mapping is not one-to-one (two external ids map to the same item)")


def _map_ids(ids: np.ndarray, mapping: dict[int, int], what: str) -> np.ndarray:
    keys = np.fromiter(mapping.keys(), dtype=np.int64, count=len(mapping))
    vals = np.fromiter(mapping.values(), dtype=np.int64, count=len(mapping))
    order = np.argsort(keys)
    keys, vals = keys[order], vals[order]
    pos = np.searchsorted(keys, ids)
    pos_c = np.minimum(pos, len(keys) - 1)
    ok = keys[pos_c] == ids
    if not ok.all():
        bad = np.unique(ids[~ok])
        raise IdMappingError(f"{what} contains {len(bad)} item id(s) missing from the id mapping, e.g. {bad[:5].tolist()}")
    return vals[pos_c]


def _load_matrix(path: str | Path, dtype) -> np.ndarray:
    path = Path(path)
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False).astype(dtype)
    if path.suffix in (".pt", ".pth"):
        return torch.load(path, map_location="cpu", weights_only=True).numpy().astype(dtype)
    return np.loadtxt(path, dtype=dtype, ndmin=2)


def _load_embeddings(path: str | Path) -> np.ndarray:
    path = Path(path)
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False).astype(np.float32)
    if path.suffix in (".pt", ".pth"):
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(obj, torch.Tensor):
            raise TypeError(f"{path} must hold a single tensor")
        return obj.float().numpy()
    raise ValueError(f"unsupported embedding file {path} (use .pt or .npy)")


def _mapping_hash(mapping: dict[int, int]) -> str:
    return hashlib.sha256(json.dumps(sorted(mapping.items())).encode()).hexdigest()


def import_dllm2rec(
    output_dir: str | Path,
    split: SequentialSplit,
    *,
    which: str,
    topk_file: str | Path,
    example_ids: Sequence[int] | np.ndarray,
    id_mapping: Mapping[int, int] | Sequence[int] | np.ndarray | str | Path,
    scores_file: str | Path | None = None,
    scores_are_distances: bool = True,
    item_embeddings_file: str | Path | None = None,
    shard_size: int = 4096,
    overwrite: bool = False,
) -> Path:
    """Convert one split of DLLM2Rec-style files into ``output_dir`` (call again for more splits).

    ``example_ids[i]`` names the example of row ``i`` (our scheme: ``user * 2**20 + pos``).
    Distances become scores by negation (higher = better), recorded in the manifest.

    Importing a split again replaces only that split's shards. ``overwrite`` is needed when the
    settings (mapping, K, scores, item embeddings, dataset) changed; it removes only the files
    the old cache owns, refuses a folder holding anything else, and refuses (rather than drop
    them) when other splits were imported with the old settings. Imported caches carry no
    teacher scores (``score_user``/``score_items``): full-catalogue distillation needs an emitted cache.
    """
    out = Path(output_dir)
    mapping = load_id_mapping(id_mapping)
    _check_mapping(mapping, split.num_items)
    top_raw = _load_matrix(topk_file, np.int64)
    eids = np.asarray(example_ids, dtype=np.int64).reshape(-1)
    if len(eids) != top_raw.shape[0]:
        raise ValueError(f"{topk_file} has {top_raw.shape[0]} rows but {len(eids)} example ids were given")
    if len(np.unique(eids)) != len(eids):
        raise ValueError("example_ids contain duplicates")
    users, pos = eids // EXAMPLE_STRIDE, eids % EXAMPLE_STRIDE
    lengths = split.lengths
    if users.min(initial=0) < 0 or users.max(initial=0) >= split.num_users:
        raise ValueError("example ids name users outside this dataset")
    if (pos < 1).any() or (pos >= lengths[users]).any():
        raise ValueError("example ids name positions outside their users' sequences")
    topk = _map_ids(top_raw.reshape(-1), mapping, str(topk_file)).reshape(top_raw.shape)
    k = int(topk.shape[1])
    scores = None
    if scores_file is not None:
        raw_scores = _load_matrix(scores_file, np.float32)
        if raw_scores.shape != top_raw.shape:
            raise ValueError(f"{scores_file} has shape {raw_scores.shape}, top-K ids have {top_raw.shape}")
        scores = -raw_scores if scores_are_distances else raw_scores
    target = np.array([split.sequences[u][p] for u, p in zip(users, pos)], dtype=np.int64)
    table = None  # checked before anything in ``output_dir`` is deleted or written
    if item_embeddings_file is not None:
        emb = _load_embeddings(item_embeddings_file)
        if emb.ndim != 2 or emb.shape[0] != split.num_items:
            raise IdMappingError(f"{item_embeddings_file} has {emb.shape[0]} rows but the dataset has "
                                 f"{split.num_items} items")
        ours = _map_ids(np.arange(emb.shape[0], dtype=np.int64), mapping, str(item_embeddings_file))
        table = np.zeros((split.num_items + 1, emb.shape[1]), dtype=np.float32)
        table[ours] = emb

    emb_sha = sha256_file(item_embeddings_file) if item_embeddings_file is not None else None
    signals = ["example_id", "target", "topk_items", *(["topk_scores"] if scores is not None else [])]
    header = {
        "format_version": FORMAT_VERSION,
        "teacher": {"class": "dllm2rec-import", "mapping_sha256": _mapping_hash(mapping),
                    "item_embeddings_sha256": emb_sha},
        "dataset": {"name": split.name, "fingerprint": split.fingerprint, "num_users": split.num_users,
                    "num_items": split.num_items, "item_space_sha256": item_space_hash(split.item_ids)},
        "k": k,
        "layers": [],
        "signals": signals,
        "dtypes": {key: DTYPES[key] for key in signals},
        "example_id_scheme": EXAMPLE_ID_SCHEME,
        "shard_size": int(shard_size),
        # every split of a cache has the same score convention (distances negated or scores as given)
        "score_transform": "negated distance" if (scores_file and scores_are_distances) else "as given",
    }
    manifest_path = out / MANIFEST_NAME
    manifest = read_json(manifest_path)
    if manifest is None:
        refuse_foreign(out, None, "import into")
    else:
        diff = compare({key: manifest.get(key) for key in header}, header)
        others = sorted(w for w in (manifest.get("splits") or {}) if w != which)
        if diff and not overwrite:
            raise CacheMismatchError(f"signals cache {out} does not match this import: {diff}; rebuild with --overwrite")
        if diff and others:  # never delete the splits imported earlier
            raise CacheMismatchError(
                f"signals cache {out} holds split(s) {others} imported with other settings ({diff}): "
                f"overwrite would drop them; import every split again into a new folder")
        if diff:  # overwrite, nothing else imported: remove exactly the old cache's files (refuses foreign ones)
            clear_cache_folder(out, manifest)
            manifest = None
        else:  # re-import of this split (or a new one): drop only this split's old shards
            old = (manifest.get("splits") or {}).get(which) or {}
            for name in sorted(old.get("shards", {})):
                (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    manifest = dict(header, splits=dict((manifest or {}).get("splits", {})), complete=False,
                    item_embeddings=(manifest or {}).get("item_embeddings"),
                    scoring=None, exclude_target=None, mask_history=None)
    manifest["splits"].pop(which, None)
    atomic_write_json(manifest_path, manifest)

    if table is not None:
        digest = atomic_save_safetensors(out / ITEM_TABLE_NAME, {"item_embeddings": torch.from_numpy(table)})
        manifest["item_embeddings"] = {"file": ITEM_TABLE_NAME, "sha256": digest,
                                       "shape": list(table.shape), "dtype": "float32"}

    order = np.argsort(eids, kind="stable")  # canonical row order: user-major, positions ascending
    shards: dict[str, Any] = {}
    n = len(eids)
    for s, start in enumerate(range(0, max(n, 1), shard_size)):
        sel = order[start:start + shard_size]
        tensors = {
            "example_id": torch.from_numpy(eids[sel].copy()),
            "target": torch.from_numpy(target[sel].astype(np.int32)),
            "topk_items": torch.from_numpy(topk[sel].astype(np.int32)),
        }
        if scores is not None:
            tensors["topk_scores"] = torch.from_numpy(scores[sel].astype(np.float32))
        name = shard_name(which, s)
        shards[name] = {"sha256": atomic_save_safetensors(out / name, tensors), "rows": int(len(sel)),
                        "split": which, "index": s}
    manifest["splits"][which] = {"num_examples": n, "num_shards": len(shards), "shards": shards,
                                 "source_files": {str(Path(f).name): sha256_file(f)
                                                  for f in (topk_file, scores_file) if f is not None}}
    manifest["complete"] = True
    atomic_write_json(manifest_path, manifest)
    return out
