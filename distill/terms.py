"""Named, weighted distillation terms and how each loss is fed (torchdistill-style loss algebra).

A recipe lists its terms as ``{name, weight, params[, top_k, label]}``::

    terms:
      - {name: dllm2rec, weight: 0.8, top_k: 10}
      - {name: hidden_state, weight: 0.1, params: {metric: cosine}}

and the distillation module adds ``Σ weight_i · term_i`` to the student's own task loss.

Every loss receives its inputs by name from one *context* of tensors built per batch, only over
the rows (supervised positions) that the teacher cache covers. A loss class declares which context
entries its ``forward`` arguments read with a classmethod ``distill_inputs(params) -> {argument:
context key}``; the context keys are:

student side (computed from the student's own forward pass, nothing recomputed):
  ``student_logits`` [P, N+1] · ``student_log_probs`` [P, N+1] (their log-softmax, the task loss's) · ``student_hidden`` [P, d] (state at the supervised position) ·
  ``student_layers`` list of [P, d] (``Encoded.layers`` at those positions) · ``target`` [P] ·
  ``batch_item_ids`` [M] / ``student_item_emb_batch`` [M, d] (the batch's target items) ·
  ``label`` [P] (CTR click labels) · ``history`` [P, L] (the items of the student's input window
  up to each position, 0 = padding; for a cloze student the unmasked items of its window)
teacher side (read from the signal cache; ``TEACHER_SIGNALS`` names the cache signal behind each):
  ``teacher_topk_ids`` / ``teacher_topk_scores`` [P, K] · ``teacher_hidden`` [P, D] ·
  ``teacher_layers`` [P, M, D] · ``teacher_user`` [P, D_u] · ``teacher_logits`` [P, N+1] (rebuilt
  from the cache) · ``teacher_soft_targets`` (``SoftTargetSource``: ``at(τ)`` -> softmax(teacher_logits/τ)
  packed with its negative entropy, prepared once per row) · ``teacher_target_score`` [P] · ``teacher_item_emb`` [N+1, D_i] (whole table) ·
  ``teacher_item_emb_batch`` [M, D_i]

The module checks at set-up that the cache holds every signal a term reads and fails with the
signal's name and the emit setting that produces it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from torch import Tensor, nn

from recdistill.distill.registry import DISTILL_LOSSES, build_loss

# context key -> the cache signal it is read from
TEACHER_SIGNALS: dict[str, str] = {
    "teacher_topk_ids": "topk_items",
    "teacher_topk_scores": "topk_scores",
    "teacher_hidden": "hidden",
    "teacher_layers": "layers",
    "teacher_user": "user",
    "teacher_logits": "teacher_logits",
    "teacher_target_score": "teacher_logits",
    "teacher_soft_targets": "teacher_logits",
    "teacher_item_emb": "item_embeddings",
    "teacher_item_emb_batch": "item_embeddings",
}
STUDENT_KEYS = frozenset({"student_logits", "student_log_probs", "student_hidden", "student_layers", "target",
                          "batch_item_ids",
                          "student_item_emb_batch", "label", "history"})
CONTEXT_KEYS = STUDENT_KEYS | frozenset(TEACHER_SIGNALS)


class TermConfigError(ValueError):
    """A distillation term in the recipe is malformed (names the term and the field)."""


@dataclass
class TermSpec:
    """One recipe entry: registry ``name``, ``weight`` and constructor ``params``."""

    name: str
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)
    label: str | None = None  # how the term is logged; defaults to the name
    top_k: int | None = None  # read only the teacher's first top_k ranked items (None: all cached)

    @classmethod
    def parse(cls, entry: Mapping[str, Any] | "TermSpec", index: int) -> "TermSpec":
        if isinstance(entry, TermSpec):
            return entry
        if not isinstance(entry, Mapping):
            raise TermConfigError(f"model.terms[{index}] must be a mapping {{name, weight, params}}, got {entry!r}")
        unknown = set(entry) - {"name", "weight", "params", "label", "top_k"}
        if unknown:
            raise TermConfigError(f"model.terms[{index}] has unknown key(s) {sorted(unknown)}; "
                                  "allowed: name, weight, params, label, top_k")
        name = entry.get("name")
        if name not in DISTILL_LOSSES:
            raise TermConfigError(f"model.terms[{index}].name={name!r} is not a distillation loss; "
                                  f"known: {', '.join(sorted(DISTILL_LOSSES))}")
        weight = entry.get("weight", 1.0)
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight < 0:
            raise TermConfigError(f"model.terms[{index}].weight must be a number >= 0, got {weight!r}")
        top_k = entry.get("top_k")
        if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
            raise TermConfigError(f"model.terms[{index}].top_k must be a positive integer, got {top_k!r}")
        params = dict(entry.get("params") or {})
        return cls(name=name, weight=float(weight), params=params, label=entry.get("label"), top_k=top_k)


def declared_inputs(loss_class: type, params: Mapping[str, Any]) -> dict[str, str]:
    """``{forward argument: context key}`` a loss reads.

    The loss's own ``distill_inputs(params)`` if it has one, else every ``forward`` argument
    without a default, read from the context entry of the same name.
    """
    declare = getattr(loss_class, "distill_inputs", None)
    if declare is not None:
        inputs = dict(declare(dict(params)))
    else:
        signature = inspect.signature(loss_class.forward)
        inputs = {name: name for name, p in list(signature.parameters.items())[1:]
                  if p.default is inspect.Parameter.empty and p.kind is p.POSITIONAL_OR_KEYWORD}
    unknown = {k for k in inputs.values() if k not in CONTEXT_KEYS}
    if unknown:
        raise TypeError(f"{loss_class.__name__} declares unknown context key(s) {sorted(unknown)}")
    return inputs


class DistillTerm(nn.Module):
    """A built loss with its weight, log label and the context entries it reads."""

    def __init__(self, spec: TermSpec, dims: Mapping[str, int]) -> None:
        super().__init__()
        self.spec = spec
        self.label = spec.label or spec.name
        self.weight = spec.weight
        cls = DISTILL_LOSSES[spec.name]
        self.inputs = declared_inputs(cls, spec.params)
        params = dict(spec.params)
        accepted = inspect.signature(cls.__init__).parameters
        # data-dependent sizes are filled in unless the recipe sets them
        for name, value in dims.items():
            if name in accepted and name not in params:
                params[name] = value
        try:
            self.loss = build_loss(spec.name, **params)
        except (TypeError, ValueError) as exc:
            raise TermConfigError(f"distillation term {self.label!r}: {exc}") from None

    @property
    def context_keys(self) -> set[str]:
        return set(self.inputs.values())

    @property
    def teacher_signals(self) -> set[str]:
        return {TEACHER_SIGNALS[k] for k in self.context_keys if k in TEACHER_SIGNALS}

    def forward(self, context: Mapping[str, Any]) -> Tensor:
        values = {arg: context[key] for arg, key in self.inputs.items()}
        if self.spec.top_k is not None:
            for arg, key in self.inputs.items():
                if key in ("teacher_topk_ids", "teacher_topk_scores"):
                    values[arg] = values[arg][:, : self.spec.top_k]
        return self.loss(**values)


def add_terms(module: Any, task_loss: Tensor, terms: Sequence[DistillTerm],
              context: Mapping[str, Any] | None, coverage: float, batch_size: int) -> Tensor:
    """``task_loss + Σ weight · term(context)``, logging every part on ``module`` (a LightningModule):
    ``train/task_loss``, ``distill/coverage``, ``distill/<label>`` and ``train/loss``. A batch
    without any covered row (``context is None``) adds zero."""
    module.log("train/task_loss", task_loss, batch_size=batch_size)
    total = task_loss
    if len(terms):
        module.log("distill/coverage", coverage, batch_size=batch_size)
        for term in terms:
            value = term(context) if context is not None else task_loss.new_zeros(())
            module.log(f"distill/{term.label}", value, batch_size=batch_size)
            total = total + term.weight * value
    module.log("train/loss", total, prog_bar=True, batch_size=batch_size)
    return total


def check_epoch_coverage(module: Any, batches: int, covered: int, cache: str) -> None:
    """Fail loudly (:class:`~recdistill.teacher.cache_format.MissingSignalError`, shown as one line by the
    command) when a training epoch ran ``batches`` batches with terms and none had a covered row (summed
    over the processes): the terms were never applied, the student trained without distillation (a
    cache emitted without the training split, or for other example ids). Partial coverage is fine."""
    import torch

    counts = torch.tensor([float(batches), float(covered)], device=module.device)
    trainer = getattr(module, "_trainer", None)
    if trainer is not None and trainer.world_size > 1:  # every process takes part, so none waits
        counts = trainer.strategy.reduce(counts, reduce_op="sum")
    if counts[0] > 0 and counts[1] == 0:
        from recdistill.teacher.cache_format import MissingSignalError

        raise MissingSignalError(
            f"no training example of this epoch has a teacher row in the signals cache {cache}: the "
            f"distillation terms were never applied; emit the teacher on the training split "
            f"(`recdistill teacher emit` with --emit.splits including train)")


def teacher_dims_for(inputs: Mapping[str, str], signal_dims: Mapping[str, int]) -> dict[str, int]:
    """``teacher_dim`` (and ``num_teacher_layers``) for a term from the cache signals it reads."""
    dims: dict[str, int] = {}
    for key in inputs.values():
        signal = TEACHER_SIGNALS.get(key)
        if signal in ("hidden", "layers", "user", "item_embeddings") and signal in signal_dims:
            dims.setdefault("teacher_dim", signal_dims[signal])
        if signal == "layers" and "num_layers" in signal_dims:
            dims["num_teacher_layers"] = signal_dims["num_layers"]
    return dims


__all__ = ["TEACHER_SIGNALS", "CONTEXT_KEYS", "TermSpec", "TermConfigError", "DistillTerm", "declared_inputs",
           "teacher_dims_for", "add_terms", "check_epoch_coverage"]
