"""The Bayes-optimal ranker of the planted text set: what no model can beat, slice by slice.

:func:`~recdistill.data.planted_text.planted_text_interactions` draws each valid / test target
from a law it knows exactly: a followed category ``c`` (uniform over the user's 1-2 categories),
then with probability ``cold_target_prob`` a uniform held-out item of ``c`` the user has not had,
otherwise a warm item of ``c`` by its within-category popularity (``warm_popularity``), again
among the items the user has not had. :func:`planted_target_probabilities` writes that law out
per user, from the planted truth the generator returns (each user's ``categories``, each item's
``category``, ``held_out`` and ``warm_popularity``), so it knows more than any model: the user's
categories exactly, and the popularity law rather than a sample of it.

Ranking by the true probability maximises the expected NDCG@k of every user (a single relevant
item: expected DCG ``sum_i p_i / log2(1 + rank_i)`` is largest when ranks follow ``p``). Slices
trade against each other: ranking by ``w_s(i) * p_i`` with a weight per slice ``s`` of the item's
training count (cold 0, rare 1-10, warm > 10) maximises ``sum_s w_s * n_s * NDCG_s`` in
expectation, so sweeping the cold weight with the rare weight at 0 traces the best warm NDCG any
ranker can have at each cold NDCG (:func:`oracle_frontier`). The numbers are measured on the
split's actual targets, like every model's, so they carry the same sampling noise (about 0.01 on
~500-1,000 targets); ties are counted at their expected value over a random order.

Approximations (both rare at the benchmark's size): the generator excluded only the items a user
had *when the target was drawn*; the 1-3 planted training interactions of rare held-out items
were inserted into histories afterwards, and are masked here like every seen item. A category
whose warm items the user has exhausted falls back to the catalogue's popularity in the
generator; here it contributes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from recdistill.baselines import RARE_MAX, slice_masks
from recdistill.data.schema import Interactions, SequentialSplit

__all__ = [
    "DEFAULT_COLD_WEIGHTS",
    "best_warm_at_cold",
    "oracle_frontier",
    "oracle_metrics",
    "planted_target_probabilities",
]

DEFAULT_COLD_WEIGHTS: tuple[float, ...] = tuple(float(w) for w in np.round(np.geomspace(0.25, 4.0, 49), 4))
_TRUTH_ITEM_COLUMNS = ("item_id", "category", "held_out", "warm_popularity")


def _history(split: SequentialSplit, user: int, which: str) -> tuple[np.ndarray, int]:
    seq = split.sequences[user]
    if which == "test":
        return seq[:-1], int(seq[-1])
    if which == "valid":
        return seq[:-2], int(seq[-2])
    raise ValueError(f"which must be 'valid' or 'test', got {which!r}")


def planted_target_probabilities(data: Interactions, split: SequentialSplit, which: str = "test",
                                 cold_target_prob: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """``(P, targets)``: ``P[u, i]`` = the generator's probability that user ``u``'s ``which`` target is item index ``i``.

    ``data`` is the generator's output (its ``items`` and ``users`` carry the planted truth) and
    ``split`` its leave-one-out split; ``cold_target_prob`` must be the value it was generated
    with. Column 0 (padding) and every item in the user's history are 0. Rows sum to 1 except
    for the fallback described in the module docstring.
    """
    if data.items is None or data.users is None or not set(_TRUTH_ITEM_COLUMNS) <= set(data.items.columns):
        raise ValueError("planted_target_probabilities needs the planted truth: items with "
                         f"{', '.join(_TRUTH_ITEM_COLUMNS)} and users with categories "
                         "(planted_text_interactions' output, not a CSV read back)")
    items = data.items.set_index("item_id").loc[split.item_ids]
    category = items["category"].to_numpy()
    held_out = items["held_out"].to_numpy(dtype=bool)
    popularity = items["warm_popularity"].to_numpy(dtype=np.float64)
    members = {c: np.flatnonzero(category == c) + 1 for c in np.unique(category)}
    follows = data.users.set_index("user_id").loc[split.user_ids, "categories"].tolist()
    probabilities = np.zeros((split.num_users, split.num_items + 1))
    targets = np.zeros(split.num_users, dtype=np.int64)
    for user in range(split.num_users):
        history, targets[user] = _history(split, user, which)
        unseen = np.ones(split.num_items + 1, dtype=bool)
        unseen[history] = False
        categories = str(follows[user]).split("|")
        for c in categories:
            idx = members.get(c, np.zeros(0, dtype=np.int64))
            idx = idx[unseen[idx]]
            cold, warm = idx[held_out[idx - 1]], idx[~held_out[idx - 1]]
            p_cold = cold_target_prob if len(cold) else 0.0
            if len(cold):
                probabilities[user, cold] += p_cold / len(cold) / len(categories)
            mass = popularity[warm - 1].sum()
            if mass > 0:
                probabilities[user, warm] += (1.0 - p_cold) * popularity[warm - 1] / mass / len(categories)
    return probabilities, targets


def _expected_gains(scores: np.ndarray, targets: np.ndarray, excluded: np.ndarray,
                    k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per user: NDCG@k and HR@k of the target, in expectation over a uniformly random order of ties.

    A target with ``h`` higher-scored items and ``t`` others tied with it takes each rank
    ``h + 1 .. h + 1 + t`` with probability ``1 / (t + 1)`` (the held-out items of a category
    share one probability, so a sampled tie-break would add noise of its own)."""
    scores = np.where(excluded, -np.inf, scores)
    target_scores = scores[np.arange(len(targets)), targets][:, None]
    higher = (scores > target_scores).sum(1)
    tied = (scores == target_scores).sum(1)  # the target and the others tied with it
    offsets = np.arange(k)  # ranks higher + 1 + j, j < tied; only ranks <= k gain
    ranks = higher[:, None] + 1 + offsets[None, :]
    possible = (offsets[None, :] < tied[:, None]) & (ranks <= k)
    ndcg = np.where(possible, 1.0 / np.log2(ranks + 1.0), 0.0).sum(1) / tied
    hr = possible.sum(1) / tied
    return ndcg, hr


