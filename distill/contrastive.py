"""Contrastive (InfoNCE) alignment with the teacher's representation (RLMRec; CTRL for CTR)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ._feature_utils import (
    check_positive_int,
    check_reduction,
    clean_teacher,
    flatten_rows,
    info_nce,
    make_projector,
    rows_mask,
)
from .registry import register_loss

__all__ = ["ContrastiveAlignmentLoss"]


@register_loss("contrastive")
class ContrastiveAlignmentLoss(nn.Module):
    r"""InfoNCE between the student's representation and MLP(teacher representation).

    Ren et al., "Representation Learning with Large Language Models for Recommendation" (RLMRec),
    WWW 2024 — contrastive alignment variant; the same loss is CTRL's (Li et al. 2023) cross-modal
    alignment for CTR models.

    For the M rows of a batch that have a teacher state, with e_i = student representation
    (``[M, d_S]``) and t_i = MLP(stopgrad(z_i)) (teacher representation z_i ``[M, d_T]`` mapped to
    d_S by a trainable 2-layer MLP, hidden width (d_T + d_S) // 2, LeakyReLU):

        ℓ_i = − log [ exp(cos(e_i, t_i)/τ) / Σ_{j=1..M} exp(cos(e_i, t_j)/τ) ]

    i.e. cross-entropy over the similarity matrix S_ij = cos(e_i, t_j)/τ with target i: the same
    row's teacher is the positive, the other rows of the batch are negatives. ``symmetric=True``
    averages it with the teacher→student direction (columns of S): ℓ_i = ½(ℓ_i^{e→t} + ℓ_i^{t→e}).
    Default direction is student→teacher only (as in RLMRec).

    Rows with ``mask == False`` (no teacher state) are removed before building S: they are neither
    anchors nor negatives. Duplicate rows of one user/item in a batch would be false negatives —
    deduplicate upstream if that matters.

    Defaults: τ = 0.2, ``projector="mlp"`` (``"linear"``, or ``"identity"`` when d_T == d_S, also
    accepted), cosine similarity (``normalize=True``; False = dot product). Weight: the paper's
    weight 1e-2 is exposed as ``paper_weight``; the module's ``weight`` defaults to 1.0 so the caller
    applies it, as for every other distillation loss: ``L = L_task + 1e-2 · loss(e, z)`` (set one
    of the two, never both). The MLP belongs to this module and is dropped after training.

    Reduction: "mean" over rows with a teacher state (default), "sum", or "none" (``[R]``, 0 at
    masked rows). Fewer than 2 valid rows give 0 (InfoNCE needs negatives).
    """

    paper_weight = 1e-2

    @classmethod
    def distill_inputs(cls, params: dict) -> dict[str, str]:
        return {"student_repr": "student_hidden", "teacher_repr": "teacher_hidden"}

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        temperature: float = 0.2,
        symmetric: bool = False,
        projector: str = "mlp",
        hidden_dim: Optional[int] = None,
        normalize: bool = True,
        weight: float = 1.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.student_dim = check_positive_int("student_dim", student_dim)
        self.teacher_dim = check_positive_int("teacher_dim", teacher_dim)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.symmetric = bool(symmetric)
        self.normalize = bool(normalize)
        h = (teacher_dim + student_dim) // 2 if hidden_dim is None else hidden_dim
        self.projector = make_projector(projector, teacher_dim, student_dim, h, activation="leaky_relu")
        self.weight = float(weight)
        self.reduction = check_reduction(reduction)

    def extra_repr(self) -> str:
        return (f"student_dim={self.student_dim}, teacher_dim={self.teacher_dim}, temperature={self.temperature}, "
                f"symmetric={self.symmetric}, normalize={self.normalize}, weight={self.weight}, "
                f"reduction={self.reduction!r}")

    def logits(self, student_repr: Tensor, teacher_repr: Tensor) -> Tensor:
        """Similarity matrix S ``[M, M]`` over all given rows (no mask), S_ij = sim(e_i, t_j)/τ."""
        s, _ = flatten_rows(student_repr, self.student_dim, "student_repr")
        t, _ = flatten_rows(teacher_repr, self.teacher_dim, "teacher_repr")
        t = self.projector(t.detach().to(device=s.device, dtype=s.dtype))
        return info_nce(s, t, self.temperature, False, self.normalize)[1]

    def forward(self, student_repr: Tensor, teacher_repr: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        s, lead = flatten_rows(student_repr, self.student_dim, "student_repr")
        t, t_lead = flatten_rows(teacher_repr, self.teacher_dim, "teacher_repr")
        if tuple(t_lead) != tuple(lead):
            raise ValueError(f"student_repr leading shape {tuple(lead)} != teacher_repr {tuple(t_lead)}")
        valid = rows_mask(mask, lead, s.device)
        t = clean_teacher(t, valid, s)
        idx = valid.nonzero(as_tuple=True)[0]
        per_row = s.new_zeros(s.shape[0])
        if idx.numel() >= 2:
            loss, _ = info_nce(s[idx], self.projector(t[idx]), self.temperature, self.symmetric, self.normalize)
            per_row = per_row.index_put((idx,), loss)
        else:
            # keep the graph connected (zero gradient) so optimisers/DDP see every parameter used
            per_row = per_row + 0.0 * (s[valid].sum() + sum(p.sum() for p in self.projector.parameters()))
        if self.reduction == "none":
            return self.weight * per_row.reshape(lead)
        if self.reduction == "sum":
            return self.weight * per_row.sum()
        return self.weight * per_row.sum() / valid.sum().clamp_min(1).to(per_row.dtype)
