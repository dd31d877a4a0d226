"""Building blocks shared by the students: attention, transformer block, MLP, field embeddings.

Everything here is traceable (no data-dependent Python control flow), calls embeddings as
modules and uses separate Q/K/V ``nn.Linear`` layers, so torch.onnx and torch-pruning can
follow the graph.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def init_normal(module: nn.Module, std: float = 0.02, linear: bool = True) -> None:
    """Normal(0, std) init for embeddings (padding row zeroed) and, if ``linear``, Linear layers.

    Small embeddings keep dot-product logits near zero at the start of training (RecBole does
    the same); PyTorch's default N(0, 1) embedding init gives huge initial scores.
    """
    for m in module.modules():
        if isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif linear and isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def attention_mask(input_ids: torch.Tensor, causal: bool) -> torch.Tensor:
    """Bool ``[B, 1, L, L]`` mask, True where query ``i`` may attend to key ``j``.

    Padding keys (id 0) are hidden; ``causal`` also hides keys after the query. Every query may
    always attend to itself, so a fully padded prefix (left padding + causal mask) never sees an
    all-masked row (which would give NaN).
    """
    length = input_ids.size(1)
    pos = torch.arange(length, device=input_ids.device)
    allowed = (input_ids != 0)[:, None, None, :]  # [B, 1, 1, L] keys
    if causal:
        allowed = allowed & (pos[None, :] <= pos[:, None])  # key j <= query i
    return allowed | (pos[None, :] == pos[:, None])


class RightAlignedPositions(nn.Module):
    """Learned position embeddings counted from the right end of a left-padded sequence.

    The newest item always gets position ``max_len - 1``, so a sequence and its left-padded copy
    see the same positions on their real items. Inputs longer than ``max_len`` are an error.
    """

    def __init__(self, max_len: int, hidden_size: int) -> None:
        super().__init__()
        self.max_len = max_len
        self.embedding = nn.Embedding(max_len, hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        length = input_ids.size(1)
        positions = torch.arange(length, device=input_ids.device) + (self.max_len - length)
        return self.embedding(positions)[None]  # [1, L, d]


class MultiHeadSelfAttention(nn.Module):
    """Scaled dot-product self-attention with separate Q/K/V/output projections."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size={hidden_size} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.output = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, d] -> [B, h, L, d/h]
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        weights = self.dropout(torch.softmax(scores, dim=-1))
        return self.output((weights @ v).transpose(1, 2).flatten(-2))


class TransformerBlock(nn.Module):
    """Self-attention + point-wise feed-forward, each with residual, dropout and LayerNorm.

    ``norm_first=True`` is SASRec's layout (LayerNorm inside the residual branch);
    ``norm_first=False`` is BERT's (LayerNorm after the residual sum).
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        dropout: float,
        ffn_size: int | None = None,
        activation: type[nn.Module] = nn.ReLU,
        norm_first: bool = True,
    ) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.attention = MultiHeadSelfAttention(hidden_size, num_heads, dropout)
        self.attention_norm = nn.LayerNorm(hidden_size)
        self.ffn = nn.Sequential(
            nn.Linear(hidden_size, ffn_size or hidden_size),
            activation(),
            nn.Dropout(dropout),
            nn.Linear(ffn_size or hidden_size, hidden_size),
        )
        self.ffn_norm = nn.LayerNorm(hidden_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.norm_first:
            x = x + self.dropout(self.attention(self.attention_norm(x), mask))
            return x + self.dropout(self.ffn(self.ffn_norm(x)))
        x = self.attention_norm(x + self.dropout(self.attention(x, mask)))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))


class MLP(nn.Module):
    """Stack of ``Linear -> activation -> Dropout`` blocks (no output layer)."""

    def __init__(
        self,
        in_dim: int,
        dims: Sequence[int],
        dropout: float = 0.0,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        sizes = [in_dim, *dims]
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(a, b), activation(), nn.Dropout(dropout)) for a, b in zip(sizes, sizes[1:])
        )
        self.out_dim = sizes[-1]

    def layer_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Output of every block, first to last (empty when there are no blocks)."""
        outputs = []
        for block in self.blocks:
            x = block(x)
            outputs.append(x)
        return tuple(outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class FieldEmbedding(nn.Module):
    """One ``nn.Embedding`` per categorical field: ``Long[B, F] -> [B, F, embed_dim]``.

    Each field is indexed from 0 within its own vocabulary of ``field_dims[f]`` ids.
    """

    def __init__(self, field_dims: Sequence[int], embed_dim: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.embeddings = nn.ModuleList(nn.Embedding(n, embed_dim) for n in field_dims)

    def forward(self, sparse: torch.Tensor) -> torch.Tensor:
        if not self.embeddings:  # no fields: an empty [B, 0, E] block
            return sparse.new_zeros(sparse.size(0), 0, self.embed_dim, dtype=torch.float)
        return torch.stack([emb(sparse[:, f]) for f, emb in enumerate(self.embeddings)], dim=1)
