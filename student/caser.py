"""Caser: Tang & Wang, "Personalized Top-N Sequential Recommendation via Convolutional Sequence
Embedding", WSDM 2018.

The user embedding of the paper is left out: the served input is the item sequence alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recdistill.student.base import Encoded, register_student
from recdistill.student.layers import init_normal


@register_student("caser")
class Caser(nn.Module):
    """Horizontal and vertical convolutions over the last ``window`` item embeddings.

    Horizontal filters of every height ``1..window`` (ReLU, max-pooled over time) and vertical
    filters (a learned weighted sum of the ``window`` rows) are concatenated -> dropout ->
    Linear + ReLU to ``hidden_size``. ``sequence[:, t]`` is computed from the window of items
    ``t - window + 1 .. t`` (zero embeddings before the start), so one forward pass gives the
    representation at every position; ``score`` is a separate output layer (the paper's W', b').

    Layers (contract in ``student/base.py``): one block (convolutions + Linear), so
    ``layers = (item embedding at each position, sequence)``, both of width ``hidden_size``.
    """

    objective = "next_item"

    def __init__(
        self,
        num_items: int,
        hidden_size: int = 64,
        window: int = 5,
        num_horizontal: int = 16,
        num_vertical: int = 4,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.num_items = num_items
        self.hidden_size = hidden_size
        self.window = window
        self.item_embedding = nn.Embedding(num_items + 1, hidden_size, padding_idx=0)
        self.horizontal = nn.ModuleList(
            nn.Conv2d(1, num_horizontal, (height, hidden_size)) for height in range(1, window + 1)
        )
        self.vertical = nn.Conv2d(1, num_vertical, (window, 1))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(num_vertical * hidden_size + num_horizontal * window, hidden_size)
        self.output = nn.Linear(hidden_size, num_items + 1)
        init_normal(self, linear=False)

    num_layers = 1  # the convolution + Linear block

    @property
    def layer_widths(self) -> tuple[int, ...]:
        return (self.item_embedding.embedding_dim, self.fc.out_features)

    def encoder_input(self, input_ids: torch.Tensor) -> torch.Tensor:
        return input_ids

    def _windows(self, embedded: torch.Tensor) -> torch.Tensor:
        """``[B, L, d] -> [B * L, 1, window, d]``: the ``window`` embeddings ending at each position."""
        length = embedded.size(1)
        padded = F.pad(embedded, (0, 0, self.window - 1, 0))
        windows = torch.stack([padded[:, i : i + length] for i in range(self.window)], dim=2)
        return windows.flatten(0, 1).unsqueeze(1)

    def encode(self, input_ids: torch.Tensor) -> Encoded:
        embedded = self.item_embedding(input_ids)
        windows = self._windows(embedded)
        vertical = self.vertical(windows).flatten(1)  # [B*L, n_v * d]
        horizontal = [torch.relu(conv(windows).squeeze(3)).amax(dim=2) for conv in self.horizontal]
        features = self.dropout(torch.cat([vertical, *horizontal], dim=1))
        sequence = torch.relu(self.fc(features)).reshape(input_ids.size(0), input_ids.size(1), -1)
        return Encoded(last=sequence[:, -1], layers=(embedded, sequence), sequence=sequence)

    def score(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.output(hidden)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.score(self.encode(input_ids).last)
