"""Small shared helpers for the response-based distillation losses (private).

Conventions used by every response-based loss:

* ``student_logits`` is ``[B, N+1]``; column 0 is the padding item and is never a candidate.
* teacher top-K ids are ``[B, K]`` with ids in ``1..N``; id ``0`` marks a missing slot and is ignored.
* teacher-side tensors are always detached inside the losses: gradients reach the student only.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def check_logits_and_ids(student_logits: Tensor, ids: Tensor, ids_name: str = "teacher_topk_ids") -> None:
    """Validate shapes/ranges of ``student_logits [B, N+1]`` and ``ids [B, K]``."""
    if student_logits.dim() != 2:
        raise ValueError(f"student_logits must be [B, N+1], got shape {tuple(student_logits.shape)}")
    if ids.dim() != 2 or ids.shape[0] != student_logits.shape[0]:
        raise ValueError(
            f"{ids_name} must be [B, K] with B={student_logits.shape[0]}, got shape {tuple(ids.shape)}"
        )
    if ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"{ids_name} must be an integer tensor, got {ids.dtype}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= student_logits.shape[1]):
        raise ValueError(
            f"{ids_name} must lie in 0..{student_logits.shape[1] - 1} (0 = padding/missing), "
            f"got range {int(ids.min())}..{int(ids.max())}"
        )


def excluded_columns(student_logits: Tensor, history: Optional[Tensor]) -> Tensor:
    """Bool ``[B, N+1]``: True for columns that may not appear in the student's ranking.

    Column 0 (padding) is always excluded; ``history`` (``[B, L]`` item ids, 0 = padding) is
    excluded when given.
    """
    B, C = student_logits.shape
    excl = torch.zeros(B, C, dtype=torch.bool, device=student_logits.device)
    if history is not None:
        if history.dim() == 1:
            history = history.unsqueeze(1)
        if history.dim() != 2 or history.shape[0] != B:
            raise ValueError(f"history must be [B, L] with B={B}, got shape {tuple(history.shape)}")
        h = history.long().clamp(0, C - 1)
        excl.scatter_(1, h, True)
    excl[:, 0] = True
    return excl


def masked_normalize(w: Tensor, valid: Tensor) -> Tensor:
    """Zero ``w`` outside ``valid`` and divide each row by its sum (rows summing to 0 stay 0)."""
    w = torch.where(valid, w, torch.zeros_like(w))
    s = w.sum(dim=-1, keepdim=True)
    return torch.where(s > 0, w / s.clamp_min(torch.finfo(w.dtype).tiny), torch.zeros_like(w))


def reduce_rows(per_row: Tensor, row_valid: Tensor, reduction: str) -> Tensor:
    """Reduce a ``[B]`` per-row loss. ``mean`` averages over rows with at least one valid slot."""
    per_row = torch.where(row_valid, per_row, torch.zeros_like(per_row))
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return per_row.sum()
    n = row_valid.sum()
    return per_row.sum() / n.clamp_min(1).to(per_row.dtype)


STUDENT_OUTPUTS = ("sigmoid", "softmax")


def check_student_output(student_output: str) -> str:
    if student_output not in STUDENT_OUTPUTS:
        raise ValueError(f"student_output must be one of {STUDENT_OUTPUTS}, got {student_output!r}")
    return student_output


def candidate_nll(student_logits: Tensor, ids: Tensor, student_output: str,
                  log_probs: Optional[Tensor] = None) -> Tensor:
    """``[B, K]`` negative log-likelihood of each teacher candidate under the student.

    ``"sigmoid"``: −log σ(ŷ_i), the papers' form for students trained with sampled BCE.
    ``"softmax"``: −log softmax(ŷ)_i over items 1..N (column 0 = padding excluded), for students
    trained with full-softmax cross-entropy. Under a softmax task loss the sigmoid form is
    degenerate: adding one constant to every logit leaves the task loss unchanged and drives
    −log σ(ŷ_i) to 0, so the term stops ranking anything; the softmax form is shift-invariant
    like the task loss. Missing ids (0) must be masked by the caller. ``log_probs``: the softmax
    form's ``log_softmax(student_logits)`` when already computed (the task loss's), else computed.
    """
    if student_output == "sigmoid":
        return F.softplus(-student_logits.gather(1, ids))
    # logsumexp(ŷ[1:]) − ŷ_i = −log_softmax(ŷ)_i + log(1 − softmax(ŷ)_0): one fused log-softmax over the
    # contiguous rows (a copy of ŷ[:, 1:] and logsumexp's multi-pass backward cost more than the term)
    log_p = F.log_softmax(student_logits, dim=1) if log_probs is None else log_probs
    return torch.log1p(-log_p[:, :1].exp()) - log_p.gather(1, ids)


def weighted_candidate_loss(student_logits: Tensor, ids: Tensor, weights: Tensor, student_output: str,
                            reduction: str, log_probs: Optional[Tensor] = None) -> Tensor:
    """``Σ_i w_i · nll_i`` per row over the non-missing candidates (id > 0), reduced over rows that
    have one; ``nll`` as in :func:`candidate_nll`. Shared by RD and DLLM2Rec."""
    valid = ids > 0
    nll = candidate_nll(student_logits, ids, student_output, log_probs)
    per_row = (weights * torch.where(valid, nll, torch.zeros_like(nll))).sum(dim=1)
    return reduce_rows(per_row, valid.any(dim=1), reduction)
