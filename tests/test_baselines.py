"""Non-learned baselines: MostPopular by training counts, the TF-IDF text cosine, slice metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recdistill.baselines import (
    most_popular_metrics,
    slice_metrics,
    text_tfidf_metrics,
    text_tfidf_scores,
    tfidf_item_matrix,
)
from recdistill.data import SequentialDataModule, build_sequential_split, planted_text_interactions


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


# ----------------------------------------------------------------------------- text (TF-IDF) baseline


def test_tfidf_cosine_matches_a_brute_force_computation():
    texts = ["Red Apple", "green apple, APPLE!", "blue sky"]
    docs = [t.lower().replace(",", " ").replace("!", " ").split() for t in texts]
    vocab = sorted({w for d in docs for w in d})
    idf = {w: math.log((1 + 3) / (1 + sum(w in d for d in docs))) + 1 for w in vocab}

    def unit(doc):
        v = [doc.count(w) * idf[w] for w in vocab]
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v]

    rows = [unit(d) for d in docs]
    matrix, words = tfidf_item_matrix(texts)
    assert sorted(words) == vocab and matrix.shape == (4, len(vocab))
    history = torch.tensor([[0, 0, 1, 2], [0, 0, 0, 3], [3, 1, 2, 1]])  # left-padded, 0 = padding
    scores = text_tfidf_scores(matrix, history, last_n=2)
    for b, recent in enumerate(([1, 2], [3], [2, 1])):
        profile = [sum(rows[i - 1][j] for i in recent) / len(recent) for j in range(len(vocab))]
        pn = math.sqrt(sum(x * x for x in profile))
        for item in (1, 2, 3):
            cos = sum(p * x for p, x in zip(profile, rows[item - 1])) / pn
            assert scores[b, item].item() == pytest.approx(cos, abs=1e-6)
        assert scores[b, 0].item() == 0.0
    assert scores[1, 1].item() == 0.0 and scores[1, 3].item() == pytest.approx(1.0, abs=1e-6)


def test_slice_metrics_match_a_brute_force_split():
    ranks = torch.tensor([1, 3, 12, 2, 5])
    targets = torch.tensor([1, 2, 3, 4, 1])
    counts = np.array([0, 0, 5, 11, 10])  # item 1 cold, 2 and 4 rare (5, 10), 3 warm (11)
    out = slice_metrics(ranks, targets, counts, ks=(10,))
    assert {k: v["num_examples"] for k, v in out.items()} == {"cold": 2, "rare": 2, "warm": 1}
    assert out["cold"]["ndcg@10"] == pytest.approx((1 + 1 / math.log2(6)) / 2)
    assert out["rare"]["hr@10"] == 1.0 and out["warm"]["hr@10"] == 0.0
    assert "ndcg@10" not in slice_metrics(ranks, targets, np.full(5, 50), ks=(10,))["cold"]


@pytest.fixture(scope="module")
def planted_datamodule():
    split = build_sequential_split(planted_text_interactions(600, 300, seed=0))
    return SequentialDataModule.from_split(split, eval_batch_size=256)


def test_text_baseline_ranks_cold_targets_and_most_popular_cannot(planted_datamodule):
    split = planted_datamodule.split
    text = text_tfidf_metrics(planted_datamodule, "test", ks=(10,), slices=True)
    popular = most_popular_metrics(planted_datamodule, "test", ks=(10,), slices=True)
    counts = split.item_train_counts()
    # a uniformly random ranking of the unmasked catalogue, over the same cold examples
    random_ndcg = np.mean([
        sum(1 / math.log2(r + 1) for r in range(1, 11)) / (split.num_items - len(set(seq[:-1].tolist())))
        for seq in split.sequences if counts[seq[-1]] == 0])
    cold = text["slices"]["cold"]
    assert cold["num_examples"] == split.cold_targets("test") > 50
    assert sum(s["num_examples"] for s in text["slices"].values()) == split.num_users
    print(f"cold NDCG@10: text {cold['ndcg@10']:.4f}, most-popular {popular['slices']['cold']['ndcg@10']:.4f}, "
          f"random {random_ndcg:.4f}; overall: text {text['ndcg@10']:.4f}, most-popular {popular['ndcg@10']:.4f}")
    assert cold["ndcg@10"] > 5 * random_ndcg
    assert popular["slices"]["cold"]["ndcg@10"] < 0.01
    assert set(popular) - {"slices"} == set(text) - {"slices"} == {"hr@10", "ndcg@10", "mrr@10"}
    assert text_tfidf_metrics(planted_datamodule, "valid", ks=(10,))["ndcg@10"] > 5 * random_ndcg
