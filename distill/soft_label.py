"""Soft-label / logit distillation losses (Hinton et al. 2015) and listwise/CTR variants."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._response_utils import check_logits_and_ids, check_reduction, reduce_rows
from .registry import register_loss
from .soft_targets import SoftTargetSource, pack_soft_targets, soft_target_kl

__all__ = ["SoftLabelKLLoss", "ListNetLoss", "CTRSoftLabelLoss"]


def _kl_rows(teacher_scores: Tensor, student_scores: Tensor, valid: Tensor, tau: float) -> Tensor:
    """Per-row KL(softmax(t/τ) ‖ softmax(s/τ)) over the ``valid`` entries, shape ``[B]``.

    Teacher entries equal to -inf (e.g. a teacher that masks its history) get probability 0 and
    contribute 0.
    """
    ninf = float("-inf")
    t = (teacher_scores / tau).masked_fill(~valid, ninf)
    s = (student_scores / tau).masked_fill(~valid, ninf)
    log_p = torch.log_softmax(t, dim=1)
    log_q = torch.log_softmax(s, dim=1)
    p = log_p.exp()
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    return terms.sum(dim=1)


def full_catalogue_kl(teacher_logits: Tensor, student_logits: Tensor, tau: float) -> Tensor:
    """``[B]`` KL(softmax(t/τ) ‖ softmax(s/τ)) over columns 1..N (column 0 = padding left out); equal
    to :func:`_kl_rows` with every column but 0 valid (teacher -inf entries get probability 0).
    With ``u = t/τ``, ``v = s/τ``: ``KL = Σ p·log p − Σ p·v + lse(v)``, ``∂KL/∂s = (q − p)/τ``, on the
    softmax kernel alone (:mod:`recdistill.distill.soft_targets`)."""
    return soft_target_kl(student_logits, pack_soft_targets(teacher_logits.to(student_logits.dtype), tau), tau)


@register_loss("soft_kl")
class SoftLabelKLLoss(nn.Module):
    r"""Temperature-scaled soft-label KL distillation.

    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", NIPS DL Workshop 2015.

        L_s = τ² · KL( softmax(z_T/τ) ‖ softmax(z_S/τ) )      (mean over rows)

    Two modes, chosen by the inputs to ``forward``:

    * full catalogue: ``teacher_logits [B, N+1]`` given; the softmax runs over columns 1..N
      (the padding column 0 is excluded). Teacher logits of -inf (masked items) get probability 0.
      In a distillation recipe the module passes ``teacher_soft`` instead (a
      :class:`~recdistill.distill.soft_targets.SoftTargetSource`: the teacher's ``softmax(t/τ)``
      prepared once per cached row and kept in memory; same value and gradient).
    * cached top-K: ``teacher_topk_ids [B, K]`` + ``teacher_topk_scores [B, K]`` given; the
      softmax runs over the teacher's top-K items, plus the ground-truth ``target [B]`` when it is
      given (then its teacher score ``teacher_target_score [B]`` is required). The student logits
      are gathered at the same ids. Missing ids (0) are ignored; a target that already appears in
      the top-K list is not counted twice.

    When the top-K list covers the whole catalogue, the top-K mode equals the full mode.

    Args:
        temperature: τ (default 1.0; Hinton et al. use values in ~1–20, there is no canonical one).
        reduction: "mean" over rows with at least one candidate (default), "sum", or "none".
        source: what a distillation recipe feeds it: ``"full"`` (rebuilt teacher logits over the
            catalogue, default), ``"topk"`` (cached top-K) or ``"topk_target"`` (top-K plus target).
    """

    SOURCES = ("full", "topk", "topk_target")

    @classmethod
    def distill_inputs(cls, params: dict) -> dict[str, str]:
        source = params.get("source", "full")
        if source not in cls.SOURCES:
            raise ValueError(f"soft_kl source must be one of {cls.SOURCES}, got {source!r}")
        inputs = {"student_logits": "student_logits"}
        if source == "full":
            return {**inputs, "teacher_soft": "teacher_soft_targets"}
        inputs.update(teacher_topk_ids="teacher_topk_ids", teacher_topk_scores="teacher_topk_scores")
        if source == "topk_target":
            inputs.update(target="target", teacher_target_score="teacher_target_score")
        return inputs

    def __init__(self, temperature: float = 1.0, reduction: str = "mean", source: str = "full") -> None:
        super().__init__()
        self.distill_inputs({"source": source})
        self.source = source
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.reduction = check_reduction(reduction)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, reduction={self.reduction!r}"

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Optional[Tensor] = None,
        teacher_topk_ids: Optional[Tensor] = None,
        teacher_topk_scores: Optional[Tensor] = None,
        target: Optional[Tensor] = None,
        teacher_target_score: Optional[Tensor] = None,
        teacher_soft: Optional[SoftTargetSource] = None,
    ) -> Tensor:
        tau = self.temperature
        if student_logits.dim() != 2:
            raise ValueError(f"student_logits must be [B, N+1], got shape {tuple(student_logits.shape)}")
        if teacher_soft is not None:
            if teacher_logits is not None or teacher_topk_ids is not None:
                raise ValueError("pass either teacher_soft, teacher_logits or teacher_topk_ids, not several")
            per_row = soft_target_kl(student_logits, teacher_soft.at(tau), tau) * tau**2
            return reduce_rows(per_row, torch.full_like(per_row, student_logits.shape[1] > 1, dtype=torch.bool),
                               self.reduction)
        if teacher_logits is not None:
            if teacher_topk_ids is not None or teacher_topk_scores is not None:
                raise ValueError("pass either teacher_logits or teacher_topk_ids + teacher_topk_scores, not both")
            t = teacher_logits.detach().to(student_logits.dtype)
            if t.shape != student_logits.shape:
                raise ValueError(
                    f"teacher_logits must have the student's shape {tuple(student_logits.shape)}, "
                    f"got {tuple(t.shape)}"
                )
            per_row = full_catalogue_kl(t, student_logits, tau) * tau**2
            return reduce_rows(per_row, torch.full_like(per_row, t.shape[1] > 1, dtype=torch.bool), self.reduction)

        missing = [n for n, v in (("teacher_topk_ids", teacher_topk_ids), ("teacher_topk_scores", teacher_topk_scores)) if v is None]
        if missing:
            raise ValueError(
                "SoftLabelKLLoss needs teacher_logits, or teacher_topk_ids + teacher_topk_scores; "
                f"missing {', '.join(missing)}"
            )
        check_logits_and_ids(student_logits, teacher_topk_ids)
        ids = teacher_topk_ids.detach().long()
        scores = teacher_topk_scores.detach().to(student_logits.dtype)
        if scores.shape != ids.shape:
            raise ValueError(
                f"teacher_topk_scores must match teacher_topk_ids' shape {tuple(ids.shape)}, got {tuple(scores.shape)}"
            )
        valid = ids > 0
        if target is not None:
            if teacher_target_score is None:
                raise ValueError("SoftLabelKLLoss with target needs teacher_target_score (the teacher's score of the target)")
            tgt = target.detach().long().reshape(-1, 1)
            tscore = teacher_target_score.detach().to(scores.dtype).reshape(-1, 1)
            tgt_valid = (tgt > 0) & ~(ids == tgt).any(dim=1, keepdim=True)
            ids = torch.cat([ids, tgt], dim=1)
            scores = torch.cat([scores, tscore], dim=1)
            valid = torch.cat([valid, tgt_valid], dim=1)
        stud = student_logits.gather(1, ids)
        per_row = _kl_rows(scores, stud, valid, tau) * tau**2
        return reduce_rows(per_row, valid.any(dim=1), self.reduction)


@register_loss("listnet")
class ListNetLoss(nn.Module):
    r"""ListNet top-K softmax cross-entropy distillation.

    Cao et al., "Learning to Rank: From Pairwise Approach to Listwise Approach" (ListNet), ICML
    2007, used as a listwise distillation loss on the teacher's cached top-K scores:

        L_s = − Σ_{k∈top-K} softmax(t/τ)_k · log softmax(ŷ_S/τ)_k      (mean over rows)

    with the student logits gathered at the teacher's top-K ids. It differs from the top-K KL of
    :class:`SoftLabelKLLoss` only by the teacher entropy (a constant w.r.t. the student) and the
    τ² factor. Missing ids (0) are ignored.

    Args:
        temperature: τ (default 1.0).
        reduction: "mean" over rows with at least one candidate (default), "sum", or "none".

    Shapes: student_logits ``[B, N+1]``, teacher_topk_ids ``[B, K]``, teacher_topk_scores ``[B, K]``.
    """

    def __init__(self, temperature: float = 1.0, reduction: str = "mean") -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.reduction = check_reduction(reduction)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, reduction={self.reduction!r}"

    def forward(self, student_logits: Tensor, teacher_topk_ids: Tensor, teacher_topk_scores: Tensor) -> Tensor:
        check_logits_and_ids(student_logits, teacher_topk_ids)
        ids = teacher_topk_ids.detach().long()
        scores = teacher_topk_scores.detach().to(student_logits.dtype)
        if scores.shape != ids.shape:
            raise ValueError(
                f"teacher_topk_scores must match teacher_topk_ids' shape {tuple(ids.shape)}, got {tuple(scores.shape)}"
            )
        valid = ids > 0
        tau = self.temperature
        p = torch.softmax((scores / tau).masked_fill(~valid, float("-inf")), dim=1).nan_to_num(0.0)
        log_q = torch.log_softmax((student_logits.gather(1, ids) / tau).masked_fill(~valid, float("-inf")), dim=1)
        terms = torch.where(p > 0, -p * log_q, torch.zeros_like(p))
        per_row = terms.sum(dim=1)
        return reduce_rows(per_row, valid.any(dim=1), self.reduction)


@register_loss("ctr_soft_bce")
class CTRSoftLabelLoss(nn.Module):
    r"""Soft-label BCE distillation for CTR / binary prediction.

    Hinton et al. 2015 applied to a sigmoid output (as in CTR distillation):

        L = α · BCE( σ(ŷ_S), σ(ŷ_T/τ) ) + (1 − α) · BCE( σ(ŷ_S), y )

    averaged over all elements; the soft target σ(ŷ_T/τ) is detached. With α = 1 the true label
    ``label`` is not needed; otherwise omitting it raises ValueError.

    Args:
        temperature: τ applied to the teacher logit (default 1.0).
        alpha: weight of the soft-label term (default 0.5).
        reduction: "mean" (default), "sum", or "none" (elementwise).

    Shapes: student_logits, teacher_logits, label: any identical shape (e.g. ``[B]``); label in [0, 1].
    """

    @classmethod
    def distill_inputs(cls, params: dict) -> dict[str, str]:
        inputs = {"student_logits": "student_logits", "teacher_logits": "teacher_logits"}
        return inputs if params.get("alpha", 0.5) >= 1.0 else {**inputs, "label": "label"}

    def __init__(self, temperature: float = 1.0, alpha: float = 0.5, reduction: str = "mean") -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.reduction = check_reduction(reduction)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha}, reduction={self.reduction!r}"

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, label: Optional[Tensor] = None) -> Tensor:
        if teacher_logits.shape != student_logits.shape:
            raise ValueError(
                f"teacher_logits must have the student's shape {tuple(student_logits.shape)}, got {tuple(teacher_logits.shape)}"
            )
        soft = torch.sigmoid(teacher_logits.detach().to(student_logits.dtype) / self.temperature)
        loss = self.alpha * F.binary_cross_entropy_with_logits(student_logits, soft, reduction="none")
        if self.alpha < 1.0:
            if label is None:
                raise ValueError(f"CTRSoftLabelLoss with alpha={self.alpha} < 1 needs label (the true 0/1 labels)")
            y = label.detach().to(student_logits.dtype)
            if y.shape != student_logits.shape:
                raise ValueError(f"label must have the student's shape {tuple(student_logits.shape)}, got {tuple(y.shape)}")
            loss = loss + (1.0 - self.alpha) * F.binary_cross_entropy_with_logits(student_logits, y, reduction="none")
        if self.reduction == "none":
            return loss
        return loss.sum() if self.reduction == "sum" else loss.mean()
