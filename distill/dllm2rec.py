"""Importance-aware ranking distillation of DLLM2Rec (Cui et al., RecSys 2024)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
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

__all__ = ["ImportanceRankingDistillationLoss", "student_topk_membership"]

CONFIDENCE_MODES = ("sequence", "item")
DISTANCES = ("l2", "cosine")


def student_topk_membership(
    student_logits: Tensor, item_ids: Tensor, k: int, history: Optional[Tensor] = None
) -> Tensor:
    """Bool ``[B, K]``: is ``item_ids[b, j]`` in the student's current top-``k`` (detached)?

    The padding column 0 (and ``history`` if given) is excluded from the student's ranking.
    Missing ids (0) are never members. Items tied with the k-th best score count as members.
    """
    with torch.no_grad():
        scores = student_logits.detach()
        ids = item_ids.long()
        if history is None:  # only the padding column is excluded: rank the view [:, 1:], no copy
            ranked, excluded_ids = scores[:, 1:], ids <= 0
        else:
            excl = excluded_columns(scores, history)
            ranked, excluded_ids = scores.masked_fill(excl, float("-inf"))[:, 1:], excl.gather(1, ids.clamp_min(0))
        k_eff = max(0, min(int(k), ranked.shape[1]))
        if k_eff == 0:
            return torch.zeros_like(ids, dtype=torch.bool)
        # the k-th best score is the threshold (no sort needed); ties at the threshold count as members
        threshold = ranked.topk(k_eff, dim=1, sorted=False).values.min(dim=1, keepdim=True).values
        member = (scores.gather(1, ids.clamp_min(0)) >= threshold) & (threshold > float("-inf"))
        return member & ~excluded_ids & (ids > 0)


@register_loss("dllm2rec")
class ImportanceRankingDistillationLoss(nn.Module):
    r"""DLLM2Rec importance-aware ranking distillation.

    Cui, Y. et al., "Distillation Matters: Empowering Sequential Recommenders to Match the
    Performance of Large Language Models", RecSys 2024 (DLLM2Rec).

    For each row s with teacher top-K list O_T(s) (ground truth removed), r_i the 1-based rank:

        L_d = − Σ_{i∈O_T(s)} w_si · log σ(ŷ_si)              (mean over rows)
        w_si = normalise_K( γ_p·w^p_si + γ_c·w^c_si + γ_o·w^o_si )

    * position-aware:    w^p_i = exp(−r_i/β) / Σ_j exp(−r_j/β).
    * confidence-aware:  d = distance between the teacher's prediction embedding u_s
      (``teacher_user [B, D]``) and a teacher item embedding (``teacher_item_emb [N+1, D]``):

      - ``confidence="sequence"`` (paper, default): one value per sequence,
        d_s = dist(u_s, e_{target_s}) (needs ``target [B]``); w^c_si = exp(−d_s) for every
        candidate of the row. It is deliberately *not* normalised over the K items (that would
        turn it into the constant 1/K and erase the per-sequence confidence); it sets how much
        of the mix is the flat "trust this list" component before the final normalisation.
      - ``confidence="item"`` (authors' public code): per candidate, d_si = dist(u_s, e_i),
        w^c_si = exp(−d_si) / Σ_j exp(−d_sj) over the row's K items.

      ``distance`` is "l2" (Euclidean, default) or "cosine" (1 − cos).
      If γ_c > 0 and these inputs are missing, forward raises ValueError naming the missing
      argument(s) — there is no silent fallback. With γ_c = 0 the term is dropped and the inputs
      are ignored.
    * consistency-aware: w^o_si = 1 if i is also in the student's current top-K (K = teacher list
      length, recomputed from the detached student logits each call, padding column and optional
      ``history`` excluded), else 0. Unlike RD, disagreement is not up-weighted.

    All weights are detached, zero at missing slots (id 0), and each row with a non-missing slot
    sums to 1 (unless all three terms vanish, then the row weighs 0).

    Defaults: β = 1, (γ_p, γ_c, γ_o) = (0.3, 0.5, 0.1); paper K = 10 (taken from the input here);
    the loss weight λ_d (0.7–0.8 in the paper) belongs to the caller: L = L_task + λ_d · L_d.

    ``student_output="softmax"`` replaces −log σ(ŷ_si) by −log softmax(ŷ_s)_i over the catalogue,
    for students trained with full-softmax cross-entropy (the paper's students use sampled BCE; under
    a softmax task the sigmoid form is satisfied by raising every logit, see :func:`candidate_nll`).

    Not reproduced from the public code: its distillation term also adds a sampled-negative term
    written ``log σ(1 − s)`` instead of ``log σ(−s)`` (a bug), plus a DRO term; this module
    implements only the paper's L_d above. The code also adds 1e-8 to w^o and w^c; we don't.

    Shapes:
        student_logits ``[B, N+1]`` (column 0 = padding), teacher_topk_ids ``[B, K]`` (0 =
        missing), teacher_user ``[B, D]``, teacher_item_emb ``[N+1, D]``, target ``[B]``,
        history ``[B, L]`` (0 = padding).
    """

    @classmethod
    def distill_inputs(cls, params: dict) -> dict[str, str]:
        inputs = {"student_logits": "student_logits", "teacher_topk_ids": "teacher_topk_ids"}
        gamma = params.get("gamma", (0.3, 0.5, 0.1))
        if float(gamma[1]) > 0:  # confidence needs the teacher's user and item vectors
            inputs.update(teacher_user="teacher_user", teacher_item_emb="teacher_item_emb")
            if params.get("confidence", "sequence") == "sequence":
                inputs["target"] = "target"
        if params.get("student_output", "sigmoid") == "softmax":  # the task loss's log-softmax, reused
            inputs["student_log_probs"] = "student_log_probs"
        return inputs

    def __init__(
        self,
        beta: float = 1.0,
        gamma: Sequence[float] = (0.3, 0.5, 0.1),
        confidence: str = "sequence",
        distance: str = "l2",
        reduction: str = "mean",
        student_output: str = "sigmoid",
    ) -> None:
        super().__init__()
        self.student_output = check_student_output(student_output)
        if beta <= 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        gamma = tuple(float(g) for g in gamma)
        if len(gamma) != 3 or any(g < 0 for g in gamma):
            raise ValueError(f"gamma must be three non-negative floats (γ_p, γ_c, γ_o), got {gamma}")
        if confidence not in CONFIDENCE_MODES:
            raise ValueError(f"confidence must be one of {CONFIDENCE_MODES}, got {confidence!r}")
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
        self.beta = float(beta)
        self.gamma = gamma
        self.confidence = confidence
        self.distance = distance
        self.reduction = check_reduction(reduction)

    def extra_repr(self) -> str:
        return (
            f"beta={self.beta}, gamma={self.gamma}, confidence={self.confidence!r}, "
            f"distance={self.distance!r}, reduction={self.reduction!r}"
        )

    def _dist(self, u: Tensor, e: Tensor) -> Tensor:
        if self.distance == "l2":
            return (u - e).norm(dim=-1)
        return 1.0 - F.cosine_similarity(u, e, dim=-1)

    def _cosine_dist(self, u: Tensor, table: Tensor, index: Tensor) -> Tensor:
        """``1 − cos(u, table[index])`` (u ``[B, D]``, index ``[B]`` or ``[B, K]``) as F.cosine_similarity
        computes it (each side divided by max(‖·‖, 1e-8), then the dot product), with the table's rows
        normalised once per table instead of once per batch row."""
        # keyed on the table object itself (kept referenced, so its memory is never reused) and its version
        if getattr(self, "_unit_source", None) is not table or self._unit_version != table._version:
            self._unit_source, self._unit_version = table, table._version
            self._unit_table = table / torch.linalg.vector_norm(table, dim=-1, keepdim=True).clamp_min(1e-8)
        unit_u = u / torch.linalg.vector_norm(u, dim=-1, keepdim=True).clamp_min(1e-8)
        if index.dim() == 2:
            unit_u = unit_u.unsqueeze(1)
        return 1.0 - (unit_u * self._unit_table[index]).sum(dim=-1)

    def confidence_weights(
        self,
        teacher_topk_ids: Tensor,
        teacher_user: Optional[Tensor],
        teacher_item_emb: Optional[Tensor],
        target: Optional[Tensor],
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """Detached w^c ``[B, K]`` (see class docstring), computed in ``dtype``."""
        missing = [n for n, v in (("teacher_user", teacher_user), ("teacher_item_emb", teacher_item_emb)) if v is None]
        if self.confidence == "sequence" and target is None:
            missing.append("target")
        if missing:
            raise ValueError(
                f"ImportanceRankingDistillationLoss with gamma_c={self.gamma[1]} > 0 and "
                f"confidence={self.confidence!r} needs {', '.join(missing)}; pass "
                f"{' and '.join(missing)} or set gamma_c = 0 to drop the confidence term"
            )
        ids = teacher_topk_ids.long()
        valid = ids > 0
        u = teacher_user.detach()
        E = teacher_item_emb.detach()
        if u.dim() != 2 or u.shape[0] != ids.shape[0]:
            raise ValueError(f"teacher_user must be [B, D] with B={ids.shape[0]}, got {tuple(u.shape)}")
        if E.dim() != 2 or E.shape[1] != u.shape[1]:
            raise ValueError(f"teacher_item_emb must be [N+1, D] with D={u.shape[1]}, got {tuple(E.shape)}")
        u = u.to(dtype)
        if self.confidence == "sequence":
            t = target.detach().long().reshape(-1)
            if t.shape[0] != ids.shape[0]:
                raise ValueError(f"target must be [B] with B={ids.shape[0]}, got {tuple(target.shape)}")
            d = self._cosine_dist(u, E.to(dtype), t) if self.distance == "cosine" else self._dist(u, E[t].to(dtype))
            w = torch.exp(-d).unsqueeze(1).expand_as(ids)
            return torch.where(valid, w, torch.zeros_like(w))
        d = self._cosine_dist(u, E.to(dtype), ids) if self.distance == "cosine" \
            else self._dist(u.unsqueeze(1), E[ids].to(dtype))  # [B, K]
        logits = (-d).masked_fill(~valid, float("-inf"))
        w = torch.softmax(logits, dim=1)
        return torch.where(valid, w, torch.zeros_like(w)).nan_to_num(0.0)

    def weights(
        self,
        student_logits: Tensor,
        teacher_topk_ids: Tensor,
        teacher_user: Optional[Tensor] = None,
        teacher_item_emb: Optional[Tensor] = None,
        target: Optional[Tensor] = None,
        history: Optional[Tensor] = None,
    ) -> Tensor:
        """Detached final weights ``[B, K]``."""
        ids = teacher_topk_ids.detach().long()
        valid = ids > 0
        K = ids.shape[1]
        g_p, g_c, g_o = self.gamma
        dtype = torch.float32
        if student_logits.is_floating_point():
            dtype = torch.promote_types(student_logits.dtype, torch.float32)
        r = torch.arange(1, K + 1, device=ids.device, dtype=dtype).unsqueeze(0).expand(ids.shape)
        w = g_p * masked_normalize(torch.exp(-r / self.beta), valid)
        if g_c > 0:
            w = w + g_c * self.confidence_weights(ids, teacher_user, teacher_item_emb, target, dtype)
        if g_o > 0:
            w = w + g_o * student_topk_membership(student_logits, ids, K, history).to(dtype)
        return masked_normalize(w, valid).detach()

    def forward(
        self,
        student_logits: Tensor,
        teacher_topk_ids: Tensor,
        teacher_user: Optional[Tensor] = None,
        teacher_item_emb: Optional[Tensor] = None,
        target: Optional[Tensor] = None,
        history: Optional[Tensor] = None,
        student_log_probs: Optional[Tensor] = None,
    ) -> Tensor:
        check_logits_and_ids(student_logits, teacher_topk_ids)
        ids = teacher_topk_ids.detach().long()
        w = self.weights(student_logits, ids, teacher_user, teacher_item_emb, target, history)
        return weighted_candidate_loss(student_logits, ids, w, self.student_output, self.reduction, student_log_probs)
