"""Item-table product quantization (RecJPQ style: Petrov & Macdonald, WSDM 2024).

Each item's ``d``-dim embedding is split into ``M`` sub-vectors of ``d / M`` dims; sub-vector
``m`` is replaced by one of ``K`` centroids of a small codebook shared by all items. An item is
then ``M`` sub-ids (uint8 when ``K <= 256``) and the table is ``M * K * d / M`` floats, so for a
catalogue of ``N`` items the table shrinks from ``N * d * 4`` bytes to ``N * M + K * d * 4``.

- ``fit_pq(weight, M, K)``: k-means per subspace (plain torch, seeded k-means++-free random
  init from the rows, Lloyd iterations, empty clusters re-seeded from the worst-fitted rows).
  Post-hoc: codes are fitted after training; the codebooks can then be fine-tuned (``recover``
  in ``compress/recover.py``; codes stay fixed). RecJPQ's joint training (codes assigned before
  training, codebooks learned with the model) is ``compress/pq_codes.py`` + ``compress/pq_train.py``.
- ``PQItemEmbedding``: codes buffer + codebooks parameter. ``forward(ids)`` reconstructs the rows
  (one embedding lookup into the flattened codebooks), ``.weight`` the full table for scoring;
  the padding row reconstructs to zeros, as the original. Traceable for ONNX export.
  ``from_codes(codes, d, K)``: fixed codes, N(0, 0.02) codebooks (joint training).
- ``pq_compress(model, M, K)``: a copy of a student with its item table replaced, plus
  ``{"item_table_bytes_before", "item_table_bytes_after" (codes + codebooks: ``pq_table_bytes``),
  "item_table_ratio", "reconstruction_mse"}``.
- ``save_pq_student`` / ``load_pq_student``: ``model.safetensors`` + ``pq_student.json``
  (registry name, the parent's ``init_args``, ``M``, ``K``). Not a plain student folder:
  ``load_student`` cannot express a PQ table, so the spec has its own name.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from recdistill.atomic import atomic_path, sha256_file, write_json
from recdistill.compress.quantize import item_table_bytes
from recdistill.errors import CheckpointError

PQ_SPEC = "pq_student.json"


def fit_pq(weight: torch.Tensor, num_subspaces: int, num_centroids: int, *, iters: int = 25,
           seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means per subspace: ``(codes Long[N, M], codebooks [M, K, d / M])``."""
    n, d = weight.shape
    if d % num_subspaces:
        raise ValueError(f"embedding width {d} is not divisible by num_subspaces={num_subspaces}")
    if num_centroids < 1:
        raise ValueError("num_centroids must be >= 1")
    g = torch.Generator().manual_seed(seed)
    sub = weight.detach().float().reshape(n, num_subspaces, d // num_subspaces)
    codes = torch.zeros(n, num_subspaces, dtype=torch.long)
    books = torch.zeros(num_subspaces, num_centroids, d // num_subspaces)
    k = min(num_centroids, n)
    for m in range(num_subspaces):
        x = sub[:, m]
        centroids = x[torch.randperm(n, generator=g)[:k]].clone()
        for _ in range(iters):
            dist = torch.cdist(x, centroids)
            assign = dist.argmin(dim=1)
            sums = torch.zeros_like(centroids).index_add_(0, assign, x)
            counts = torch.bincount(assign, minlength=k).float()
            empty = counts == 0
            centroids = torch.where(empty[:, None], centroids, sums / counts.clamp(min=1)[:, None])
            if empty.any():  # re-seed empty clusters from the rows farthest from their centroid
                worst = dist.gather(1, assign[:, None]).squeeze(1).argsort(descending=True)[: int(empty.sum())]
                centroids[empty] = x[worst]
        codes[:, m] = torch.cdist(x, centroids).argmin(dim=1)
        books[m, :k] = centroids
    return codes, books


class PQItemEmbedding(nn.Module):
    """Item table as ``M`` codes per item into ``M`` shared codebooks (see module docstring)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, num_subspaces: int, num_centroids: int,
                 padding_idx: int | None = 0) -> None:
        super().__init__()
        if embedding_dim % num_subspaces:
            raise ValueError(f"embedding_dim {embedding_dim} is not divisible by num_subspaces {num_subspaces}")
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.num_subspaces, self.num_centroids = num_subspaces, num_centroids
        dtype = torch.uint8 if num_centroids <= 256 else torch.int16 if num_centroids <= 32767 else torch.int32
        self.register_buffer("codes", torch.zeros(num_embeddings, num_subspaces, dtype=dtype))
        self.codebooks = nn.Parameter(torch.zeros(num_subspaces, num_centroids, embedding_dim // num_subspaces))
        self.register_buffer("offsets", torch.arange(num_subspaces) * num_centroids, persistent=False)

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, num_subspaces: int, num_centroids: int, *, iters: int = 25,
                       seed: int = 0) -> "PQItemEmbedding":
        w = embedding.weight.detach().float()
        module = cls(w.shape[0], w.shape[1], num_subspaces, num_centroids, embedding.padding_idx)
        rows = torch.arange(w.shape[0])
        if embedding.padding_idx is not None:
            rows = rows[rows != embedding.padding_idx]
        codes, books = fit_pq(w[rows], num_subspaces, num_centroids, iters=iters, seed=seed)
        module.codes[rows] = codes.to(module.codes.dtype)
        with torch.no_grad():
            module.codebooks.copy_(books)
        return module

    def _lookup(self, codes: torch.Tensor) -> torch.Tensor:
        index = codes.long() + self.offsets  # [..., M] into the flattened codebooks
        return F.embedding(index, self.codebooks.flatten(0, 1)).flatten(-2)

    @property
    def weight(self) -> torch.Tensor:
        """The ``[N, d]`` table; the padding row is a zero row spliced in (no mask tensor kept)."""
        p = self.padding_idx
        if p is None:
            return self._lookup(self.codes)
        zero = self.codebooks.new_zeros(1, self.embedding_dim)
        parts = [self._lookup(self.codes[:p])] if p > 0 else []  # no empty slices: the exporter's
        parts.append(zero)  # shape inference divides by a zero-size dimension
        if p + 1 < self.num_embeddings:
            parts.append(self._lookup(self.codes[p + 1:]))
        return torch.cat(parts)

    @classmethod
    def from_codes(cls, codes: torch.Tensor, embedding_dim: int, num_centroids: int, *,
                   padding_idx: int | None = 0, std: float = 0.02, seed: int = 0) -> "PQItemEmbedding":
        """Fixed ``codes [N, M]`` (assigned before training, ``compress/pq_codes.py``) and
        N(0, std) codebooks to be trained with the model (RecJPQ joint training)."""
        n, m = codes.shape
        if int(codes.min()) < 0 or int(codes.max()) >= num_centroids:
            raise ValueError(f"codes must lie in [0, {num_centroids})")
        module = cls(n, embedding_dim, m, num_centroids, padding_idx)
        module.codes.copy_(codes.to(module.codes.dtype))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            module.codebooks.copy_(torch.randn(module.codebooks.shape, generator=g) * std)
        return module

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self._lookup(self.codes[ids])
        if self.padding_idx is not None:
            out = out * (ids != self.padding_idx).unsqueeze(-1).to(out.dtype)
        return out

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}, M={self.num_subspaces}, K={self.num_centroids}, "
                f"padding_idx={self.padding_idx}")


def pq_table_bytes(table: PQItemEmbedding) -> int:
    """Bytes a PQ table stores: codes (uint8 for K <= 256) + fp32 codebooks (``N*M + K*d*4``)."""
    return table.codes.numel() * table.codes.element_size() + table.codebooks.numel() * 4


def pq_compress(model: nn.Module, num_subspaces: int = 4, num_centroids: int = 256, *, iters: int = 25,
                seed: int = 0) -> tuple[nn.Module, dict[str, Any]]:
    """Copy of ``model`` with a PQ item table, and the compression numbers."""
    embedding = getattr(model, "item_embedding", None)
    if not isinstance(embedding, nn.Embedding):
        raise TypeError(f"{type(model).__name__} has no nn.Embedding item_embedding to compress")
    out = copy.deepcopy(model).eval()
    pq = PQItemEmbedding.from_embedding(embedding, num_subspaces, num_centroids, iters=iters, seed=seed)
    out.item_embedding = pq
    before, after = item_table_bytes(embedding), pq_table_bytes(pq)
    mse = float((pq.weight.detach() - embedding.weight.detach()).pow(2).mean())
    info = {"num_subspaces": num_subspaces, "num_centroids": num_centroids, "iters": iters, "seed": seed,
            "item_table_bytes_before": before, "item_table_bytes_after": after, "item_table_ratio": before / after,
            "reconstruction_mse": mse}
    return out, info


def save_pq_student(model: nn.Module, directory: str | Path, info: dict[str, Any] | None = None) -> Path:
    pq = model.item_embedding
    if not isinstance(pq, PQItemEmbedding):
        raise TypeError("model.item_embedding is not a PQItemEmbedding")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(directory / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"student": model.registry_name, "item_table": "pq"})
        digest = sha256_file(tmp)
    write_json(directory / PQ_SPEC, {"name": model.registry_name, "init_args": model.init_args,
                                     "weights_sha256": digest,
                                     "num_subspaces": pq.num_subspaces, "num_centroids": pq.num_centroids,
                                     "compression": info or {}})
    return directory


def load_pq_student(directory: str | Path) -> nn.Module:
    """Rebuild a PQ student (registered name + constructor args only; weights checked against their sha256)."""
    from recdistill.student import build_student

    directory = Path(directory)
    try:
        spec = json.loads((directory / PQ_SPEC).read_text())
        model = build_student(spec["name"], **spec["init_args"])
        old = model.item_embedding
        model.item_embedding = PQItemEmbedding(old.num_embeddings, old.embedding_dim, int(spec["num_subspaces"]),
                                               int(spec["num_centroids"]), old.padding_idx)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{directory / PQ_SPEC}: cannot rebuild the PQ student: {exc}") from None
    weights = directory / "model.safetensors"
    if not weights.is_file() or sha256_file(weights) != spec.get("weights_sha256"):
        raise CheckpointError(f"{weights} is missing or does not match the sha256 recorded in {PQ_SPEC}")
    try:
        model.load_state_dict(load_file(str(weights)), strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{weights} does not fit {PQ_SPEC}: {' '.join(str(exc).split())[:300]}") from None
    return model.eval()