def oracle_metrics(probabilities: np.ndarray, targets: np.ndarray, split: SequentialSplit, which: str = "test",
                   slice_weights: Sequence[float] = (1.0, 1.0, 1.0), k: int = 10) -> dict[str, Any]:
    """NDCG@k and HR@k of ranking by ``w_slice(i) * P[u, i]`` (seen items masked), overall and by slice.

    ``slice_weights`` = (cold, rare, warm) weights; (1, 1, 1) is the Bayes-optimal ranker of the
    overall metrics. Ties (the held-out items of a category share one probability) count at
    their expected value over a random order. Returns ``{"ndcg@k", "hr@k", "slices": {name:
    {"num_examples", "ndcg@k", "hr@k"}}}`` (slice keys as :func:`~recdistill.baselines.slice_metrics`).
    """
    counts = split.item_train_counts()
    slice_of_item = np.where(counts == 0, 0, np.where(counts <= RARE_MAX, 1, 2))
    scores = probabilities * np.asarray(slice_weights, dtype=np.float64)[slice_of_item][None, :]
    excluded = np.zeros_like(scores, dtype=bool)
    excluded[:, 0] = True
    for user in range(split.num_users):
        excluded[user, _history(split, user, which)[0]] = True
    ndcg, hr = _expected_gains(scores, targets, excluded, k)
    result: dict[str, Any] = {f"ndcg@{k}": float(ndcg.mean()), f"hr@{k}": float(hr.mean()), "slices": {}}
    for name, mask in slice_masks(torch.from_numpy(targets), counts).items():
        chosen = mask.numpy()
        entry: dict[str, Any] = {"num_examples": int(chosen.sum())}
        if chosen.any():
            entry.update({f"ndcg@{k}": float(ndcg[chosen].mean()), f"hr@{k}": float(hr[chosen].mean())})
        result["slices"][name] = entry
    return result


def oracle_frontier(probabilities: np.ndarray, targets: np.ndarray, split: SequentialSplit, which: str = "test",
                    cold_weights: Sequence[float] = DEFAULT_COLD_WEIGHTS,
                    k: int = 10) -> list[dict[str, float]]:
    """NDCG@k overall / cold / rare / warm of the ranking by ``(cold_weight, 0, 1)``-weighted probabilities.

    The rare weight is 0 because a rare item in the top k takes a slot from a cold or warm item,
    so each point is the most warm NDCG (in expectation) at its cold NDCG: the frontier between
    the two slices that no ranker can pass (see the module docstring)."""
    key = f"ndcg@{k}"
    out = []
    for weight in cold_weights:
        m = oracle_metrics(probabilities, targets, split, which, (weight, 0.0, 1.0), k)
        out.append({"cold_weight": float(weight), "overall": m[key],
                    **{s: m["slices"][s].get(key, float("nan")) for s in ("cold", "rare", "warm")}})
    return out


def best_warm_at_cold(frontier: list[dict[str, float]], min_cold: float) -> float | None:
    """The most warm NDCG reachable with a cold NDCG of at least ``min_cold``; ``None`` if out of reach.

    Between two frontier points the segment is reachable too (rank each user's list by one
    weighting or the other at random: both slices' expected NDCG mix linearly), so the value at
    ``min_cold`` is interpolated between the neighbouring points; beyond it the best point counts.
    """
    points = sorted((p["cold"], p["warm"]) for p in frontier)
    best = max((w for c, w in points if c >= min_cold), default=None)
    for (c0, w0), (c1, w1) in zip(points, points[1:]):
        if c0 < min_cold <= c1 and c1 > c0:
            between = w0 + (w1 - w0) * (min_cold - c0) / (c1 - c0)
            best = between if best is None else max(best, between)
    return best
