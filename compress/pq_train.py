"""Joint training of a sequential student with a product-quantised item table (RecJPQ: Petrov &
Macdonald, "RecJPQ: Training Large-Catalogue Sequential Recommenders", WSDM 2024).

Unlike post-hoc PQ (``pq_compress``: k-means codes fitted on a trained table), RecJPQ fixes each
item's ``M`` sub-ids BEFORE training (``compress/pq_codes.py``; ``svd`` by default) and trains the
student from scratch with the item table ``E[i] = [C_1[c_1(i)] ; ... ; C_M[c_M(i)]]``: only the
``M`` codebooks ``C_m [K, d / M]`` are parameters, the codes are buffers. The scoring layer is tied
to the same table (``logits = h E^T``; SASRec's ``score``), so both the input lookup and the
output layer learn through the codebooks.

``train_joint_pq(dm, name, init_args, M, K)`` trains exactly like ``recdistill student fit``
(``SequentialRecommender``: full-softmax CE, Adam, validation NDCG@10 with the history masked,
early stopping on it, the best validation epoch kept; test evaluated once, with that epoch) and
returns the student plus ``{"valid", "test", "best_epoch", "item_table_ratio", ...}``. With a
``parent`` and ``kd_weight > 0`` the PQ student also learns from its fp32 parent (the model it
replaces): ``L = CE + kd_weight · τ² · KL(softmax(parent/τ) ‖ softmax(student/τ))`` at every
supervised position (the registered ``soft_kl``, Hinton et al. 2015; the parent frozen). Any
registered sequential student with an ``nn.Embedding`` ``item_embedding`` works (extra rows
such as BERT4Rec's mask token get seeded random codes). Save it with ``save_pq_student``.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from torch import nn

from recdistill.compress.pq import PQItemEmbedding, pq_table_bytes
from recdistill.compress.pq_codes import assign_codes, random_codes


def fp32_table_bytes(num_embeddings: int, embedding_dim: int) -> int:
    """Bytes of the fp32 item table the PQ table replaces: ``N * d * 4``."""
    return num_embeddings * embedding_dim * 4


def build_joint_pq_student(name: str, init_args: dict[str, Any], codes: torch.Tensor, num_centroids: int, *,
                           seed: int = 0, std: float = 0.02) -> nn.Module:
    """A fresh student ``name(**init_args)`` whose item table is a PQ table over the fixed ``codes``."""
    from recdistill.student import build_student

    torch.manual_seed(seed)
    model = build_student(name, **init_args)
    old = getattr(model, "item_embedding", None)
    if not isinstance(old, nn.Embedding):
        raise TypeError(f"{type(model).__name__} has no nn.Embedding item_embedding to product-quantise")
    extra = old.num_embeddings - codes.shape[0]
    if extra < 0:
        raise ValueError(f"{codes.shape[0]} code rows for an item table of {old.num_embeddings} rows")
    if extra:  # extra tokens (BERT4Rec's mask): seeded random codes
        more = random_codes(extra, codes.shape[1], num_centroids, seed=seed + 1)[1:]
        codes = torch.cat([codes, more])
    model.item_embedding = PQItemEmbedding.from_codes(codes, old.embedding_dim, num_centroids,
                                                      padding_idx=old.padding_idx, std=std, seed=seed)
    return model


class _KeepBest:
    """Lightning callback keeping (in memory) the student state of the best validation epoch."""

    def __new__(cls, monitor: str, progress: bool = False):  # built lazily: importing needs no Lightning
        from lightning.pytorch.callbacks import Callback

        class KeepBest(Callback):
            def __init__(self) -> None:
                self.best, self.epoch, self.state = float("-inf"), -1, None

            def on_validation_end(self, trainer, pl_module) -> None:
                if trainer.sanity_checking:
                    return
                value = trainer.callback_metrics.get(monitor)
                if progress:
                    print(f"[pq_joint] epoch {trainer.current_epoch} {monitor} "
                          f"{float('nan') if value is None else float(value):.4f}", flush=True)
                if value is not None and float(value) > self.best:
                    self.best, self.epoch = float(value), trainer.current_epoch
                    self.state = copy.deepcopy(pl_module.student.state_dict())

        return KeepBest()


def _parent_distilled_task(student: nn.Module, parent: nn.Module, num_items: int, *, kd_weight: float,
                           kd_temperature: float, **task_args: Any):
    """A ``SequentialRecommender`` whose training loss adds ``kd_weight`` x soft-label KL to the frozen
    ``parent``'s logits at the same supervised positions (same masked inputs for a cloze student)."""
    from recdistill.compress.recover import _parent_logits
    from recdistill.distill import build_loss
    from recdistill.student.tasks import SequentialRecommender

    class ParentDistilled(SequentialRecommender):
        def __init__(self) -> None:
            super().__init__(student=student, num_items=num_items, **task_args)
            self._parent = [parent.eval()]  # a list: not a submodule (not optimised, not saved); read under no_grad
            self.kd = build_loss("soft_kl", temperature=kd_temperature)
            self.cloze = getattr(student, "objective", "next_item") == "cloze"

        def on_fit_start(self) -> None:
            self._parent[0].to(self.device)

        def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
            out = self.task_loss(batch)
            teacher = _parent_logits(self._parent[0], out.input_ids, out.positions, self.cloze)
            kd = self.kd(out.logits, teacher_logits=teacher)
            loss = out.loss + kd_weight * kd
            size = batch["input_ids"].shape[0]
            self.log("train/task_loss", out.loss, batch_size=size)
            self.log("train/kd_loss", kd, batch_size=size)
            self.log("train/loss", loss, prog_bar=True, batch_size=size)
            return loss

    return ParentDistilled()


