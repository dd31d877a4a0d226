"""Train a sequential student with its own task loss plus weighted distillation terms.

``DistilledSequentialRecommender`` is a :class:`~recdistill.student.tasks.SequentialRecommender`
(same evaluation, model selection and optimiser) whose training step adds, to the student's own
loss, the recipe's named terms computed against the teacher's cached signals::

    L = L_task + Σ_i w_i · L_i(student, teacher)

The teacher is never loaded: every teacher tensor is read from the signal cache by the example
ids of the batch (``batch["example_ids"]``, one per supervised position). Positions the cache does
not cover (``train_every > 1``) are left out of the distillation terms, which average over the
covered positions only; the coverage of each batch is logged as ``distill/coverage``.

Item-table options (DLLM2Rec / LLMEmb, need the cache's ``item_embeddings``):
``item_embedding_init: pca`` initialises the student's item table from the teacher's item vectors;
``embedding_fusion: {w_ed: 0.25}`` trains ``b_i + w_ed · g(z_i)`` (DLLM2Rec collaborative embedding
distillation). Both leave a plain student: :meth:`plain_student` folds the fusion into one
``nn.Embedding`` and drops every projector, so the saved model is served like any other.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recdistill.distill.embedding import TeacherEmbeddingFusion, pca_init
from recdistill.distill.terms import (
    TEACHER_SIGNALS, DistillTerm, TermSpec, add_terms, check_epoch_coverage, declared_inputs, teacher_dims_for,
)
from recdistill.distill.registry import DISTILL_LOSSES
from recdistill.distill.soft_targets import RowMemory, SoftTargetSource, pack_soft_targets
from recdistill.student.tasks import SequentialFactory, SequentialRecommender

ITEM_INITS = (None, "pca")


class DistilledSequentialRecommender(SequentialRecommender):
    """A sequential student trained with distillation terms read from a teacher-signal cache."""

    def __init__(
        self,
        student: SequentialFactory,
        signals: str,
        terms: Sequence[Mapping[str, Any]] = (),
        num_items: int = 0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        mask_seen: bool = True,
        ks: Sequence[int] = (5, 10, 20),
        sampled_negatives: int | None = None,
        item_embedding_init: str | None = None,
        embedding_fusion: Mapping[str, Any] | None = None,
        in_memory: bool | str = "auto",
        teacher_logits_memory: int = 1 << 30,
    ) -> None:
        """``signals``: folder of a teacher-signal cache (``recdistill teacher emit``); ``terms``:
        ``[{name, weight, params}]`` (see ``recdistill.distill.terms``); ``teacher_logits_memory``: bytes
        for keeping the teacher logits rebuilt from the cache (``[N+1]`` floats per example) after their
        first rebuild, so that later epochs read them instead of recomputing ``score_user @ score_items``,
        and the soft-label KL's soft targets ``softmax(t/τ)`` (same size, per τ) instead of recomputing
        them (exact: the same rows; 0 turns it off; a store that would pass the budget is not kept)."""
        super().__init__(student, num_items=num_items, lr=lr, weight_decay=weight_decay, mask_seen=mask_seen,
                         ks=ks, sampled_negatives=sampled_negatives)
        if item_embedding_init not in ITEM_INITS:
            raise ValueError(f"model.item_embedding_init must be one of {ITEM_INITS}, got {item_embedding_init!r}")
        from recdistill.teacher.cache_reader import TeacherSignals

        self.signals_dir = str(signals)
        self._epoch_batches = self._epoch_covered = 0  # training batches with terms / with a covered row
        # verify: every shard's sha256 against the manifest once per fit (a flipped byte is refused)
        self.signals = TeacherSignals(signals, num_items=num_items or None, in_memory=in_memory, verify=True)
        specs = [TermSpec.parse(t, i) for i, t in enumerate(terms)]
        wanted = {TEACHER_SIGNALS[k] for s in specs for k in declared_inputs(DISTILL_LOSSES[s.name], s.params).values()
                  if k in TEACHER_SIGNALS}
        if item_embedding_init or embedding_fusion:
            wanted.add("item_embeddings")
        top_k = max((s.top_k for s in specs if s.top_k is not None), default=None)
        self.signals.require(sorted(wanted), k=top_k)
        needs_table = bool(wanted & {"item_embeddings"})
        table = self.signals.item_embeddings().float() if needs_table else None
        signal_dims = self._signal_dims(wanted, table)
        block_widths = self._student_block_widths()
        student_dims = {"student_dim": int(self.student.hidden_size),
                        "num_student_blocks": len(block_widths),
                        "student_dims": block_widths}  # per block: GRU4Rec's inner blocks are gru_size wide
        self.terms = nn.ModuleList()
        for spec in specs:
            inputs = declared_inputs(DISTILL_LOSSES[spec.name], spec.params)
            self.terms.append(DistillTerm(spec, {**student_dims, **teacher_dims_for(inputs, signal_dims)}))
        labels = [t.label for t in self.terms]
        if len(set(labels)) != len(labels):
            raise ValueError(f"model.terms: two terms log under the same label ({labels}); set `label:` on one")
        self._context_keys = set().union(*(t.context_keys for t in self.terms)) if self.terms else set()
        self._cache_keys = sorted({TEACHER_SIGNALS[k] for k in self._context_keys if k in TEACHER_SIGNALS}
                                  - {"teacher_logits", "item_embeddings"})
        # the teacher item table travels with the module (device moves) but is never saved
        self.register_buffer("teacher_item_table", table, persistent=False)
        self._install_item_table(item_embedding_init, embedding_fusion)
        self._memory_budget = int(teacher_logits_memory)
        self._memory_used = 0
        self._memories: dict[Any, RowMemory | None] = {}  # "logits" / ("soft", τ) -> rows kept in memory

    # -- set-up ------------------------------------------------------------------------
    def _signal_dims(self, wanted: set[str], table: Tensor | None) -> dict[str, int]:
        """Widths of the cached signals the terms read (for their projectors)."""
        dims: dict[str, int] = {}
        per_example = sorted(wanted & {"hidden", "layers", "user"})
        if per_example:
            first = torch.as_tensor(self.signals.example_ids()[:1])
            sample, _ = self.signals.lookup(first, per_example)
            dims.update({key: int(sample[key].shape[-1]) for key in per_example})
            if "layers" in sample:
                dims["num_layers"] = int(sample["layers"].shape[-2])
        if table is not None:
            dims["item_embeddings"] = int(table.shape[1])
        return dims

    def _student_block_widths(self) -> list[int]:
        """The width of each block output the student exposes (``Encoded.layers`` without the embedding
        output); the layer contract lets them differ from ``hidden_size`` (GRU4Rec's ``gru_size``)."""
        probe = torch.zeros(1, 2, dtype=torch.long)
        probe[0, -1] = 1
        was_training = self.student.training
        self.student.eval()
        with torch.no_grad():
            widths = [int(layer.shape[-1]) for layer in self._block_states(self.student.encode(probe))]
        self.student.train(was_training)
        return widths

    @staticmethod
    def _block_states(encoded: Any) -> tuple[Tensor, ...]:
        layers = tuple(encoded.layers)
        # layer contract: layers[0] is the embedding output, layers[1:] the blocks' outputs
        return layers[1:] if len(layers) > 1 else layers

    def _install_item_table(self, init: str | None, fusion: Mapping[str, Any] | None) -> None:
        if init is None and fusion is None:
            return
        table = getattr(self.student, "item_embedding", None)
        if not isinstance(table, nn.Embedding):
            raise ValueError(f"{type(self.student).__name__} has no `item_embedding` table to initialise or fuse")
        teacher = self.teacher_item_table
        if teacher.shape[0] != self.student.num_items + 1:
            raise ValueError(f"teacher item table has {teacher.shape[0]} rows, the student {self.student.num_items + 1}")
        if init == "pca":
            vectors = pca_init(teacher, table.embedding_dim, target_std=float(table.weight.std()))
            with torch.no_grad():
                table.weight[: vectors.shape[0]] = vectors
        if fusion is not None:
            self.student.item_embedding = TeacherEmbeddingFusion(
                teacher, table.embedding_dim, num_embeddings=table.num_embeddings, **dict(fusion))
            with torch.no_grad():  # start from the ID table the student had (PCA or random)
                self.student.item_embedding.id_embedding.weight.copy_(table.weight)

    def setup(self, stage: str) -> None:
        """Refuse a cache emitted for another dataset or item-id space than the one being trained on."""
        super().setup(stage)  # the slice counts of the evaluation
        split = getattr(getattr(self.trainer, "datamodule", None), "split", None)
        if split is None:
            return
        from recdistill.teacher.cache_format import CacheMismatchError, item_space_hash

        cached = self.signals.manifest.get("dataset", {})
        current = {"num_items": split.num_items, "item_space_sha256": item_space_hash(split.item_ids),
                   "fingerprint": split.fingerprint}
        for field, value in current.items():
            if cached.get(field) != value:
                raise CacheMismatchError(
                    f"signals cache {self.signals_dir} was emitted for dataset.{field}={cached.get(field)!r}, but the "
                    f"student trains on {value!r}: emit the teacher on this dataset (recdistill teacher emit)")

    # -- training ----------------------------------------------------------------------
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out = self.task_loss(batch)
        context, coverage = self._context(out, batch) if len(self.terms) else (None, 0.0)
        if len(self.terms):
            self._epoch_batches += 1
            self._epoch_covered += int(context is not None)
        return add_terms(self, out.loss, self.terms, context, coverage, batch["input_ids"].shape[0])

    def on_train_epoch_start(self) -> None:
        self._epoch_batches = self._epoch_covered = 0

    def on_train_epoch_end(self) -> None:
        """A whole epoch without one covered training row means no distillation at all: fail loudly."""
        check_epoch_coverage(self, self._epoch_batches, self._epoch_covered, self.signals_dir)

    def _context(self, out: Any, batch: dict[str, Tensor]) -> tuple[dict[str, Any] | None, float]:
        """The context entries the terms read, over the covered rows only (None if none is covered)."""
        example_ids = out.example_ids if getattr(out, "example_ids", None) is not None \
            else batch["example_ids"][out.positions]
        found, valid = self.signals.lookup(example_ids.detach().cpu(), self._cache_keys)
        coverage = float(valid.float().mean()) if valid.numel() else 0.0
        if not bool(valid.any()):
            return None, coverage
        device = out.logits.device
        rows = valid.to(device)
        # a fully covered batch (train_every = 1) reads every tensor as it is: no row copy, no index backward
        everything = bool(valid.all())
        pick = (lambda t: t) if everything else (lambda t: t[rows])
        keys = self._context_keys
        ctx: dict[str, Any] = {"student_logits": pick(out.logits), "target": pick(out.labels)}
        if "student_log_probs" in keys:
            log_probs = out.log_probs if getattr(out, "log_probs", None) is not None else F.log_softmax(out.logits, 1)
            ctx["student_log_probs"] = pick(log_probs)
        if keys & {"student_hidden", "student_layers"}:
            positions = out.positions
            if "student_hidden" in keys:
                ctx["student_hidden"] = pick(out.encoded.sequence[positions])
            if "student_layers" in keys:
                ctx["student_layers"] = [pick(layer[positions]) for layer in self._block_states(out.encoded)]
        if "history" in keys:
            ctx["history"] = pick(self._history(out))
        table = self.teacher_item_table
        for key, signal in TEACHER_SIGNALS.items():
            if key in keys and signal in found:
                value = found[signal] if everything else found[signal][valid]
                if key == "teacher_user" and table is not None:
                    # a hybrid teacher's user row is [LLM user, CF state]; its LLM part shares the item table's space
                    value = value[:, : table.shape[1]]
                value = value.to(device)
                ctx[key] = value.float() if value.is_floating_point() else value.long()
        if keys & {"teacher_logits", "teacher_target_score", "teacher_soft_targets"}:
            covered = (example_ids if everything else example_ids[valid.to(example_ids.device)]).cpu()
            if keys & {"teacher_logits", "teacher_target_score"}:
                logits = self._teacher_logits(covered).to(device).float()
                ctx["teacher_logits"] = logits
                ctx["teacher_target_score"] = logits.gather(1, ctx["target"].long().unsqueeze(1)).squeeze(1)
            if "teacher_soft_targets" in keys:
                ctx["teacher_soft_targets"] = SoftTargetSource(
                    lambda tau: self._teacher_soft_targets(covered, tau).to(device))
        if "teacher_item_emb" in keys:
            ctx["teacher_item_emb"] = self.teacher_item_table
        if keys & {"batch_item_ids", "student_item_emb_batch", "teacher_item_emb_batch"}:
            items = ctx["target"].long()
            ctx["batch_item_ids"] = items
            ctx["student_item_emb_batch"] = self.student.item_embedding(items)
            ctx["teacher_item_emb_batch"] = self.teacher_item_table[items]
        return ctx, coverage

    def _row_memory(self, key: Any) -> RowMemory | None:
        """The in-memory store ``key`` of ``[N+1]``-wide rows for every cached example (made on first
        use), or None when it would take the memory kept for teacher rows past ``teacher_logits_memory``."""
        if key not in self._memories:
            count, width = len(self.signals), self.signals.num_items + 1
            size = RowMemory.nbytes(count, width)
            fits = self._memory_used + size <= self._memory_budget
            self._memory_used += size if fits else 0
            self._memories[key] = RowMemory(self.signals.example_ids(), width) if fits else None
        return self._memories[key]

    def _teacher_logits(self, example_ids: Tensor) -> Tensor:
        """The teacher's logits ``[P, N+1]`` rebuilt from the cache for covered ``example_ids``; kept in
        memory after the first rebuild when all of the cache's rows fit ``teacher_logits_memory``."""
        memory = self._row_memory("logits")
        if memory is None:
            return self.signals.teacher_logits(example_ids)[0]
        return memory.rows(example_ids, lambda ids: self.signals.teacher_logits(ids)[0])

    def _teacher_soft_targets(self, example_ids: Tensor, tau: float) -> Tensor:
        """The packed soft targets ``[P, N+1]`` at ``tau`` (``soft_targets.pack_soft_targets``: column 0
        Σ p·log p, columns 1..N p) of covered ``example_ids``; prepared once per row and kept in memory
        when they fit the budget (after the raw logits, if a term reads those too)."""
        raw = bool(self._context_keys & {"teacher_logits", "teacher_target_score"})
        rebuild = self._teacher_logits if raw else (lambda ids: self.signals.teacher_logits(ids)[0])
        memory = self._row_memory(("soft", tau))
        if memory is None:
            return pack_soft_targets(rebuild(example_ids), tau)
        return memory.rows(example_ids, lambda ids: pack_soft_targets(rebuild(ids), tau))

    def _history(self, out: Any) -> Tensor:
        """``[P, L]`` items the student saw at each supervised position (0 elsewhere): its window up to
        and including the position (causal), or every unmasked item of the window (cloze)."""
        inputs = out.input_ids
        if getattr(self.student, "objective", "next_item") == "cloze":
            real = inputs.masked_fill(inputs > self.student.num_items, 0)
            return real.unsqueeze(1).expand(-1, inputs.shape[1], -1)[out.positions]
        row, col = out.positions.nonzero(as_tuple=True)
        later = torch.arange(inputs.shape[1], device=inputs.device).unsqueeze(0) > col.unsqueeze(1)
        return inputs[row].masked_fill(later, 0)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # projectors and adapters inside the terms train with the student
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    # -- what is kept ------------------------------------------------------------------
    def plain_student(self) -> nn.Module:
        """A copy of the student as a plain registered student: the fused item table folded into
        one ``nn.Embedding``; the terms' projectors and the teacher table are not part of it."""
        student = copy.deepcopy(self.student)
        fusion = student.item_embedding
        if isinstance(fusion, TeacherEmbeddingFusion):
            student.item_embedding = fusion.to_embedding()
        return student.eval()


__all__ = ["DistilledSequentialRecommender"]
