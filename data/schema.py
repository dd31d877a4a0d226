"""Typed containers shared by every stage: raw interactions and the sequential split.

Index conventions (used everywhere in recdistill):
- items are indexed ``1..num_items``; index ``0`` is padding and never a target;
- users are indexed ``0..num_users-1`` in order of first appearance after sorting by raw id;
- a user's sequence is chronological by a *stable* sort on (timestamp, original row order);
- leave-one-out: ``seq[:-2]`` is training, ``seq[-2]`` the validation target, ``seq[-1]`` the
  test target; the validation input is ``seq[:-2]``, the test input is ``seq[:-1]``;
- an *example id* names one prediction: ``user * EXAMPLE_STRIDE + pos`` where ``pos`` is the
  position of the target inside the user's full sequence (train targets are ``1..len-3``,
  valid is ``len-2``, test is ``len-1``). Teacher caches are keyed by these ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd

PAD = 0
EXAMPLE_STRIDE = 1 << 20  # max sequence length per user; example_id = user * STRIDE + pos


@dataclass
class Interactions:
    """A dataset as loaded from disk, before any indexing or splitting.

    ``interactions`` has columns ``user_id``, ``item_id``, ``timestamp`` (int64) and optionally
    ``rating`` (float), in the file's original row order. ``items`` (optional) has ``item_id``
    plus any of ``title`` (str), ``year`` (float, NaN if unknown), ``genres`` (list[str]).
    ``users`` (optional) has ``user_id`` plus categorical feature columns.
    """

    name: str
    interactions: pd.DataFrame
    items: pd.DataFrame | None = None
    users: pd.DataFrame | None = None
    source: str = ""


class Example(NamedTuple):
    """One evaluation example: model input, the target item and every earlier item of the user."""

    input: np.ndarray  # item indices fed to the model (untruncated)
    target: int
    history: np.ndarray  # all items the user had before the target (to mask already-seen items)
    example_id: int


SPLITS = ("train", "valid", "test")


@dataclass
class SequentialSplit:
    """Chronological per-user sequences with a leave-one-out split (see module docstring)."""

    name: str
    user_ids: np.ndarray  # raw user id per user index
    item_ids: np.ndarray  # raw item id per item index - 1 (item index i <-> item_ids[i - 1])
    sequences: list[np.ndarray]  # per user: int64 item indices (1..num_items), chronological
    item_text: list[str]  # per item index - 1: "Title (year). Genres: a, b" style text for LLMs
    fingerprint: str  # sha256 over dataset name, item vocabulary and every sequence
    items: pd.DataFrame | None = None  # item side features aligned to item index - 1
    users: pd.DataFrame | None = None  # user side features aligned to user index
    filtering_log: list[str] = field(default_factory=list)
    timestamps: list[np.ndarray] | None = None  # per user, aligned with ``sequences``
    ratings: list[np.ndarray] | None = None  # per user, aligned with ``sequences`` (None if unrated)

    @property
    def num_users(self) -> int:
        return len(self.sequences)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def lengths(self) -> np.ndarray:
        """Full sequence length per user (int64)."""
        return np.fromiter((len(s) for s in self.sequences), dtype=np.int64, count=len(self.sequences))

    @property
    def num_interactions(self) -> int:
        return int(self.lengths.sum())

    def train_sequence(self, user: int) -> np.ndarray:
        """The training part ``seq[:-2]``; its next-item targets are ``seq[1:-2]``."""
        return self.sequences[user][:-2]

    def valid_example(self, user: int) -> Example:
        seq = self.sequences[user]
        return Example(seq[:-2], int(seq[-2]), seq[:-2], user * EXAMPLE_STRIDE + len(seq) - 2)

    def test_example(self, user: int) -> Example:
        seq = self.sequences[user]
        return Example(seq[:-1], int(seq[-1]), seq[:-1], user * EXAMPLE_STRIDE + len(seq) - 1)

    def item_train_counts(self) -> np.ndarray:
        """Occurrences of each item in the training parts ``seq[:-2]``; shape ``[num_items + 1]``."""
        parts = [s[:-2] for s in self.sequences]
        flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return np.bincount(flat, minlength=self.num_items + 1).astype(np.int64)

    def example_ids(self, split: str) -> np.ndarray:
        """Example ids (``user * EXAMPLE_STRIDE + pos``) of every target of ``split``, user-major."""
        lengths = self.lengths
        users = np.arange(len(lengths), dtype=np.int64)
        if split in ("valid", "test"):
            return users * EXAMPLE_STRIDE + lengths - (2 if split == "valid" else 1)
        if split != "train":
            raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
        counts = np.maximum(lengths - 3, 0)
        owner = np.repeat(users, counts)
        starts = np.cumsum(counts) - counts
        pos = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(starts, counts) + 1
        return owner * EXAMPLE_STRIDE + pos

    def cold_targets(self, split: str) -> int:
        """How many ``split`` targets are items with no training interaction (kept, never dropped:
        they stay rankable, and reports can slice on them)."""
        if split not in ("valid", "test"):
            raise ValueError(f"cold targets are defined for 'valid' and 'test', not {split!r}")
        offset = 2 if split == "valid" else 1
        targets = np.array([s[-offset] for s in self.sequences], dtype=np.int64)
        return int((self.item_train_counts()[targets] == 0).sum())

    def summary(self) -> dict:
        """Sizes and fingerprint, as written to ``data.json``."""
        lengths = self.lengths
        return {
            "name": self.name,
            "num_users": self.num_users,
            "num_items": self.num_items,
            "num_interactions": int(lengths.sum()),
            "num_train": int(np.maximum(lengths - 3, 0).sum()),
            "num_valid": self.num_users,
            "num_test": self.num_users,
            "cold_valid_targets": self.cold_targets("valid"),
            "cold_test_targets": self.cold_targets("test"),
            "fingerprint": self.fingerprint,
        }


def split_example_id(example_id: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of the example-id convention: ``(user, pos)``."""
    ids = np.asarray(example_id, dtype=np.int64)
    return ids // EXAMPLE_STRIDE, ids % EXAMPLE_STRIDE
