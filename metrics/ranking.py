"""Ranking metrics: target ranks (full / sampled, pessimistic ties), HR / NDCG / MRR and their sums.

Conventions (tie policy, padding column, masking) are in :mod:`recdistill.metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def _check_ranking_inputs(scores: Tensor, target: Tensor) -> None:
    if scores.dim() != 2:
        raise ValueError(f"scores must be [B, N+1], got shape {tuple(scores.shape)}")
    if target.dim() != 1 or target.shape[0] != scores.shape[0]:
        raise ValueError(f"target must be [B] with B={scores.shape[0]}, got {tuple(target.shape)}")
    if scores.shape[1] < 2:
        raise ValueError("scores needs at least one real item column besides padding column 0")
    if target.numel() and (int(target.min()) < 1 or int(target.max()) >= scores.shape[1]):
        raise ValueError(f"target items must lie in 1..{scores.shape[1] - 1} (0 is padding)")


def _as_float(scores: Tensor) -> Tensor:
    return scores if scores.is_floating_point() else scores.float()


def _nan_to_neginf(x: Tensor) -> Tensor:
    return torch.where(torch.isnan(x), torch.full_like(x, -math.inf), x)


def check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of positive ints, got {ks}")
    return ks


def mask_history(scores: Tensor, history: Tensor, target: Tensor) -> Tensor:
    """Return a copy of ``scores`` with the user's history items and column 0 set to ``-inf``.

    ``history`` is ``Long[B, H]``, 0-padded. The target keeps its original score even when it
    appears in the history (repeat consumption), so it is never masked out.
    """
    _check_ranking_inputs(scores, target)
    out = _as_float(scores).clone()
    target = target.to(out.device).long().unsqueeze(1)
    if history is not None and history.numel():
        if history.dim() != 2 or history.shape[0] != scores.shape[0]:
            raise ValueError(f"history must be [B, H], got {tuple(history.shape)}")
        hist = history.to(out.device).long()
        out.scatter_(1, hist, torch.full_like(hist, -math.inf, dtype=out.dtype))
        out.scatter_(1, target, _as_float(scores).gather(1, target))
    out[:, 0] = -math.inf
    return out


def target_ranks(scores: Tensor, target: Tensor) -> Tensor:
    """1-based rank of ``target`` among items ``1..N`` (pessimistic ties; column 0 ignored).

    ``rank = #{j in 1..N : s_j >= s_t}`` which equals ``1 + #greater + #ties other than t``.
    Returns ``Long[B]`` on the device of ``scores``.
    """
    _check_ranking_inputs(scores, target)
    s = _nan_to_neginf(_as_float(scores)[:, 1:])
    t = target.to(s.device).long().unsqueeze(1) - 1
    s_t = s.gather(1, t)
    return (s >= s_t).sum(dim=1)


def sample_negatives(
    target: Tensor,
    num_items: int,
    num_negatives: int,
    generator: torch.Generator | None = None,
    history: Tensor | None = None,
    exclude_seen: bool = True,
) -> Tensor:
    """Sample ``num_negatives`` distinct items per row, uniformly, without replacement.

    Eligible items are ``1..num_items`` minus the target (and minus the 0-padded ``history``
    when ``exclude_seen``). Random keys are drawn on ``generator``'s device (a CPU generator
    gives the same negatives on every device) and the top-``n`` keys over eligible items are
    taken, which is a uniform random subset. Returns ``Long[B, num_negatives]`` on
    ``target``'s device. Raises if a row has fewer eligible items than ``num_negatives``.
    """
    if num_negatives < 1:
        raise ValueError("num_negatives must be >= 1")
    device = target.device
    b = target.shape[0]
    gen_device = generator.device if generator is not None else device
    keys = torch.rand(b, num_items + 1, generator=generator, device=gen_device).to(device)
    eligible = torch.ones(b, num_items + 1, dtype=torch.bool, device=device)
    eligible[:, 0] = False
    if exclude_seen and history is not None and history.numel():
        eligible.scatter_(1, history.to(device).long(), False)
    eligible.scatter_(1, target.to(device).long().unsqueeze(1), False)
    if b and int(eligible.sum(dim=1).min()) < num_negatives:
        raise ValueError(f"a row has fewer than num_negatives={num_negatives} eligible items")
    keys = keys.masked_fill(~eligible, -1.0)
    return keys.topk(num_negatives, dim=1).indices


def sampled_ranks(
    scores: Tensor,
    target: Tensor,
    num_negatives: int,
    generator: torch.Generator | None = None,
    history: Tensor | None = None,
    exclude_seen: bool = True,
    *,
    negatives: Tensor | None = None,
) -> Tensor:
    """1-based rank of the target among itself + ``num_negatives`` sampled negatives.

    Same pessimistic tie policy as :func:`target_ranks`. Negatives come from
    :func:`sample_negatives`, or pass ``negatives`` (``Long[B, n]``) explicitly to reuse a fixed
    sample. Returns ``Long[B]`` in ``1..n+1``.
    """
    _check_ranking_inputs(scores, target)
    s_all = _nan_to_neginf(_as_float(scores))
    t = target.to(s_all.device).long().unsqueeze(1)
    if negatives is None:
        negatives = sample_negatives(
            t.squeeze(1), scores.shape[1] - 1, num_negatives, generator, history, exclude_seen
        )
    neg = s_all.gather(1, negatives.to(s_all.device).long())
    return 1 + (neg >= s_all.gather(1, t)).sum(dim=1)


def ranking_metrics_from_ranks(
    ranks: Tensor, ks: Sequence[int] = (5, 10, 20), *, prefix: str = ""
) -> dict[str, float]:
    """Batch means of ``hr@k``, ``ndcg@k`` (1/log2(rank+1)) and ``mrr@k`` (1/rank), 0 beyond k.

    ``prefix`` is prepended to every key (used for the sampled protocol).
    """
    ks = check_ks(ks)
    if ranks.numel() == 0:
        raise ValueError("no examples to compute metrics from")
    r = ranks.detach().to(torch.float64).flatten()
    if bool((r < 1).any()):
        raise ValueError("ranks must be >= 1")
    out: dict[str, float] = {}
    for k in ks:
        hit = r <= k
        out[f"{prefix}hr@{k}"] = hit.double().mean().item()
        out[f"{prefix}ndcg@{k}"] = torch.where(hit, 1.0 / torch.log2(r + 1.0), 0.0).mean().item()
        out[f"{prefix}mrr@{k}"] = torch.where(hit, 1.0 / r, 0.0).mean().item()
    return out


def full_ranking_metrics(
    scores: Tensor,
    target: Tensor,
    history: Tensor | None = None,
    *,
    ks: Sequence[int] = (5, 10, 20),
    mask_seen: bool = True,
) -> dict[str, float]:
    """One-shot full-ranking HR/NDCG/MRR@k (history masked when ``mask_seen``)."""
    if mask_seen and history is not None:
        scores = mask_history(scores, history, target)
    return ranking_metrics_from_ranks(target_ranks(scores, target), ks)


def ranking_metric_sums(
    ranks: Tensor, ks: Sequence[int] = (5, 10, 20), groups: Tensor | None = None, num_groups: int = 1
) -> Tensor:
    """Per-group sums ``float64 [num_groups, 1 + 3 * len(ks)]``: the count, then for each ``k``
    the sums of ``hr@k``, ``ndcg@k`` and ``mrr@k`` (same formulas as :func:`ranking_metrics_from_ranks`).

    Sums (not means) add up exactly over batches and over processes (reduce with ``sum``);
    :func:`metrics_from_sums` turns a row into means. ``groups`` (``Long[M]`` in
    ``0..num_groups-1``) defaults to one group.
    """
    ks = check_ks(ks)
    r = ranks.detach().to(torch.float64).flatten().cpu()
    if bool((r < 1).any()):
        raise ValueError("ranks must be >= 1")
    columns = [torch.ones_like(r)]
    for k in ks:
        hit = r <= k
        columns += [hit.double(), torch.where(hit, 1.0 / torch.log2(r + 1.0), 0.0), torch.where(hit, 1.0 / r, 0.0)]
    values = torch.stack(columns, dim=1)
    g = torch.zeros_like(r, dtype=torch.long) if groups is None else groups.detach().long().flatten().cpu()
    if g.numel() != r.numel():
        raise ValueError("groups must have one entry per rank")
    return torch.zeros(num_groups, values.shape[1], dtype=torch.float64).index_add_(0, g, values)


def metrics_from_sums(sums: Tensor, ks: Sequence[int] = (5, 10, 20), *, prefix: str = "") -> dict[str, float]:
    """Means from one row of :func:`ranking_metric_sums`; ``{}`` when its count is 0."""
    ks = check_ks(ks)
    row = sums.detach().double().flatten().cpu()
    if row.numel() != 1 + 3 * len(ks):
        raise ValueError(f"a sums row for ks={ks} has {1 + 3 * len(ks)} entries, got {row.numel()}")
    count = row[0].item()
    if count <= 0:
        return {}
    out: dict[str, float] = {}
    for i, k in enumerate(ks):
        hr, ndcg, mrr = (row[1 + 3 * i : 4 + 3 * i] / count).tolist()
        out[f"{prefix}hr@{k}"], out[f"{prefix}ndcg@{k}"], out[f"{prefix}mrr@{k}"] = hr, ndcg, mrr
    return out
