"""Evaluation metrics: full / sampled ranking (HR, NDCG, MRR) and CTR (AUC, LogLoss, GAUC).

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

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

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

Protocol = Literal["full", "sampled"]


# ----------------------------------------------------------------------------- helpers


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


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of positive ints, got {ks}")
    return ks


# ----------------------------------------------------------------------------- ranking


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
    ks = _check_ks(ks)
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


class RankingAccumulator:
    """Streaming, exact ranking metrics over many batches (per-example ranks are kept).

    ``protocol="full"`` (default) ranks the target against all items and yields keys
    ``hr@k``/``ndcg@k``/``mrr@k``. ``protocol="sampled"`` ranks it against ``num_negatives``
    uniformly sampled negatives and yields keys ``sampled{n}_hr@k`` etc. For sampling, pass a
    ``generator`` or a ``seed`` (default 0; a CPU generator, so negatives do not depend on the
    device). ``mask_seen`` masks history items (full) or excludes them from negatives (sampled).
    """

    def __init__(
        self,
        ks: Sequence[int] = (5, 10, 20),
        protocol: Protocol = "full",
        num_negatives: int | None = None,
        generator: torch.Generator | None = None,
        seed: int = 0,
    ) -> None:
        self.ks = _check_ks(ks)
        if protocol not in ("full", "sampled"):
            raise ValueError(f"protocol must be 'full' or 'sampled', got {protocol!r}")
        if protocol == "sampled":
            if num_negatives is None or num_negatives < 1:
                raise ValueError("protocol='sampled' needs num_negatives >= 1")
            if generator is None:
                generator = torch.Generator().manual_seed(seed)
        elif num_negatives is not None:
            raise ValueError("num_negatives only applies to protocol='sampled'")
        self.protocol: Protocol = protocol
        self.num_negatives = num_negatives
        self.generator = generator
        self.mask_seen: bool | None = None
        self.reset()

    @property
    def prefix(self) -> str:
        """Key prefix making the protocol visible ('' for full ranking)."""
        return "" if self.protocol == "full" else f"sampled{self.num_negatives}_"

    def reset(self) -> None:
        """Drop all accumulated examples."""
        self._ranks: list[Tensor] = []
        self._targets: list[Tensor] = []

    @torch.no_grad()
    def update(
        self,
        scores: Tensor,
        target: Tensor,
        history: Tensor | None = None,
        mask_seen: bool = True,
    ) -> Tensor:
        """Rank one batch; returns that batch's ranks (``Long[B]``)."""
        if self.mask_seen is not None and self.mask_seen != mask_seen:
            raise ValueError("mask_seen changed between updates of one accumulator")
        self.mask_seen = mask_seen
        if self.protocol == "full":
            if mask_seen and history is not None:
                scores = mask_history(scores, history, target)
            ranks = target_ranks(scores, target)
        else:
            assert self.num_negatives is not None
            ranks = sampled_ranks(
                scores, target, self.num_negatives, self.generator, history, exclude_seen=mask_seen
            )
        self._ranks.append(ranks.detach().cpu())
        self._targets.append(target.detach().long().cpu())
        return ranks

    @property
    def num_examples(self) -> int:
        """Number of examples accumulated so far."""
        return sum(r.numel() for r in self._ranks)

    def ranks(self) -> Tensor:
        """All per-example ranks so far (CPU ``Long[M]``, in update order)."""
        return torch.cat(self._ranks) if self._ranks else torch.empty(0, dtype=torch.long)

    def targets(self) -> Tensor:
        """Targets aligned with :meth:`ranks` (for slicing, e.g. long-tail items)."""
        return torch.cat(self._targets) if self._targets else torch.empty(0, dtype=torch.long)

    def compute(self) -> dict[str, float]:
        """Exact metrics over every accumulated example."""
        return ranking_metrics_from_ranks(self.ranks(), self.ks, prefix=self.prefix)

    def describe(self) -> str:
        """Human-readable protocol label for reports."""
        base = (
            "full ranking"
            if self.protocol == "full"
            else f"sampled ranking ({self.num_negatives} negatives)"
        )
        seen = {True: "seen items masked", False: "seen items not masked", None: "masking unset"}
        return f"{base}, {seen[self.mask_seen]}"


# ----------------------------------------------------------------------------- CTR


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


class CTRAccumulator:
    """Streaming CTR metrics: concatenates batches (on CPU), computes exactly at the end."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Drop all accumulated examples."""
        self._logits: list[Tensor] = []
        self._labels: list[Tensor] = []
        self._users: list[Tensor] = []

    @torch.no_grad()
    def update(self, logits: Tensor, labels: Tensor, users: Tensor) -> None:
        """Add one batch of logits, 0/1 labels and user ids."""
        if not (logits.numel() == labels.numel() == users.numel()):
            raise ValueError("logits, labels and users must have the same number of elements")
        self._logits.append(logits.detach().flatten().double().cpu())
        self._labels.append(labels.detach().flatten().cpu())
        self._users.append(users.detach().flatten().cpu())

    @property
    def num_examples(self) -> int:
        """Number of impressions accumulated so far."""
        return sum(x.numel() for x in self._logits)

    def compute(self) -> dict[str, float]:
        """Exact ``{"auc", "logloss", "gauc"}`` over every accumulated impression."""
        if not self._logits:
            raise ValueError("no examples to compute metrics from")
        return ctr_metrics(torch.cat(self._logits), torch.cat(self._labels), torch.cat(self._users))


# ----------------------------------------------------------------------------- slices by training count

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


def ranking_metric_sums(
    ranks: Tensor, ks: Sequence[int] = (5, 10, 20), groups: Tensor | None = None, num_groups: int = 1
) -> Tensor:
    """Per-group sums ``float64 [num_groups, 1 + 3 * len(ks)]``: the count, then for each ``k``
    the sums of ``hr@k``, ``ndcg@k`` and ``mrr@k`` (same formulas as :func:`ranking_metrics_from_ranks`).

    Sums (not means) add up exactly over batches and over processes (reduce with ``sum``);
    :func:`metrics_from_sums` turns a row into means. ``groups`` (``Long[M]`` in
    ``0..num_groups-1``) defaults to one group.
    """
    ks = _check_ks(ks)
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
    ks = _check_ks(ks)
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
