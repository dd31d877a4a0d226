"""BERT4Rec: Sun et al., "BERT4Rec: Sequential Recommendation with Bidirectional Encoder
Representations from Transformer", CIKM 2019."""

from __future__ import annotations

import torch
from torch import nn

from recdistill.student.base import Encoded, register_student
from recdistill.student.layers import RightAlignedPositions, TransformerBlock, attention_mask, init_normal


@register_student("bert4rec")
class BERT4Rec(nn.Module):
    """Bidirectional transformer trained with the cloze task.

    The embedding table has ``num_items + 2`` rows: 0 = padding, ``1..num_items`` = items,
    ``mask_token = num_items + 1``. Training masks items (``mask_prob`` is read by the cloze
    loss, not by the model) and calls ``encode_masked``; inference (``encode``/``forward``)
    appends the mask token, dropping the oldest position to keep length ``L``, and predicts the
    item at the mask. ``score`` is a separate output layer over ``num_items + 1`` columns (the
    mask token is never a prediction target).

    Layers (contract in ``student/base.py``): ``layers[0]`` = the LayerNormed, dropped-out item +
    position embedding, ``layers[i]`` = block ``i``'s output (the last is ``sequence``), all
    aligned with the tokens read: ``append_mask(input_ids)`` for ``encode``, the given tokens for
    ``encode_masked``.
    """

    objective = "cloze"

    def __init__(
        self,
        num_items: int,
        hidden_size: int = 64,
        num_layers: int = 2,
        num_heads: int = 2,
        dropout: float = 0.2,
        max_len: int = 50,
        ffn_size: int | None = None,
        mask_prob: float = 0.2,
    ) -> None:
        super().__init__()
        self.num_items = num_items
        self.hidden_size = hidden_size
        self.max_len = max_len
        self.mask_token = num_items + 1
        self.mask_prob = mask_prob
        self.item_embedding = nn.Embedding(num_items + 2, hidden_size, padding_idx=0)
        self.position_embedding = RightAlignedPositions(max_len, hidden_size)
        self.embedding_norm = nn.LayerNorm(hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(hidden_size, num_heads, dropout, ffn_size or 4 * hidden_size, nn.GELU, norm_first=False)
            for _ in range(num_layers)
        )
        self.output = nn.Linear(hidden_size, num_items + 1)
        init_normal(self)

    def append_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Drop the oldest position and append ``mask_token``: ``[B, L] -> [B, L]``."""
        return torch.cat([input_ids[:, 1:], torch.full_like(input_ids[:, :1], self.mask_token)], dim=1)

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    @property
    def layer_widths(self) -> tuple[int, ...]:
        return (self.item_embedding.embedding_dim,) * (len(self.blocks) + 1)

    def encoder_input(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The tokens ``encode`` reads: ``append_mask(input_ids)``."""
        return self.append_mask(input_ids)

    def encode_masked(self, input_ids: torch.Tensor) -> Encoded:
        """Encode an already-masked sequence; ``sequence`` holds the output at every position."""
        mask = attention_mask(input_ids, causal=False)
        x = self.item_embedding(input_ids) + self.position_embedding(input_ids)
        x = self.dropout(self.embedding_norm(x))
        layers = [x]
        for block in self.blocks:
            x = block(x, mask)
            layers.append(x)
        return Encoded(last=x[:, -1], layers=tuple(layers), sequence=x)

    def encode(self, input_ids: torch.Tensor) -> Encoded:
        """Inference encoding: ``last`` is the output at the appended mask token."""
        return self.encode_masked(self.append_mask(input_ids))

    def score(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.output(hidden)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.score(self.encode(input_ids).last)
