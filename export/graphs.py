"""The modules that are exported: a student wrapped with named inputs/outputs, and example inputs.

- ``LogitsGraph``: ``input_ids Long[B, L] -> logits Float[B, N + 1]`` (the student's ``forward``).
- ``ServingGraph``: the same logits with the padding column and every item of the input sequence
  set to ``-inf`` (history masking), then ``TopK`` in the graph: ``-> scores Float[B, K],
  item_ids Long[B, K]`` (item indices, best first). Only the items inside the ``L`` input
  positions are masked: a history longer than ``max_len`` is truncated before it reaches the graph.
- ``CTRGraph``: ``sparse Long[B, F], dense Float[B, D], history Long[B, H] -> logit Float[B]``
  (``serving=True`` adds ``probability = sigmoid(logit)``). The TorchScript exporter drops inputs
  a student never reads (DeepFM and DCN-V2 ignore ``history``; DeepFM without dense features
  ignores ``dense``): the input schema in the metadata lists what the graph really takes, and
  the runtime feeds only those.

BERT4Rec's embedding has ``N + 2`` rows (the mask token) while its logits have ``N + 1``
columns, so sizes are read from the student's ``num_items``, never from its embedding table.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from recdistill.errors import ConfigError

SEQUENTIAL, CTR = "sequential", "ctr"


def student_kind(student: nn.Module) -> str:
    return CTR if getattr(student, "objective", None) == "ctr" else SEQUENTIAL


def student_name(student: nn.Module) -> str:
    return str(getattr(student, "registry_name", type(student).__name__.lower()))


def student_max_len(student: nn.Module, default: int = 50) -> int:
    """The sequence length inputs are padded to: the student's ``max_len`` (position tables) or ``default``."""
    return int(getattr(student, "max_len", None) or default)


def num_items(student: nn.Module) -> int:
    """Catalogue size ``N`` (logit columns are ``N + 1``); 0 for CTR students without an item table."""
    value = getattr(student, "num_items", None)
    if value is None:
        value = (getattr(student, "init_args", None) or {}).get("num_items", 0)
    return int(value or 0)


class LogitsGraph(nn.Module):
    """``input_ids -> logits``; exported output name ``logits``."""

    input_names = ("input_ids",)
    output_names = ("logits",)

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.student(input_ids)


class ServingGraph(nn.Module):
    """History masking and ``TopK`` inside the graph: ``input_ids -> (scores, item_ids)``."""

    input_names = ("input_ids",)
    output_names = ("scores", "item_ids")

    def __init__(self, student: nn.Module, k: int) -> None:
        super().__init__()
        n = num_items(student)
        if not 1 <= k <= n:
            raise ConfigError(f"k={k} must be in 1..num_items={n} (the serving graph's top-K)")
        self.student = student
        self.k = k

    def masked_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits with column 0 (padding) and every item of ``input_ids`` at ``-inf``."""
        logits = self.student(input_ids)
        index = torch.cat([torch.zeros_like(input_ids[:, :1]), input_ids], dim=1)
        return logits.scatter(1, index, float("-inf"))

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores, ids = torch.topk(self.masked_logits(input_ids), self.k, dim=1)
        return scores, ids


class CTRGraph(nn.Module):
    """Named CTR inputs ``sparse, dense, history``; outputs ``logit`` (and ``probability``)."""

    input_names = ("sparse", "dense", "history")

    def __init__(self, student: nn.Module, serving: bool = False) -> None:
        super().__init__()
        self.student = student
        self.serving = serving
        self.output_names = ("logit", "probability") if serving else ("logit",)

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor, history: torch.Tensor) -> Any:
        logit = self.student(sparse, dense, history)
        return (logit, torch.sigmoid(logit)) if self.serving else logit


def wrap(student: nn.Module, serving: bool = False, k: int = 10) -> nn.Module:
    """The module to export for ``student`` (eval mode)."""
    if student_kind(student) == CTR:
        graph: nn.Module = CTRGraph(student, serving)
    else:
        graph = ServingGraph(student, k) if serving else LogitsGraph(student)
    return graph.eval()


def dynamic_axes(graph: nn.Module) -> dict[str, dict[int, str]]:
    """Legacy-exporter ``dynamic_axes``: batch everywhere, sequence / history length on inputs."""
    axes: dict[str, dict[int, str]] = {name: {0: "batch"} for name in graph.output_names}
    if isinstance(graph, CTRGraph):
        axes.update(sparse={0: "batch"}, dense={0: "batch"}, history={0: "batch", 1: "history"})
    else:
        axes["input_ids"] = {0: "batch", 1: "sequence"}
    return axes


def sequential_inputs(student: nn.Module, batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """Random left-padded item sequences ``Long[batch, length]``: row 0 full, the last row (when
    ``batch > 1``) fully padded, the others with random amounts of left padding."""
    n = max(num_items(student), 1)
    ids = torch.randint(1, n + 1, (batch, length), generator=generator)
    pads = torch.randint(0, length + 1, (batch,), generator=generator)
    pads[0] = 0
    if batch > 1:
        pads[-1] = length
    ids[torch.arange(length)[None, :] < pads[:, None]] = 0
    return ids


def ctr_inputs(
    student: nn.Module, batch: int, history: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random ``(sparse, dense, history)`` within the student's field vocabularies."""
    init_args = getattr(student, "init_args", None) or {}
    field_dims = list(init_args.get("field_dims", []))
    dense_dim = int(init_args.get("dense_dim", 0) or 0)
    columns = [torch.randint(0, int(d), (batch,), generator=generator) for d in field_dims]
    sparse = torch.stack(columns, dim=1) if columns else torch.zeros(batch, 0, dtype=torch.long)
    dense = torch.randn(batch, dense_dim, generator=generator)
    n = max(num_items(student), 1)
    hist = torch.randint(1, n + 1, (batch, history), generator=generator)
    pads = torch.randint(0, history + 1, (batch,), generator=generator)
    hist[torch.arange(history)[None, :] < pads[:, None]] = 0
    return sparse, dense, hist


def example_inputs(student: nn.Module, batch: int, length: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Inputs for ``wrap(student)`` at ``(batch, length)``; ``length`` is the history length for CTR."""
    generator = torch.Generator().manual_seed(seed)
    if student_kind(student) == CTR:
        return ctr_inputs(student, batch, length, generator)
    return (sequential_inputs(student, batch, length, generator),)
