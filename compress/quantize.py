"""PyTorch-side quantization: dynamic int8 Linear layers and an int8 item-table policy.

- ``dynamic_int8(model)``: ``torch.ao.quantization.quantize_dynamic`` on every ``nn.Linear``
  (int8 weights, activations quantized per call). Embedding tables are untouched by it.
  torch 2.13 warns that its quantized tensor creation functions are deprecated (to move to
  torchao); it still works here, and ONNX Runtime int8 is the deployable path.
- ``QuantizedEmbedding``: an item table stored as int8 with fp32 scales, either one scale per
  row (``scheme="per_row"``) or one for the whole table (``"per_tensor"``, what ONNX Runtime's
  Gather quantization does). It dequantizes on lookup and exposes the dequantized table as
  ``.weight`` so students that score against their item table (SASRec, GRU4Rec) score the same
  way. Symmetric: ``w ≈ q * scale``, ``q`` in ``[-127, 127]``; all-zero rows (padding) get scale 1.
- ``quantize_item_table(model, scheme)``: a copy of ``model`` whose ``item_embedding`` is a
  ``QuantizedEmbedding``; it exports to ONNX like the original (int8 initializer -> Gather ->
  Cast -> Mul), so the int8 table is what the ONNX file stores.
- ``quantize_embeddings(model)``: a copy with every ``nn.Embedding`` of at least ``min_dim``
  columns per-row int8 (a CTR student's field tables; a narrower table, e.g. DeepFM's first-order
  weights, would not shrink: ``d + 4`` bytes a row against ``4 d``).
- ``state_bytes(model)``: bytes of the serialized state dict (the size of a PyTorch artefact).
"""

from __future__ import annotations

import copy
import io

import torch
from torch import nn

SCHEMES = ("per_row", "per_tensor")


class QuantizedEmbedding(nn.Module):
    """int8 embedding table with per-row or per-tensor fp32 scales (see module docstring)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, scheme: str = "per_row",
                 padding_idx: int | None = None) -> None:
        super().__init__()
        if scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
        self.scheme = scheme
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.register_buffer("qweight", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(num_embeddings if scheme == "per_row" else 1, 1))

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, scheme: str = "per_row") -> "QuantizedEmbedding":
        w = embedding.weight.detach().float()
        module = cls(w.shape[0], w.shape[1], scheme, embedding.padding_idx)
        amax = w.abs().amax(dim=1, keepdim=True) if scheme == "per_row" else w.abs().amax().reshape(1, 1)
        scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
        module.qweight.copy_(torch.round(w / scale).clamp(-127, 127).to(torch.int8))
        module.scale.copy_(scale)
        return module

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized table ``[num_embeddings, embedding_dim]`` (for scoring)."""
        return self.qweight.float() * self.scale

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.qweight[ids].float()  # ONNX: Gather on the int8 initializer, then Cast
        if self.scheme == "per_row":
            return rows * self.scale[ids]
        return rows * self.scale[0]

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, scheme={self.scheme!r}, padding_idx={self.padding_idx}"


def quantize_item_table(model: nn.Module, scheme: str = "per_row", *, other_tables: bool = False) -> nn.Module:
    """A copy of ``model`` with its ``item_embedding`` replaced by a ``QuantizedEmbedding``;
    ``other_tables``: every other ``nn.Embedding`` too (position tables; always per row)."""
    embedding = getattr(model, "item_embedding", None)
    if not isinstance(embedding, nn.Embedding):
        raise TypeError(f"{type(model).__name__} has no nn.Embedding item_embedding to quantize")
    out = copy.deepcopy(model).eval()
    out.item_embedding = QuantizedEmbedding.from_embedding(embedding, scheme)
    return _quantize_tables(out, min_dim=1) if other_tables else out


def quantize_embeddings(model: nn.Module, *, min_dim: int = 8) -> nn.Module:
    """A copy of ``model`` with every ``nn.Embedding`` of at least ``min_dim`` columns replaced by a per-row
    ``QuantizedEmbedding`` (see module docstring)."""
    return _quantize_tables(copy.deepcopy(model).eval(), min_dim=min_dim)


def _quantize_tables(model: nn.Module, *, min_dim: int) -> nn.Module:
    """Replace, in place, every ``nn.Embedding`` with ``embedding_dim >= min_dim`` by a per-row int8 table."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Embedding) and child.embedding_dim >= min_dim:
                setattr(module, child_name, QuantizedEmbedding.from_embedding(child, "per_row"))
    return model


def dynamic_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with dynamic int8 ``nn.Linear`` layers (PyTorch eager, CPU)."""
    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)


def state_bytes(model: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def item_table_bytes(module: nn.Module) -> int:
    """Bytes of an item table module's parameters and buffers (fp32 table, int8 + scales, or PQ)."""
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])
