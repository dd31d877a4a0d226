"""DeepFM: Guo et al., "DeepFM: A Factorization-Machine based Neural Network for CTR
Prediction", IJCAI 2017."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from recdistill.student.base import Encoded, register_student
from recdistill.student.layers import MLP, FieldEmbedding, init_normal


@register_student("deepfm")
class DeepFM(nn.Module):
    """First-order weights + FM pairwise interactions + a deep MLP over the same embeddings.

    ``logit = bias + sum_f w_f + FM(v_1..v_F) + w_out . MLP([v_1; ..; v_F; W_d dense])``.
    Dense features enter the deep part through a Linear to ``embed_dim`` (and a first-order
    Linear). ``history`` and ``num_items`` are accepted for the common CTR signature and
    ignored. ``Encoded.last`` is the MLP output (what the output layer sees).
    """

    objective = "ctr"

    def __init__(
        self,
        field_dims: Sequence[int],
        dense_dim: int = 0,
        num_items: int = 0,
        embed_dim: int = 16,
        mlp_dims: Sequence[int] = (256, 128),
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.embedding = FieldEmbedding(field_dims, embed_dim)
        self.first_order = FieldEmbedding(field_dims, 1)
        self.bias = nn.Parameter(torch.zeros(1))
        self.dense_first_order = nn.Linear(dense_dim, 1, bias=False) if dense_dim else None
        self.dense_embedding = nn.Linear(dense_dim, embed_dim) if dense_dim else None
        deep_in = embed_dim * (len(field_dims) + (1 if dense_dim else 0))
        self.mlp = MLP(deep_in, mlp_dims, dropout)
        self.output = nn.Linear(self.mlp.out_dim, 1)
        init_normal(self, linear=False)

    def _parts(self, sparse: torch.Tensor, dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(first-order + FM logit [B], deep input [B, D0])``."""
        v = self.embedding(sparse)  # [B, F, E]
        fm = 0.5 * (v.sum(dim=1).pow(2) - v.pow(2).sum(dim=1)).sum(dim=1)
        shallow = self.bias + self.first_order(sparse).sum(dim=(1, 2)) + fm
        deep_in = v.flatten(1)
        if self.dense_embedding is not None:
            shallow = shallow + self.dense_first_order(dense).squeeze(1)
            deep_in = torch.cat([deep_in, self.dense_embedding(dense)], dim=1)
        return shallow, deep_in

    def encode(self, sparse: torch.Tensor, dense: torch.Tensor, history: torch.Tensor) -> Encoded:
        deep_in = self._parts(sparse, dense)[1]
        layers = self.mlp.layer_outputs(deep_in)
        return Encoded(last=layers[-1] if layers else deep_in, layers=layers)

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        shallow, deep_in = self._parts(sparse, dense)
        return shallow + self.output(self.mlp(deep_in)).squeeze(1)
