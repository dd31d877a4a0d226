"""Streaming metric accumulators: exact ranking and CTR metrics over many batches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from recdistill.metrics.ctr import ctr_metrics
from recdistill.metrics.ranking import (
    check_ks, mask_history, ranking_metrics_from_ranks, sampled_ranks, target_ranks,
)

Protocol = Literal["full", "sampled"]


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
        self.ks = check_ks(ks)
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
