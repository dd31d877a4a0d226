"""Item-embedding distillation: DLLM2Rec fusion, PCA initialisation, CLIP-style alignment loss.

* :class:`TeacherEmbeddingFusion` — DLLM2Rec collaborative embedding distillation (no extra loss).
* :func:`pca_init` — LLMEmb / LLM-ESR-style initialisation of the student item table by PCA.
* :class:`EmbeddingAlignmentLoss` (registered ``"embedding_align"``) — optional CLIP-style alignment.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ._feature_utils import check_positive_int, check_reduction, flatten_rows, info_nce, make_projector
from .registry import register_loss

__all__ = ["TeacherEmbeddingFusion", "pca_init", "EmbeddingAlignmentLoss"]


class TeacherEmbeddingFusion(nn.Module):
    r"""Student item embeddings fused with frozen teacher item embeddings (DLLM2Rec).

    Cui et al., "Distillation Matters: Empowering Sequential Recommenders to Match the Performance
    of Large Language Models", RecSys 2024 — collaborative embedding distillation:

        e_i = b_i + w_ed · g(z_i),     g = Linear(d_T → d_S),  i = 0..N

    b = trainable ID embedding ``[N+1, d_S]`` (padding row 0), z = the teacher's item table
    ``[N+1, d_T]`` (frozen buffer, e.g. the cache's ``item_embeddings.safetensors``), w_ed = 0.25
    (paper range 0.2–0.3). No extra loss term. The padding row e_0 is forced to exactly 0.

    Drop-in for a student's ``nn.Embedding`` item table: ``module(ids)`` looks rows up and
    ``module.weight`` is the full ``[N+1, d_S]`` table (used for full-catalogue scoring, e.g.
    ``F.linear(h, item_embedding.weight)``). Both are computed from :meth:`table`, so a lookup equals
    the folded table bit for bit.

    Export: because g is linear, :meth:`fold` returns the single plain ``[N+1, d_S]`` tensor
    b + w_ed·g(z) (detached); :meth:`to_embedding` wraps it in an ``nn.Embedding``. The served /
    exported model must carry only that table — never the d_T-wide teacher table or g.

    Args:
        teacher_item_emb: ``[N+1, d_T]`` teacher item embeddings (row ``padding_idx`` ignored).
        student_dim: d_S.
        w_ed: fusion weight (default 0.25).
        padding_idx: padding row (default 0; None = no padding row).
        num_embeddings: total rows of the student table if it has extra rows beyond the teacher's
            (e.g. BERT4Rec's mask token, N+2); the extra rows get a zero teacher vector.
        bias: whether g has a bias (default True).
    """

    def __init__(
        self,
        teacher_item_emb: Tensor,
        student_dim: int,
        w_ed: float = 0.25,
        padding_idx: Optional[int] = 0,
        num_embeddings: Optional[int] = None,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if teacher_item_emb.dim() != 2:
            raise ValueError(f"teacher_item_emb must be [N+1, d_T], got shape {tuple(teacher_item_emb.shape)}")
        check_positive_int("student_dim", student_dim)
        z = teacher_item_emb.detach().to(torch.float32).clone()
        n_rows = z.shape[0] if num_embeddings is None else int(num_embeddings)
        if n_rows < z.shape[0]:
            raise ValueError(f"num_embeddings={n_rows} is smaller than the teacher table's {z.shape[0]} rows")
        if n_rows > z.shape[0]:
            z = torch.cat([z, z.new_zeros(n_rows - z.shape[0], z.shape[1])])
        if padding_idx is not None and not 0 <= padding_idx < n_rows:
            raise ValueError(f"padding_idx={padding_idx} outside 0..{n_rows - 1}")
        self.num_embeddings = n_rows
        self.embedding_dim = student_dim
        self.teacher_dim = z.shape[1]
        self.padding_idx = padding_idx
        self.w_ed = float(w_ed)
        self.register_buffer("teacher_table", z)  # frozen: a buffer, never a parameter
        self.id_embedding = nn.Embedding(n_rows, student_dim, padding_idx=padding_idx)
        self.g = nn.Linear(self.teacher_dim, student_dim, bias=bias)
        keep = torch.ones(n_rows, 1)
        if padding_idx is not None:
            keep[padding_idx] = 0.0
        self.register_buffer("_keep", keep, persistent=False)

    def extra_repr(self) -> str:
        return (f"num_embeddings={self.num_embeddings}, embedding_dim={self.embedding_dim}, "
                f"teacher_dim={self.teacher_dim}, w_ed={self.w_ed}, padding_idx={self.padding_idx}")

    def table(self) -> Tensor:
        """Full fused table ``[N+1, d_S]`` = b + w_ed·g(z) (differentiable; padding row 0)."""
        z = self.teacher_table.to(self.g.weight.dtype)
        e = self.id_embedding.weight + self.w_ed * self.g(z)
        return e * self._keep.to(e.dtype)

    @property
    def weight(self) -> Tensor:
        return self.table()

    def forward(self, item_ids: Optional[Tensor] = None) -> Tensor:
        """``item_ids [...]`` → ``[..., d_S]``; no ids → the full table."""
        tab = self.table()
        if item_ids is None:
            return tab
        return tab[item_ids.long()]

    @torch.no_grad()
    def fold(self) -> Tensor:
        """Plain detached ``[N+1, d_S]`` tensor b + w_ed·g(z) for export (no d_T-wide weights)."""
        return self.table().detach().clone()

    def to_embedding(self, freeze: bool = False) -> nn.Embedding:
        """``nn.Embedding`` holding :meth:`fold` (what the exported student should carry)."""
        return nn.Embedding.from_pretrained(self.fold(), freeze=freeze, padding_idx=self.padding_idx)


def pca_init(
    teacher_item_emb: Tensor,
    student_dim: int,
    padding_idx: Optional[int] = 0,
    center: bool = True,
    target_std: Optional[float] = None,
    return_explained_variance: bool = False,
) -> Union[Tensor, Tuple[Tensor, float]]:
    r"""Initial student item table by PCA of the teacher's item embeddings (LLMEmb / LLM-ESR style).

    Liu et al., "LLM-ESR: Large Language Models Enhancement for Long-tailed Sequential
    Recommendation", NeurIPS 2024; Liu et al., "LLMEmb: Large Language Model Can Be a Good Embedding
    Generator for Sequential Recommendation", AAAI 2025 — student item table initialised from the
    LLM item embeddings reduced to d_S by PCA.

    With X the ``[N, d_T]`` non-padding rows, μ their mean (``center=True``; 0 otherwise) and the
    thin SVD X − μ = U Σ Vᵀ (``torch.linalg.svd``, float64):

        E = (X − μ) V_k = U_k Σ_k,   k = min(d_S, rank available)

    Row ``padding_idx`` (default 0) is exactly 0. Inner products of the centred rows are preserved up
    to the dropped variance: ‖(X−μ)(X−μ)ᵀ − E Eᵀ‖₂ = σ_{k+1}² (exact when rank(X−μ) ≤ d_S). If d_S
    exceeds min(N, d_T) the remaining columns are 0. ``target_std`` (default None = keep the
    teacher's scale) rescales the whole table by one scalar so its entries have that std — inner
    products are then preserved up to that constant.

    Returns ``[N+1, d_S]`` float32 (and the kept fraction of variance Σ_{i≤k}σ_i² / Σ_i σ_i² if
    ``return_explained_variance``).
    """
    if teacher_item_emb.dim() != 2:
        raise ValueError(f"teacher_item_emb must be [N+1, d_T], got shape {tuple(teacher_item_emb.shape)}")
    check_positive_int("student_dim", student_dim)
    X = teacher_item_emb.detach().to(torch.float64)
    n = X.shape[0]
    rows = torch.ones(n, dtype=torch.bool, device=X.device)
    if padding_idx is not None:
        if not 0 <= padding_idx < n:
            raise ValueError(f"padding_idx={padding_idx} outside 0..{n - 1}")
        rows[padding_idx] = False
    Xr = X[rows]
    if Xr.shape[0] == 0:
        raise ValueError("teacher_item_emb has no non-padding rows")
    if center:
        Xr = Xr - Xr.mean(dim=0, keepdim=True)
    _, S, Vh = torch.linalg.svd(Xr, full_matrices=False)
    k = min(student_dim, S.numel())
    Y = Xr @ Vh[:k].t()
    if k < student_dim:
        Y = torch.cat([Y, Y.new_zeros(Y.shape[0], student_dim - k)], dim=1)
    if target_std is not None:
        if target_std <= 0:
            raise ValueError(f"target_std must be > 0, got {target_std}")
        std = Y.std()
        if std > 0:
            Y = Y * (target_std / std)
    out = X.new_zeros(n, student_dim)
    out[rows] = Y
    out = out.to(torch.float32)
    if return_explained_variance:
        total = float((S ** 2).sum())
        kept = float((S[:k] ** 2).sum()) / total if total > 0 else 1.0
        return out, kept
    return out


@register_loss("embedding_align")
class EmbeddingAlignmentLoss(nn.Module):
    r"""CLIP-style alignment of student item embeddings with (projected) teacher item embeddings.

    Optional companion of :func:`pca_init` in LLMEmb / LLM-ESR-style training (Liu et al. 2024/2025);
    the loss form is CLIP's (Radford et al. 2021) symmetric InfoNCE.

    For M distinct items with student embeddings e_i ``[M, d_S]`` and teacher embeddings z_i
    ``[M, d_T]`` (detached), t_i = P(z_i) with a trainable projector P: d_T → d_S (``"linear"``
    default, ``"mlp"``, or ``"identity"`` when d_T == d_S), S_ij = cos(e_i, t_j)/τ and

        ℓ_i = ½ [ −log softmax_j(S_ij)[i] − log softmax_j(S_ji)[i] ]

    Defaults: τ = 2, α = 0.01 (``paper_weight``; the module's ``weight`` defaults to 1.0 so the caller
    applies α: ``L = L_task + 0.01 · loss(...)`` — set one, not both). If ``item_ids`` (``[M]``) is
    given, padding (id 0) is dropped and repeated items are kept once (first occurrence), so an
    item is never its own negative. Reduction "mean" (default) or "sum" over the distinct items.
    Fewer than 2 items give 0. P is dropped after training.
    """

    paper_weight = 0.01

    @classmethod
    def distill_inputs(cls, params: dict) -> dict[str, str]:
        return {"student_item_emb": "student_item_emb_batch", "teacher_item_emb": "teacher_item_emb_batch",
                "item_ids": "batch_item_ids"}

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        temperature: float = 2.0,
        projector: str = "linear",
        hidden_dim: Optional[int] = None,
        weight: float = 1.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.student_dim = check_positive_int("student_dim", student_dim)
        self.teacher_dim = check_positive_int("teacher_dim", teacher_dim)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.projector = make_projector(projector, teacher_dim, student_dim, hidden_dim)
        self.weight = float(weight)
        if reduction not in ("mean", "sum"):
            check_reduction(reduction)
            raise ValueError("EmbeddingAlignmentLoss supports reduction 'mean' or 'sum'")
        self.reduction = reduction

    def extra_repr(self) -> str:
        return (f"student_dim={self.student_dim}, teacher_dim={self.teacher_dim}, "
                f"temperature={self.temperature}, weight={self.weight}, reduction={self.reduction!r}")

    def forward(self, student_item_emb: Tensor, teacher_item_emb: Tensor, item_ids: Optional[Tensor] = None) -> Tensor:
        s, _ = flatten_rows(student_item_emb, self.student_dim, "student_item_emb")
        t, _ = flatten_rows(teacher_item_emb, self.teacher_dim, "teacher_item_emb")
        if s.shape[0] != t.shape[0]:
            raise ValueError(f"{s.shape[0]} student rows vs {t.shape[0]} teacher rows")
        if item_ids is not None:
            ids = item_ids.reshape(-1).to(s.device).long()
            if ids.numel() != s.shape[0]:
                raise ValueError(f"item_ids has {ids.numel()} entries for {s.shape[0]} rows")
            uniq, inv = torch.unique(ids, return_inverse=True)
            first = torch.full((uniq.numel(),), ids.numel(), dtype=torch.long, device=ids.device)
            first = first.scatter_reduce(0, inv, torch.arange(ids.numel(), device=ids.device), reduce="amin")
            first = first[uniq != 0]
            s, t = s[first], t[first]
        t = t.detach().to(device=s.device, dtype=s.dtype)
        if s.shape[0] < 2:
            return self.weight * 0.0 * (s.sum() + sum(p.sum() for p in self.projector.parameters()))
        loss, _ = info_nce(s, self.projector(t), self.temperature, symmetric=True, normalize=True)
        red = loss.mean() if self.reduction == "mean" else loss.sum()
        return self.weight * red
