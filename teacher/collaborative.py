"""The collaborative (ID) part of the hybrid teacher: a frozen trained student whose logits are mixed
with the LLM's (``mix_logits``, ``collaborative_score_table`` for the signal cache's dot product),
and a frozen collaborative item table projected into the LLM's item table (CoLLM / A-LLMRec);
item tables are read from files by ``load_item_embedding_file``.

Teacher -> student only: the student is used through its contract (``load_student``, ``encode``,
``score``), never through raw state-dict keys of its modules.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn


COLLABORATIVE_FUSIONS = ("ensemble", "joint")
FUSION_GRID = tuple(round(0.1 * i, 1) for i in range(11))  # LLM weight alpha in the logit mixture


def mix_logits(teacher: Tensor, collaborative: Tensor, alpha: float | Tensor, padding_column: bool = True) -> Tensor:
    """``alpha * teacher + (1 - alpha) * collaborative`` (a log-linear pool of the two softmaxes;
    ranking-equivalent to a weighted sum of their log-probabilities), column 0 kept at ``-inf``."""
    teacher = teacher.masked_fill(torch.isinf(teacher), 0.0) if padding_column else teacher
    mixed = alpha * teacher + (1 - alpha) * collaborative
    if padding_column:
        mixed = mixed.clone()
        mixed[..., 0] = -math.inf
    return mixed


@torch.no_grad()
def collaborative_score_table(model: nn.Module) -> tuple[Tensor, Tensor]:
    """``(W [N + 1, d], b [N + 1])`` with ``model.score(h) == h @ W.T + b`` for a student whose
    ``score`` is affine in its state (SASRec/GRU4Rec: the item table, no bias; Caser: its output
    layer). Read off by probing ``score`` and checked on a random state; ValueError otherwise."""
    d = int(model.hidden_size)
    param = next(model.parameters())
    eye = torch.eye(d, dtype=param.dtype, device=param.device)
    zero = torch.zeros(1, d, dtype=param.dtype, device=param.device)
    b = model.score(zero)[0]
    w = (model.score(eye) - b).t()
    probe = torch.randn(3, d, generator=torch.Generator().manual_seed(0)).to(param)
    want, got = model.score(probe), probe @ w.t() + b
    if not torch.allclose(got, want, atol=1e-4 * (1 + float(want.abs().max())), rtol=1e-4):
        raise ValueError(f"{type(model).__name__}.score is not affine in its state: the signal cache cannot "
                         f"store this hybrid teacher's scores as a dot product")
    return w.contiguous(), b.contiguous()


def load_item_embedding_file(path: str | Path) -> Tensor:
    """Load ``Float[N, d]`` item embeddings from .safetensors / .npy / .pt (weights_only)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        tensors = load_file(str(path))
        for key in ("item_text_embeddings", "item_embeddings", "embeddings"):
            if key in tensors:
                return tensors[key].float()
        if len(tensors) == 1:
            return next(iter(tensors.values())).float()
        raise KeyError(f"{path} has no 'item_text_embeddings' tensor (has {sorted(tensors)})")
    if path.suffix == ".npy":
        import numpy as np

        return torch.from_numpy(np.load(path, allow_pickle=False)).float()
    if path.suffix in (".pt", ".pth"):
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(obj, Tensor):
            raise TypeError(f"{path} does not hold a single tensor")
        return obj.float()
    raise ValueError(f"unsupported item embedding file {path} (use .safetensors, .npy or .pt)")



def load_collaborative_model(source: Any, num_items: int) -> nn.Module:
    """A trained sequential student (folder written by ``save_student`` or a module), frozen and
    kept in eval mode; its next-item logits are added to the teacher's."""
    from recdistill.student.io import load_student

    if not isinstance(source, nn.Module) and not (Path(source) / "student.json").is_file():
        raise FileNotFoundError(
            f"model.collaborative_model={source} is not a trained student folder. Train it first, e.g. "
            f"`recdistill student fit --config ml100k_sasrec_windows --output-dir runs/ml100k/sasrec_windows` "
            f"(the folder is OUTPUT_DIR/student), or set model.collaborative_model to null")
    model = source if isinstance(source, nn.Module) else load_student(source)
    if getattr(model, "objective", None) != "next_item":
        raise ValueError(f"collaborative_model must be a causal next-item student, got {type(model).__name__}")
    if int(getattr(model, "num_items", -1)) != num_items:
        raise ValueError(f"collaborative_model has num_items={getattr(model, 'num_items', None)} but the data has "
                         f"{num_items}: was it trained on another dataset?")
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def load_collaborative_embeddings(source: Any, num_items: int) -> Tensor:
    """Frozen collaborative item table ``[N + 1, d]`` (row 0 = padding) for CoLLM/A-LLMRec-style
    fusion: a trained student folder (its ``item_embedding.weight``), an embedding file, or a tensor.
    Rows are standardised per dimension over items 1..N (padding row kept at 0)."""
    if isinstance(source, Tensor):
        table = source.detach().float().cpu()
    else:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(
                f"model.collaborative_embeddings={path} does not exist. Train the collaborative student first, e.g. "
                f"`recdistill student fit --config ml100k_sasrec_windows --output-dir runs/ml100k/sasrec_windows` "
                f"(the folder is OUTPUT_DIR/student), or set model.collaborative_embeddings to null")
        if path.is_dir():  # a student folder, read through the student contract
            from recdistill.student.base import item_input_table
            from recdistill.student.io import load_student

            if not (path / "model.safetensors").is_file():
                raise FileNotFoundError(f"collaborative_embeddings={path} is not a student folder (no model.safetensors)")
            try:
                table = item_input_table(load_student(path)).float()
            except TypeError as exc:
                raise ValueError(f"collaborative_embeddings={path}: {exc}; use a sequential student") from None
        else:
            table = load_item_embedding_file(path)
    if table.shape[0] == num_items:
        table = torch.cat([torch.zeros(1, table.shape[1]), table], 0)
    if table.shape[0] != num_items + 1:
        raise ValueError(f"collaborative_embeddings has {table.shape[0]} rows; expected {num_items} items "
                         f"(or {num_items + 1} with a padding row): was it trained on another dataset?")
    if not bool(table[1:].abs().sum()):
        return table  # an all-zero placeholder (from_pretrained restores the real table)
    body = table[1:]
    body = (body - body.mean(0)) / body.std(0).clamp_min(1e-6)
    return torch.cat([torch.zeros(1, table.shape[1]), body], 0)
