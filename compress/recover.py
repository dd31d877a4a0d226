"""Recovery fine-tuning of a compressed sequential student, with its uncompressed parent and/or the
LLM teacher's signal cache as teacher.

``loss = task CE + kd_weight * τ² · KL(softmax(parent/τ) ‖ softmax(student/τ))
+ cache_weight * τ² · KL(softmax(teacher/τ) ‖ softmax(student/τ))`` on the training batches: the
task loss is ``SequentialRecommender.task_loss`` (causal next-item CE, or the cloze task for
BERT4Rec) and both distillation terms are the registered ``soft_kl`` loss, fed the parent's logits
at the same supervised positions of the same (for cloze: same masked) input tokens, and the
teacher's logits rebuilt from the cache (``TeacherSignals.teacher_logits``) for the positions'
example ids (positions the cache does not cover get no cache term; the coverage is returned).
``parent=None`` (or ``kd_weight=0``) and no ``signals`` is a plain task fine-tune (also used to
train test students).

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
    signals: Any = None,
    cache_weight: float = 1.0,
) -> dict[str, Any]:
    """Fine-tune ``student`` in place; returns ``{"epochs", "steps", "loss": [per-epoch means], ...}``.

    ``train_batches``: re-iterable (a DataLoader), yielding the sequential training batch format
    (with ``example_ids`` when ``signals`` is given). ``signals``: a teacher signal cache (folder or
    :class:`~recdistill.teacher.cache_reader.TeacherSignals`) with ``score_user`` rows.
    """
    if epochs < 0 or kd_weight < 0 or cache_weight < 0:
        raise ValueError("epochs, kd_weight and cache_weight must be >= 0")
    torch.manual_seed(seed)
    task = SequentialRecommender(student)
    cloze = getattr(student, "objective", "next_item") == "cloze"
    kd = build_loss("soft_kl", temperature=temperature) if parent is not None and kd_weight > 0 else None
    cache = _open_cache(signals, student) if signals is not None and cache_weight > 0 else None
    cache_kd = build_loss("soft_kl", temperature=temperature) if cache is not None else None
    frozen = {}
    if parent is not None:
        parent.eval()
        frozen = {p: p.requires_grad for p in parent.parameters()}
        for p in frozen:
            p.requires_grad_(False)
    try:
        history = _loop(student, parent, task, kd, cloze, train_batches, epochs=epochs, lr=lr, kd_weight=kd_weight,
                        temperature=temperature, weight_decay=weight_decay, max_steps=max_steps,
                        cache=cache, cache_kd=cache_kd, cache_weight=cache_weight)
    finally:
        for p, flag in frozen.items():  # the parent leaves as it came
            p.requires_grad_(flag)
    teachers = [t for t, on in (("unpruned parent", kd is not None), ("teacher cache", cache is not None)) if on]
    history["teacher"] = " + ".join(teachers) or None
    if cache is not None:
        history["cache"] = str(cache.directory)
    return history


def _open_cache(signals: Any, student: nn.Module) -> Any:
    from recdistill.teacher.cache_reader import TeacherSignals

    cache = signals if isinstance(signals, TeacherSignals) else TeacherSignals(signals, num_items=student.num_items)
    cache.require(("score_user",))
    return cache


def _cache_term(cache: Any, cache_kd: nn.Module, out: Any) -> tuple[torch.Tensor | None, int]:
    """The cache's soft-label KL over the positions it covers, and how many it covered."""
    if out.example_ids is None:
        raise ValueError("recovery from a teacher cache needs training batches with example_ids")
    ids = out.example_ids
    teacher, valid = cache.teacher_logits(ids.clamp(min=0).cpu(), device=out.logits.device)
    keep = valid.to(out.logits.device) & (ids >= 0)
    if not bool(keep.any()):
        return None, 0
    return cache_kd(out.logits[keep], teacher_logits=teacher[keep]), int(keep.sum())


def _loop(student: nn.Module, parent: nn.Module | None, task: SequentialRecommender, kd: nn.Module | None,
          cloze: bool, train_batches: Iterable[Mapping[str, torch.Tensor]], *, epochs: int, lr: float,
          kd_weight: float, temperature: float, weight_decay: float, max_steps: int | None,
          cache: Any = None, cache_kd: nn.Module | None = None, cache_weight: float = 0.0) -> dict[str, Any]:
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    history: list[float] = []
    kd_history: list[float] = []
    cache_history: list[float] = []
    covered = supervised = 0
    steps = 0
    student.train()
    for _ in range(epochs):
        total, kd_total, cache_total, n = 0.0, 0.0, 0.0, 0
        for batch in train_batches:
            out = task.task_loss(batch)
            loss = out.loss
            if kd is not None:
                teacher = _parent_logits(parent, out.input_ids, out.positions, cloze)
                kd_value = kd(out.logits, teacher_logits=teacher)
                loss = loss + kd_weight * kd_value
                kd_total += float(kd_value.detach())
            if cache is not None:
                cache_value, count = _cache_term(cache, cache_kd, out)
                covered, supervised = covered + count, supervised + len(out.logits)
                if cache_value is not None:
                    loss = loss + cache_weight * cache_value
                    cache_total += float(cache_value.detach())
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
        cache_history.append(cache_total / max(n, 1))
        if max_steps is not None and steps >= max_steps:
            break
    student.eval()
    return {"epochs": len(history), "steps": steps, "loss": history, "kd_loss": kd_history if kd else None,
            "cache_loss": cache_history if cache is not None else None,
            "cache_coverage": covered / supervised if supervised else None,
            "lr": lr, "kd_weight": kd_weight if kd else 0.0, "cache_weight": cache_weight if cache is not None else 0.0,
            "temperature": temperature}
