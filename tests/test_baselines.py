"""MostPopular ranks by training counts only, with the students' protocol."""

from __future__ import annotations

import numpy as np
import pytest

from recdistill.baselines import most_popular_metrics
from recdistill.data import SequentialDataModule


def test_most_popular_matches_a_hand_ranking(tiny_split):
    datamodule = SequentialDataModule.from_split(tiny_split, eval_batch_size=7)
    counts = np.zeros(tiny_split.num_items + 1)
    for seq in tiny_split.sequences:
        np.add.at(counts, seq[:-2], 1)  # training parts only: valid/test targets never counted
    hits = []
    for seq in tiny_split.sequences:
        target, seen = seq[-1], set(seq[:-1]) - {seq[-1]}
        better = sum(1 for i in range(1, len(counts)) if i != target and i not in seen and counts[i] >= counts[target])
        hits.append(better + 1 <= 10)
    assert most_popular_metrics(datamodule, "test", ks=(10,))["hr@10"] == pytest.approx(np.mean(hits), abs=1e-9)
