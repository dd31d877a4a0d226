"""The planted text set's Bayes oracle: its probabilities are the generator's, its metrics exact."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from recdistill.baselines import text_tfidf_scores, tfidf_item_matrix
from recdistill.data import build_sequential_split, planted_text_interactions
from recdistill.data.planted_oracle import (
    _expected_gains,
    best_warm_at_cold,
    oracle_frontier,
    oracle_metrics,
    planted_target_probabilities,
)


@pytest.fixture(scope="module")
def planted():
    data = planted_text_interactions(3000, 120, num_categories=4, seed=3)
    return data, build_sequential_split(data)


def test_probabilities_are_a_law_over_unseen_items_of_the_followed_categories(planted):
    data, split = planted
    probabilities, targets = planted_target_probabilities(data, split, "test")
    assert probabilities.shape == (split.num_users, split.num_items + 1)
    assert np.all(probabilities[:, 0] == 0)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-9)
    items = data.items.set_index("item_id").loc[split.item_ids]
    follows = data.users.set_index("user_id").loc[split.user_ids, "categories"].tolist()
    for user in range(0, split.num_users, 97):
        assert np.all(probabilities[user, split.sequences[user][:-1]] == 0)
        outside = ~np.isin(items["category"].to_numpy(), follows[user].split("|"))
        assert np.all(probabilities[user, 1:][outside] == 0)
        assert targets[user] == split.sequences[user][-1]


def test_probabilities_predict_the_targets_the_generator_drew(planted):
    """Expected target counts per item (sum of P over users) match the drawn ones; held-out share too."""
    data, split = planted
    probabilities, targets = planted_target_probabilities(data, split, "test")
    expected = probabilities.sum(0)[1:]
    observed = np.bincount(targets, minlength=split.num_items + 1)[1:]
    assert np.corrcoef(expected, observed)[0, 1] > 0.9
    held = data.items.set_index("item_id").loc[split.item_ids, "held_out"].to_numpy()
    mean, sd = expected[held].sum(), math.sqrt(expected[held].sum())
    assert abs(observed[held].sum() - mean) < 4 * sd
    # the drawn targets are far likelier under the oracle than under a shuffled assignment of users
    drawn = np.log(probabilities[np.arange(len(targets)), targets] + 1e-12).mean()
    shuffled = np.log(probabilities[np.random.default_rng(0).permutation(len(targets)), targets] + 1e-12).mean()
    assert drawn > shuffled + 5


def test_expected_gains_equal_the_mean_over_every_tie_order():
    rng = np.random.default_rng(0)
    k = 3
    for _ in range(30):
        scores = rng.integers(0, 3, size=(1, 7)).astype(float)
        excluded = np.zeros_like(scores, dtype=bool)
        excluded[0, rng.integers(0, 7)] = True
        target = int(rng.choice(np.flatnonzero(~excluded[0])))
        ndcg, hr = _expected_gains(scores, np.array([target]), excluded, k)
        candidates = np.flatnonzero(~excluded[0])
        gains, hits = [], []
        for order in itertools.permutations(candidates):  # every tie-break: stable sort of a permutation
            ranked = sorted(order, key=lambda i: -scores[0, i])
            rank = ranked.index(target) + 1
            gains.append(1 / math.log2(rank + 1) if rank <= k else 0.0)
            hits.append(float(rank <= k))
        assert ndcg[0] == pytest.approx(np.mean(gains))
        assert hr[0] == pytest.approx(np.mean(hits))


def test_the_oracle_bounds_a_text_ranker_and_the_frontier_trades_cold_for_warm(planted):
    data, split = planted
    probabilities, targets = planted_target_probabilities(data, split, "test")
    bayes = oracle_metrics(probabilities, targets, split, "test")
    assert set(bayes["slices"]) == {"cold", "rare", "warm"}
    assert sum(s["num_examples"] for s in bayes["slices"].values()) == split.num_users
    matrix, _ = tfidf_item_matrix(split.item_text)
    histories = [torch.as_tensor(s[:-1]) for s in split.sequences]
    width = max(len(h) for h in histories)
    history = torch.stack([torch.nn.functional.pad(h, (width - len(h), 0)) for h in histories])
    tfidf = text_tfidf_scores(matrix, history).numpy().astype(np.float64)
    excluded = np.zeros_like(tfidf, dtype=bool)
    excluded[:, 0] = True
    for user, h in enumerate(histories):
        excluded[user, h.numpy()] = True
    tfidf_ndcg, _ = _expected_gains(tfidf, targets, excluded, 10)
    assert bayes["ndcg@10"] > tfidf_ndcg.mean() + 0.02

    frontier = oracle_frontier(probabilities, targets, split, "test", cold_weights=(0.05, 0.5, 1.0, 2.0, 20.0))
    colds, warms = [p["cold"] for p in frontier], [p["warm"] for p in frontier]
    assert colds == sorted(colds) and warms == sorted(warms, reverse=True)
    assert colds[-1] > colds[0] + 0.1 and warms[0] > warms[-1] + 0.05
    assert all(p["rare"] == 0.0 for p in frontier)  # rare items weigh 0 on the frontier
    warm_only = oracle_metrics(probabilities, targets, split, "test", (0.0, 0.0, 1.0))
    assert warm_only["slices"]["warm"]["ndcg@10"] >= max(warms) - 1e-12


def test_best_warm_at_cold_interpolates_between_frontier_points():
    frontier = [{"cold": 0.0, "warm": 0.30}, {"cold": 0.10, "warm": 0.28}, {"cold": 0.30, "warm": 0.20}]
    assert best_warm_at_cold(frontier, 0.05) == pytest.approx(0.29)
    assert best_warm_at_cold(frontier, 0.10) == pytest.approx(0.28)
    assert best_warm_at_cold(frontier, 0.20) == pytest.approx(0.24)
    assert best_warm_at_cold(frontier, 0.0) == pytest.approx(0.30)
    assert best_warm_at_cold(frontier, 0.31) is None


def test_the_oracle_needs_the_planted_truth(planted):
    data, split = planted
    stripped = type(data)(data.name, data.interactions, data.items.drop(columns=["warm_popularity"]), data.users)
    with pytest.raises(ValueError, match="planted truth"):
        planted_target_probabilities(stripped, split)
    with pytest.raises(ValueError, match="which"):
        planted_target_probabilities(data, split, "train")
