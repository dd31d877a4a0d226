"""Multi-layer (block-wise) hidden-state alignment (SLMRec, Xu et al., ICLR 2025)."""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._feature_utils import (
    check_positive_int,
    check_reduction,
    clean_teacher,
    make_projector,
    reduce_rows,
    rows_mask,
)
from .registry import register_loss

__all__ = ["MultiLayerAlignmentLoss", "evenly_spaced_mapping"]


def evenly_spaced_mapping(num_student_blocks: int, num_teacher_layers: int) -> List[int]:
    """Default student-block → teacher-layer mapping: evenly spaced, last to last.

    Student block b (0-based, b = 0..B−1) is aligned with teacher layer
    ``m(b) = ceil((b+1)·L_T / B) − 1`` (0-based position in the teacher's stacked layers), so
    m(B−1) = L_T − 1 and the picks are strictly increasing. E.g. B=4, L_T=8 → [1, 3, 5, 7];
    B=3, L_T=4 → [1, 2, 3]; B=L_T → identity.

    Raises ValueError (naming both counts) when B > L_T: blocks would have to share a teacher layer,
    which is never what SLMRec means — choose fewer student blocks or emit more teacher layers.
    """
    check_positive_int("num_student_blocks", num_student_blocks)
    check_positive_int("num_teacher_layers", num_teacher_layers)
    if num_student_blocks > num_teacher_layers:
        raise ValueError(
            f"cannot map {num_student_blocks} student blocks onto {num_teacher_layers} teacher layers: "
            f"need num_student_blocks <= num_teacher_layers (emit more teacher layers with "
            f"`--emit.layers`, or align fewer student blocks), or pass an explicit mapping"
        )
    B, L = num_student_blocks, num_teacher_layers
    return [-(-((b + 1) * L) // B) - 1 for b in range(B)]


@register_loss("multilayer")
class MultiLayerAlignmentLoss(nn.Module):
    r"""Block-wise alignment of student and teacher hidden states (SLMRec).

    Xu et al., "SLMRec: Distilling Large Language Models into Small for Sequential
    Recommendation", ICLR 2025.

    Teacher (M layers) and student (N layers) are split into B blocks; the hidden state at the end of
    each block (last position) is aligned:

        L_kd = Σ_{b=1..B} [ λ · (1 − cos(P_b(h_S^b), h_T^{m(b)})) + c · ‖P_b(h_S^b) − h_T^{m(b)}‖₂ ]

    with one trainable projector P_b: d_S → d_T per block (``projector="linear"`` default, ``"mlp"``,
    or ``"identity"`` when d_S == d_T as in SLMRec's same-shape student; ``student_dims`` gives one
    input width per block when the blocks differ, e.g. GRU4Rec's inner GRU outputs of width
    ``gru_size``), λ = ``lam`` (default 1), c = ``l2_coef`` (default 0.1), ‖·‖₂ the (non-squared)
    Euclidean norm. Teacher states are detached (stop-gradient) and cast to the student's dtype.

    Inputs:
        student_states: list of B tensors ``[R, d_S]`` (block-end states, in block order; block b of
            width ``student_dims[b]`` when given) or one tensor ``[R, B, d_S]``.
        teacher_layers: ``[R, L_T, d_T]`` — the cache's ``layers`` signal, i.e. the chosen teacher
            layers stacked in the order of the manifest's ``layers`` list.
        mask: optional bool ``[R]``, True where the row has teacher states; other rows contribute 0.

    Mapping m: block b → position in ``teacher_layers`` (0-based). Default
    :func:`evenly_spaced_mapping` (evenly spaced, last block ↔ last stacked layer); or pass
    ``mapping=[...]`` with one position per block. B and L_T are fixed at construction (one
    projector per block) and checked on every call. Unlike the public code (whose bare ``except:``
    silently switched distillation off on any mismatch), every impossible mapping or shape mismatch
    raises a ValueError that names the counts.

    Per-row loss summed over blocks; reduction "mean" over rows with teacher states (default),
    "sum", or "none" (``[R]``). Returned value is ``weight · reduced`` (``weight`` default 1.0 —
    the caller applies the overall KD weight; SLMRec default λ = 1, B = 4 or min(N, layers emitted)).
    Projectors belong to this module (put ``loss.parameters()`` in the optimiser) and are dropped
    after training. SLMRec's optional extra task heads on intermediate blocks ("multiple
    supervision") are a student-side concern and are not part of this loss.
    """

    paper_weight = 1.0

    @classmethod
    def distill_inputs(cls, params: dict) -> dict[str, str]:
        return {"student_states": "student_layers", "teacher_layers": "teacher_layers"}

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        num_student_blocks: int = 4,
        num_teacher_layers: int = 4,
        mapping: Optional[Sequence[int]] = None,
        lam: float = 1.0,
        l2_coef: float = 0.1,
        projector: str = "linear",
        hidden_dim: Optional[int] = None,
        weight: float = 1.0,
        reduction: str = "mean",
        student_dims: Optional[Sequence[int]] = None,
    ) -> None:
        super().__init__()
        self.student_dim = check_positive_int("student_dim", student_dim)
        self.teacher_dim = check_positive_int("teacher_dim", teacher_dim)
        self.num_student_blocks = check_positive_int("num_student_blocks", num_student_blocks)
        self.num_teacher_layers = check_positive_int("num_teacher_layers", num_teacher_layers)
        if mapping is None:
            mapping = evenly_spaced_mapping(num_student_blocks, num_teacher_layers)
        else:
            mapping = [int(m) for m in mapping]
            if len(mapping) != num_student_blocks:
                raise ValueError(
                    f"mapping has {len(mapping)} entries but there are {num_student_blocks} student blocks "
                    f"(one teacher-layer position per block expected)"
                )
            bad = [m for m in mapping if not 0 <= m < num_teacher_layers]
            if bad:
                raise ValueError(
                    f"mapping entries {bad} are outside 0..{num_teacher_layers - 1} "
                    f"({num_teacher_layers} teacher layers stacked in the cache)"
                )
        self.mapping: List[int] = list(mapping)
        if student_dims is None:
            student_dims = [student_dim] * num_student_blocks
        student_dims = [check_positive_int("student_dims entry", int(d)) for d in student_dims]
        if len(student_dims) != num_student_blocks:
            raise ValueError(f"student_dims has {len(student_dims)} entries but there are {num_student_blocks} "
                             f"student blocks (one width per block expected)")
        self.student_dims: List[int] = student_dims
        if lam < 0 or l2_coef < 0:
            raise ValueError(f"lam and l2_coef must be >= 0, got lam={lam}, l2_coef={l2_coef}")
        self.lam = float(lam)
        self.l2_coef = float(l2_coef)
        self.projectors = nn.ModuleList(
            make_projector(projector, d, teacher_dim, hidden_dim) for d in self.student_dims
        )
        self.weight = float(weight)
        self.reduction = check_reduction(reduction)

    def extra_repr(self) -> str:
        return (f"student_dims={self.student_dims}, teacher_dim={self.teacher_dim}, "
                f"blocks={self.num_student_blocks}, teacher_layers={self.num_teacher_layers}, "
                f"mapping={self.mapping}, lam={self.lam}, l2_coef={self.l2_coef}, weight={self.weight}, "
                f"reduction={self.reduction!r}")

    def per_block(self, student_states: Union[Sequence[Tensor], Tensor], teacher_layers: Tensor,
                  mask: Optional[Tensor] = None) -> Tensor:
        """Per-row, per-block loss ``[R, B]`` (0 at masked rows)."""
        if isinstance(student_states, Tensor):
            if student_states.dim() != 3:
                raise ValueError(f"student_states tensor must be [R, B, d_S], got {tuple(student_states.shape)}")
            student_states = list(student_states.unbind(1))
        student_states = list(student_states)
        if len(student_states) != self.num_student_blocks:
            raise ValueError(
                f"got {len(student_states)} student block states but the loss was built for "
                f"{self.num_student_blocks} student blocks"
            )
        if teacher_layers.dim() != 3 or teacher_layers.shape[1] != self.num_teacher_layers \
                or teacher_layers.shape[2] != self.teacher_dim:
            raise ValueError(
                f"teacher_layers must be [R, {self.num_teacher_layers}, {self.teacher_dim}] "
                f"({self.num_teacher_layers} teacher layers), got shape {tuple(teacher_layers.shape)}"
            )
        R = teacher_layers.shape[0]
        for b, s in enumerate(student_states):
            if tuple(s.shape) != (R, self.student_dims[b]):
                raise ValueError(f"student block {b} state must be [{R}, {self.student_dims[b]}], got {tuple(s.shape)}")
        valid = rows_mask(mask, torch.Size([R]), student_states[0].device)
        out = []
        for b, (s, proj) in enumerate(zip(student_states, self.projectors)):
            p = proj(s)
            t = clean_teacher(teacher_layers[:, self.mapping[b]], valid, p)
            cos = F.cosine_similarity(p, t, dim=-1, eps=1e-8)
            dist = torch.linalg.vector_norm(p - t, ord=2, dim=-1)
            ell = self.lam * (1.0 - cos) + self.l2_coef * dist
            out.append(torch.where(valid, ell, torch.zeros_like(ell)))
        return torch.stack(out, dim=1)

    def forward(self, student_states: Union[Sequence[Tensor], Tensor], teacher_layers: Tensor,
                mask: Optional[Tensor] = None) -> Tensor:
        blocks = self.per_block(student_states, teacher_layers, mask)
        R = blocks.shape[0]
        valid = rows_mask(mask, torch.Size([R]), blocks.device)
        return self.weight * reduce_rows(blocks.sum(dim=1), valid, self.reduction, torch.Size([R]))
