"""Distil a sequential teacher into a CTR student through the shared example ids.

A CTR row is the event at position ``pos`` of a user's sequence, with example id
``user * EXAMPLE_STRIDE + pos``: the same id under which the teacher cache holds the teacher's
state *before* that event. The teacher's score of the row's item is rebuilt from the cache
(``score_user[e] · score_items[item]``) and calibrated to clicks once, with Platt scaling
``σ(a·z + b)`` fitted on the CTR training rows (Platt 1999): the teacher ranks items for the next
interaction, the CTR label is ``rating >= threshold``. Terms read the context entries
``student_logits`` / ``teacher_logits`` ``[P]`` (one logit per covered row), ``label`` ``[P]``,
``student_hidden`` ``[P, d]`` (``Encoded.last``) and ``teacher_hidden`` / ``teacher_user``
``[P, D]``; e.g. ``ctr_soft_bce`` (Hinton et al. 2015 soft labels) and ``contrastive`` (CTRL,
Li et al. 2023).

Leakage guard: a teacher fitted on the sequential leave-one-out split has trained on the events
the CTR split holds out for validation and test. The cache's dataset fingerprint must be the one of
:func:`~recdistill.data.ctr.ctr_train_prefix` (teacher recipe with ``data.holdout: ctr``, and its
collaborative SASRec too); the full split's fingerprint is refused with that instruction.

``knowledge_features`` (KAR, Xi et al. 2024): the student becomes a
:class:`~recdistill.student.knowledge_features.KnowledgeAugmentedCTR` around the recipe's student,
reading frozen teacher user/item vectors (precomputed at setup from the cache and the CTR training rows
only, :mod:`recdistill.distill.knowledge_features`) through a trainable adapter; the terms still apply,
and the saved student is that wrapper, which needs no cache.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recdistill.distill.registry import DISTILL_LOSSES
from recdistill.distill.terms import (
    TEACHER_SIGNALS, DistillTerm, TermSpec, add_terms, check_epoch_coverage, declared_inputs, teacher_dims_for,
)
from recdistill.student.tasks import CTRFactory, CTRRecommender

CTR_CONTEXT = frozenset({"student_logits", "teacher_logits", "label", "student_hidden", "teacher_hidden",
                         "teacher_user"})


class DistilledCTRRecommender(CTRRecommender):
    """A CTR student trained with distillation terms from a sequential teacher's signal cache."""

    def __init__(
        self,
        student: CTRFactory,
        signals: str,
        terms: Sequence[Mapping[str, Any]] = (),
        field_dims: Sequence[int] = (),
        dense_dim: int = 0,
        num_items: int = 0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        in_memory: bool | str = "auto",
        knowledge_features: Mapping[str, Any] | None = None,
    ) -> None:
        from recdistill.distill.knowledge_features import KnowledgeSpec, wrap_student
        from recdistill.teacher.cache_reader import TeacherSignals

        reader = TeacherSignals(signals, num_items=num_items or None, in_memory=in_memory, verify=True)
        knowledge = KnowledgeSpec.parse(knowledge_features) if knowledge_features is not None else None
        if knowledge is not None:
            student = wrap_student(student, knowledge, reader, list(field_dims), dense_dim, num_items)
        super().__init__(student, field_dims=field_dims, dense_dim=dense_dim, num_items=num_items, lr=lr,
                         weight_decay=weight_decay)
        self.signals_dir = str(signals)
        self._epoch_batches = self._epoch_covered = 0  # training batches with terms / with a covered row
        self.signals = reader
        self.knowledge = knowledge
        self._knowledge_ready = False
        self.knowledge_info: dict[str, Any] = {}  # which signals, how many users had a training row
        self._user_projection: Any = None  # raw teacher state -> table row (train_user_vectors: example)
        specs = [TermSpec.parse(t, i) for i, t in enumerate(terms)]
        for spec in specs:
            unusable = set(declared_inputs(DISTILL_LOSSES[spec.name], spec.params).values()) - CTR_CONTEXT
            if unusable:
                raise ValueError(f"distillation term {spec.name!r} reads {sorted(unusable)}, which a CTR student "
                                 f"does not have; CTR terms read {sorted(CTR_CONTEXT)}")
        wanted = {TEACHER_SIGNALS[k] for s in specs for k in declared_inputs(DISTILL_LOSSES[s.name], s.params).values()
                  if k in TEACHER_SIGNALS}
        self.signals.require(sorted(wanted))
        per_example = sorted(wanted & {"hidden", "user"})
        dims: dict[str, int] = {}
        if per_example:
            sample, _ = self.signals.lookup(torch.as_tensor(self.signals.example_ids()[:1]), per_example)
            dims = {key: int(sample[key].shape[-1]) for key in per_example}
        self.terms = nn.ModuleList(
            DistillTerm(spec, {"student_dim": int(self.student.hidden_size),
                               **teacher_dims_for(declared_inputs(DISTILL_LOSSES[spec.name], spec.params), dims)})
            for spec in specs)
        self._context_keys = set().union(*(t.context_keys for t in self.terms)) if self.terms else set()
        self._cache_keys = sorted({TEACHER_SIGNALS[k] for k in self._context_keys if k in TEACHER_SIGNALS}
                                  - {"teacher_logits"})
        # Platt scaling of the teacher's item score to clicks: [a, b, fitted]
        self.register_buffer("calibration", torch.tensor([1.0, 0.0, 0.0]))

    # -- set-up ------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            return
        check_no_leakage(self.signals.manifest, datamodule, self.signals_dir)
        if self.knowledge is not None and not self._knowledge_ready:
            from recdistill.distill.knowledge_features import fill_from_datamodule

            tables = fill_from_datamodule(self.student, self.signals, datamodule, self.knowledge)
            self.knowledge_info, self._user_projection = tables.info, tables.user_projection
            self._knowledge_ready = True
        if "teacher_logits" in self._context_keys and not bool(self.calibration[2]):
            scores, labels = self._training_scores(datamodule)
            if scores.numel() == 0:  # a user-fixable cache problem: one line, no traceback
                from recdistill.teacher.cache_format import MissingSignalError

                raise MissingSignalError(
                    f"no CTR training row has a teacher row in the signals cache {self.signals_dir} to calibrate "
                    f"the teacher's scores on: emit the teacher on the training split (`recdistill teacher emit` "
                    f"with --emit.splits including train)")
            a, b = fit_platt(scores, labels)
            self.calibration.copy_(torch.tensor([a, b, 1.0]))
            print(f"teacher scores calibrated to clicks on the training rows: sigmoid({a:.4f} * z + {b:.4f})")

    def _training_scores(self, datamodule: Any) -> tuple[Tensor, Tensor]:
        """Teacher logits of the covered CTR training rows and their labels."""
        from recdistill.data.schema import EXAMPLE_STRIDE

        examples = datamodule.examples["train"]
        split = datamodule.split
        example_ids = torch.from_numpy(examples.user * EXAMPLE_STRIDE + examples.pos)
        flat = np.concatenate(split.sequences)
        starts = np.cumsum(split.lengths) - split.lengths
        items = torch.from_numpy(flat[starts[examples.user] + examples.pos].astype(np.int64))
        scores, valid = self.signals.teacher_logits(example_ids, items=items.unsqueeze(1))
        return scores[valid][:, 0].float(), torch.from_numpy(examples.label)[valid].float()

    # -- training ----------------------------------------------------------------------
    def task_loss(self, batch: dict[str, Tensor]) -> Any:
        """The plain task loss; with ``knowledge_features.train_user_vectors: example`` each training
        row reads its own pre-event teacher state instead of the served per-user table."""
        if self.knowledge is None or self.knowledge.train_user_vectors != "example" or self._user_projection is None:
            return super().task_loss(batch)
        from recdistill.distill.knowledge_features import row_task_loss

        return row_task_loss(self.student, self.signals, self.knowledge, self._user_projection, batch)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out = self.task_loss(batch)
        context, coverage = self._context(out, batch) if len(self.terms) else (None, 0.0)
        if len(self.terms):
            self._epoch_batches += 1
            self._epoch_covered += int(context is not None)
        return add_terms(self, out.loss, self.terms, context, coverage, batch["label"].shape[0])

    def on_train_epoch_start(self) -> None:
        self._epoch_batches = self._epoch_covered = 0

    def on_train_epoch_end(self) -> None:
        """A whole epoch without one covered training row means no distillation at all: fail loudly."""
        check_epoch_coverage(self, self._epoch_batches, self._epoch_covered, self.signals_dir)

    def _context(self, out: Any, batch: dict[str, Tensor]) -> tuple[dict[str, Any] | None, float]:
        example_ids = batch["example_id"].detach().cpu()
        found, valid = self.signals.lookup(example_ids, self._cache_keys)
        coverage = float(valid.float().mean()) if valid.numel() else 0.0
        if not bool(valid.any()):
            return None, coverage
        device = out.logits.device
        rows = valid.to(device)
        keys = self._context_keys
        ctx: dict[str, Any] = {"student_logits": out.logits[rows], "label": batch["label"][rows].float()}
        if "student_hidden" in keys:
            ctx["student_hidden"] = out.encoded.last[rows]
        for key, signal in TEACHER_SIGNALS.items():
            if key in keys and signal in found:
                ctx[key] = found[signal][valid].to(device).float()
        if "teacher_logits" in keys:
            items = batch["item"].detach().cpu()[valid].unsqueeze(1)
            scores, _ = self.signals.teacher_logits(example_ids[valid], items=items)
            a, b = self.calibration[0], self.calibration[1]
            ctx["teacher_logits"] = a * scores[:, 0].to(device).float() + b
        return ctx, coverage


