"""Emit teacher signals once into a verified, resumable on-disk cache (the writer; Lightning).

The format (layout, names, dtypes, manifest, score formula) is in
:mod:`recdistill.teacher.cache_format`; the reader is :mod:`recdistill.teacher.cache_reader`.

The shard plan and the batches are fixed by the data and the settings alone (not by the number
of processes), so a resumed or a multi-process run writes byte-identical shards. Every file is
written to a temp name and ``os.replace``-d into place; per-rank progress files record finished
shards (with sha256) and the manifest merges them.

Several processes (``trainer_kwargs`` with ``devices``/``num_nodes`` and ``strategy="ddp"``): global
rank 0 alone checks the folder and writes the manifest and the item table, then broadcasts the
pending shards, dealt round-robin to the ranks; each rank computes the fixed batches feeding its
shards and writes them; after a barrier rank 0 merges the progress files into the manifest.

Train rows: the training part ``seq[:-2]`` is cut into windows of ``max_len`` items ending every
``train_stride`` positions (default ``max_len // 2``); each target is read from the first window
that contains it, so it sees at least ``max_len - train_stride + 1`` earlier items (or all of them).
``train_stride=1`` gives every target exactly its last ``max_len`` items. Valid/test rows use the
last ``max_len`` items before the target, like the data module.

Top-K is computed chunk-wise over the catalogue (a running top-k merge over item chunks): no
``[examples x items]`` matrix is ever held beyond one batch x one chunk. Each batch also stores
``score_user`` (the teacher's ``score_factors``) and checks, on the first item chunk, that
``score_user @ score_items.T`` equals the teacher's own logits.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor

from recdistill.atomic import sha256_file
from recdistill.data.schema import EXAMPLE_STRIDE, SequentialSplit
from recdistill.teacher.cache_format import (
    DTYPES, EXAMPLE_ID_SCHEME, FORMAT_VERSION, ITEM_TABLE_NAME, MANIFEST_NAME, SCORING, SPLITS, CacheMismatchError,
    atomic_save_safetensors, atomic_write_json, clear_cache_folder, compare, item_space_hash, read_json,
    refuse_foreign, shard_name,
)

_read_json = read_json  # old private names, kept for callers
_compare = compare

# --------------------------------------------------------------------------- the plan
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


class _WindowDataset(torch.utils.data.Dataset):
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


class _BatchList(torch.utils.data.Dataset):
    """Item ``i`` is the whole pre-planned batch ``batches[i] = (split, window indices)`` (used with
    ``batch_size=None``); each batch carries its split name under ``"split"``. Filled in place by
    :func:`emit_signals` once this rank's share of the work is known."""

    def __init__(self) -> None:
        self.windows: dict[str, _WindowDataset] = {}
        self.batches: list[tuple[str, list[int]]] = []

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, Any]:
        which, idx = self.batches[i]
        return dict(self.windows[which].__getitems__(idx), split=which)


# --------------------------------------------------------------------------- scoring
@torch.no_grad()
def chunked_topk(score_fn, num_items: int, k: int, *, history: Tensor | None, target: Tensor | None,
                 exclude_target: bool = True, mask_history: bool = True, chunk_size: int = 4096
                 ) -> tuple[Tensor, Tensor]:
    """Top-``k`` over items ``1..num_items`` from ``score_fn(start, stop) -> [M, stop - start]``.

    Column 0 is never returned. History items are masked when ``mask_history`` (the target keeps
    its score unless ``exclude_target``). A running top-k is merged chunk by chunk.
    """
    if not 1 <= k <= num_items:
        raise ValueError(f"k must be in 1..num_items={num_items}, got {k}")
    best_s: Tensor | None = None
    best_i: Tensor | None = None
    for start in range(0, num_items + 1, chunk_size):
        stop = min(start + chunk_size, num_items + 1)
        s = score_fn(start, stop).float()
        m, c = s.shape
        s = torch.cat([s, s.new_zeros(m, 1)], 1)  # dummy column absorbs out-of-chunk scatters

        def local(idx: Tensor) -> Tensor:
            li = idx - start
            ok = (idx > 0) & (li >= 0) & (li < c)
            return torch.where(ok, li, torch.full_like(li, c))

        tgt_local = local(target.view(-1, 1)) if target is not None else None
        if mask_history and history is not None and history.numel():
            keep = s.gather(1, tgt_local) if (tgt_local is not None and not exclude_target) else None
            s.scatter_(1, local(history), -math.inf)
            if keep is not None:
                s.scatter_(1, tgt_local, keep)
        if exclude_target and tgt_local is not None:
            s.scatter_(1, tgt_local, -math.inf)
        s = s[:, :c]
        if start == 0:
            s[:, 0] = -math.inf
        ids = torch.arange(start, stop, device=s.device).expand(m, c)
        if best_s is not None:
            s = torch.cat([best_s, s], 1)
            ids = torch.cat([best_i, ids], 1)
        kk = min(k, s.shape[1])
        best_s, pick = torch.topk(s, kk, dim=1)
        best_i = ids.gather(1, pick)
    assert best_s is not None and best_i is not None
    return best_i, best_s