def train_joint_pq(dm: Any, name: str, init_args: dict[str, Any], *, num_subspaces: int = 8,
                   num_centroids: int = 64, codes: str = "svd", max_epochs: int = 200, patience: int = 20,
                   lr: float = 1e-3, weight_decay: float = 0.0, seed: int = 0,
                   limit_train_batches: int | float | None = None, parent: nn.Module | None = None,
                   kd_weight: float = 0.0, kd_temperature: float = 2.0,
                   progress: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``name(**init_args)`` from scratch with a RecJPQ item table on ``dm`` (a
    ``SequentialDataModule``); model selection on validation NDCG@10 (module docstring)."""
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping

    from recdistill.student.tasks import SequentialRecommender

    monitor = "valid/ndcg@10"
    L.seed_everything(seed, workers=True, verbose=False)
    split = dm.split
    sequences = [split.train_sequence(u) for u in range(split.num_users)]
    started = time.perf_counter()
    assigned = assign_codes(codes, sequences, split.num_items, num_subspaces, num_centroids, seed=seed)
    code_seconds = time.perf_counter() - started
    model = build_joint_pq_student(name, {**init_args, "num_items": split.num_items}, assigned, num_centroids,
                                   seed=seed)
    if kd_weight < 0 or kd_temperature <= 0:
        raise ValueError(f"pq_joint: kd_weight must be >= 0 and kd_temperature > 0, got {kd_weight}, {kd_temperature}")
    if kd_weight > 0 and parent is None:
        raise ValueError("pq_joint: kd_weight > 0 needs the fp32 parent to distil from")
    task_args = {"lr": lr, "weight_decay": weight_decay, "mask_seen": True}
    if kd_weight > 0:
        task = _parent_distilled_task(model, parent, split.num_items, kd_weight=kd_weight,
                                      kd_temperature=kd_temperature, **task_args)
    else:
        task = SequentialRecommender(student=model, num_items=split.num_items, **task_args)
    from recdistill.training import quiet_known_noise

    quiet_known_noise()  # Lightning's tips and known-harmless warnings, as through the CLI
    keep = _KeepBest(monitor, progress)
    trainer = L.Trainer(max_epochs=max_epochs, accelerator="auto", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        deterministic=True, num_sanity_val_steps=0,
                        limit_train_batches=limit_train_batches,
                        callbacks=[EarlyStopping(monitor=monitor, mode="max", patience=patience), keep])
    started = time.perf_counter()
    trainer.fit(task, datamodule=dm)
    train_seconds = time.perf_counter() - started
    if keep.state is None:
        raise RuntimeError(f"no epoch was selected on {monitor}: did validation run?")
    task.student.load_state_dict(keep.state)
    valid = {k[6:]: float(v) for k, v in trainer.validate(task, datamodule=dm, verbose=False)[0].items()
             if k.startswith("valid/")}
    test = {k[5:]: float(v) for k, v in trainer.test(task, datamodule=dm, verbose=False)[0].items()
            if k.startswith("test/")}
    table = model.item_embedding
    before = fp32_table_bytes(table.num_embeddings, table.embedding_dim)
    after = pq_table_bytes(table)
    info = {"method": "joint (RecJPQ)", "codes": codes, "num_subspaces": num_subspaces,
            "num_centroids": num_centroids, "seed": seed, "lr": lr, "weight_decay": weight_decay,
            "max_epochs": max_epochs, "patience": patience, "best_epoch": keep.epoch,
            "kd_weight": kd_weight, "kd_temperature": kd_temperature if kd_weight > 0 else None,
            "teacher": "fp32 parent" if kd_weight > 0 else None,
            "epochs": trainer.current_epoch, "train_seconds": round(train_seconds, 2),
            "code_seconds": round(code_seconds, 3), "item_table_bytes_before": before,
            "item_table_bytes_after": after, "item_table_ratio": before / after,
            "valid_ndcg@10": valid.get("ndcg@10"), "test_ndcg@10": test.get("ndcg@10"),
            "valid": valid, "test": test}
    return model.eval(), info


__all__ = ["build_joint_pq_student", "fp32_table_bytes", "train_joint_pq"]
