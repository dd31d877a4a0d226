"""The teacher-signals cache format: names, dtypes, manifest fields, shard layout, verification.

Shared by the writer (:mod:`recdistill.teacher.emit`), the reader
(:mod:`recdistill.teacher.cache_reader`) and the importers (:mod:`recdistill.teacher.dllm2rec_import`).
Light on purpose: importing it pulls in numpy, torch and safetensors, never Lightning,
transformers or peft.

Layout of a cache folder (format version 2)::

    manifest.json                   teacher + dataset identity, K, layers, dtypes, signals, scoring,
                                    shards + sha256 (see ``MANIFEST_FIELDS``)
    <split>-00000.safetensors       example_id int64 [M], target int32 [M], hidden fp16 [M, H],
                                    layers fp16 [M, n_layers, H] (if asked), user fp16 [M, d_user],
                                    score_user fp32 [M, D], topk_items int32 [M, K], topk_scores fp32 [M, K]
    item_embeddings.safetensors     item_embeddings fp32 [N + 1, d_item] (row 0 = padding),
                                    score_items fp32 [N + 1, D], logit_scale fp32 [1]

Example ids follow ``recdistill.data.schema`` (``user * EXAMPLE_STRIDE + pos``, ``pos`` = index of
the target in the user's full sequence). Rows of a split are user-major, positions ascending;
shard ``i`` holds rows ``[i * shard_size, (i + 1) * shard_size)``.

Teacher scores (format version 2). For every example ``e`` and item ``i`` in ``1..N``::

    logits[e, i] = score_user[e] . score_items[i]          (column 0 = padding, always -inf)

exactly the teacher's own fused logits (fp32; agreement with the teacher's ``score_items`` is
checked on every emitted batch). For the teachers of this repo (``HLLMTeacher``,
``TextPromptTeacher``), with ``u`` the LLM user vector, ``v_i`` the item vector, ``s`` the logit
scale, ``b_i`` the per-item bias (0 without ``item_bias``), ``c`` the collaborative model's state,
``W_i, beta_i`` its (affine) scoring weights::

    no collaborative model : score_user = [u/|u|, 1]        score_items = [s v_i/|v_i|, b_i]
    ensemble (alpha)       : score_user = [u/|u|, 1, c]     score_items = [alpha s v_i/|v_i|,
                                                                           alpha b_i + (1-alpha) beta_i,
                                                                           (1-alpha) W_i]
    joint (weight w)       : score_user = [u/|u|, 1, c]     score_items = [s v_i/|v_i|, b_i + w beta_i, w W_i]

The manifest's ``scoring`` field states the formula and the column blocks (``score_blocks``).
``item_embeddings`` (the teacher's item vectors) and ``user`` (LLM user vector, with the
collaborative state appended for hybrid teachers) are kept for embedding/feature distillation.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import save_file
from torch import Tensor

from recdistill.atomic import atomic_path, item_space_hash, sha256_file, write_json
from recdistill.data.schema import EXAMPLE_STRIDE

__all__ = [
    "FORMAT_VERSION", "EXAMPLE_ID_SCHEME", "SPLITS", "DTYPES", "SIGNAL_KEYS", "MANIFEST_NAME", "ITEM_TABLE_NAME",
    "MANIFEST_FIELDS", "SCORING", "CacheMismatchError", "CacheVersionError", "MissingSignalError",
    "item_space_hash", "atomic_write_json", "atomic_save_safetensors", "shard_name", "read_json", "compare",
    "check_format_version", "owned_files", "clear_cache_folder", "foreign_files", "sha256_file",
    "safetensors_arrays", "EMIT_SETTING", "refuse_foreign",
]

FORMAT_VERSION = 2  # 2: score_user / score_items (full teacher scores), "signals" list, safe overwrite
EXAMPLE_ID_SCHEME = f"user * {EXAMPLE_STRIDE} + pos; pos = index of the target in the user's full sequence"
SPLITS = ("train", "valid", "test")
MANIFEST_NAME = "manifest.json"
ITEM_TABLE_NAME = "item_embeddings.safetensors"
DTYPES = {"example_id": "int64", "target": "int32", "hidden": "float16", "layers": "float16",
          "user": "float16", "score_user": "float32", "topk_items": "int32", "topk_scores": "float32"}
# the per-example signals a reader can look up (``example_id`` is the key itself)
SIGNAL_KEYS = ("target", "hidden", "layers", "user", "score_user", "topk_items", "topk_scores")
SCORING = ("logits[e, i] = score_user[e] . score_items[i] for items i = 1..N; column 0 (padding) = -inf; "
           "equals the teacher's own (fused) logits")
MANIFEST_FIELDS = {
    "format_version": "int, FORMAT_VERSION of the writer",
    "teacher": "identity of the teacher (class, base model + sha, adapter sha256, sizes)",
    "dataset": "name, fingerprint, num_users, num_items, item_space_sha256",
    "k": "top-K length", "layers": "hidden-state indices stored under 'layers'",
    "signals": "per-example tensors present in the shards", "dtypes": "dtype of each tensor",
    "scoring": "formula of the teacher's logits from the cache", "score_blocks": "column blocks of score_user",
    "example_id_scheme": "how example ids are formed", "shard_size": "rows per shard",
    "splits": "{split: {num_examples, num_shards, shards: {file: {sha256, rows, split, index}}}}",
    "item_embeddings": "{file, sha256, shape, dtype}", "complete": "every shard written and recorded",
}
# How a missing signal is produced (the settings of `recdistill teacher emit`, see teacher/cli.py).
EMIT_SETTING = {
    "layers": "emit with --emit.layers '[i, ...]' (0 = inputs, last = final norm)",
    "score_user": "emit it with `recdistill teacher emit` (format 2); imported DLLM2Rec files carry no teacher scores",
    "hidden": "emit it with `recdistill teacher emit`; imported DLLM2Rec files carry no hidden states",
    "user": "emit it with `recdistill teacher emit`; imported DLLM2Rec files carry no user vectors",
    "topk_scores": "emit it with `recdistill teacher emit` (or import with a scores_file)",
    "item_embeddings": "emit it with `recdistill teacher emit` (or import with an item_embeddings_file)",
    "score_items": "emit it with `recdistill teacher emit` (format 2)",
}

_ST_NUMPY = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32,
             "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_PROGRESS = re.compile(r"progress-rank\d+\.json")


class CacheMismatchError(ValueError):
    """An existing cache was built for a different teacher / dataset / setting (or format)."""


class CacheVersionError(CacheMismatchError):
    """The cache was written in another format version than this recdistill reads."""


class MissingSignalError(KeyError):
    """A signal (tensor) that a caller needs is not in the cache; the message names how to emit it."""

    def __str__(self) -> str:  # one line, without KeyError's quotes
        return str(self.args[0]) if self.args else ""


# --------------------------------------------------------------------------- hashing / io


def atomic_write_json(path: Path, obj: Any) -> None:
    write_json(path, obj, sort_keys=True)


def atomic_save_safetensors(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> str:
    """Save tensors to ``path`` atomically; returns the file's sha256.

    Keep ``metadata`` to at most one key: safetensors writes a multi-key metadata map in a
    random order, so the bytes (and the sha256) of identical content would differ.
    """
    if metadata is not None and len(metadata) > 1:
        raise ValueError("use at most one metadata key (multi-key metadata is not byte-deterministic)")
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        digest = sha256_file(tmp)
    return digest


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.safetensors"


def read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def compare(existing: dict, wanted: dict, path: str = "") -> str | None:
    """Name of the first field that differs (dotted path, with both values), or None."""
    for key in sorted(set(existing) | set(wanted)):
        a, b = existing.get(key, "<missing>"), wanted.get(key, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            diff = compare(a, b, f"{path}{key}.")
            if diff:
                return diff
        elif a != b:
            return f"{path}{key} (cache: {a!r}, now: {b!r})"
    return None


def check_format_version(manifest: dict[str, Any], directory: Path) -> None:
    """Raise :class:`CacheVersionError` unless the manifest is of ``FORMAT_VERSION``."""
    version = manifest.get("format_version")
    if version == FORMAT_VERSION:
        return
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise CacheVersionError(f"signals cache {directory} has format version {version}, newer than this "
                                f"recdistill reads ({FORMAT_VERSION}): upgrade recdistill")
    raise CacheVersionError(
        f"signals cache {directory} has format version {version}, this recdistill reads version {FORMAT_VERSION}: "
        f"rebuild it with `recdistill teacher emit --emit.overwrite true` (or import it again)")


def safetensors_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Read-only ``np.memmap`` views of every tensor of a safetensors file (nothing is read until
    indexed; fancy indexing reads only the rows asked for). bf16 is not supported (never written)."""
    path = Path(path)
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    base = 8 + n
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = np.dtype(_ST_NUMPY[info["dtype"]])
        start, stop = info["data_offsets"]
        shape = tuple(int(s) for s in info["shape"])
        if stop == start:
            out[name] = np.zeros(shape, dtype=dtype)
            continue
        out[name] = np.memmap(path, dtype=dtype, mode="r", offset=base + start, shape=shape)
    return out


