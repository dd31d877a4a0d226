"""Non-learned reference rankers, evaluated with exactly the students' protocol.

* ``most_popular_metrics``: every item ranked by its training count (the same list for everyone).
* ``text_tfidf_metrics``: a training-free content ranker, the bag-of-words bound a text-reading
  teacher must reach on cold items: the cosine between the TF-IDF vector of each item's text
  (``split.item_text``) and the mean TF-IDF vector of the user's last ``last_n`` items.

Both rank the full catalogue with seen items masked (``mask_seen``), through
:class:`recdistill.metrics.RankingAccumulator`, and return the same flat dict of metrics
(``hr@k``, ``ndcg@k``, ``mrr@k``). With ``slices=True`` the dict also has ``"slices"``: the same
metrics on the examples whose target has 0 (``cold``), 1-10 (``rare``) or > 10 (``warm``)
training interactions, each with its ``num_examples`` (see :func:`slice_metrics`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from recdistill.metrics import RankingAccumulator, ranking_metrics_from_ranks

__all__ = [
    "RARE_MAX",
    "most_popular_metrics",
    "slice_masks",
    "slice_metrics",
    "text_tfidf_metrics",
    "text_tfidf_scores",
    "tfidf_item_matrix",
    "tokenize",
]

RARE_MAX = 10  # rare slice: 1..RARE_MAX training interactions; warm: more; cold: none
_TOKEN = re.compile(r"[a-z0-9]+")


def slice_masks(targets: Tensor, train_counts: np.ndarray | Tensor, rare_max: int = RARE_MAX) -> dict[str, Tensor]:
    """Boolean masks over ``targets`` of the cold (0), rare (1..``rare_max``) and warm (> ``rare_max``) slices."""
    counts = torch.as_tensor(np.asarray(train_counts))[torch.as_tensor(targets).long().cpu()]
    return {"cold": counts == 0, "rare": (counts >= 1) & (counts <= rare_max), "warm": counts > rare_max}


def slice_metrics(ranks: Tensor, targets: Tensor, train_counts: np.ndarray | Tensor,
                  ks: Sequence[int] = (5, 10, 20), rare_max: int = RARE_MAX) -> dict[str, dict[str, Any]]:
    """Metrics of ``ranks`` on the cold (0), rare (1..``rare_max``) and warm (> ``rare_max``) slices.

    ``train_counts[item]`` is the item's training count (``split.item_train_counts()``); each
    slice is ``{"num_examples": n, **metrics}`` (no metric keys when ``n == 0``).
    """
    masks = slice_masks(targets, train_counts, rare_max)
    out: dict[str, dict[str, Any]] = {}
    for name, mask in masks.items():
        entry: dict[str, Any] = {"num_examples": int(mask.sum())}
        if bool(mask.any()):
            entry.update(ranking_metrics_from_ranks(ranks.cpu()[mask], ks))
        out[name] = entry
    return out


def _result(accumulator: RankingAccumulator, datamodule, ks, slices: bool) -> dict[str, Any]:
    result: dict[str, Any] = accumulator.compute()
    if slices:
        result["slices"] = slice_metrics(accumulator.ranks(), accumulator.targets(),
                                         datamodule.split.item_train_counts(), ks)
    return result


def most_popular_metrics(datamodule, split: str = "test", mask_seen: bool = True,
                         ks: tuple[int, ...] = (5, 10, 20), slices: bool = False) -> dict[str, Any]:
    """Rank every item by training popularity for every user of ``split``."""
    scores = torch.from_numpy(datamodule.split.item_train_counts()).float()  # column 0 = padding
    accumulator = RankingAccumulator(ks=ks)
    for batch in datamodule.dataloader(split):
        batch_scores = scores.expand(batch["target"].shape[0], -1)
        accumulator.update(batch_scores, batch["target"], batch["history"], mask_seen=mask_seen)
    return _result(accumulator, datamodule, ks, slices)


def tokenize(text: str) -> list[str]:
    """Lower-cased alphanumeric runs: ``"Orbit Comet #3fa9c1"`` -> ``["orbit", "comet", "3fa9c1"]``."""
    return _TOKEN.findall(str(text).lower())


def tfidf_item_matrix(texts: Sequence[str]) -> tuple[Tensor, list[str]]:
    """Sparse ``[len(texts) + 1, V]`` TF-IDF matrix, row ``i`` = item index ``i`` (row 0: padding, empty).

    ``tf`` is the raw token count in the text, ``idf = ln((1 + n) / (1 + df)) + 1`` over the
    ``n`` texts (smoothed, as scikit-learn's default), and every non-empty row is L2-normalised.
    Returns the matrix (float32 COO) and the vocabulary (column order).
    """
    vocab: dict[str, int] = {}
    rows, cols, vals = [], [], []
    for i, text in enumerate(texts, start=1):
        counts: dict[int, int] = {}
        for tok in tokenize(text):
            j = vocab.setdefault(tok, len(vocab))
            counts[j] = counts.get(j, 0) + 1
        rows += [i] * len(counts)
        cols += list(counts)
        vals += list(counts.values())
    n = len(texts)
    rows_a, cols_a = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    df = np.bincount(cols_a, minlength=len(vocab)).astype(np.float64)
    idf = np.log((1.0 + n) / (1.0 + df)) + 1.0
    weights = np.asarray(vals, dtype=np.float64) * idf[cols_a]
    norms = np.sqrt(np.bincount(rows_a, weights=weights**2, minlength=n + 1))
    weights = weights / norms[rows_a]
    matrix = torch.sparse_coo_tensor(torch.from_numpy(np.stack([rows_a, cols_a])),
                                     torch.from_numpy(weights).float(), (n + 1, max(len(vocab), 1)),
                                     check_invariants=True)
    return matrix.coalesce(), list(vocab)


def text_tfidf_scores(item_matrix: Tensor, history: Tensor, last_n: int = 5) -> Tensor:
    """Cosine between each item's TF-IDF row and the mean row of each user's last ``last_n`` items.

    ``history`` is ``Long[B, H]``, left-padded with 0 (the batches' ``history``); only its last
    ``last_n`` non-padding entries count. Returns ``[B, N + 1]`` (column 0 = padding, 0); an item
    with an empty text, or a user whose recent items have none, scores 0 (cosine defined as 0).
    """
    if last_n < 1:
        raise ValueError(f"last_n must be >= 1, got {last_n}")
    recent = history[:, -last_n:].long()
    present = (recent > 0).float()
    weights = torch.zeros(history.shape[0], item_matrix.shape[0])
    weights.scatter_add_(1, recent, present / present.sum(1, keepdim=True).clamp_min(1.0))
    weights[:, 0] = 0.0
    profile = torch.sparse.mm(item_matrix.t(), weights.t()).t()  # [B, V] mean of the recent rows
    scores = torch.sparse.mm(item_matrix, profile.t()).t()  # [B, N + 1] dot with unit item rows
    norm = profile.norm(dim=1, keepdim=True)
    return torch.where(norm > 0, scores / norm.clamp_min(1e-12), torch.zeros_like(scores))


def text_tfidf_metrics(datamodule, split: str = "test", mask_seen: bool = True,
                       ks: tuple[int, ...] = (5, 10, 20), last_n: int = 5,
                       slices: bool = False) -> dict[str, Any]:
    """Rank the catalogue by :func:`text_tfidf_scores` over ``split.item_text`` for every user of ``split``.

    Training-free: only the item texts and each user's own recent items are read. Ties (e.g. the
    many items sharing no word with the user's recent items) take the pessimistic rank.
    """
    item_matrix, _ = tfidf_item_matrix(datamodule.split.item_text)
    accumulator = RankingAccumulator(ks=ks)
    for batch in datamodule.dataloader(split):
        scores = text_tfidf_scores(item_matrix, batch["history"], last_n)
        accumulator.update(scores, batch["target"], batch["history"], mask_seen=mask_seen)
    return _result(accumulator, datamodule, ks, slices)

