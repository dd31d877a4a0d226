"""Hidden-state distillation through a trainable adapter (LEADER, Liu et al. 2024)."""

from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn

from ._feature_utils import (
    check_positive_int,
    check_reduction,
    clean_teacher,
    flatten_rows,
    make_projector,
    reduce_rows,
    rows_mask,
)
from .registry import register_loss

__all__ = ["HiddenStateAlignmentLoss"]


@register_loss("hidden_state")
class HiddenStateAlignmentLoss(nn.Module):
    r"""Align the student's representation with the teacher's hidden state through a projector.

    LEADER (Liu et al. 2024): distils an LLM recommender into a conventional sequential model by
    aligning the student's sequence representation with the LLM's hidden state through an adapter.

        L = L_task + α · MSE( P(h_S), stopgrad(h_T) )

    * h_T ``[..., d_T]``: the teacher's last-layer hidden state at the last real token (or at the
      position being predicted) — the cache's ``hidden`` signal; detached here (stop-gradient) and
      cast to the student's dtype (the cache stores float16).
    * h_S ``[..., d_S]``: the student's user/sequence representation.
    * P: trainable projector on the *student* side lifting d_S → d_T: ``projector="linear"``
      (default) or ``"mlp"`` (Linear(d_S→h) → GELU → Linear(h→d_T), h = ``hidden_dim``, default d_T);
      ``"identity"`` when d_S == d_T.

    Per row r:  ``metric="mse"``:    ℓ_r = (1/d_T) · ‖P(h_S,r) − h_T,r‖²₂   (default)
                ``metric="cosine"``: ℓ_r = 1 − cos(P(h_S,r), h_T,r)
    returned: ``weight · reduce(ℓ)``; "mean" averages over rows that have a teacher state (so with
    no mask it equals ``F.mse_loss(P(h_S), h_T)``), "sum", or "none" (shape = leading dims).

    ``mask`` (bool, shape = leading dims): True where the row has a teacher state; other rows
    contribute nothing (their teacher values may be NaN placeholders).

    The projector P is part of this loss module: add ``loss.parameters()`` to the optimiser. It is
    dropped after training — the exported student never uses it (and never carries d_T-wide
    weights).

    Defaults: α (paper) 0.1–0.4, exposed as ``paper_weight = 0.1``; ``weight`` defaults to 1.0 so the
    caller applies α, as for the response-based losses (set one of the two, not both).

    Args:
        student_dim: d_S.  teacher_dim: d_T.
        projector: "linear" | "mlp" | "identity" (default "linear").
        metric: "mse" | "cosine" (default "mse").
        hidden_dim: width of the MLP projector (default d_T).
        weight: multiplies the loss (default 1.0).
        reduction: "mean" | "sum" | "none" (default "mean").
    """

    paper_weight = 0.1

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        projector: str = "linear",
        metric: str = "mse",
        hidden_dim: Optional[int] = None,
        weight: float = 1.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.student_dim = check_positive_int("student_dim", student_dim)
        self.teacher_dim = check_positive_int("teacher_dim", teacher_dim)
        if metric not in ("mse", "cosine"):
            raise ValueError(f"metric must be 'mse' or 'cosine', got {metric!r}")
        self.metric = metric
        self.projector_kind = projector
        self.projector = make_projector(projector, student_dim, teacher_dim, hidden_dim)
        self.weight = float(weight)
        self.reduction = check_reduction(reduction)

    def extra_repr(self) -> str:
        return (f"student_dim={self.student_dim}, teacher_dim={self.teacher_dim}, metric={self.metric!r}, "
                f"weight={self.weight}, reduction={self.reduction!r}")

    def forward(self, student_hidden: Tensor, teacher_hidden: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        s, lead = flatten_rows(student_hidden, self.student_dim, "student_hidden")
        t, t_lead = flatten_rows(teacher_hidden, self.teacher_dim, "teacher_hidden")
        if tuple(t_lead) != tuple(lead):
            raise ValueError(f"student_hidden leading shape {tuple(lead)} != teacher_hidden {tuple(t_lead)}")
        valid = rows_mask(mask, lead, s.device)
        p = self.projector(s)
        t = clean_teacher(t, valid, p)
        if self.metric == "mse":
            per_row = (p - t).pow(2).mean(dim=-1)
        else:
            per_row = 1.0 - F.cosine_similarity(p, t, dim=-1, eps=1e-8)
        return self.weight * reduce_rows(per_row, valid, self.reduction, lead)
