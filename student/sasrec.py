"""SASRec: Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recdistill.student.base import Encoded, register_student
from recdistill.student.layers import RightAlignedPositions, TransformerBlock, attention_mask, init_normal


@register_student("sasrec")
class SASRec(nn.Module):
    """Causal self-attention over the item sequence, scored against the item embedding table.

    Item embedding + right-aligned learned positions -> dropout -> ``num_layers`` pre-LayerNorm
    causal transformer blocks (padding keys masked) -> final LayerNorm. ``score`` is the dot
    product with the (shared) item embedding table, as in the paper.

    Layers (contract in ``student/base.py``): ``layers[0]`` = the dropped-out item + position
    embedding, ``layers[i]`` = block ``i``'s output, the final LayerNorm folded into the last.
    """

    objective = "next_item"

    def __init__(
        self,
        num_items: int,
        hidden_size: int = 64,
        num_layers: int = 2,
        num_heads: int = 1,
        dropout: float = 0.2,
        max_len: int = 50,
        ffn_size: int | None = None,
    ) -> None:
        super().__init__()
        self.num_items = num_items
        self.hidden_size = hidden_size
        self.max_len = max_len
        self.item_embedding = nn.Embedding(num_items + 1, hidden_size, padding_idx=0)
        self.position_embedding = RightAlignedPositions(max_len, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(hidden_size, num_heads, dropout, ffn_size, nn.ReLU, norm_first=True)
            for _ in range(num_layers)
        )
        self.final_norm = nn.LayerNorm(hidden_size)
        init_normal(self)

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    @property
    def layer_widths(self) -> tuple[int, ...]:
        return (self.item_embedding.embedding_dim,) * (len(self.blocks) + 1)

    def encoder_input(self, input_ids: torch.Tensor) -> torch.Tensor:
        return input_ids

    def encode(self, input_ids: torch.Tensor) -> Encoded:
        mask = attention_mask(input_ids, causal=True)
        x = self.dropout(self.item_embedding(input_ids) + self.position_embedding(input_ids))
        layers = [x]
        for block in self.blocks:
            x = block(x, mask)
            layers.append(x)
        sequence = self.final_norm(x)
        layers[-1] = sequence
        return Encoded(last=sequence[:, -1], layers=tuple(layers), sequence=sequence)

    def score(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.item_embedding.weight)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.score(self.encode(input_ids).last)
