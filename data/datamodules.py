"""LightningDataModules for the sequential (next-item) and CTR tasks.

Both load eagerly in ``__init__`` so ``num_items`` & co. exist right after construction (the CLI
links them into the model). Batches are dicts of tensors built a whole batch at a time.

Sequential batches (item inputs LEFT-padded with 0, keeping the most recent ``max_len`` items):
- train: ``input_ids`` Long[B, L], ``labels`` Long[B, L] (next item per position, 0 = ignore),
  ``example_ids`` Long[B, L] (example id of each label, 0 where the label is 0; for teacher
  signals), ``user`` Long[B]; one row per user with >= 2 training items (input ``seq[:-3]``,
  labels ``seq[1:-2]``, i.e. the training part ``seq[:-2]`` shifted), or with
  ``train_windows="all"`` one row per ``max_len`` window of that part (every label once).
- valid/test/predict: ``input_ids`` Long[B, L], ``target`` Long[B], ``history`` Long[B, H] (all
  earlier items, left-padded to the batch's longest), ``user`` Long[B], ``example_id`` Long[B].

Under several processes (Lightning DDP/FSDP with ``use_distributed_sampler``, the default), the
loaders Lightning asks for are sharded here by :class:`RankShardSampler` instead of by Lightning's
``DistributedSampler``: training rank ``r`` reads ``order[r::world]`` of the very epoch order one
process reads, so with ``batch_size`` ``b`` per process the union of the processes' step-``s``
batches is the single-process step-``s`` batch of size ``world * b`` (and ``data.seed`` is kept);
validation and test are split without padding, so every example is evaluated exactly once (a
padded ``DistributedSampler`` repeats examples, which would count them twice in the metric sums).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler

from recdistill.data.sampling import EpochShuffleSampler
from recdistill.data.batching import BatchedDataset, collate, left_pad, offsets_of
from recdistill.data.ctr import CTRDataset, build_ctr_features, ctr_examples, ctr_train_prefix
from recdistill.data.schema import EXAMPLE_STRIDE, SequentialSplit
from recdistill.data.sequential import load_split

TRAIN_WINDOWS = ("last", "all")
HOLDOUTS = ("leave_one_out", "ctr")
_SPLIT_ALIASES = {"train": "train", "val": "valid", "valid": "valid", "validation": "valid", "test": "test",
                  "predict": "test"}


class SequentialTrainDataset(BatchedDataset):
    """Rows of the training part ``seq[:-2]`` as (input, next-item labels).

    ``windows="last"``: one row per user, its most recent ``max_len`` labels (SASRec's default).
    ``windows="all"``: the labels cut into consecutive non-overlapping windows of ``max_len``
    ending at the last one, so every training label is seen once per epoch; the input of an
    earlier window is the ``max_len`` items before each of its labels, as in the last window.
    """

    def __init__(self, split: SequentialSplit, max_len: int, windows: str = "last"):
        if windows not in TRAIN_WINDOWS:
            raise ValueError(f"train_windows must be one of {TRAIN_WINDOWS}, got {windows!r}")
        lengths = split.lengths
        self.flat = np.concatenate(split.sequences).astype(np.int64)
        users = np.flatnonzero(lengths - 2 >= 2)
        seq_starts = offsets_of(lengths)[users]
        ends = seq_starts + lengths[users] - 3  # input = seq[:-3]; labels shifted by one
        if windows == "all":
            counts = -(-(ends - seq_starts) // max_len)  # ceil(#labels / max_len) windows per user
            rows = np.repeat(np.arange(len(users)), counts)
            back = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)  # 0 = last window
            users, seq_starts, ends = users[rows], seq_starts[rows], ends[rows] - back * max_len
        self.users, self.seq_starts, self.ends = users, seq_starts, ends
        self.max_len = max_len

    def __len__(self) -> int:
        return len(self.users)

    def batch(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        s, e, user = self.seq_starts[idx], self.ends[idx], self.users[idx]
        labels = left_pad(self.flat, s + 1, e + 1, self.max_len)
        pos = (e + 1 - s)[:, None] - self.max_len + np.arange(self.max_len)[None, :]  # label position in seq
        example_ids = np.where(labels > 0, user[:, None] * EXAMPLE_STRIDE + pos, 0)
        return {"input_ids": left_pad(self.flat, s, e, self.max_len), "labels": labels,
                "example_ids": example_ids, "user": user}


class SequentialEvalDataset(BatchedDataset):
    """One row per user: predict ``seq[-2]`` from ``seq[:-2]`` (valid) or ``seq[-1]`` from ``seq[:-1]`` (test)."""

    def __init__(self, split: SequentialSplit, which: str, max_len: int):
        if which not in ("valid", "test"):
            raise ValueError(f"evaluation split must be 'valid' or 'test', got {which!r}")
        lengths = split.lengths
        self.flat = np.concatenate(split.sequences).astype(np.int64)
        self.starts = offsets_of(lengths)
        self.pos = lengths - (2 if which == "valid" else 1)  # position of the target
        self.max_len = max_len

    def __len__(self) -> int:
        return len(self.starts)

    def batch(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        s, p = self.starts[idx], self.pos[idx]
        return {"input_ids": left_pad(self.flat, s, s + p, self.max_len),
                "target": self.flat[s + p],
                "history": left_pad(self.flat, s, s + p),
                "user": idx.astype(np.int64),
                "example_id": idx.astype(np.int64) * EXAMPLE_STRIDE + p}


class RankShardSampler(DistributedSampler):
    """One process's share ``order[rank::num_replicas]`` of the order a single process reads.

    ``order`` is :class:`~recdistill.data.sampling.EpochShuffleSampler`'s epoch order for ``seed``
    (``shuffle``) or ``0..length-1``. ``pad=True`` (training: every process must run the same number
    of steps) repeats the start of the order up to a multiple of ``num_replicas``, as
    ``DistributedSampler`` does; ``pad=False`` (evaluation) gives every example to exactly one
    process (shares differ by at most one). A ``DistributedSampler`` subclass, so Lightning keeps it
    and calls :meth:`set_epoch`.
    """

    def __init__(self, length: int, num_replicas: int, rank: int, *, shuffle: bool, seed: int = 0,
                 pad: bool) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in 0..{num_replicas - 1}")
        super().__init__(range(length), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.length, self.pad = length, pad
        self.total_size = -(-length // num_replicas) * num_replicas if pad else length
        self.num_samples = len(range(rank, self.total_size, num_replicas))

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            single = EpochShuffleSampler(self.length, self.seed)
            single.set_epoch(self.epoch)
            order = list(single)
        else:
            order = list(range(self.length))
        while order and len(order) < self.total_size:
            order += order[: self.total_size - len(order)]
        return iter(order[self.rank::self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples


def _distributed_sampler_kwargs(trainer: L.Trainer | None) -> dict[str, int] | None:
    """``{"num_replicas", "rank"}`` when ``trainer`` runs several processes and lets samplers be
    replaced (``use_distributed_sampler``), else None."""
    if trainer is None or getattr(trainer, "world_size", 1) <= 1:
        return None
    connector = getattr(trainer, "_accelerator_connector", None)
    if not getattr(connector, "use_distributed_sampler", True):
        return None  # the user shards the data themselves
    kwargs = trainer.distributed_sampler_kwargs
    if not kwargs or kwargs.get("num_replicas", 1) <= 1:
        return None
    return {"num_replicas": int(kwargs["num_replicas"]), "rank": int(kwargs["rank"])}


class _SplitDataModule(L.LightningDataModule):
    """Shared loading, loaders and ``from_split``."""

    def _load(self, dataset: str, data_format: str | None, column_map: dict[str, str] | None,
              min_interactions: int) -> SequentialSplit:
        preset = self.__dict__.pop("_preset_split", None)
        if preset is not None:
            return preset
        return load_split(dataset, min_interactions=min_interactions, format=data_format, column_map=column_map)

    @classmethod
    def from_split(cls, split: SequentialSplit, **kwargs):
        """Build the module around an existing split (``dataset`` becomes ``split.name``)."""
        obj = cls.__new__(cls)
        obj._preset_split = split
        kwargs.setdefault("dataset", split.name)
        obj.__init__(**kwargs)
        return obj

    @property
    def num_users(self) -> int:
        return self.split.num_users

    @property
    def num_items(self) -> int:
        return self.split.num_items

    @property
    def fingerprint(self) -> str:
        return self.split.fingerprint

    def _dataset(self, split: str) -> torch.utils.data.Dataset:  # pragma: no cover - overridden
        raise NotImplementedError

    def dataloader(self, split: str, shuffle: bool = False) -> DataLoader:
        """A loader over ``split`` ('train', 'valid'/'val', 'test' or 'predict')."""
        name = _SPLIT_ALIASES.get(split)
        if name is None:
            raise ValueError(f"unknown split {split!r}; use one of {sorted(_SPLIT_ALIASES)}")
        dataset = self._dataset(name)
        sampler = EpochShuffleSampler(len(dataset), self.seed) if shuffle else None
        return DataLoader(dataset, batch_size=self.batch_size if name == "train" else self.eval_batch_size,
                          sampler=sampler, collate_fn=collate, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def _trainer_loader(self, split: str, shuffle: bool) -> DataLoader:
        """The loader Lightning asks for: :meth:`dataloader`, or under several processes this process's
        :class:`RankShardSampler` share (padded for training only)."""
        dist = _distributed_sampler_kwargs(getattr(self, "trainer", None))
        if dist is None:
            return self.dataloader(split, shuffle=shuffle)
        dataset = self._dataset(split)
        sampler = RankShardSampler(len(dataset), **dist, shuffle=shuffle, seed=self.seed, pad=split == "train")
        return DataLoader(dataset, batch_size=self.batch_size if split == "train" else self.eval_batch_size,
                          sampler=sampler, collate_fn=collate, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._trainer_loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._trainer_loader("valid", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._trainer_loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.dataloader("test")


class SequentialDataModule(_SplitDataModule):
    """Next-item prediction over a leave-one-out split (batch formats in the module docstring)."""

    def __init__(
        self,
        dataset: str = "movielens-100k",
        data_format: str | None = None,
        column_map: dict[str, str] | None = None,
        max_len: int = 50,
        train_windows: str = "last",
        batch_size: int = 256,
        eval_batch_size: int = 512,
        min_interactions: int = 3,
        num_workers: int = 0,
        seed: int = 0,
        holdout: str = "leave_one_out",
        ctr_valid_fraction: float = 0.1,
        ctr_test_fraction: float = 0.1,
    ):
        """``holdout="ctr"``: train (and emit) on each user's CTR training events only (see
        :func:`recdistill.data.ctr.ctr_train_prefix`), for a teacher that distils into CTR students
        without having seen the events the CTR split holds out."""
        super().__init__()
        self.save_hyperparameters()
        if holdout not in HOLDOUTS:
            raise ValueError(f"data.holdout must be one of {HOLDOUTS}, got {holdout!r}")
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.dataset, self.data_format, self.column_map = dataset, data_format, column_map
        if train_windows not in TRAIN_WINDOWS:
            raise ValueError(f"train_windows must be one of {TRAIN_WINDOWS}, got {train_windows!r}")
        self.max_len, self.batch_size, self.eval_batch_size = max_len, batch_size, eval_batch_size
        self.train_windows = train_windows
        self.min_interactions, self.num_workers, self.seed = min_interactions, num_workers, seed
        self.split = self._load(dataset, data_format, column_map, min_interactions)
        if holdout == "ctr":
            self.split = ctr_train_prefix(self.split, ctr_valid_fraction, ctr_test_fraction)
        self._datasets: dict[str, BatchedDataset] = {}

    def _dataset(self, split: str) -> BatchedDataset:
        if split not in self._datasets:
            self._datasets[split] = (SequentialTrainDataset(self.split, self.max_len, self.train_windows) if split == "train"
                                     else SequentialEvalDataset(self.split, split, self.max_len))
        return self._datasets[split]


class CTRDataModule(_SplitDataModule):
    """Click-through prediction: ``label = rating >= rating_threshold``; batches are
    ``{sparse Long[B,F], dense Float[B,D], history Long[B,H], label Float[B], user Long[B],
    item Long[B], example_id Long[B]}`` (see ``recdistill.data.ctr`` for the split rule)."""

    def __init__(
        self,
        dataset: str = "movielens-100k",
        data_format: str | None = None,
        column_map: dict[str, str] | None = None,
        rating_threshold: float = 4.0,
        valid_fraction: float = 0.1,
        test_fraction: float = 0.1,
        history_len: int = 20,
        batch_size: int = 1024,
        eval_batch_size: int = 4096,
        min_interactions: int = 3,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        if history_len < 1:
            raise ValueError(f"history_len must be >= 1, got {history_len}")
        self.dataset, self.data_format, self.column_map = dataset, data_format, column_map
        self.rating_threshold, self.history_len = rating_threshold, history_len
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.min_interactions, self.num_workers, self.seed = min_interactions, num_workers, seed
        self.split = self._load(dataset, data_format, column_map, min_interactions)
        self.features = build_ctr_features(self.split)
        self.valid_fraction, self.test_fraction = valid_fraction, test_fraction
        self.examples = ctr_examples(self.split, rating_threshold, valid_fraction, test_fraction)
        self._datasets: dict[str, CTRDataset] = {}

    @property
    def field_dims(self) -> list[int]:
        return list(self.features.field_dims)

    @property
    def feature_names(self) -> list[str]:
        return list(self.features.feature_names)

    @property
    def dense_names(self) -> list[str]:
        return list(self.features.dense_names)

    @property
    def dense_dim(self) -> int:
        return len(self.features.dense_names)

    def _dataset(self, split: str) -> CTRDataset:
        if split not in self._datasets:
            self._datasets[split] = CTRDataset(self.split, self.features, self.examples[split], self.history_len)
        return self._datasets[split]
