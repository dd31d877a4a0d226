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
    ignored. ``Encoded.last`` is the MLP output (what the output layer sees) and
    ``Encoded.logit_offset`` the first-order + FM logit, so
    ``forward == score(enc.last) + enc.logit_offset``.

    Layers (contract in ``student/base.py``): ``layers[0]`` = the deep input
    ``[v_1; ..; v_F; W_d dense]`` (width ``embed_dim * (F + [dense_dim > 0])``), then one entry
    per MLP block (width ``mlp_dims[i]``); ``num_layers = len(mlp_dims)``.
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

    @property
    def num_layers(self) -> int:
        return len(self.mlp.blocks)

    @property
    def layer_widths(self) -> tuple[int, ...]:
        deep_in = len(self.embedding.embeddings) * self.embedding.embed_dim
        if self.dense_embedding is not None:
            deep_in += self.dense_embedding.out_features
        return (deep_in, *(block[0].out_features for block in self.mlp.blocks))

    @property
    def hidden_size(self) -> int:
        return self.layer_widths[-1]

    def encode(self, sparse: torch.Tensor, dense: torch.Tensor, history: torch.Tensor) -> Encoded:
        shallow, deep_in = self._parts(sparse, dense)
        layers = (deep_in, *self.mlp.layer_outputs(deep_in))
        return Encoded(last=layers[-1], layers=layers, logit_offset=shallow)

    def score(self, last: torch.Tensor) -> torch.Tensor:
        """The output layer: ``[B, hidden_size] -> [B]`` (without the first-order + FM offset)."""
        return self.output(last).squeeze(-1)

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        encoded = self.encode(sparse, dense, history)
        return self.score(encoded.last) + encoded.logit_offset
