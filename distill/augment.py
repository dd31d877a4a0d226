"""Interaction augmentation from the teacher's cached top-K: pseudo-interactions for the student."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ._response_utils import candidate_nll, check_logits_and_ids, check_reduction, check_student_output, reduce_rows
from .registry import register_loss

__all__ = ["TeacherPseudoInteractionLoss", "pseudo_items"]


def pseudo_items(teacher_topk_ids: Tensor, m: int, target: Optional[Tensor] = None,
                 history: Optional[Tensor] = None, teacher_topk_scores: Optional[Tensor] = None,
                 min_score: Optional[float] = None) -> Tensor:
    """Bool ``[B, K]``: the first ``m`` entries of each teacher list that are real items (id > 0),
    not the row's ``target``, not in its ``history`` (``[B, L]``, 0 = padding) and, when
    ``min_score`` is set, scored at least ``min_score`` by the teacher. The list's order is kept."""
    ids = teacher_topk_ids.long()
    ok = ids > 0
    if target is not None:
        ok &= ids != target.long().reshape(-1, 1)
    if history is not None and history.numel():
        ok &= ~(ids.unsqueeze(2) == history.long().unsqueeze(1)).any(dim=2)
    if min_score is not None:
        if teacher_topk_scores is None:
            raise ValueError("pseudo_items with min_score needs teacher_topk_scores")
        ok &= teacher_topk_scores >= min_score
    return ok & (ok.long().cumsum(dim=1) <= int(m))


@register_loss("augment")
class TeacherPseudoInteractionLoss(nn.Module):
    r"""Teacher pseudo-interactions: the teacher's confident new items as extra, down-weighted targets.

    Interaction augmentation with an LLM recommender's ranking (LLMRec: Wei, W. et al., "LLMRec:
    Large Language Models with Graph Augmentation for Recommendation", WSDM 2024, adds LLM-picked
    items as new user-item interactions; see also the LLM-InS augmentation family in the survey of
    methods.md), trained as weighted pseudo-labels (Lee, D.-H., "Pseudo-Label: The Simple and
    Efficient Semi-Supervised Learning Method for Deep Neural Networks", ICML 2013 workshop). The
    teacher's items are read from the signal cache; no LLM runs while the student trains.

    For each covered training position s with teacher list O_T(s) (ranked), history H_s (the items
    of the student's window up to s) and true next item y_s:

        A_s = the first m items i of O_T(s) with i ∉ H_s, i ≠ y_s (and t_si ≥ min_score if set)
        L_aug = (1/|C|) Σ_{s∈C} Σ_{i∈A_s} a_si · ℓ(ŷ_s, i),     L = L_task + w · L_aug

    C = the covered positions (a row whose list has no eligible item adds 0 but counts in |C|);
    a_si = 1 (each pseudo-interaction weighs w next to the true one's 1) or 1/|A_s| with
    ``normalize=True`` (w is then the total pseudo mass per position). ℓ(ŷ_s, i) =
    −log softmax(ŷ_s)_i over items 1..N (``student_output="softmax"``, the task's cross-entropy
    with i as the label; default) or −log σ(ŷ_si) (``"sigmoid"``, for sampled-BCE students).

    Unlike RD (Tang & Wang 2018), which weights the whole top-K by rank, this keeps only the teacher's
    top-m items the user has not seen and that are not the label, all alike, as extra interactions.
    A teacher emitted with ``mask_history`` and ``exclude_target`` already drops seen items and the
    target from its list; the train-time filter makes the term safe for caches that did not.

    Args:
        m: pseudo-interactions per position (default 3).
        min_score: keep only items with teacher score ≥ this (needs the cached ``topk_scores``).
        exclude_seen: drop items of the student's window up to the position (reads ``history``).
        normalize: a_si = 1/|A_s| instead of 1.
        student_output: "softmax" (default) or "sigmoid".
        reduction: "mean" over the given (covered) rows (default), "sum", or "none" (per row).

    Shapes: student_logits ``[B, N+1]``, teacher_topk_ids ``[B, K]`` (0 = missing), target ``[B]``,
    history ``[B, L]`` (0 = padding), teacher_topk_scores ``[B, K]``.
    """

    @classmethod
    def distill_inputs(cls, params: dict) -> dict[str, str]:
        inputs = {"student_logits": "student_logits", "teacher_topk_ids": "teacher_topk_ids", "target": "target"}
        if params.get("exclude_seen", True):
            inputs["history"] = "history"
        if params.get("min_score") is not None:
            inputs["teacher_topk_scores"] = "teacher_topk_scores"
        if params.get("student_output", "softmax") == "softmax":  # the task loss's log-softmax, reused
            inputs["student_log_probs"] = "student_log_probs"
        return inputs

    def __init__(self, m: int = 3, min_score: Optional[float] = None, exclude_seen: bool = True,
                 normalize: bool = False, student_output: str = "softmax", reduction: str = "mean") -> None:
        super().__init__()
        if not isinstance(m, int) or isinstance(m, bool) or m < 1:
            raise ValueError(f"m must be a positive integer, got {m!r}")
        self.m = m
        self.min_score = None if min_score is None else float(min_score)
        self.exclude_seen = bool(exclude_seen)
        self.normalize = bool(normalize)
        self.student_output = check_student_output(student_output)
        self.reduction = check_reduction(reduction)

    def extra_repr(self) -> str:
        return (f"m={self.m}, min_score={self.min_score}, exclude_seen={self.exclude_seen}, "
                f"normalize={self.normalize}, student_output={self.student_output!r}, reduction={self.reduction!r}")

    def forward(self, student_logits: Tensor, teacher_topk_ids: Tensor, target: Optional[Tensor] = None,
                history: Optional[Tensor] = None, teacher_topk_scores: Optional[Tensor] = None,
                student_log_probs: Optional[Tensor] = None) -> Tensor:
        check_logits_and_ids(student_logits, teacher_topk_ids)
        if self.exclude_seen and history is None:
            raise ValueError("TeacherPseudoInteractionLoss with exclude_seen=True needs history")
        if self.min_score is not None and teacher_topk_scores is None:
            raise ValueError(f"TeacherPseudoInteractionLoss with min_score={self.min_score} needs teacher_topk_scores")
        ids = teacher_topk_ids.detach().long()
        keep = pseudo_items(ids, self.m, None if target is None else target.detach(),
                            history.detach() if self.exclude_seen and history is not None else None,
                            None if teacher_topk_scores is None else teacher_topk_scores.detach(), self.min_score)
        weights = keep.to(student_logits.dtype)
        if self.normalize:
            weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(1.0)
        nll = candidate_nll(student_logits, ids, self.student_output, student_log_probs)
        per_row = (weights * torch.where(keep, nll, torch.zeros_like(nll))).sum(dim=1)
        return reduce_rows(per_row, torch.ones_like(per_row, dtype=torch.bool), self.reduction)