# --------------------------------------------------------------------------- ownership / overwrite
def _is_temp_of(name: str, owned: set[str]) -> bool:
    """``atomic_path`` temp files: ``.<final name>.<random>.tmp``."""
    if not (name.startswith(".") and name.endswith(".tmp")):
        return False
    return any(name.startswith(f".{o}.") for o in owned)


def owned_files(directory: Path, manifest: dict[str, Any] | None) -> set[str]:
    """Names of the files in ``directory`` that the cache owns: the manifest, the item table, every
    shard its manifest lists or plans (index < ``num_shards``) or a progress file records, the
    progress files themselves and the temp files of all of these."""
    names = {MANIFEST_NAME, ITEM_TABLE_NAME}
    manifest = manifest or {}
    emb = manifest.get("item_embeddings") or {}
    if emb.get("file"):
        names.add(str(emb["file"]))
    for which, entry in (manifest.get("splits") or {}).items():
        names.update(entry.get("shards", {}))
        names.update(shard_name(which, s) for s in range(int(entry.get("num_shards", 0))))
    if directory.is_dir():
        for p in directory.iterdir():
            if _PROGRESS.fullmatch(p.name) and p.is_file():
                names.add(p.name)
                names.update(((read_json(p) or {}).get("shards") or {}))
    present = {p.name for p in directory.iterdir()} if directory.is_dir() else set()
    owned = {n for n in names if n in present}
    owned |= {n for n in present if _is_temp_of(n, names)}
    return owned


