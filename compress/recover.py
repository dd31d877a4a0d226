"""Recovery fine-tuning of a compressed sequential student, with its uncompressed parent as teacher.

``loss = task CE + kd_weight * τ² · KL(softmax(parent/τ) ‖ softmax(student/τ))`` on the training
batches: the task loss is ``SequentialRecommender.task_loss`` (causal next-item CE, or the cloze
task for BERT4Rec) and the distillation term is the registered ``soft_kl`` loss, fed the parent's
logits at the same supervised positions of the same (for cloze: same masked) input tokens.
``parent=None`` or ``kd_weight=0`` is a plain task fine-tune (also used to train test students).

A plain loop (a handful of epochs on CPU, no checkpoints): the parent is frozen and in eval
mode, the student trains with Adam; dropout follows the student's own setting.
A PQ student recovers the same way: its codebooks are parameters, its codes are buffers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from recdistill.distill import build_loss
from recdistill.student.tasks import SequentialRecommender


def _parent_logits(parent: nn.Module, input_ids: torch.Tensor, positions: torch.Tensor, cloze: bool) -> torch.Tensor:
    with torch.no_grad():
        encoded = parent.encode_masked(input_ids) if cloze else parent.encode(input_ids)
        return parent.score(encoded.sequence[positions])


def recover(
    student: nn.Module,
    parent: nn.Module | None,
    train_batches: Iterable[Mapping[str, torch.Tensor]],
    *,
    epochs: int = 1,
    lr: float = 1e-3,
    kd_weight: float = 1.0,
    temperature: float = 2.0,
    weight_decay: float = 0.0,
    max_steps: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Fine-tune ``student`` in place; returns ``{"epochs", "steps", "loss": [per-epoch means], ...}``.

    ``train_batches``: re-iterable (a DataLoader), yielding the sequential training batch format.
    """
    if epochs < 0 or kd_weight < 0:
        raise ValueError("epochs and kd_weight must be >= 0")
    torch.manual_seed(seed)
    task = SequentialRecommender(student)
    cloze = getattr(student, "objective", "next_item") == "cloze"
    kd = build_loss("soft_kl", temperature=temperature) if parent is not None and kd_weight > 0 else None
    frozen = {}
    if parent is not None:
        parent.eval()
        frozen = {p: p.requires_grad for p in parent.parameters()}
        for p in frozen:
            p.requires_grad_(False)
    try:
        return _loop(student, parent, task, kd, cloze, train_batches, epochs=epochs, lr=lr, kd_weight=kd_weight,
                     temperature=temperature, weight_decay=weight_decay, max_steps=max_steps)
    finally:
        for p, flag in frozen.items():  # the parent leaves as it came
            p.requires_grad_(flag)


def _loop(student: nn.Module, parent: nn.Module | None, task: SequentialRecommender, kd: nn.Module | None,
          cloze: bool, train_batches: Iterable[Mapping[str, torch.Tensor]], *, epochs: int, lr: float,
          kd_weight: float, temperature: float, weight_decay: float, max_steps: int | None) -> dict[str, Any]:
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    history: list[float] = []
    kd_history: list[float] = []
    steps = 0
    student.train()
    for _ in range(epochs):
        total, kd_total, n = 0.0, 0.0, 0
        for batch in train_batches:
            out = task.task_loss(batch)
            loss = out.loss
            if kd is not None:
                teacher = _parent_logits(parent, out.input_ids, out.positions, cloze)
                kd_value = kd(out.logits, teacher_logits=teacher)
                loss = loss + kd_weight * kd_value
                kd_total += float(kd_value.detach())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            n += 1
            steps += 1
            if max_steps is not None and steps >= max_steps:
                break
        history.append(total / max(n, 1))
        kd_history.append(kd_total / max(n, 1))
        if max_steps is not None and steps >= max_steps:
            break
    student.eval()
    return {"epochs": len(history), "steps": steps, "loss": history, "kd_loss": kd_history if kd else None,
            "lr": lr, "kd_weight": kd_weight if kd else 0.0, "temperature": temperature,
            "teacher": "unpruned parent" if kd else None}
