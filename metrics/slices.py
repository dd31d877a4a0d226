"""Slices by training count: every ranking metric on cold (0), rare (1-10) and warm (> 10) targets."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from recdistill.metrics.ranking import metrics_from_sums, ranking_metric_sums


#: ``(name, lowest, highest)`` training-interaction count of the target item, inclusive; ``None``
#: = no upper bound. Every target falls in exactly one slice.
SLICES: tuple[tuple[str, int, int | None], ...] = (("cold", 0, 0), ("rare", 1, 10), ("warm", 11, None))


def target_slices(targets: Tensor, item_train_counts: Tensor) -> Tensor:
    """Slice index (position in :data:`SLICES`: 0 cold, 1 rare, 2 warm) of each target, ``Long[M]``.

    ``item_train_counts`` is ``[num_items + 1]`` (``SequentialSplit.item_train_counts()``).
    """
    counts = torch.as_tensor(item_train_counts).long().cpu()
    t = targets.detach().long().flatten().cpu()
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= counts.numel()):
        raise ValueError(f"targets must lie in 0..{counts.numel() - 1} to look up item_train_counts "
                         f"(length {counts.numel()}): do the counts come from the same split?")
    c = counts[t]
    index = torch.zeros_like(c)
    for i, (_, low, high) in enumerate(SLICES):
        inside = c >= low
        if high is not None:
            inside &= c <= high
        index = torch.where(inside, i, index)
    return index


def sliced_metrics_from_sums(sums: Tensor, ks: Sequence[int] = (5, 10, 20), *, prefix: str = "",
                             counts: bool = True) -> dict[str, float]:
    """Metrics from ``[1 + len(SLICES), C]`` sums (row 0 = every target, then one row per slice).

    Keys: the overall ``{prefix}ndcg@10`` ..., then ``{slice}/{prefix}ndcg@10`` ... for each
    non-empty slice and, with ``counts``, ``{slice}/count`` for every slice (0 when empty; an
    empty slice has no metric keys rather than NaN).
    """
    out = metrics_from_sums(sums[0], ks, prefix=prefix)
    for i, (name, _, _) in enumerate(SLICES, start=1):
        out.update({f"{name}/{key}": value for key, value in metrics_from_sums(sums[i], ks, prefix=prefix).items()})
        if counts:
            out[f"{name}/count"] = float(sums[i, 0].item())
    return out


def sliced_ranking_sums(ranks: Tensor, targets: Tensor, item_train_counts: Tensor,
                        ks: Sequence[int] = (5, 10, 20)) -> Tensor:
    """``[1 + len(SLICES), 1 + 3 * len(ks)]`` sums: row 0 over every target, row ``1 + s`` over slice ``s``."""
    slices = target_slices(targets, item_train_counts)
    overall = ranking_metric_sums(ranks, ks)
    return torch.cat([overall, ranking_metric_sums(ranks, ks, slices, len(SLICES))])


def sliced_ranking_metrics(ranks: Tensor, targets: Tensor, item_train_counts: Tensor,
                           ks: Sequence[int] = (5, 10, 20), *, prefix: str = "") -> dict[str, float]:
    """Overall and per-slice (cold / rare / warm by the target's training count) ranking metrics.

    ``ranks`` come from :func:`target_ranks` or :func:`sampled_ranks` (pessimistic ties), aligned
    with ``targets``. Keys as in :func:`sliced_metrics_from_sums`, e.g. ``ndcg@10``,
    ``cold/ndcg@10``, ``cold/count``, ``rare/hr@20``, ``warm/count``.
    """
    if ranks.numel() != targets.numel():
        raise ValueError("ranks and targets must have the same number of elements")
    if ranks.numel() == 0:
        raise ValueError("no examples to compute metrics from")
    return sliced_metrics_from_sums(sliced_ranking_sums(ranks, targets, item_train_counts, ks), ks, prefix=prefix)