def fit_platt(scores: Tensor, labels: Tensor, steps: int = 100) -> tuple[float, float]:
    """``(a, b)`` minimising BCE(σ(a·z + b), y) (Platt scaling; L-BFGS on standardised scores)."""
    if scores.numel() == 0:
        raise ValueError("no CTR training row has a teacher row to calibrate on: emit the training split")
    mean, std = scores.mean(), scores.std().clamp_min(1e-6)
    z = (scores - mean) / std
    params = torch.zeros(2, requires_grad=True)
    optimiser = torch.optim.LBFGS([params], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimiser.zero_grad()
        loss = F.binary_cross_entropy_with_logits(params[0] * z + params[1], labels)
        loss.backward()
        return loss

    optimiser.step(closure)
    a_std, b_std = (float(v) for v in params.detach())
    return a_std / float(std), b_std - a_std * float(mean) / float(std)


def check_no_leakage(manifest: Mapping[str, Any], datamodule: Any, cache: str) -> None:
    """Refuse a cache whose teacher trained on the CTR valid/test events (see the module docstring)."""
    from recdistill.data.ctr import ctr_train_prefix
    from recdistill.teacher.cache_format import CacheMismatchError, item_space_hash

    split = datamodule.split
    cached = manifest.get("dataset", {})
    if cached.get("item_space_sha256") != item_space_hash(split.item_ids):
        raise CacheMismatchError(f"signals cache {cache} was emitted for another item-id space than this CTR data")
    consistent = ctr_train_prefix(split, datamodule.valid_fraction, datamodule.test_fraction).fingerprint
    if cached.get("fingerprint") == consistent:
        return
    if cached.get("fingerprint") == split.fingerprint:
        raise CacheMismatchError(
            f"signals cache {cache} comes from a teacher fitted on the sequential leave-one-out split, which trains "
            f"on the events this CTR split holds out (leakage): fit and emit the teacher, and its collaborative "
            f"SASRec, with data.holdout: ctr (e.g. recipes/ml100k_teacher_ctr.yaml)")
    raise CacheMismatchError(f"signals cache {cache} was emitted for another dataset (fingerprint "
                             f"{cached.get('fingerprint')!r}); emit the teacher on this data with data.holdout: ctr")


__all__ = ["DistilledCTRRecommender", "fit_platt", "check_no_leakage"]
