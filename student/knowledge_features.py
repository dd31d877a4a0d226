"""Knowledge-augmented CTR student: frozen teacher vectors as extra features through a small adapter.

KAR: Xi et al., "Towards Open-World Recommendation with Knowledge Augmentation from Large Language
Models", RecSys 2024 (LLM knowledge vectors -> hybrid-expert "knowledge adaptation" -> extra features
of any CTR backbone); LLM-ESR: Liu et al., "LLM-ESR: Large Language Models Enhancement for Long-tailed
Sequential Recommendation", NeurIPS 2024 (frozen LLM item embeddings + a trainable adapter).

The teacher's knowledge is precomputed: one frozen vector per user ``u`` and per item ``i`` (buffers,
indexed by the user and item sparse ids and saved with the weights), so nothing of the teacher runs
when training the adapter or serving. The adapter, ``K`` experts mixed by a softmax gate, is

    x = [u; known_u; i; s]          s = (u . i - shift) * scale  (only with ``interaction``)
    a = sum_k softmax(W_g x)_k * E_k(x),   E_k(x) = W_k2 ReLU(W_k1 x + b_k1) + b_k2   -> [B, adapter_dim]

and the backbone (any registered CTR student, built with ``dense_dim + adapter_dim``) reads
``[dense; a]``. ``known_u`` is 0 for users without a teacher row (their vector is zero).
``encode``/``score``/``layers`` are the backbone's (``layers[0]`` includes the adapter output).
This module imports no teacher code: the tables are filled by ``recdistill.distill.knowledge_features``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from recdistill.student.base import Encoded, register_student

_LINKED = ("field_dims", "dense_dim", "num_items")


class GatedExperts(nn.Module):
    """``sum_k softmax(W_g x)_k * E_k(x)``: KAR's knowledge adaptor (one expert = a plain MLP)."""

    def __init__(self, in_dim: int, out_dim: int, num_experts: int = 2, hidden: int = 32,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if num_experts < 1 or hidden < 1 or out_dim < 1:
            raise ValueError(f"num_experts, expert_hidden and adapter_dim must be >= 1, got "
                             f"{num_experts}, {hidden}, {out_dim}")
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim))
            for _ in range(num_experts))
        self.gate = nn.Linear(in_dim, num_experts) if num_experts > 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = torch.stack([expert(x) for expert in self.experts], dim=1)  # [B, K, out]
        if self.gate is None:
            return outputs[:, 0]
        weights = torch.softmax(self.gate(x), dim=-1)  # [B, K]
        return (weights.unsqueeze(-1) * outputs).sum(dim=1)