@torch.no_grad()
def predict_signals(module, batch: dict[str, Tensor], *, k: int = 50, layers: Sequence[int] = (),
                    exclude_target: bool = True, mask_history: bool = True, chunk_size: int = 4096,
                    num_items: int | None = None) -> dict[str, Tensor]:
    """Signals for the rows of one emission batch (called from the teacher's ``predict_step``).

    ``layers`` index the LLM's hidden states: 0 = the rescaled inputs, i = output of block i,
    the last index = after the final norm (= ``hidden``).
    """
    enc = module.encode(batch["input_ids"], output_hidden_states=bool(layers))
    rb, ro = batch["row_batch"], batch["row_offset"]
    if enc["user"].shape[1] == 1:  # last-position-only teachers (one row per window, stride 1)
        ro = torch.zeros_like(ro)
    user = enc["user"][rb, ro]
    out = {
        "example_id": batch["example_id"].cpu(),
        "row": batch["row"].cpu(),
        "shard": batch["shard"].cpu(),
        "target": batch["target"].to(torch.int32).cpu(),
        "hidden": enc["hidden"][rb, ro].to(torch.float16).cpu(),
        "user": user.to(torch.float16).cpu(),
    }
    if layers:
        states = enc["hidden_states"]
        out["layers"] = torch.stack([states[i][rb, ro] for i in layers], 1).to(torch.float16).cpu()
    n = int(num_items or module.num_items)
    score_user = module.score_factors(user).float()
    _check_score_factors(module, user, score_user, min(chunk_size, n + 1))
    out["score_user"] = score_user.cpu()
    ids, scores = chunked_topk(
        lambda a, b: module.score_items(user, a, b), n, k, history=batch["history"], target=batch["target"],
        exclude_target=exclude_target, mask_history=mask_history, chunk_size=chunk_size,
    )
    out["topk_items"] = ids.to(torch.int32).cpu()
    out["topk_scores"] = scores.float().cpu()
    return out


def _check_score_factors(module, user: Tensor, score_user: Tensor, stop: int) -> None:
    """The stored factors must rebuild the teacher's own logits (items ``1..stop-1``)."""
    want = module.score_items(user, 0, stop)[:, 1:].float()
    got = score_user @ module.score_item_factors(0, stop)[1:].float().t()
    err = float((got - want).abs().max()) if want.numel() else 0.0
    dtype = user.dtype
    if torch.is_autocast_enabled(user.device.type):  # mixed precision: both sides rounded differently
        dtype = torch.get_autocast_dtype(user.device.type)
    rel = max(1e-3, 64 * torch.finfo(dtype).eps) if dtype.is_floating_point else 1e-3
    tol = rel * (1.0 + float(want.abs().max())) if want.numel() else 0.0
    if not err <= tol:
        raise RuntimeError(f"{type(module).__name__}.score_factors / score_item_factors do not rebuild its "
                           f"score_items (max abs error {err:.3g} > {tol:.3g}); the cache would mis-state its scores")


# --------------------------------------------------------------------------- the writer
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
        progress = _read_json(progress_path) or {"shards": {}}
        progress["shards"][name] = self.written[name]
        atomic_write_json(progress_path, progress)


# --------------------------------------------------------------------------- emission
def _teacher_identity(module) -> dict[str, Any]:
    ref = module.base_ref
    return {
        "class": f"{type(module).__module__}.{type(module).__qualname__}",
        "base_model": ref.identity(),
        "base_model_sha": ref.hash(),
        "adapter_sha256": module.trained_state_hash(),
        "num_layers": int(getattr(module.hparams, "num_layers", 0)),
        "hidden_size": int(getattr(module, "hidden_size", 0)),
        "item_dim": int(getattr(module, "item_dim", 0)),
    }


