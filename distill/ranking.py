"""Ranking Distillation (RD) loss of Tang & Wang, KDD 2018."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ._response_utils import (
    check_logits_and_ids,
    check_reduction,
    check_student_output,
    excluded_columns,
    masked_normalize,
    weighted_candidate_loss,
)
from .registry import register_loss

__all__ = ["RankingDistillationLoss", "student_ranks"]


def student_ranks(student_logits: Tensor, item_ids: Tensor, excluded: Tensor) -> Tensor:
    """Exact 1-based rank of ``item_ids [B, K]`` in the student's full-catalogue ranking.

    Pessimistic ties: r̂_i = 1 + #{j ≠ i, j not excluded : ŷ_j ≥ ŷ_i}. Columns flagged in
    ``excluded [B, N+1]`` (padding column, optionally the history) never count. Returned as float,
    computed without gradient.
    """
    with torch.no_grad():
        scores = student_logits.detach()
        ninf = torch.tensor(float("-inf"), dtype=scores.dtype, device=scores.device)
        ranked = torch.where(excluded, ninf, scores)
        sorted_asc, _ = torch.sort(ranked, dim=1)
        cand = scores.gather(1, item_ids.long())
        # number of (non-excluded) columns with score >= cand  (the excluded ones are -inf)
        n_cols = scores.shape[1]
        count_ge = n_cols - torch.searchsorted(sorted_asc.contiguous(), cand.contiguous(), right=False)
        self_counted = ~excluded.gather(1, item_ids.long())
        rank = count_ge + 1 - self_counted.long()
        return rank.to(scores.dtype)


@register_loss("rd")
class RankingDistillationLoss(nn.Module):
    r"""Ranking Distillation (RD): the teacher's top-K items as extra weighted positives.

    Tang & Wang, "Ranking Distillation: Learning Compact Ranking Models With High Performance for
    Recommender System", KDD 2018.

    For each row s with teacher top-K list π = (π_1..π_K) (ground truth already removed):

        L_s = Σ_{r=1..K} w_r · ( −log σ(ŷ_{s,π_r}) )

    (``student_output="sigmoid"``, the paper's form for a student trained with sampled BCE).
    With ``student_output="softmax"`` the term is −log softmax(ŷ)_{π_r} over the catalogue, for
    students trained with full-softmax cross-entropy (see :func:`candidate_nll`: the sigmoid form is
    degenerate there, it is satisfied by raising every logit).

    * static (position-importance) weight, r 1-based:
      w_r = exp(−r/λ) / Σ_{r'} exp(−r'/λ)  (sum over the row's non-missing slots, so it sums to 1).
    * optional dynamic (ranking-discrepancy) weight, used after a warm-up in the paper:
      w_d = max(tanh(μ·(r̂ − r)), 0), r̂ = the student's 1-based rank of π_r. It is zero when the
      student already ranks the item at or above the teacher's position. The final weight is
      w_r·w_d, detached.

    Student rank r̂: the paper (and its code) *estimates* r̂ from n sampled items
    (r̂ ≈ ⌊N · #{sampled j: ŷ_j > ŷ_i} / n⌋, n = 100). Here the full logit row is available, so r̂
    is computed exactly over the whole catalogue: pessimistic ties (r̂ = 1 + #{j≠i : ŷ_j ≥ ŷ_i}),
    the padding column 0 and, if ``history`` is passed, the history items are excluded.

    Normalisation of the hybrid weight (``renormalize``, default True): the product w_r·w_d is
    L1-renormalised per row over the K slots so that each row's weights sum to 1 again (rows where
    every w_d is 0 get zero weight). The authors' public code (graytowne/rank_distill,
    ``distill_caser.py``) multiplies the two weights and then applies ``F.normalize(weight, p=1,
    dim=1)`` only behind a ``_weight_renormalize`` flag that is hard-coded to ``False``; the stored
    paper text could not be checked here. ``renormalize=False`` reproduces the code's behaviour
    (the distillation term then shrinks as the student catches up with the teacher).

    Args:
        lam: λ, sharpness of the position weight (default 1.0).
        mu: μ, sharpness of the ranking-discrepancy weight (default 0.1).
        dynamic: use w_r·w_d instead of w_r (default False; the paper switches it on after a
            warm-up, e.g. epoch 10 — flip ``loss.dynamic = True`` or pass ``dynamic=`` to forward).
        renormalize: renormalise the hybrid weight per row (default True, see above).
        reduction: "mean" (over rows with at least one non-missing teacher id; default), "sum",
            or "none" (per-row ``[B]``).
        student_output: "sigmoid" (paper, default) or "softmax" (students trained with full-softmax CE).

    K is taken from the input (``teacher_topk_ids.shape[1]``; paper default K = 10). The loss
    weight α (paper default 1) belongs to the caller: ``L = L_task + α · rd(...)``.

    Shapes:
        student_logits: ``[B, N+1]`` (column 0 = padding, never a candidate).
        teacher_topk_ids: ``[B, K]`` ids in 1..N, best first; 0 = missing (ignored).
        history: optional ``[B, L]`` item ids excluded from the student's rank r̂ (0 = padding).
    """

    def __init__(
        self,
        lam: float = 1.0,
        mu: float = 0.1,
        dynamic: bool = False,
        renormalize: bool = True,
        reduction: str = "mean",
        student_output: str = "sigmoid",
    ) -> None:
        super().__init__()
        self.student_output = check_student_output(student_output)
        if lam <= 0:
            raise ValueError(f"lam must be > 0, got {lam}")
        if mu < 0:
            raise ValueError(f"mu must be >= 0, got {mu}")
        self.lam = float(lam)
        self.mu = float(mu)
        self.dynamic = bool(dynamic)
        self.renormalize = bool(renormalize)
        self.reduction = check_reduction(reduction)

    def extra_repr(self) -> str:
        return (
            f"lam={self.lam}, mu={self.mu}, dynamic={self.dynamic}, "
            f"renormalize={self.renormalize}, reduction={self.reduction!r}"
        )

    def weights(
        self,
        student_logits: Tensor,
        teacher_topk_ids: Tensor,
        history: Optional[Tensor] = None,
        dynamic: Optional[bool] = None,
    ) -> Tensor:
        """Detached per-slot weights ``[B, K]`` (0 at missing slots)."""
        dynamic = self.dynamic if dynamic is None else bool(dynamic)
        ids = teacher_topk_ids.detach().long()
        valid = ids > 0
        K = ids.shape[1]
        dtype = student_logits.dtype if student_logits.is_floating_point() else torch.float32
        r = torch.arange(1, K + 1, device=ids.device, dtype=dtype).unsqueeze(0).expand_as(ids)
        w = masked_normalize(torch.exp(-r / self.lam), valid)
        if dynamic:
            excl = excluded_columns(student_logits, history)
            r_hat = student_ranks(student_logits, ids, excl)
            w_d = torch.tanh(self.mu * (r_hat - r)).clamp_min(0.0)
            w = w * w_d
            if self.renormalize:
                w = masked_normalize(w, valid)
        return w.detach()

    @classmethod
    def distill_inputs(cls, params: dict) -> dict[str, str]:
        inputs = {"student_logits": "student_logits", "teacher_topk_ids": "teacher_topk_ids"}
        if params.get("student_output", "sigmoid") == "softmax":  # the task loss's log-softmax, reused
            inputs["student_log_probs"] = "student_log_probs"
        return inputs

    def forward(
        self,
        student_logits: Tensor,
        teacher_topk_ids: Tensor,
        history: Optional[Tensor] = None,
        dynamic: Optional[bool] = None,
        student_log_probs: Optional[Tensor] = None,
    ) -> Tensor:
        check_logits_and_ids(student_logits, teacher_topk_ids)
        ids = teacher_topk_ids.detach().long()
        w = self.weights(student_logits, ids, history=history, dynamic=dynamic)
        return weighted_candidate_loss(student_logits, ids, w, self.student_output, self.reduction, student_log_probs)
