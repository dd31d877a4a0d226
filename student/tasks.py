"""Lightning modules that train a student on its plain task (no teacher).

``SequentialRecommender``: full-softmax cross-entropy on next-item targets at every position
(causal students) or on masked positions (cloze students such as BERT4Rec); validated on
full-ranking NDCG@10 with the user's earlier items masked.
``CTRRecommender``: binary cross-entropy on click labels; validated on AUC.

The student is passed as a factory (``Callable[[num_items], nn.Module]``) so that data-dependent
sizes are linked from the data module (LightningCLI ``link_arguments``) while the recipe names
only the architecture; an already-built ``nn.Module`` is accepted too.
"""

from __future__ import annotations

from typing import Callable, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from recdistill.metrics import ctr_metrics, full_ranking_metrics, ranking_metrics_from_ranks, sampled_ranks

SequentialFactory = Callable[[int], nn.Module]
CTRFactory = Callable[[list, int, int], nn.Module]


class SequentialRecommender(L.LightningModule):
    """Train a sequential student with cross-entropy over the whole catalogue."""

    def __init__(
        self,
        student: SequentialFactory,
        num_items: int = 0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        mask_seen: bool = True,
        ks: Sequence[int] = (5, 10, 20),
        sampled_negatives: int | None = None,
    ) -> None:
        """``sampled_negatives``: also log sampled-ranking metrics (target vs N uniform negatives,
        keys ``sampled<N>_ndcg@10`` ...), with negatives drawn from a fixed seed per evaluation.
        Model selection stays on full ranking."""
        super().__init__()
        self.save_hyperparameters(ignore=["student"])
        self.student = student if isinstance(student, nn.Module) else student(num_items)
        self.lr, self.weight_decay = lr, weight_decay
        self.mask_seen, self.ks = mask_seen, tuple(ks)
        self.sampled_negatives = sampled_negatives
        self._negative_generator: torch.Generator | None = None

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.student(input_ids)

    # -- training -----------------------------------------------------------------------
    def task_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, object]:
        """Cross-entropy of the student's own task; returns (loss, Encoded) for reuse by distillation."""
        if getattr(self.student, "objective", "next_item") == "cloze":
            masked, labels = self._cloze_inputs(batch["labels"])
            encoded = self.student.encode_masked(masked)
        else:
            labels = batch["labels"]
            encoded = self.student.encode(batch["input_ids"])
        positions = labels > 0
        logits = self.student.score(encoded.sequence[positions])
        return F.cross_entropy(logits, labels[positions]), encoded

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
        loss, _ = self.task_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    # -- evaluation ---------------------------------------------------------------------
    def _evaluate(self, batch: dict[str, torch.Tensor], stage: str, batch_idx: int) -> None:
        scores = self.student(batch["input_ids"])
        metrics = full_ranking_metrics(
            scores, batch["target"], batch.get("history"), ks=self.ks, mask_seen=self.mask_seen
        )
        if self.sampled_negatives:
            if batch_idx == 0:  # the same negatives at every evaluation, whatever ran before
                self._negative_generator = torch.Generator().manual_seed(0)
            ranks = sampled_ranks(scores, batch["target"], self.sampled_negatives, self._negative_generator,
                                  batch.get("history"), exclude_seen=self.mask_seen)
            metrics.update(ranking_metrics_from_ranks(ranks, self.ks, prefix=f"sampled{self.sampled_negatives}_"))
        self.log_dict(
            {f"{stage}/{k}": v for k, v in metrics.items()},
            batch_size=batch["input_ids"].shape[0],
            on_epoch=True,
            sync_dist=True,
            prog_bar=False,
        )

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "valid", batch_idx)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", batch_idx)

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.student(batch["input_ids"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


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

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return self.student(sparse, dense, history)

    def task_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.student(batch["sparse"], batch["dense"], batch["history"])
        return F.binary_cross_entropy_with_logits(logits, batch["label"].float()), logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _ = self.task_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["label"].shape[0])
        return loss

    def _collect(self, batch: dict[str, torch.Tensor], stage: str) -> None:
        logits = self.student(batch["sparse"], batch["dense"], batch["history"])
        store = self._outputs.setdefault(stage, [])
        store.append(torch.stack([logits.float(), batch["label"].float(), batch["user"].float()], dim=1))

    def _finish(self, stage: str) -> None:
        rows = torch.cat(self._outputs.pop(stage, []) or [torch.empty(0, 3, device=self.device)])
        rows = self.all_gather(rows).reshape(-1, 3) if self.trainer.world_size > 1 else rows
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
