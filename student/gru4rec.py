"""GRU4Rec: Hidasi et al., "Session-based Recommendations with Recurrent Neural Networks", ICLR 2016.

RecBole-style variant: a dense layer after the GRU and logits by dot product with the item
embedding table (full softmax instead of the paper's session-parallel sampled ranking losses).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recdistill.student.base import Encoded, register_student
from recdistill.student.layers import init_normal


def _shift(x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Rotate each row left by ``offset[b]`` in ``[0, L]``: ``out[b, t] = x[b, (t + offset[b]) % L]``.

    Gathers from ``[x, x]`` instead of taking a modulo, which the ONNX exporters handle poorly.
    """
    index = torch.arange(x.size(1), device=x.device)[None] + offset[:, None]  # [B, L], < 2L
    if x.dim() == 3:
        index = index[..., None].expand(-1, -1, x.size(2))
    return torch.cat([x, x], dim=1).gather(1, index)


@register_student("gru4rec")
class GRU4Rec(nn.Module):
    """Item embedding -> dropout -> stacked GRU -> Linear to ``hidden_size`` -> dot with item table.

    Left padding would otherwise feed the GRU a prefix of padding steps that moves its hidden
    state away from zero. Each row is therefore rotated so that its real items come first, the
    GRU runs from a zero state, and the outputs are rotated back: the result on a left-padded
    sequence equals the result on the unpadded items, and padding positions output the
    empty-history representation (the dense layer applied to a zero state). The rotation is two
    gathers with computed indices, so the graph stays traceable with dynamic shapes.

    Export note: the TorchScript ONNX exporter keeps batch and length dynamic; ``torch.export``
    (the dynamo exporter) specialises ``nn.GRU`` to the example's sequence length (torch 2.13),
    so there export with a dynamic batch at a fixed, left-padded length.

    Layers (contract in ``student/base.py``): ``layers[0]`` = the dropped-out item embedding,
    ``layers[i]`` = GRU layer ``i``'s output (width ``gru_size``; zero at padding positions),
    the dense layer folded into the last entry (width ``hidden_size``), all at input positions.
    """

    objective = "next_item"

    def __init__(
        self,
        num_items: int,
        hidden_size: int = 64,
        num_layers: int = 1,
        dropout: float = 0.2,
        gru_size: int | None = None,
    ) -> None:
        super().__init__()
        self.num_items = num_items
        self.hidden_size = hidden_size
        gru_size = gru_size or hidden_size
        self.item_embedding = nn.Embedding(num_items + 1, hidden_size, padding_idx=0)
        self.dropout = nn.Dropout(dropout)
        sizes = [hidden_size] + [gru_size] * num_layers
        self.grus = nn.ModuleList(nn.GRU(a, b, batch_first=True) for a, b in zip(sizes, sizes[1:]))
        self.dense = nn.Linear(gru_size, hidden_size)
        init_normal(self, linear=False)

    @property
    def num_layers(self) -> int:
        return len(self.grus)

    @property
    def layer_widths(self) -> tuple[int, ...]:
        inner = tuple(gru.hidden_size for gru in list(self.grus)[:-1])
        return (self.item_embedding.embedding_dim, *inner, self.dense.out_features)

    def encoder_input(self, input_ids: torch.Tensor) -> torch.Tensor:
        return input_ids

    def encode(self, input_ids: torch.Tensor) -> Encoded:
        length = input_ids.size(1)
        real = torch.cumsum((input_ids != 0).long(), dim=1) > 0  # False on the left-padding prefix
        num_pad = (~real).long().sum(dim=1)
        back = length - num_pad  # rotation from "real items first" back to input positions
        x = self.dropout(self.item_embedding(_shift(input_ids, num_pad)))  # real items first
        layers = [_shift(x, back) * real[..., None]]
        for gru in self.grus:
            x, _ = gru(x)
            layers.append(_shift(x, back) * real[..., None])
        sequence = self.dense(layers[-1])
        layers[-1] = sequence
        return Encoded(last=sequence[:, -1], layers=tuple(layers), sequence=sequence)

    def score(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.item_embedding.weight)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.score(self.encode(input_ids).last)
