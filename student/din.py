"""DIN: Zhou et al., "Deep Interest Network for Click-Through Rate Prediction", KDD 2018."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from recdistill.student.base import Encoded, register_student
from recdistill.student.layers import MLP, FieldEmbedding, init_normal


class ActivationUnit(nn.Module):
    """Target attention: weight_j = MLP([h_j, t, h_j - t, h_j * t]); padding weights are 0.

    As in the paper, weights are not softmax-normalised (sum pooling keeps interest intensity).
    """

    def __init__(self, embed_dim: int, dims: Sequence[int]) -> None:
        super().__init__()
        self.mlp = MLP(4 * embed_dim, dims, activation=nn.PReLU)
        self.score = nn.Linear(self.mlp.out_dim, 1)

    def forward(self, history: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``history [B, H, E]``, ``target [B, E]``, ``valid Bool[B, H]`` -> pooled ``[B, E]``."""
        t = target[:, None].expand_as(history)
        weights = self.score(self.mlp(torch.cat([history, t, history - t, history * t], dim=-1)))
        return (weights.masked_fill(~valid[..., None], 0.0) * history).sum(dim=1)


@register_student("din")
class DIN(nn.Module):
    """Target-item attention over the history, then an MLP over all features.

    Index contract: ``sparse[:, item_field]`` is the candidate item in the *history* index space
    (item index ``1..num_items``, 0 = unknown/padding), so the candidate and the history share
    one item embedding of ``num_items + 1`` rows; ``field_dims[item_field]`` must not exceed
    ``num_items + 1`` (``num_items=0`` means ``field_dims[item_field] - 1``). The other fields
    have their own embeddings. MLP input: ``[other fields; target; attention-pooled history;
    dense]``. ``Encoded.last`` is the MLP output and ``forward = score(encode(...).last)``.

    Layers (contract in ``student/base.py``): ``layers[0]`` = that MLP input (width
    ``embed_dim * (F + 1) + dense_dim``), then each MLP block (width ``mlp_dims[i]``);
    ``num_layers = len(mlp_dims)``.
    """

    objective = "ctr"

    def __init__(
        self,
        field_dims: Sequence[int],
        dense_dim: int = 0,
        num_items: int = 0,
        embed_dim: int = 16,
        item_field: int = 1,
        attention_dims: Sequence[int] = (64, 32),
        mlp_dims: Sequence[int] = (256, 128),
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if not 0 <= item_field < len(field_dims):
            raise ValueError(f"item_field={item_field} is out of range for {len(field_dims)} fields")
        num_items = num_items or field_dims[item_field] - 1
        if field_dims[item_field] > num_items + 1:
            raise ValueError(
                f"field_dims[item_field]={field_dims[item_field]} exceeds num_items + 1 = {num_items + 1}: "
                "the item field must use the history item index (1..num_items, 0 = unknown)"
            )
        self.num_items = num_items
        self.item_field = item_field
        self.other_fields = [f for f in range(len(field_dims)) if f != item_field]
        self.item_embedding = nn.Embedding(num_items + 1, embed_dim, padding_idx=0)
        self.embedding = FieldEmbedding([field_dims[f] for f in self.other_fields], embed_dim)
        self.attention = ActivationUnit(embed_dim, attention_dims)
        self.mlp = MLP(embed_dim * (len(field_dims) + 1) + dense_dim, mlp_dims, dropout, nn.PReLU)
        self.output = nn.Linear(self.mlp.out_dim, 1)
        init_normal(self, linear=False)

    def encode(self, sparse: torch.Tensor, dense: torch.Tensor, history: torch.Tensor) -> Encoded:
        target = self.item_embedding(sparse[:, self.item_field])
        pooled = self.attention(self.item_embedding(history), target, history != 0)
        others = self.embedding(sparse[:, self.other_fields]).flatten(1)
        x = torch.cat([others, target, pooled, dense], dim=1)
        layers = (x, *self.mlp.layer_outputs(x))
        return Encoded(last=layers[-1], layers=layers)

    @property
    def num_layers(self) -> int:
        return len(self.mlp.blocks)

    @property
    def layer_widths(self) -> tuple[int, ...]:
        first = self.mlp.blocks[0][0].in_features if self.mlp.blocks else self.output.in_features
        return (first, *(block[0].out_features for block in self.mlp.blocks))

    @property
    def hidden_size(self) -> int:
        return self.output.in_features

    def score(self, last: torch.Tensor) -> torch.Tensor:
        """The output layer: ``[B, hidden_size] -> [B]``."""
        return self.output(last).squeeze(-1)

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return self.score(self.encode(sparse, dense, history).last)
