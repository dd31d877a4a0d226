"""The teacher's soft targets at a temperature, prepared once per cached row, and the KL against them.

Full-catalogue soft-label KL (Hinton et al. 2015) with teacher logits ``t`` and student logits
``s`` over the items 1..N, ``u = t/τ``, ``v = s/τ``, ``p = softmax(u)``, ``q = softmax(v)``:

    KL(p ‖ q) = Σ p·log p − Σ p·v + lse(v),        ∂KL/∂s = (q − p) / τ

Only ``Σ p·v``, ``lse(v)`` and ``q`` depend on the student. The teacher part (``p`` and the
negative entropy ``Σ p·log p``) is the same for a training example in every epoch, so the
distillation module prepares it once per row and keeps it in memory (:class:`RowMemory`) instead
of rebuilding ``softmax(t/τ)`` at every step: per step, one softmax over the catalogue instead of
two (the teacher part was about half of the KL's time).

Packed layout (same shape as the logits, ``[P, N+1]``): column 0 holds ``Σ p·log p`` (the padding
column is not an item), columns 1..N hold ``p``. A teacher logit of -inf gets probability 0 and
contributes 0.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

__all__ = ["pack_soft_targets", "soft_target_kl", "log_normaliser", "SoftTargetSource", "RowMemory"]


def log_normaliser(x: Tensor, probs: Tensor) -> Tensor:
    """``logsumexp(x, 1)`` from ``probs = softmax(x, 1)``: ``max x − log probs[argmax x]`` (the largest
    probability never underflows), so no second exponential pass."""
    top, where = x.max(dim=1, keepdim=True)
    return (top - probs.gather(1, where).log()).squeeze(1)


def pack_soft_targets(teacher_logits: Tensor, tau: float) -> Tensor:
    """``[P, N+1]``: column 0 ``Σ p·log p = Σ p·u − lse(u)``, columns 1..N ``p = softmax(u)``,
    ``u = t[:, 1:] / τ`` (in the logits' floating type; -inf entries get p = 0 and add 0)."""
    t = teacher_logits.detach()
    t = t if t.is_floating_point() else t.float()
    packed = torch.empty_like(t)
    u = t[:, 1:] / tau
    p = torch.softmax(u, dim=1)
    packed[:, 1:] = p
    lse = log_normaliser(u, p)
    packed[:, 0] = torch.linalg.vecdot(p, u.clamp_min_(torch.finfo(u.dtype).min / 2)) - lse
    return packed


class _SoftTargetKL(torch.autograd.Function):
    """Per-row ``KL = Σ p·log p − Σ p·v + lse(v)`` with ``v = s/τ``; backward ``(q − p)/τ``.
    ``lse(v) = max v − log q[argmax v]`` comes from the softmax itself (no logsumexp pass)."""

    @staticmethod
    def forward(ctx: Any, s: Tensor, packed: Tensor, tau: float) -> Tensor:
        inv = 1.0 / tau
        v = s * inv
        q = torch.softmax(v, dim=1)
        p = packed[:, 1:]
        kl = packed[:, 0] - torch.linalg.vecdot(p, v) + log_normaliser(v, q)
        ctx.save_for_backward(q, p)
        ctx.inv = inv
        return kl

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        q, p = ctx.saved_tensors
        return (q - p).mul_((grad * ctx.inv).unsqueeze(1)), None, None


def soft_target_kl(student_logits: Tensor, packed: Tensor, tau: float) -> Tensor:
    """``[P]`` KL(p ‖ softmax(s[:, 1:]/τ)) from packed soft targets (:func:`pack_soft_targets` at the same τ)."""
    if packed.shape != student_logits.shape:
        raise ValueError(f"soft targets must have the student logits' shape {tuple(student_logits.shape)}, "
                         f"got {tuple(packed.shape)}")
    return _SoftTargetKL.apply(student_logits[:, 1:], packed.detach().to(student_logits.dtype), tau)


class SoftTargetSource:
    """What the ``teacher_soft_targets`` context entry holds: ``at(τ)`` returns the packed soft targets
    ``[P, N+1]`` of the batch's covered rows at temperature τ (computed on first use per τ)."""

    def __init__(self, prepare: Callable[[float], Tensor]) -> None:
        self._prepare = prepare
        self._made: dict[float, Tensor] = {}

    def at(self, tau: float) -> Tensor:
        tau = float(tau)
        if tau not in self._made:
            self._made[tau] = self._prepare(tau)
        return self._made[tau]


class RowMemory:
    """Rows of a fixed width for a fixed set of example ids, filled as they are first asked for.

    ``rows(example_ids, make)`` returns ``[P, width]`` for ``example_ids`` (each in ``ids``),
    calling ``make(missing_ids)`` only for the ids not filled yet. Memory pages are touched only as
    rows are filled."""

    def __init__(self, ids: np.ndarray, width: int) -> None:
        self.ids = np.sort(np.asarray(ids))
        self.rows_ = torch.empty(len(self.ids), width)
        self.filled = torch.zeros(len(self.ids), dtype=torch.bool)

    @staticmethod
    def nbytes(count: int, width: int) -> int:
        return count * width * 4

    def rows(self, example_ids: Tensor, make: Callable[[Tensor], Tensor]) -> Tensor:
        slots = torch.from_numpy(np.searchsorted(self.ids, example_ids.numpy()))
        fresh = ~self.filled[slots]
        if bool(fresh.any()):
            self.rows_[slots[fresh]] = make(example_ids[fresh]).float()
            self.filled[slots[fresh]] = True
        return self.rows_.index_select(0, slots)