def _resolve_split(datamodule, max_len: int | None) -> tuple[SequentialSplit, int]:
    if isinstance(datamodule, SequentialSplit):
        if max_len is None:
            raise ValueError("pass max_len when emitting from a bare SequentialSplit")
        return datamodule, max_len
    split = getattr(datamodule, "split", None)
    if not isinstance(split, SequentialSplit):
        raise TypeError("datamodule must be a SequentialDataModule (with .split) or a SequentialSplit")
    return split, int(max_len or datamodule.max_len)


def _existing_complete_shards(out: Path, manifest: dict | None) -> dict[str, dict[str, Any]]:
    """Shards recorded (manifest or progress files) whose file exists and matches its sha256."""
    records: dict[str, dict[str, Any]] = {}
    if manifest:
        for split_info in manifest.get("splits", {}).values():
            records.update(split_info.get("shards", {}))
    for prog in sorted(out.glob("progress-rank*.json")):
        records.update((_read_json(prog) or {}).get("shards", {}))
    good: dict[str, dict[str, Any]] = {}
    for name, rec in records.items():
        path = out / name
        if path.is_file() and sha256_file(path) == rec["sha256"]:
            good[name] = rec
    return good


def emit_signals(
    module_or_dir: Any,
    datamodule: Any,
    output_dir: str | Path,
    *,
    k: int = 50,
    layers: Sequence[int] = (),
    splits: Sequence[str] = ("train", "valid", "test"),
    shard_size: int = 4096,
    overwrite: bool = False,
    max_len: int | None = None,
    train_every: int = 1,
    train_stride: int | None = None,
    exclude_target: bool = True,
    mask_history: bool = True,
    item_chunk_size: int = 4096,
    batch_size: int = 16,
    max_new_shards: int | None = None,
    callbacks: Iterable[Any] = (),
    trainer_kwargs: dict[str, Any] | None = None,
) -> Path:
    """Emit (or resume emitting) teacher signals into ``output_dir``; returns the folder.

    ``module_or_dir`` is a teacher module or a teacher checkpoint folder. A cache built for a
    different teacher, dataset or setting is refused (:class:`CacheMismatchError` naming the
    field) unless ``overwrite``. Shards already complete (sha256-verified) are skipped.
    ``max_new_shards`` writes only the first that many pending shards (the manifest stays
    incomplete; a later call resumes).

    Multi-process emission: pass e.g. ``trainer_kwargs={"accelerator": "gpu", "devices": 4,
    "strategy": "ddp"}`` (or ``"num_nodes"``; under ``torchrun``/SLURM every process calls this
    function). Every process runs this function; global rank 0 alone checks and writes the
    manifest and the item table, then broadcasts the list of pending shards, which are dealt
    round-robin to the ranks. Each rank runs the fixed global batches that feed its shards (no
    distributed sampler, so nothing is padded or reordered), writes them and records them in
    its own progress file; after a barrier rank 0 merges them into the manifest. The output
    folder must be shared by all processes (one machine, or a shared file system). The content
    does not depend on the number of processes. Spawn/fork strategies (``ddp_spawn``,
    ``ddp_notebook``) are refused: use ``"ddp"``.
    """
    from recdistill.teacher.hllm import load_teacher

    module = load_teacher(module_or_dir) if isinstance(module_or_dir, (str, Path)) else module_or_dir
    split, max_len = _resolve_split(datamodule, max_len)
    out = Path(output_dir)
    layers = [int(i) for i in layers]
    splits = list(dict.fromkeys(splits))
    for s in splits:
        if s not in SPLITS:
            raise ValueError(f"unknown split {s!r}; use one of {SPLITS}")
    n_states = int(module.hparams.num_layers) + 1
    for i in layers:
        if not 0 <= i < n_states:
            raise ValueError(f"layer index {i} out of range 0..{n_states - 1} (0 = inputs, {n_states - 1} = final)")
    if module.num_items != split.num_items:
        raise CacheMismatchError(f"teacher has num_items={module.num_items} but the dataset has {split.num_items}")
    if max_new_shards is not None and max_new_shards < 1:
        raise ValueError("max_new_shards must be >= 1 (or None for all)")
    if getattr(module, "last_position_only", False):
        if train_stride not in (None, 1):
            raise ValueError(f"{type(module).__name__} only predicts at the last position: use train_stride=1")
        train_stride = 1
    stride = train_stride or max(1, max_len // 2)
    if not (hasattr(module, "score_factors") and hasattr(module, "score_item_factors")):
        raise TypeError(f"{type(module).__name__} has no score_factors/score_item_factors: the cache could not "
                        f"rebuild its scores (see recdistill.teacher.cache_format)")
    signals = ["example_id", "target", "hidden", *(["layers"] if layers else []), "user", "score_user",
               "topk_items", "topk_scores"]

    header = {
        "format_version": FORMAT_VERSION,
        "teacher": _teacher_identity(module),
        "dataset": {
            "name": split.name,
            "fingerprint": split.fingerprint,
            "num_users": split.num_users,
            "num_items": split.num_items,
            "item_space_sha256": item_space_hash(split.item_ids),
        },
        "teacher_dataset_fingerprint": getattr(module, "dataset_fingerprint", None),
        "k": int(k),
        "layers": layers,
        "signals": signals,
        "dtypes": {key: DTYPES[key] for key in signals},
        "scoring": SCORING,
        "score_blocks": module.score_blocks(),
        "example_id_scheme": EXAMPLE_ID_SCHEME,
        "exclude_target": bool(exclude_target),
        "mask_history": bool(mask_history),
        "max_len": int(max_len),
        "train_every": int(train_every),
        "train_stride": int(stride),
        "shard_size": int(shard_size),
    }
    if header["teacher_dataset_fingerprint"] not in (None, split.fingerprint):
        raise CacheMismatchError(
            f"the teacher was trained on dataset fingerprint {header['teacher_dataset_fingerprint']} but this "
            f"dataset is {split.fingerprint}; emit with the teacher trained on this data"
        )

    kwargs = dict(accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
                  enable_progress_bar=True, enable_model_summary=False)
    kwargs.update(trainer_kwargs or {})
    # each rank gets its own pre-planned batch list: a DistributedSampler would split it again,
    # pad it with duplicates and reorder it
    kwargs["use_distributed_sampler"] = False
    # one metadata key only: safetensors serialises a multi-key metadata map in random order,
    # which would break byte-identical shards
    writer = SignalShardWriter(out, metadata={"format": "pt"})
    batches = _BatchList()
    state: dict[str, Any] = {}

    def prepare(trainer) -> None:
        """Rank 0 prepares the folder and plans; every rank takes its share. Collective."""
        rank, world = trainer.global_rank, trainer.world_size
        job: dict[str, Any] | None = None
        error: BaseException | None = None
        if rank == 0:
            try:
                job = _prepare_cache(module, split, out, header, splits, overwrite=overwrite, max_len=max_len,
                                     train_every=train_every, stride=stride, shard_size=shard_size,
                                     max_new_shards=max_new_shards)
            except Exception as exc:  # every rank must raise it, not wait for rank 0 forever
                error = exc
                job = {"error": _picklable(exc)}
        if world > 1:
            job = trainer.strategy.broadcast(job, src=0)
        assert job is not None
        if error is not None:
            raise error
        if "error" in job:
            raise job["error"]
        mine = job["work"][rank::world]  # pending shards dealt round-robin in global order
        writer.own({(which, s): rows for which, s, rows in mine}, rank=rank)
        batches.windows, batches.batches = _rank_batches(split, mine, max_len=max_len, train_every=train_every,
                                                         stride=stride, shard_size=shard_size, batch_size=batch_size)
        state["job"] = job

    trainer = L.Trainer(callbacks=[_PrepareOnSetup(prepare, state), writer, *callbacks], **kwargs)
    world, rank = trainer.world_size, trainer.global_rank
    if world > 1:
        from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

        if isinstance(trainer.strategy.launcher, _MultiProcessingLauncher):
            raise ValueError(f"emit_signals cannot run under a spawn/fork launcher (strategy="
                             f"{kwargs.get('strategy')!r}): use strategy='ddp' (or torchrun/SLURM)")
    else:
        prepare(trainer)  # no collective needed: prepare now and skip the Trainer when nothing is pending
    # with several processes, ``prepare`` runs from the ``setup`` hook, i.e. once the process
    # group exists (the "ddp" launcher only starts the other ranks inside ``trainer.predict``)
    if world > 1 or batches.batches:
        module.emit_config = dict(k=k, layers=list(layers), exclude_target=exclude_target,
                                  mask_history=mask_history, chunk_size=item_chunk_size, num_items=module.num_items)
        zero_ok = module.allow_zero_length_dataloader_with_multiple_devices
        module.allow_zero_length_dataloader_with_multiple_devices = True  # a rank may have no shard left
        loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", ".*infer the batch indices.*")
                warnings.filterwarnings("ignore", ".*does not have many workers.*")
                warnings.filterwarnings("ignore", ".*across ranks is zero.*")
                trainer.predict(module, dataloaders=loader, return_predictions=False)
        finally:
            module.emit_config = None
            module.allow_zero_length_dataloader_with_multiple_devices = zero_ok
    job = state["job"]
    world, rank = trainer.world_size, trainer.global_rank
    trainer.strategy.barrier("recdistill-emit-written")  # every rank's shards are on disk
    missing = _finalize_cache(out, splits, job["work"]) if rank == 0 else None
    if world > 1:  # also keeps every rank here until the manifest is final
        missing = trainer.strategy.broadcast(missing, src=0)
    if missing:
        raise RuntimeError(f"emission finished without writing shards {missing}")
    return out


class _PrepareOnSetup(L.Callback):
    """Runs ``prepare(trainer)`` from the ``setup`` hook (after the process group is initialised)
    unless it already ran."""

    def __init__(self, prepare, state: dict[str, Any]) -> None:
        self.prepare, self.state = prepare, state

    def setup(self, trainer, pl_module, stage: str) -> None:
        if "job" not in self.state:
            self.prepare(trainer)


def _picklable(exc: BaseException) -> BaseException:
    """``exc`` if it survives a pickle round trip (to broadcast it), else a RuntimeError naming it."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any pickling failure: the error is re-raised as a RuntimeError naming it
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _prepare_cache(module, split, out: Path, header: dict[str, Any], splits: list[str], *, overwrite: bool,
                   max_len: int, train_every: int, stride: int, shard_size: int, max_new_shards: int | None
                   ) -> dict[str, Any]:
    """Rank 0 only: check/clear the folder, write the manifest (incomplete) and the item table, and
    list the pending shards ``(split, index, rows)`` of this run in canonical order."""
    manifest_path = out / MANIFEST_NAME
    manifest = _read_json(manifest_path)
    if manifest is None:  # a new cache: the folder must be empty (or hold only our own leftovers)
        refuse_foreign(out, None, "write a signals cache into")
    elif overwrite:  # remove exactly what the old cache owns; refuse a folder with anything else
        clear_cache_folder(out, manifest)
        manifest = None
    else:
        old_header = {key: manifest.get(key) for key in header}
        diff = _compare(old_header, header)
        if diff:
            raise CacheMismatchError(
                f"signals cache {out} does not match the current run: {diff}. Rebuild it with "
                f"`recdistill teacher emit --emit.overwrite true` (emit_signals(..., overwrite=True)) "
                f"or use another output folder."
            )
    out.mkdir(parents=True, exist_ok=True)
    good = _existing_complete_shards(out, manifest)
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


def _rank_batches(split, mine: list[tuple[str, int, int]], *, max_len: int, train_every: int, stride: int,
                  shard_size: int, batch_size: int
                  ) -> tuple[dict[str, _WindowDataset], list[tuple[str, list[int]]]]:
    """The fixed global batches (batch b = windows ``[b * batch_size, (b + 1) * batch_size)`` of a
    split) that feed the shards in ``mine``, in canonical order."""
    windows: dict[str, _WindowDataset] = {}
    batches: list[tuple[str, list[int]]] = []
    for which in dict.fromkeys(w for w, _, _ in mine):
        plan = plan_split(split, which, max_len, train_every=train_every, train_stride=stride)
        windows[which] = _WindowDataset(split, plan, max_len, shard_size)
        owned = np.asarray([s for w, s, _ in mine if w == which], dtype=np.int64)
        row_shard = np.arange(plan.num_rows) // shard_size
        needed = np.unique(plan.row_window[np.isin(row_shard, owned)] // batch_size)
        n_windows = len(plan.win_user)
        batches += [(which, list(range(b * batch_size, min((b + 1) * batch_size, n_windows)))) for b in needed.tolist()]
    return windows, batches


def _finalize_cache(out: Path, splits: list[str], work: list[tuple[str, int, int]]) -> list[str]:
    """Rank 0 only, after every rank wrote its shards: merge the per-rank progress files into the
    manifest, decide completeness; returns the shards of ``work`` that are missing."""
    manifest_path = out / MANIFEST_NAME
    manifest = _read_json(manifest_path)
    assert manifest is not None
    good = _existing_complete_shards(out, manifest)
    complete = True
    for which in splits:
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
