"""The Lightning side of a teacher: ``TeacherLightningModule`` holds a teacher (a plain ``nn.Module``,
:class:`~recdistill.teacher.hllm.HLLMTeacher` or a subclass) and runs its loop: training / validation /
test / predict steps, the fusion-weight search, optimiser groups and the resume-checkpoint hooks.

Checkpoint keys are the teacher's own prefixed with ``teacher.``; a resume checkpoint written before
the teacher was a separate module (keys without the prefix) is migrated on load
(:func:`migrate_checkpoint_keys`). Optimiser state is matched by position, and the groups are built
in the teacher's parameter order as before, so such a checkpoint resumes exactly.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from recdistill.teacher.checkpoint import is_trained_key

PREFIX = "teacher."


def migrate_checkpoint_keys(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """State-dict keys of a resume checkpoint in the current layout (``teacher.`` + the teacher's key)."""
    return {k if k.startswith(PREFIX) else PREFIX + k: v for k, v in state_dict.items()}


def is_trained_checkpoint_key(name: str) -> bool:
    """:func:`~recdistill.teacher.checkpoint.is_trained_key` for the wrapper's (prefixed) keys."""
    return is_trained_key(name[len(PREFIX):] if name.startswith(PREFIX) else name)


def as_teacher(module: nn.Module) -> nn.Module:
    """The teacher itself, given a teacher or its Lightning wrapper."""
    return module.teacher if isinstance(module, TeacherLightningModule) else module


class TeacherLightningModule(L.LightningModule):
    """Trains, validates, tests and emits with ``teacher`` under a Lightning ``Trainer``.

    Args:
        teacher: the model (its ``hparams`` give the learning rates, ``eval_ks`` and ``mask_seen``).
        emit_config: signal-emission settings for ``predict_step`` (set by ``emit_signals``); None:
            ``predict_step`` returns the logits.
    """

    # Lightning checkpoints (for resuming a fit) hold only what training changes; the frozen base
    # is rebuilt from its source, so loading is non-strict but checked to cover every trained key.
    strict_loading = False

    def __init__(self, teacher: nn.Module, emit_config: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.teacher = teacher
        self.emit_config = emit_config
        self._val_acc = self._val_mix = self._test_acc = None

    @property
    def hp(self) -> Any:
        return self.teacher.hparams

    @property
    def dataset_fingerprint(self) -> str | None:
        return getattr(self.teacher, "dataset_fingerprint", None)

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.teacher(input_ids)

    def train(self, mode: bool = True) -> "TeacherLightningModule":
        super().train(mode)
        self.teacher.train(mode)  # the teacher keeps its frozen parts in eval mode
        return self

    # ------------------------------------------------------------------ fit
    def setup(self, stage: str) -> None:
        """Read the per-item training counts from the trainer's data module (unless given)."""
        teacher = self.teacher
        if getattr(teacher, "_counts_given", True) or not hasattr(teacher, "item_train_count"):
            return
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        split = getattr(dm, "split", None)
        if split is not None and hasattr(split, "item_train_counts"):
            counts = torch.as_tensor(split.item_train_counts(), dtype=torch.float32)
            if counts.shape == teacher.item_train_count.shape:
                teacher.item_train_count.copy_(counts.to(teacher.item_train_count.device))

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.teacher.loss(batch)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True,
                 batch_size=int((batch["labels"] > 0).sum()))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW: item tables (``item_lr``, ``item_weight_decay``), no decay on biases and the scale."""
        hp = self.hp
        item_params, decay, no_decay = [], [], []
        for name, p in self.teacher.named_parameters():
            if not p.requires_grad:
                continue
            if name.startswith(("item_emb", "item_residual", "item_bias")):
                item_params.append(p)
            elif name == "log_scale" or name.endswith("bias"):
                no_decay.append(p)
            else:
                decay.append(p)
        groups = [
            {"params": decay, "weight_decay": hp.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        if item_params:
            groups.append({
                "params": item_params,
                "lr": hp.item_lr if hp.item_lr is not None else hp.lr,
                "weight_decay": hp.item_weight_decay if hp.item_weight_decay is not None else hp.weight_decay,
            })
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=hp.lr)

    # ------------------------------------------------------------------ evaluation
    def _accumulator(self):
        from recdistill.metrics import RankingAccumulator

        return RankingAccumulator(ks=self.hp.eval_ks or [5, 10, 20])

    def on_validation_epoch_start(self) -> None:
        self._val_acc = self._accumulator()
        mixing = hasattr(self.teacher, "fusion_alpha")
        self._val_mix = {key: self._accumulator() for key in self.teacher.fusion_grid()} if mixing else None

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        t = self.teacher
        if self._val_mix is None:
            self._val_acc.update(t(batch["input_ids"]), batch["target"], batch.get("history"),
                                 mask_seen=self.hp.mask_seen)
            return
        user = t.encode(batch["input_ids"])["user"][:, -1]
        teacher = t.score_items(user, fuse=False)
        raw_cf = t.collab_model.score(user[..., t.item_dim:])
        for key, logits in t.fused_grid(teacher, raw_cf):
            self._val_mix[key].update(logits, batch["target"], batch.get("history"), mask_seen=self.hp.mask_seen)

    def on_validation_epoch_end(self) -> None:
        if self._val_mix is not None:
            results = self._gathered_mix_metrics()
            if not results:
                return
            # ties: more LLM weight, then the smaller c_cf (trust the CF model sooner)
            best = max(results, key=lambda k: (results[k]["ndcg@10"], k[0], -(k[1] or 0.0)))
            alpha, count = best
            self.teacher.fusion_alpha.fill_(alpha)
            self.log("valid/fusion_alpha", float(alpha))
            if count is not None:
                self.teacher.collab_gate_count.fill_(count)
                self.log("valid/collab_gate_count", float(count))
            self.log("valid/llm_ndcg@10", results[(1.0, count)]["ndcg@10"])
            self.log("valid/collaborative_ndcg@10", results[(0.0, count)]["ndcg@10"])
            metrics = results[best]
        else:
            metrics = self._gathered_metrics([self._val_acc])[0]
        # every value is already over all processes' examples: no sync_dist averaging on top
        for key, value in metrics.items():
            self.log(f"valid/{key}", value, prog_bar=key == "ndcg@10")

    def _gathered_metrics(self, accumulators: list[Any]) -> list[dict[str, float]]:
        """Metrics of each accumulator over *all* processes' examples: per-rank metric sums reduced
        with ``sum`` (exact with uneven shards; a rank without examples still joins the reduce)."""
        from recdistill.metrics import metrics_from_sums, ranking_metric_sums

        ks = self.hp.eval_ks or [5, 10, 20]
        empty = torch.empty(0, dtype=torch.long)
        sums = torch.cat([ranking_metric_sums(acc.ranks() if acc is not None else empty, ks)
                          for acc in accumulators])  # [A, 1 + 3k]
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            dtype = torch.float32 if self.device.type == "mps" else torch.float64
            sums = trainer.strategy.reduce(sums.to(self.device, dtype), reduce_op="sum").double().cpu()
        return [metrics_from_sums(row, ks) for row in sums]

    def _gathered_mix_metrics(self) -> dict[tuple[float, float | None], dict[str, float]]:
        """Validation metrics of every ``(alpha, c_cf)`` over all processes' examples, so that every
        rank chooses the same fusion on the whole set."""
        keys = list(self._val_mix)
        rows = self._gathered_metrics([self._val_mix[k] for k in keys])
        return {k: row for k, row in zip(keys, rows) if row}

    def on_test_epoch_start(self) -> None:
        self._test_acc = self._accumulator()

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._test_acc.update(self.teacher(batch["input_ids"]), batch["target"], batch.get("history"),
                              mask_seen=self.hp.mask_seen)

    def on_test_epoch_end(self) -> None:
        for key, value in self._gathered_metrics([self._test_acc])[0].items():
            self.log(f"test/{key}", value)

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        from recdistill.teacher.emit_scoring import predict_signals

        if self.emit_config is None:
            return {"scores": self.teacher(batch["input_ids"])}
        return predict_signals(self.teacher, batch, **self.emit_config)

    # ------------------------------------------------------------------ resume checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if is_trained_checkpoint_key(k)}
        checkpoint["hyper_parameters"] = {"dataset_fingerprint": self.dataset_fingerprint}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = migrate_checkpoint_keys(checkpoint["state_dict"])
        missing = sorted(k for k in self.state_dict() if is_trained_checkpoint_key(k)
                         and k not in checkpoint["state_dict"])
        if missing:
            from recdistill.errors import CheckpointError

            raise CheckpointError(f"teacher checkpoint lacks trained weights {missing[:5]} (of {len(missing)}): "
                                  f"it was written by a different teacher configuration or dataset; use another "
                                  f"--output-dir or run without --resume")