def foreign_files(directory: Path, manifest: dict[str, Any] | None) -> list[str]:
    """Entries of ``directory`` the cache does not own (sorted names; folders end with ``/``)."""
    if not directory.is_dir():
        return []
    owned = owned_files(directory, manifest)
    return sorted(p.name + ("/" if p.is_dir() else "") for p in directory.iterdir()
                  if p.name not in owned or not p.is_file())


def refuse_foreign(directory: Path, manifest: dict[str, Any] | None, what: str) -> None:
    """Raise a one-line :class:`CacheMismatchError` if ``directory`` holds files the cache does not own."""
    foreign = foreign_files(directory, manifest)
    if foreign:
        shown = ", ".join(foreign[:8]) + (f" (+{len(foreign) - 8} more)" if len(foreign) > 8 else "")
        raise CacheMismatchError(f"refusing to {what} {directory}: it holds files that are not part of a "
                                 f"signals cache: {shown}; choose an empty or dedicated output folder")


def clear_cache_folder(directory: Path, manifest: dict[str, Any] | None, *,
                       keep: Iterable[str] = ()) -> list[str]:
    """Delete the files the cache owns (except ``keep``) after refusing a folder with foreign files;
    returns the names removed. The folder itself stays."""
    refuse_foreign(directory, manifest, "overwrite")
    keep = set(keep)
    removed = []
    for name in sorted(owned_files(directory, manifest) - keep):
        path = directory / name
        if path.is_file() or path.is_symlink():
            path.unlink()
            removed.append(name)
        elif path.is_dir():  # never reached: folders are foreign; kept for safety
            shutil.rmtree(path)
    return removed
