"""DCN-V2: Wang et al., "DCN V2: Improved Deep & Cross Network and Practical Lessons for
Web-scale Learning to Rank Systems", WWW 2021."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from recdistill.student.base import Encoded, register_student
from recdistill.student.layers import MLP, FieldEmbedding, init_normal


class CrossNetwork(nn.Module):
    """Full-rank cross layers: ``x_{l+1} = x_0 * (W_l x_l + b_l) + x_l``."""

    def __init__(self, dim: int, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(num_layers))

    def layer_outputs(self, x0: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x, outputs = x0, []
        for layer in self.layers:
            x = x0 * layer(x) + x
            outputs.append(x)
        return tuple(outputs)


@register_student("dcnv2")
class DCNv2(nn.Module):
    """Cross network v2 and a deep MLP over ``x_0 = [field embeddings; dense]``.

    ``structure="stacked"``: MLP on top of the cross network; ``"parallel"``: both read ``x_0``
    and their outputs are concatenated. ``forward = score(encode(...).last)``. ``history`` and
    ``num_items`` are accepted for the common CTR signature and ignored.

    Layers (contract in ``student/base.py``), ``D0 = embed_dim * F + dense_dim``: ``layers[0]`` =
    ``x_0`` (width ``D0``), then each cross layer (width ``D0``), then each MLP block (width
    ``mlp_dims[i]``), in computation order. ``"parallel"`` adds one last entry, the
    concatenation ``[cross output; deep output]`` that the output layer reads, so
    ``num_layers = num_cross_layers + len(mlp_dims) (+ 1 if parallel)`` and ``layers[-1] is last``.
    """

    objective = "ctr"

    def __init__(
        self,
        field_dims: Sequence[int],
        dense_dim: int = 0,
        num_items: int = 0,
        embed_dim: int = 16,
        num_cross_layers: int = 3,
        mlp_dims: Sequence[int] = (256, 128),
        dropout: float = 0.2,
        structure: str = "stacked",
    ) -> None:
        super().__init__()
        if structure not in ("stacked", "parallel"):
            raise ValueError(f"structure must be 'stacked' or 'parallel', got {structure!r}")
        self.structure = structure
        self.dense_dim = dense_dim
        self.embedding = FieldEmbedding(field_dims, embed_dim)
        x0_dim = embed_dim * len(field_dims) + dense_dim
        self.cross = CrossNetwork(x0_dim, num_cross_layers)
        self.mlp = MLP(x0_dim, mlp_dims, dropout)
        out_dim = self.mlp.out_dim + (x0_dim if structure == "parallel" else 0)
        self.output = nn.Linear(out_dim, 1)
        init_normal(self, linear=False)

    @property
    def num_layers(self) -> int:
        return len(self.layer_widths) - 1

    @property
    def layer_widths(self) -> tuple[int, ...]:
        x0 = len(self.embedding.embeddings) * self.embedding.embed_dim + self.dense_dim
        widths = [x0] * (1 + len(self.cross.layers)) + [block[0].out_features for block in self.mlp.blocks]
        if self.structure == "parallel":
            widths.append(self.output.in_features)
        return tuple(widths)

    @property
    def hidden_size(self) -> int:
        return self.output.in_features

    def encode(self, sparse: torch.Tensor, dense: torch.Tensor, history: torch.Tensor) -> Encoded:
        x0 = torch.cat([self.embedding(sparse).flatten(1), dense], dim=1)
        cross = self.cross.layer_outputs(x0)
        cross_out = cross[-1] if cross else x0
        if self.structure == "stacked":
            deep = self.mlp.layer_outputs(cross_out)
            return Encoded(last=(deep or cross or (x0,))[-1], layers=(x0, *cross, *deep))
        deep = self.mlp.layer_outputs(x0)
        last = torch.cat([cross_out, deep[-1] if deep else x0], dim=1)
        return Encoded(last=last, layers=(x0, *cross, *deep, last))

    def score(self, last: torch.Tensor) -> torch.Tensor:
        """The output layer: ``[B, hidden_size] -> [B]``."""
        return self.output(last).squeeze(-1)

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return self.score(self.encode(sparse, dense, history).last)
