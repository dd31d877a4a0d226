"""Evaluation metrics: full / sampled ranking (HR, NDCG, MRR) and CTR (AUC, LogLoss, GAUC).

Modules: :mod:`~recdistill.metrics.ranking` (ranks, HR/NDCG/MRR, per-example sums),
:mod:`~recdistill.metrics.ctr` (AUC, LogLoss, GAUC), :mod:`~recdistill.metrics.slices` (cold / rare /
warm targets) and :mod:`~recdistill.metrics.accumulators` (streaming, exact over many batches).

Conventions (see ``/work/shared/methods.md``, "Protocol"):

* Items are indexed ``1..N``; a score matrix has shape ``[B, N + 1]`` and column 0 is padding.
  Column 0 is never ranked, whatever score it holds.
* **Tie policy (pessimistic).** The 1-based rank of the target is
  ``1 + #{j != t : s_j > s_t} + #{j != t : s_j == s_t}``, i.e. the target is placed *after*
  every item that ties with it. A model giving every item the same score therefore gets the
  worst possible rank (``N``), never HR = 1. ``-inf`` scores (masked items) are never above a
  finite target and never tie with it. NaN scores are treated as ``-inf``. A target whose own
  score is ``-inf``/NaN ties with every other ``-inf`` item and so gets the worst rank (``N``
  for full ranking, ``num_negatives + 1`` for sampled ranking).
* **Protocols.** Full ranking over all items is the default; its metric keys are plain
  (``hr@10``, ``ndcg@10``, ``mrr@10``). Sampled ranking (target + ``n`` uniformly sampled
  negatives) is an option whose keys carry the protocol: ``sampled{n}_hr@10`` etc., so a
  sampled number can never be mistaken for a full-ranking one.
* **Slices by training count.** :func:`sliced_ranking_metrics` also reports every metric on the
  targets whose item has 0 training interactions (``cold/``), 1-10 (``rare/``) and more than 10
  (``warm/``), with ``{slice}/count``; computed from per-example sums, so batches and processes
  combine exactly (reduce the sums with ``sum``).
* **Seen-item masking** is a flag (``mask_seen``); reports must say which was used.
  In full ranking it sets the user's history items to ``-inf`` (never the target); in sampled
  ranking it excludes them from the negative pool.
"""

from __future__ import annotations

from recdistill.metrics.accumulators import CTRAccumulator, Protocol, RankingAccumulator  # noqa: F401
from recdistill.metrics.ctr import auc, ctr_metrics, gauc, log_loss
from recdistill.metrics.ranking import (
    full_ranking_metrics,
    mask_history,
    metrics_from_sums,
    ranking_metric_sums,
    ranking_metrics_from_ranks,
    sample_negatives,
    sampled_ranks,
    target_ranks,
)
from recdistill.metrics.slices import (
    SLICES,
    sliced_metrics_from_sums,
    sliced_ranking_metrics,
    sliced_ranking_sums,
    target_slices,
)

__all__ = [
    "mask_history",
    "target_ranks",
    "sample_negatives",
    "sampled_ranks",
    "ranking_metrics_from_ranks",
    "full_ranking_metrics",
    "RankingAccumulator",
    "auc",
    "log_loss",
    "gauc",
    "ctr_metrics",
    "CTRAccumulator",
    "SLICES",
    "target_slices",
    "ranking_metric_sums",
    "metrics_from_sums",
    "sliced_metrics_from_sums",
    "sliced_ranking_sums",
    "sliced_ranking_metrics",
]
