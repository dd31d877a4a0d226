"""Emit teacher signals once into a verified, resumable on-disk cache: the (multi-process) orchestration.

The format (layout, names, dtypes, manifest, score formula) is in
:mod:`recdistill.teacher.cache_format`; the reader is :mod:`recdistill.teacher.cache_reader`.
The planning is in :mod:`~recdistill.teacher.emit_plan`, the per-batch signals in
:mod:`~recdistill.teacher.emit_scoring` and the shard writer and manifest bookkeeping in
:mod:`~recdistill.teacher.emit_writer`.

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

import hashlib
import json
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch

from recdistill.data.schema import SequentialSplit
from recdistill.errors import ConfigError
from recdistill.teacher.checkpoint import state_hash
from recdistill.teacher.cache_format import (
    DTYPES, EXAMPLE_ID_SCHEME, FORMAT_VERSION, SCORING, SPLITS, CacheMismatchError, compare, item_space_hash,
    read_json,
)
from recdistill.teacher.emit_plan import BatchList, SplitPlan, plan_split, rank_batches  # noqa: F401
from recdistill.teacher.emit_scoring import chunked_topk, predict_signals  # noqa: F401
from recdistill.teacher.emit_writer import SignalShardWriter, finalize_cache, prepare_cache

_read_json = read_json  # old private names, kept for callers
_compare = compare


# constructor arguments that do not change a loaded teacher's scores (training-only settings, inputs
# identified elsewhere in the manifest, and paths: a moved folder is the same teacher)
_NOT_SCORING = frozenset({
    "item_text", "item_embeddings", "embedding_cache_dir", "collaborative_model", "collaborative_embeddings",
    "tokenizer", "progress", "text_batch_size", "lr", "item_lr", "weight_decay", "item_weight_decay", "eval_ks",
    "item_train_counts", "dataset_fingerprint", "base_model", "base_revision", "gguf_file", "trust_remote_code",
})


def _settings_sha256(module) -> str | None:
    """sha256 of the scoring settings the teacher runs with, load-time overrides included (a prompt
    template or gate given to ``load_teacher`` changes the scores without touching a weight)."""
    init_args = getattr(module, "init_args", None)
    if not callable(init_args):
        return None
    settings = {k: v for k, v in init_args().items() if k not in _NOT_SCORING}
    collaborative = getattr(module, "collab_model", None)
    if isinstance(collaborative, torch.nn.Module):  # the CF model is named by path: identify its weights
        settings["collaborative_state"] = state_hash(dict(collaborative.state_dict()))
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def _teacher_identity(module) -> dict[str, Any]:
    ref = module.base_ref
    return {
        "class": f"{type(module).__module__}.{type(module).__qualname__}",
        "base_model": ref.identity(),
        "base_model_sha": ref.hash(),
        "adapter_sha256": module.trained_state_hash(),
        "settings_sha256": _settings_sha256(module),
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

    from recdistill.teacher.lightning_module import TeacherLightningModule, as_teacher

    module = load_teacher(module_or_dir) if isinstance(module_or_dir, (str, Path)) else as_teacher(module_or_dir)
    split, max_len = _resolve_split(datamodule, max_len)
    out = Path(output_dir)
    layers = [int(i) for i in layers]
    splits = list(dict.fromkeys(splits))
    # every setting is checked here, before anything is written: a cache whose manifest records an
    # impossible setting would refuse the corrected run as a mismatch (ConfigError: one line in the CLI)
    for s in splits:
        if s not in SPLITS:
            raise ConfigError(f"emit.splits: unknown split {s!r}; use one of {list(SPLITS)}")
    n_states = int(module.hparams.num_layers) + 1
    for i in layers:
        if not 0 <= i < n_states:
            raise ConfigError(f"emit.layers: layer index {i} out of range 0..{n_states - 1} (0 = inputs, "
                              f"{n_states - 1} = final)")
    if module.num_items != split.num_items:
        raise CacheMismatchError(f"teacher has num_items={module.num_items} but the dataset has {split.num_items}")
    if not 1 <= int(k) <= split.num_items:
        raise ConfigError(f"emit.k must be in 1..{split.num_items} (the number of items), got {k}")
    for name, value in (("shard_size", shard_size), ("batch_size", batch_size), ("train_every", train_every)):
        if int(value) < 1:
            raise ConfigError(f"emit.{name} must be >= 1, got {value}")
    if int(item_chunk_size) < 1:
        raise ConfigError(f"item_chunk_size must be >= 1, got {item_chunk_size}")
    if max_new_shards is not None and max_new_shards < 1:
        raise ConfigError("emit.max_new_shards must be >= 1 (or None for all)")
    if getattr(module, "last_position_only", False):
        if train_stride not in (None, 1):
            raise ConfigError(f"emit.train_stride: {type(module).__name__} only predicts at the last position: "
                              f"use train_stride=1")
        train_stride = 1
    if train_stride and not 1 <= int(train_stride) <= max_len:  # 0 / None: the default stride
        raise ConfigError(f"emit.train_stride must be in 1..max_len={max_len}, got {train_stride}")
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
    batches = BatchList()
    state: dict[str, Any] = {}

    def prepare(trainer) -> None:
        """Rank 0 prepares the folder and plans; every rank takes its share. Collective."""
        rank, world = trainer.global_rank, trainer.world_size
        job: dict[str, Any] | None = None
        error: BaseException | None = None
        if rank == 0:
            try:
                job = prepare_cache(module, split, out, header, splits, overwrite=overwrite, max_len=max_len,
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
        batches.windows, batches.batches = rank_batches(split, mine, max_len=max_len, train_every=train_every,
                                                        stride=stride, shard_size=shard_size, batch_size=batch_size)
        state["job"] = job

    from recdistill.training import quiet_known_noise

    quiet_known_noise()  # Lightning's tips and known-harmless warnings, as through the CLI
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
        runner = TeacherLightningModule(module, emit_config=dict(
            k=k, layers=list(layers), exclude_target=exclude_target, mask_history=mask_history,
            chunk_size=item_chunk_size, num_items=module.num_items))
        runner.allow_zero_length_dataloader_with_multiple_devices = True  # a rank may have no shard left
        loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*infer the batch indices.*")
            warnings.filterwarnings("ignore", ".*does not have many workers.*")
            warnings.filterwarnings("ignore", ".*across ranks is zero.*")
            trainer.predict(runner, dataloaders=loader, return_predictions=False)
    job = state["job"]
    world, rank = trainer.world_size, trainer.global_rank
    trainer.strategy.barrier("recdistill-emit-written")  # every rank's shards are on disk
    missing = finalize_cache(out, splits, job["work"]) if rank == 0 else None
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