@register_student("kar")
class KnowledgeAugmentedCTR(nn.Module):
    """A CTR backbone reading ``[dense; adapter(teacher user vector, teacher item vector)]``.

    Args:
        field_dims / dense_dim / num_items: the data's CTR inputs (``dense`` *without* the adapter part).
        backbone / backbone_args: a registered CTR student and its other constructor arguments.
        user_vector_dim / item_vector_dim: widths of the frozen tables (0 = that side is not used).
        user_field / item_field: sparse columns holding the user and item ids; the tables have
            ``field_dims[user_field]`` / ``field_dims[item_field]`` rows, one per id.
        interaction: also feed the standardised dot product ``u . i`` (both tables in one space,
            e.g. the teacher's ``score_user`` / ``score_items``, whose product is its own logit).
    Buffers (frozen, saved): ``user_vectors [U, Du]``, ``user_known [U]``, ``item_vectors [I, Di]``,
    ``interaction_norm [2]`` (shift, scale).
    """

    objective = "ctr"

    def __init__(
        self,
        field_dims: Sequence[int],
        dense_dim: int = 0,
        num_items: int = 0,
        backbone: str = "deepfm",
        backbone_args: Mapping[str, Any] | None = None,
        user_vector_dim: int = 0,
        item_vector_dim: int = 0,
        adapter_dim: int = 8,
        num_experts: int = 2,
        expert_hidden: int = 32,
        interaction: bool = False,
        user_field: int = 0,
        item_field: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        from recdistill.student import STUDENTS, build_student

        field_dims = [int(d) for d in field_dims]
        for name, field in (("user_field", user_field), ("item_field", item_field)):
            if not 0 <= field < len(field_dims):
                raise ValueError(f"{name}={field} is out of range for {len(field_dims)} sparse fields")
        if user_vector_dim < 0 or item_vector_dim < 0 or user_vector_dim + item_vector_dim == 0:
            raise ValueError("a knowledge-augmented student needs user_vector_dim > 0 or item_vector_dim > 0")
        if interaction and user_vector_dim != item_vector_dim:
            raise ValueError(f"interaction needs user and item vectors of one width, got "
                             f"{user_vector_dim} and {item_vector_dim}")
        if backbone == "kar" or getattr(STUDENTS.get(backbone), "objective", "ctr") != "ctr":
            raise ValueError(f"backbone must be a registered CTR student other than 'kar', got {backbone!r}")
        args = dict(backbone_args or {})
        linked = sorted(set(args) & set(_LINKED))
        if linked:
            raise ValueError(f"backbone_args must not set {linked}: they follow the wrapper's own arguments")
        self.dense_dim, self.adapter_dim = int(dense_dim), int(adapter_dim)
        self.user_field, self.item_field, self.interaction = int(user_field), int(item_field), bool(interaction)
        self.register_buffer("user_vectors", torch.zeros(field_dims[user_field], int(user_vector_dim)))
        self.register_buffer("user_known", torch.zeros(field_dims[user_field]))
        self.register_buffer("item_vectors", torch.zeros(field_dims[item_field], int(item_vector_dim)))
        self.register_buffer("interaction_norm", torch.tensor([0.0, 1.0]))
        in_dim = (user_vector_dim + 1 if user_vector_dim else 0) + item_vector_dim + int(self.interaction)
        self.adapter = GatedExperts(in_dim, self.adapter_dim, num_experts, expert_hidden, dropout)
        self.backbone = build_student(backbone, field_dims=field_dims, dense_dim=self.dense_dim + self.adapter_dim,
                                      num_items=num_items, **args)

    @classmethod
    def around(cls, base: nn.Module, dense_dim: int, **options: Any) -> "KnowledgeAugmentedCTR":
        """Wrap an already-built registered CTR student ``base`` (built with ``dense_dim + adapter_dim``),
        keeping its weights; ``options`` are the other constructor arguments (vector dims, fields, ...)."""
        init_args = dict(getattr(base, "init_args", None) or {})
        name = getattr(base, "registry_name", None)
        if name is None or not init_args:
            raise TypeError(f"{type(base).__name__} is not a registered student")
        adapter_dim = int(options.get("adapter_dim", 8))
        if int(init_args.get("dense_dim", 0)) != dense_dim + adapter_dim:
            raise ValueError(f"the backbone must be built with dense_dim + adapter_dim = {dense_dim + adapter_dim}, "
                             f"got dense_dim={init_args.get('dense_dim')}")
        wrapper = cls(field_dims=init_args["field_dims"], dense_dim=dense_dim,
                      num_items=int(init_args.get("num_items", 0) or 0), backbone=name,
                      backbone_args={k: v for k, v in init_args.items() if k not in _LINKED}, **options)
        wrapper.backbone.load_state_dict(base.state_dict())
        return wrapper

    @torch.no_grad()
    def set_knowledge(self, user_vectors: torch.Tensor | None = None, user_known: torch.Tensor | None = None,
                      item_vectors: torch.Tensor | None = None,
                      interaction_norm: tuple[float, float] | None = None) -> None:
        """Copy precomputed tables into the frozen buffers (shapes must match exactly)."""
        for name, value in (("user_vectors", user_vectors), ("user_known", user_known),
                            ("item_vectors", item_vectors)):
            if value is None:
                continue
            buffer = getattr(self, name)
            if tuple(value.shape) != tuple(buffer.shape):
                raise ValueError(f"{name} must have shape {tuple(buffer.shape)}, got {tuple(value.shape)}")
            buffer.copy_(value.to(buffer))
        if interaction_norm is not None:
            self.interaction_norm.copy_(torch.tensor([float(interaction_norm[0]), float(interaction_norm[1])]))

    def knowledge(self, sparse: torch.Tensor, user_vectors: torch.Tensor | None = None,
                  user_known: torch.Tensor | None = None) -> torch.Tensor:
        """The adapter's output ``[B, adapter_dim]`` for the rows' user and item ids. ``user_vectors``
        ``[B, Du]`` / ``user_known`` ``[B]`` replace the table rows (training on per-row teacher states)."""
        parts: list[torch.Tensor] = []
        user = item = None
        if self.user_vectors.shape[1]:
            users = sparse[:, self.user_field]
            user = self.user_vectors[users] if user_vectors is None else user_vectors
            known = self.user_known[users] if user_known is None else user_known
            parts += [user, known.unsqueeze(1)]
        if self.item_vectors.shape[1]:
            item = self.item_vectors[sparse[:, self.item_field]]
            parts.append(item)
        if self.interaction and user is not None and item is not None:
            score = (user * item).sum(dim=1, keepdim=True)
            parts.append((score - self.interaction_norm[0]) * self.interaction_norm[1])
        return self.adapter(torch.cat(parts, dim=1))

    @property
    def num_layers(self) -> int:
        return self.backbone.num_layers

    @property
    def layer_widths(self) -> tuple[int, ...]:
        return tuple(self.backbone.layer_widths)

    @property
    def hidden_size(self) -> int:
        return self.backbone.hidden_size

    def encode(self, sparse: torch.Tensor, dense: torch.Tensor, history: torch.Tensor,
               user_vectors: torch.Tensor | None = None, user_known: torch.Tensor | None = None) -> Encoded:
        """The backbone's encoding of ``[dense; adapter]`` (``user_vectors``: see :meth:`knowledge`)."""
        extra = self.knowledge(sparse, user_vectors, user_known)
        return self.backbone.encode(sparse, torch.cat([dense, extra], dim=1), history)

    def score(self, last: torch.Tensor) -> torch.Tensor:
        """The backbone's output layer: ``[B, hidden_size] -> [B]``."""
        return self.backbone.score(last)

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        encoded = self.encode(sparse, dense, history)
        return self.score(encoded.last) + encoded.logit_offset


__all__ = ["GatedExperts", "KnowledgeAugmentedCTR"]
