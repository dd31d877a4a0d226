"""Lightning modules that train a student on its plain task (no teacher).

``SequentialRecommender``: full-softmax cross-entropy on next-item targets at every position
(causal students) or on masked positions (cloze students such as BERT4Rec); validated on
full-ranking NDCG@10 with the user's earlier items masked.
``CTRRecommender``: binary cross-entropy on click labels; validated on AUC.
Both ``task_loss`` methods return a dataclass (``TaskOutput`` / ``CTRTaskOutput``) holding the
loss and what it was computed from, so a distillation module adds its terms without a second
forward pass.

The student is passed as a factory (``Callable[[num_items], nn.Module]``) so that data-dependent
sizes are linked from the data module (LightningCLI ``link_arguments``) while the recipe names
only the architecture; an already-built ``nn.Module`` is accepted too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from recdistill.data.schema import EXAMPLE_STRIDE
from recdistill.metrics import (
    SLICES,
    ctr_metrics,
    mask_history,
    metrics_from_sums,
    ranking_metric_sums,
    sampled_ranks,
    sliced_metrics_from_sums,
    target_ranks,
    target_slices,
)
from recdistill.student.base import Encoded

__all__ = ["CTRRecommender", "CTRTaskOutput", "SequentialRecommender", "TaskOutput"]

SequentialFactory = Callable[[int], nn.Module]
CTRFactory = Callable[[list, int, int], nn.Module]


@dataclass
class TaskOutput:
    """Everything ``SequentialRecommender.task_loss`` computed, for reuse without recomputation.

    ``P`` = number of supervised positions in the batch; ``L'`` = the length of the tokens the
    student read (``L`` for causal students; for cloze students the window of the ``L`` inputs
    plus the last label, cut to the student's ``max_len``).
    """

    loss: torch.Tensor  # scalar: mean cross-entropy over the P supervised positions
    encoded: Encoded  # the student's encoding of ``input_ids`` (layers/sequence aligned with it)
    logits: torch.Tensor  # [P, num_items + 1]: score(encoded.sequence[positions]), row-major order
    positions: torch.Tensor  # Bool[B, L']: supervised positions of ``input_ids``
    labels: torch.Tensor  # Long[P]: the target item at each supervised position
    input_ids: torch.Tensor  # Long[B, L']: the tokens fed to the encoder (cloze: with mask tokens)
    example_ids: torch.Tensor | None = None  # Long[P]: example id of each target, -1 where none
    # (a cloze target at position 0 of a user's sequence); None when the batch has no example_ids
    log_probs: torch.Tensor | None = None  # [P, num_items + 1]: log_softmax(logits), the task loss's own
    # (a softmax-form distillation term reuses it: one log-softmax and one backward through it per step)


@dataclass
class CTRTaskOutput:
    """What ``CTRRecommender.task_loss`` computed: ``loss``, ``logits [B]`` and ``encoded``."""

    loss: torch.Tensor
    logits: torch.Tensor  # [B] == student(sparse, dense, history)
    encoded: Encoded


def _counts_from_datamodule(datamodule: Any) -> torch.Tensor | None:
    """Per-item training counts ``[num_items + 1]`` from a data module, or None if it has none."""
    if datamodule is None:
        return None
    counts = getattr(datamodule, "item_train_counts", None)
    if counts is None and getattr(datamodule, "split", None) is not None:
        counts = getattr(datamodule.split, "item_train_counts", None)
    if callable(counts):
        counts = counts()
    return None if counts is None else torch.as_tensor(counts, dtype=torch.long).cpu()


class SequentialRecommender(L.LightningModule):
    """Train a sequential student with cross-entropy over the whole catalogue.

    Evaluation logs full-ranking HR/NDCG/MRR@k overall and, when the per-item training counts
    are known, on the cold / rare / warm slices of the targets (``{stage}/cold/ndcg@10``,
    ``{stage}/cold/count``, ...; see ``recdistill.metrics.SLICES``). Metrics are accumulated as
    per-example sums over the epoch and, under several processes, summed across them before
    dividing, so every process reports the metrics of the whole evaluation set.
    """

    def __init__(
        self,
        student: SequentialFactory,
        num_items: int = 0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        mask_seen: bool = True,
        ks: Sequence[int] = (5, 10, 20),
        sampled_negatives: int | None = None,
        item_train_counts: Sequence[int] | None = None,
    ) -> None:
        """``sampled_negatives``: also log sampled-ranking metrics (target vs N uniform negatives,
        keys ``sampled<N>_ndcg@10`` ...), with negatives drawn from a fixed seed per evaluation.
        Model selection stays on full ranking.

        ``item_train_counts``: training interactions per item index (``[num_items + 1]``) for the
        slice metrics; when not given, ``setup`` reads it from the trainer's data module
        (``datamodule.split.item_train_counts()``); without either, only overall metrics."""
        super().__init__()
        self.save_hyperparameters(ignore=["student", "item_train_counts"])
        self.student = student if isinstance(student, nn.Module) else student(num_items)
        self.lr, self.weight_decay = lr, weight_decay
        self.mask_seen, self.ks = mask_seen, tuple(ks)
        self.sampled_negatives = sampled_negatives
        self.item_train_counts: torch.Tensor | None = (
            None if item_train_counts is None else torch.as_tensor(item_train_counts, dtype=torch.long).cpu()
        )
        self._counts_given = item_train_counts is not None
        self._negative_generator: torch.Generator | None = None
        self._sums: dict[str, dict[str, torch.Tensor]] = {}
        # one left-padded sequence: Lightning's model summary runs it to count FLOPs and show the shapes
        length = int(getattr(self.student, "max_len", None) or 50)
        self.example_input_array = torch.zeros(1, length, dtype=torch.long).index_fill_(1, torch.tensor([length - 1]), 1)

    def setup(self, stage: str) -> None:
        """Read the per-item training counts from the trainer's data module (unless given)."""
        if not self._counts_given:
            counts = _counts_from_datamodule(getattr(self._trainer, "datamodule", None))
            self.item_train_counts = counts if counts is not None else self.item_train_counts

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.student(input_ids)

    # -- training -----------------------------------------------------------------------
    def task_loss(self, batch: dict[str, torch.Tensor]) -> TaskOutput:
        """Cross-entropy of the student's own task, with everything a distillation loss reuses.

        Causal students read ``batch["input_ids"]`` and are supervised wherever ``labels > 0``.
        Cloze students read the whole window (the inputs plus the last label, so every item,
        the first included, can be masked), with ``mask_prob`` of its real items masked (at
        least the most recent one per row) and are supervised at the masked positions.
        """
        example_ids = batch.get("example_ids")
        if getattr(self.student, "objective", "next_item") == "cloze":
            tokens, window_ids = self._cloze_window(batch["input_ids"], batch["labels"], example_ids)
            input_ids, labels = self._cloze_inputs(tokens)
            encoded = self.student.encode_masked(input_ids)
            example_ids = window_ids
        else:
            input_ids, labels = batch["input_ids"], batch["labels"]
            encoded = self.student.encode(input_ids)
        positions = labels > 0
        logits = self.student.score(encoded.sequence[positions])
        targets = labels[positions]
        log_probs = F.log_softmax(logits, dim=1)  # cross-entropy = nll of these, kept for the terms
        return TaskOutput(
            loss=F.nll_loss(log_probs, targets), encoded=encoded, logits=logits, positions=positions,
            labels=targets, input_ids=input_ids,
            example_ids=None if example_ids is None else example_ids[positions], log_probs=log_probs,
        )

    def _cloze_window(
        self, input_ids: torch.Tensor, labels: torch.Tensor, example_ids: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The full window ``[input_ids, last label]`` (cut to the student's ``max_len``) and the
        example id of each of its items (-1 for padding and for position 0 of a sequence)."""
        window = torch.cat([input_ids, labels[:, -1:]], dim=1)
        ids = None
        if example_ids is not None:
            # labels[:, t] is window[:, t + 1]; the first input is the item before labels[:, 0]
            first = torch.where(input_ids[:, :1] > 0, example_ids[:, :1] - 1, torch.zeros_like(example_ids[:, :1]))
            ids = torch.cat([first, example_ids], dim=1)
            ids = torch.where((window > 0) & (ids % EXAMPLE_STRIDE > 0), ids, torch.full_like(ids, -1))
        max_len = getattr(self.student, "max_len", None)
        if max_len is not None and window.size(1) > max_len:
            window = window[:, -max_len:]
            ids = None if ids is None else ids[:, -max_len:]
        return window, ids

    def _cloze_inputs(self, sequence: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask real positions with the student's ``mask_prob`` (at least one per row: the most recent)."""
        real = sequence > 0
        chosen = (torch.rand(sequence.shape, device=sequence.device) < self.student.mask_prob) & real
        none_drawn = ~chosen.any(dim=1)
        chosen[:, -1] |= none_drawn & real[:, -1]
        masked = sequence.masked_fill(chosen, self.student.mask_token)
        labels = sequence.masked_fill(~chosen, 0)
        return masked, labels

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.task_loss(batch).loss
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    # -- evaluation ---------------------------------------------------------------------
    def _accumulate(self, stage: str, prefix: str, ranks: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch's per-example sums: row 0 overall, then one row per slice (if counts are known)."""
        sums = ranking_metric_sums(ranks, self.ks)
        if self.item_train_counts is not None:
            slices = target_slices(target, self.item_train_counts)
            sums = torch.cat([sums, ranking_metric_sums(ranks, self.ks, slices, len(SLICES))])
        store = self._sums.setdefault(stage, {})
        store[prefix] = store[prefix] + sums if prefix in store else sums

    def _evaluate(self, batch: dict[str, torch.Tensor], stage: str, batch_idx: int) -> None:
        scores = self.student(batch["input_ids"])
        target, history = batch["target"], batch.get("history")
        masked = mask_history(scores, history, target) if self.mask_seen and history is not None else scores
        self._accumulate(stage, "", target_ranks(masked, target), target)
        if self.sampled_negatives:
            if batch_idx == 0:  # the same negatives at every evaluation, whatever ran before
                self._negative_generator = torch.Generator().manual_seed(0)
            ranks = sampled_ranks(scores, target, self.sampled_negatives, self._negative_generator,
                                  history, exclude_seen=self.mask_seen)
            self._accumulate(stage, f"sampled{self.sampled_negatives}_", ranks, target)

    def _finish(self, stage: str) -> None:
        store = self._sums.pop(stage, {})
        if self.trainer.world_size > 1:  # every process reduces the same tensors, in the same order,
            rows = 1 + len(SLICES) if self.item_train_counts is not None else 1  # even one that saw no batch
            prefixes = [""] + ([f"sampled{self.sampled_negatives}_"] if self.sampled_negatives else [])
            store = {p: store.get(p, torch.zeros(rows, 1 + 3 * len(self.ks), dtype=torch.float64))
                     for p in prefixes}
        metrics: dict[str, float] = {}
        for prefix, sums in store.items():
            if self.trainer.world_size > 1:  # exact: sum the per-example sums of every process
                dtype = torch.float32 if self.device.type == "mps" else torch.float64
                sums = self.trainer.strategy.reduce(sums.to(self.device, dtype), reduce_op="sum").double().cpu()
            if sums.shape[0] > 1:
                metrics.update(sliced_metrics_from_sums(sums, self.ks, prefix=prefix, counts=not prefix))
            else:
                metrics.update(metrics_from_sums(sums[0], self.ks, prefix=prefix))
        if metrics:
            self.log_dict({f"{stage}/{k}": v for k, v in metrics.items()}, sync_dist=False, prog_bar=False)

    def on_validation_epoch_start(self) -> None:
        self._sums.pop("valid", None)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "valid", batch_idx)

    def on_validation_epoch_end(self) -> None:
        self._finish("valid")

    def on_test_epoch_start(self) -> None:
        self._sums.pop("test", None)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", batch_idx)

    def on_test_epoch_end(self) -> None:
        self._finish("test")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.student(batch["input_ids"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


def _gather_rows(module: L.LightningModule, rows: torch.Tensor) -> torch.Tensor:
    """Every process's ``rows [n_r, C]`` concatenated in rank order (``n_r`` may differ: evaluation
    shards are not padded, so that no example is counted twice)."""
    sizes = module.all_gather(torch.tensor([rows.shape[0]], device=module.device)).flatten().tolist()
    padded = rows.new_zeros(max(sizes), rows.shape[1])
    padded[: rows.shape[0]] = rows
    gathered = module.all_gather(padded)  # [world, max n_r, C]
    return torch.cat([gathered[r, :n] for r, n in enumerate(sizes)])


class CTRRecommender(L.LightningModule):
    """Train a CTR student with binary cross-entropy; validated on AUC / LogLoss / GAUC."""

    def __init__(
        self,
        student: CTRFactory,
        field_dims: Sequence[int] = (),
        dense_dim: int = 0,
        num_items: int = 0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["student"])
        self.student = (
            student if isinstance(student, nn.Module) else student(list(field_dims), dense_dim, num_items)
        )
        self.lr, self.weight_decay = lr, weight_decay
        self._outputs: dict[str, list[torch.Tensor]] = {}
        # one row of field ids 0, zero dense features and a one-item history: the model summary's FLOPs
        self.example_input_array = (torch.zeros(1, len(field_dims), dtype=torch.long),
                                    torch.zeros(1, dense_dim), torch.zeros(1, 1, dtype=torch.long))

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return self.student(sparse, dense, history)

    def task_loss(self, batch: dict[str, torch.Tensor]) -> CTRTaskOutput:
        """Binary cross-entropy on the click labels; ``logits`` and ``encoded`` come from one
        ``encode`` (``logits == student(...)``, see the CTR contract in ``student/base.py``)."""
        encoded = self.student.encode(batch["sparse"], batch["dense"], batch["history"])
        logits = self.student.score(encoded.last) + encoded.logit_offset
        loss = F.binary_cross_entropy_with_logits(logits, batch["label"].float())
        return CTRTaskOutput(loss=loss, logits=logits, encoded=encoded)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.task_loss(batch).loss
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["label"].shape[0])
        return loss

    def _collect(self, batch: dict[str, torch.Tensor], stage: str) -> None:
        logits = self.student(batch["sparse"], batch["dense"], batch["history"])
        store = self._outputs.setdefault(stage, [])
        store.append(torch.stack([logits.float(), batch["label"].float(), batch["user"].float()], dim=1))

    def _finish(self, stage: str) -> None:
        rows = torch.cat(self._outputs.pop(stage, []) or [torch.empty(0, 3, device=self.device)])
        rows = _gather_rows(self, rows) if self.trainer.world_size > 1 else rows
        if rows.numel() == 0:
            return
        metrics = ctr_metrics(rows[:, 0], rows[:, 1], rows[:, 2].long())
        self.log_dict({f"{stage}/{k}": float(v) for k, v in metrics.items()}, sync_dist=False)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._collect(batch, "valid")

    def on_validation_epoch_end(self) -> None:
        self._finish("valid")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._collect(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._finish("test")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return torch.sigmoid(self.student(batch["sparse"], batch["dense"], batch["history"]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
