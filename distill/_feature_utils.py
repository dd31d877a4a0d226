"""Small shared helpers for the feature-based distillation losses (private).

Conventions used by every feature-based loss (``hidden``, ``multilayer``, ``contrastive``,
``embedding``):

* Teacher tensors are detached (stop-gradient) and cast to the student side's dtype/device inside
  the loss; the cache stores them as float16.
* ``mask`` (optional, bool, shape = the leading dims of the inputs) is True for rows that HAVE a
  teacher state. Masked-out teacher rows are zeroed *before* any arithmetic, so NaN/inf placeholders
  in rows without a teacher state can neither reach the value nor the gradients.
* ``weight`` multiplies the returned loss and defaults to 1.0, like the response-based losses where
  the caller applies the loss weight: ``L = L_task + λ · loss(...)``. Each class states the paper's
  recommended weight in ``paper_weight``; set it either on the module (``weight=``) or in the training
  loop, never both.
* Trainable projectors live inside the loss module: put ``loss.parameters()`` into the optimiser.
  They only exist to compare spaces during training and are dropped after training (the served
  student never calls them).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

REDUCTIONS = ("mean", "sum", "none")
PROJECTORS = ("linear", "mlp", "identity")


def check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def check_positive_int(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def make_projector(kind: str, d_in: int, d_out: int, hidden_dim: Optional[int] = None,
                   activation: str = "gelu") -> nn.Module:
    """``"linear"``: Linear(d_in→d_out); ``"mlp"``: Linear(d_in→h) → act → Linear(h→d_out) with
    h = ``hidden_dim`` (default d_out); ``"identity"``: no parameters, needs d_in == d_out."""
    check_positive_int("d_in", d_in)
    check_positive_int("d_out", d_out)
    if kind == "linear":
        return nn.Linear(d_in, d_out)
    if kind == "mlp":
        h = d_out if hidden_dim is None else check_positive_int("hidden_dim", hidden_dim)
        act = {"gelu": nn.GELU, "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU}.get(activation)
        if act is None:
            raise ValueError(f"activation must be 'gelu', 'relu' or 'leaky_relu', got {activation!r}")
        return nn.Sequential(nn.Linear(d_in, h), act(), nn.Linear(h, d_out))
    if kind == "identity":
        if d_in != d_out:
            raise ValueError(f"projector='identity' needs equal dims, got {d_in} -> {d_out}")
        return nn.Identity()
    raise ValueError(f"projector must be one of {PROJECTORS}, got {kind!r}")


def flatten_rows(x: Tensor, dim: int, name: str) -> Tuple[Tensor, torch.Size]:
    """``[..., dim]`` -> ``[R, dim]`` plus the leading shape."""
    if x.dim() < 1 or x.shape[-1] != dim:
        raise ValueError(f"{name} must have last dim {dim}, got shape {tuple(x.shape)}")
    lead = x.shape[:-1]
    return x.reshape(-1, dim), lead


def rows_mask(mask: Optional[Tensor], lead: torch.Size, device: torch.device) -> Tensor:
    """Bool ``[R]`` from an optional mask with the inputs' leading shape (None = all rows valid)."""
    n = 1
    for s in lead:
        n *= s
    if mask is None:
        return torch.ones(n, dtype=torch.bool, device=device)
    if tuple(mask.shape) != tuple(lead):
        raise ValueError(f"mask must have shape {tuple(lead)} (the inputs' leading dims), got {tuple(mask.shape)}")
    return mask.to(device=device, dtype=torch.bool).reshape(-1)


def clean_teacher(t: Tensor, valid: Tensor, like: Tensor) -> Tensor:
    """Detach, cast to ``like``'s dtype/device and zero rows without a teacher state (``t [R, d]``)."""
    t = t.detach().to(device=like.device, dtype=like.dtype)
    return torch.where(valid.unsqueeze(-1), t, torch.zeros((), dtype=t.dtype, device=t.device))


def reduce_rows(per_row: Tensor, valid: Tensor, reduction: str, lead: torch.Size) -> Tensor:
    """Reduce a per-row loss ``[R]``: mean over valid rows (0 if none), sum, or none (leading shape,
    0 at masked rows)."""
    per_row = torch.where(valid, per_row, torch.zeros_like(per_row))
    if reduction == "none":
        return per_row.reshape(lead)
    if reduction == "sum":
        return per_row.sum()
    return per_row.sum() / valid.sum().clamp_min(1).to(per_row.dtype)


def info_nce(anchor: Tensor, positive: Tensor, temperature: float, symmetric: bool,
             normalize: bool = True) -> Tuple[Tensor, Tensor]:
    """InfoNCE over a batch of aligned pairs (row i of ``anchor`` ↔ row i of ``positive``).

    logits_ij = sim(a_i, p_j) / τ with sim = cosine (``normalize``) or dot product;
    ℓ_i = −log softmax_j(logits_ij)[i]  (cross-entropy with target i);
    symmetric: ℓ_i = ½(ℓ_i^{a→p} + ℓ_i^{p→a}).  Returns (per-row loss ``[M]``, logits ``[M, M]``).
    """
    if normalize:
        anchor = F.normalize(anchor, dim=-1)
        positive = F.normalize(positive, dim=-1)
    logits = anchor @ positive.t() / temperature
    target = torch.arange(logits.shape[0], device=logits.device)
    loss = F.cross_entropy(logits, target, reduction="none")
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits.t(), target, reduction="none"))
    return loss, logits
