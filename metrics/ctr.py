"""CTR metrics: exact ROC-AUC (ties count 1/2), LogLoss and group (per-user) AUC."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_binary(labels: Tensor) -> Tensor:
    y = labels.detach().flatten()
    if not bool(((y == 0) | (y == 1)).all()):
        raise ValueError("labels must be binary (0/1)")
    return y.bool()


def _tie_average_ranks(keys: list[Tensor], n: int) -> tuple[Tensor, Tensor]:
    """Sort lexicographically by ``keys`` (last key most significant); return (order, avg 0-based
    position of each element's tie block, in sorted order)."""
    order = torch.arange(n, device=keys[0].device)
    for key in keys:  # successive stable sorts = lexicographic sort
        order = order[torch.sort(key[order], stable=True).indices]
    new_block = torch.zeros(n, dtype=torch.bool, device=order.device)
    new_block[0] = True
    for key in keys:
        ks = key[order]
        new_block[1:] |= ks[1:] != ks[:-1]
    block = torch.cumsum(new_block.long(), 0) - 1
    counts = torch.bincount(block)
    starts = torch.cumsum(counts, 0) - counts
    avg_pos = starts.double() + (counts.double() - 1.0) / 2.0
    return order, avg_pos[block]


def auc(scores: Tensor, labels: Tensor) -> float:
    """Exact ROC-AUC via Mann–Whitney U with average ranks for ties (a tie counts 1/2).

    Returns NaN when labels contain only one class.
    """
    s = scores.detach().flatten().double()
    y = _check_binary(labels).to(s.device)
    if s.numel() != y.numel():
        raise ValueError("scores and labels must have the same number of elements")
    if bool(torch.isnan(s).any()):
        raise ValueError("scores contain NaN")
    n_pos = int(y.sum())
    n_neg = y.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order, avg_pos = _tie_average_ranks([s], s.numel())
    rank_sum = (avg_pos + 1.0)[y[order]].sum().item()
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def log_loss(
    logits_or_probs: Tensor, labels: Tensor, from_logits: bool = True, eps: float = 1e-7
) -> float:
    """Mean binary cross-entropy (float64).

    With ``from_logits`` it is computed stably as ``softplus(x) - y*x``; otherwise
    probabilities are clipped to ``[eps, 1-eps]``.
    """
    x = logits_or_probs.detach().flatten().double()
    y = labels.detach().flatten().double().to(x.device)
    if x.numel() != y.numel() or x.numel() == 0:
        raise ValueError("inputs must be non-empty and of equal size")
    if from_logits:
        return F.binary_cross_entropy_with_logits(x, y).item()
    p = x.clamp(eps, 1.0 - eps)
    return -(y * torch.log(p) + (1.0 - y) * torch.log1p(-p)).mean().item()


def gauc(scores: Tensor, labels: Tensor, groups: Tensor) -> float:
    """Group AUC: per-group (user) AUC averaged with weights = #impressions of the group.

    Groups whose labels are all one class have no defined AUC and are skipped (they contribute
    neither AUC nor weight). Ties count 1/2 inside a group. Returns NaN if no group qualifies.
    Fully vectorised (lexicographic sort by (group, score) + scatter).
    """
    s = scores.detach().flatten().double()
    y = _check_binary(labels).to(s.device)
    g = groups.detach().flatten().to(s.device)
    if not (s.numel() == y.numel() == g.numel()):
        raise ValueError("scores, labels and groups must have the same number of elements")
    if s.numel() == 0:
        return float("nan")
    if bool(torch.isnan(s).any()):
        raise ValueError("scores contain NaN")
    _, gid = torch.unique(g, return_inverse=True)
    num_groups = int(gid.max()) + 1
    order, avg_pos = _tie_average_ranks([s, gid], s.numel())
    gid_s, y_s = gid[order], y[order].double()
    size = torch.bincount(gid_s, minlength=num_groups).double()
    n_pos = torch.zeros(num_groups, dtype=torch.float64, device=s.device).index_add_(0, gid_s, y_s)
    n_neg = size - n_pos
    group_start = torch.cumsum(size, 0) - size  # groups are contiguous after the sort
    rank_in_group = avg_pos - group_start[gid_s] + 1.0
    rank_sum = torch.zeros_like(n_pos).index_add_(0, gid_s, rank_in_group * y_s)
    valid = (n_pos > 0) & (n_neg > 0)
    if not bool(valid.any()):
        return float("nan")
    aucs = (rank_sum[valid] - n_pos[valid] * (n_pos[valid] + 1) / 2) / (n_pos[valid] * n_neg[valid])
    w = size[valid]
    return ((aucs * w).sum() / w.sum()).item()


def ctr_metrics(logits: Tensor, labels: Tensor, users: Tensor) -> dict[str, float]:
    """``{"auc", "logloss", "gauc"}`` from logits, binary labels and user ids."""
    return {
        "auc": auc(logits, labels),
        "logloss": log_loss(logits, labels, from_logits=True),
        "gauc": gauc(logits, labels, users),
    }
