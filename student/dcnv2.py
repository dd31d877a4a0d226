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
    and their outputs are concatenated. ``forward = output(encode(...).last)``. ``history`` and
    ``num_items`` are accepted for the common CTR signature and ignored.
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
        self.embedding = FieldEmbedding(field_dims, embed_dim)
        x0_dim = embed_dim * len(field_dims) + dense_dim
        self.cross = CrossNetwork(x0_dim, num_cross_layers)
        self.mlp = MLP(x0_dim, mlp_dims, dropout)
        out_dim = self.mlp.out_dim + (x0_dim if structure == "parallel" else 0)
        self.output = nn.Linear(out_dim, 1)
        init_normal(self, linear=False)

    def encode(self, sparse: torch.Tensor, dense: torch.Tensor, history: torch.Tensor) -> Encoded:
        x0 = torch.cat([self.embedding(sparse).flatten(1), dense], dim=1)
        cross = self.cross.layer_outputs(x0)
        cross_out = cross[-1] if cross else x0
        if self.structure == "stacked":
            deep = self.mlp.layer_outputs(cross_out)
            last = deep[-1] if deep else cross_out
        else:
            deep = self.mlp.layer_outputs(x0)
            last = torch.cat([cross_out, deep[-1] if deep else x0], dim=1)
        return Encoded(last=last, layers=cross + deep)

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return self.output(self.encode(sparse, dense, history).last).squeeze(1)
