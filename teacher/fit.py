"""``fit_teacher``: train a teacher in Lightning, keep the best validation epoch, save only what
was trained (adapter + head) with the base-model reference and the dataset fingerprint."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from recdistill.errors import CheckpointError
from recdistill.teacher.hllm import copy_trainable_state, restore_trainable_state
from recdistill.teacher.lightning_module import TeacherLightningModule, as_teacher
from recdistill.teacher.signals import atomic_write_json
from recdistill.training import RNGStateCheckpoint


class BestTrainableState(L.Callback):
    """Keep an in-memory copy of the trainable weights at the best ``monitor`` value (higher is
    better); never writes the frozen base model to disk (unlike ``ModelCheckpoint``)."""

    def __init__(self, monitor: str = "valid/ndcg@10") -> None:
        self.monitor = monitor
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.state: dict[str, torch.Tensor] | None = None
        self.history: list[dict[str, Any]] = []

    def state_dict(self) -> dict[str, Any]:  # saved in resume checkpoints
        return {"best_score": self.best_score, "best_epoch": self.best_epoch, "state": self.state,
                "history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_score, self.best_epoch = state_dict["best_score"], state_dict["best_epoch"]
        self.state, self.history = state_dict["state"], list(state_dict["history"])

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("valid/", "train/"))}
        self.history.append({"epoch": trainer.current_epoch, "step": trainer.global_step, **metrics})
        score = metrics.get(self.monitor)
        if score is None:
            return
        if self.best_score is None or score > self.best_score:
            self.best_score, self.best_epoch = score, trainer.current_epoch
            self.state = copy_trainable_state(as_teacher(pl_module))  # the teacher's own keys


def fit_teacher(module: torch.nn.Module, datamodule: Any, trainer: L.Trainer, output_dir: str | Path,
                *, monitor: str = "valid/ndcg@10", restore_best: bool = True, resume: bool = False) -> Path:
    """Fit ``module`` (a teacher, or its :class:`TeacherLightningModule`) on ``datamodule``; save the
    best-validation teacher to ``output_dir/adapter``.

    Returns the checkpoint folder (load it with ``HLLMTeacher.from_pretrained`` or
    ``recdistill.teacher.load_teacher``). ``output_dir/fit.json`` records the validation history.
    """
    output_dir = Path(output_dir)
    lightning_module = module if isinstance(module, TeacherLightningModule) else TeacherLightningModule(module)
    module = as_teacher(module)
    fingerprint = getattr(datamodule, "fingerprint", None)
    current = getattr(module, "dataset_fingerprint", None)
    if current is not None and fingerprint is not None and current != fingerprint:
        raise CheckpointError(f"teacher was configured for dataset fingerprint {current} but the data is "
                              f"{fingerprint}: fit it on the data it was made for, or drop model.dataset_fingerprint")
    if fingerprint is not None:
        module.dataset_fingerprint = fingerprint
    best = BestTrainableState(monitor)
    # end-of-epoch checkpoints of the trained weights only (see TeacherLightningModule.on_save_checkpoint)
    checkpoint = ModelCheckpoint(dirpath=output_dir / "checkpoints", save_last=True, save_top_k=0)
    added = [best, checkpoint, RNGStateCheckpoint()]
    trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, ModelCheckpoint)] + added
    last = output_dir / "checkpoints" / "last.ckpt"
    lightning_module.train()
    start = time.perf_counter()
    try:
        trainer.fit(lightning_module, datamodule=datamodule, ckpt_path=str(last) if resume and last.exists() else None,
                    weights_only=True)  # a resume checkpoint never unpickles code
    finally:
        trainer.callbacks = [c for c in trainer.callbacks if c not in added]
    seconds = time.perf_counter() - start
    if restore_best and best.state is not None:
        restore_trainable_state(module, best.state)
    module.eval()
    mixture = None
    if hasattr(module, "mixture_pi"):  # the slice mixture is chosen on the best epoch's validation scores
        from recdistill.teacher.slice_mixture import choose_slice_mixture

        # the whole validation split on every process (not the trainer's per-rank shard), then rank 0's
        # choice for all, so every process holds the same teacher
        loader = datamodule.dataloader("valid") if hasattr(datamodule, "dataloader") else datamodule.val_dataloader()
        mixture = choose_slice_mixture(module, loader, mask_seen=bool(module.hparams.get("mask_seen", True)))
        mixture = trainer.strategy.broadcast(mixture, src=0)
        chosen = mixture.get("chosen")
        module.mixture_max_count.fill_(chosen["max_count"] if chosen else 1.0)
        module.mixture_tau.fill_(chosen["tau"] if chosen else 1.0)
        module.mixture_pi.fill_(chosen["pi"] if chosen else float("nan"))
    path = output_dir / "adapter"
    try:
        if trainer.is_global_zero:  # one writer; under several processes every one holds the same teacher
            path = module.save_pretrained(path)
            atomic_write_json(output_dir / "fit.json", {
                "monitor": monitor,
                "best_epoch": best.best_epoch,
                "best_score": best.best_score,
                "restored_best": bool(restore_best and best.state is not None),
                "epochs_run": trainer.current_epoch,
                "fit_seconds": seconds,
                "history": best.history,
                **({"slice_mixture": mixture} if mixture is not None else {}),
                "dataset_fingerprint": module.dataset_fingerprint,
                "base_model": module.base_ref.to_dict(),
                "checkpoint": str(path),
            })
    finally:  # the other processes return once the checkpoint exists (e.g. to emit from it)
        trainer.strategy.barrier("fit_teacher")
    return path
