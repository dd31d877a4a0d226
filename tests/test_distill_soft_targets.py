"""Soft targets prepared once per row (``distill/soft_targets.py``): the same KL value and gradient
as the loss over raw teacher logits, and the row memory fills each row once."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recdistill.distill import SoftLabelKLLoss
from recdistill.distill.soft_label import full_catalogue_kl
from recdistill.distill.soft_targets import RowMemory, SoftTargetSource, pack_soft_targets, soft_target_kl


def _logits(rows=5, items=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(rows, items + 1, generator=g, dtype=torch.float64) * 3
    s = torch.randn(rows, items + 1, generator=g, dtype=torch.float64)
    return t, s


def test_packed_soft_targets_hold_probabilities_and_negative_entropy():
    t, _ = _logits()
    t[1, 4] = float("-inf")  # a masked item: probability 0, no contribution
    packed = pack_soft_targets(t, 2.0)
    p = torch.softmax(t[:, 1:] / 2.0, dim=1)
    assert packed.dtype == t.dtype and torch.allclose(packed[:, 1:], p)
    assert packed[1, 4] == 0
    row = [x for x in p[0].tolist()]
    assert packed[0, 0].item() == pytest.approx(sum(x * math.log(x) for x in row), rel=1e-5)


@pytest.mark.parametrize("tau", [1.0, 2.5])
def test_kl_from_soft_targets_equals_kl_from_logits_value_and_gradient(tau):
    t, s = _logits(seed=1)
    t[2, 3] = float("-inf")
    packed = pack_soft_targets(t, tau).double()
    a = s.clone().requires_grad_(True)
    b = s.clone().requires_grad_(True)
    mine, reference = soft_target_kl(a, packed, tau), full_catalogue_kl(t, b, tau)
    assert torch.allclose(mine, reference, atol=1e-6)
    weights = torch.arange(1.0, 6.0, dtype=torch.float64)
    (mine * weights).sum().backward()
    (reference * weights).sum().backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-7) and torch.all(a.grad[:, 0] == 0)
    assert torch.autograd.gradcheck(lambda x: soft_target_kl(x, packed, tau), (s.clone().requires_grad_(True),))


def test_loss_reads_a_soft_target_source_like_raw_logits():
    t, s = _logits(rows=4, seed=2)
    asked: list[float] = []

    def prepare(tau: float) -> torch.Tensor:
        asked.append(tau)
        return pack_soft_targets(t, tau)

    loss = SoftLabelKLLoss(temperature=2.0)
    source = SoftTargetSource(prepare)
    via_source = loss(s.float(), teacher_soft=source)
    assert via_source.item() == pytest.approx(loss(s.float(), teacher_logits=t.float()).item(), rel=1e-5)
    loss(s.float(), teacher_soft=source)
    assert asked == [2.0]  # prepared once per batch and temperature
    with pytest.raises(ValueError, match="not several"):
        loss(s.float(), teacher_logits=t.float(), teacher_soft=source)


def test_row_memory_makes_each_row_once():
    made: list[list[int]] = []

    def make(ids: torch.Tensor) -> torch.Tensor:
        made.append(ids.tolist())
        return ids.float().unsqueeze(1).repeat(1, 3)

    memory = RowMemory(np.array([30, 10, 20]), width=3)
    first = memory.rows(torch.tensor([20, 10]), make)
    again = memory.rows(torch.tensor([10, 30, 20]), make)
    assert made == [[20, 10], [30]]
    assert torch.equal(first[:, 0], torch.tensor([20.0, 10.0]))
    assert torch.equal(again[:, 0], torch.tensor([10.0, 30.0, 20.0]))
