"""Soft-label distillation losses (KL over the full catalogue / top-K, ListNet, CTR soft BCE) vs.
brute-force loop references (fast, CPU)."""

from __future__ import annotations

import math

import pytest
import torch

from recdistill.distill import CTRSoftLabelLoss, ListNetLoss, SoftLabelKLLoss

torch.set_default_dtype(torch.float32)


def _data(B=4, N=12, K=4, seed=0, pad_rows=()):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, N + 1, generator=g, dtype=torch.float64)
    ids = torch.stack([torch.randperm(N, generator=g)[:K] + 1 for _ in range(B)])
    for b, n_missing in pad_rows:
        ids[b, K - n_missing :] = 0
    return logits, ids


# ----------------------------------------------------------------------------- soft labels
def _brute_kl(t_scores, s_scores, tau):
    zt = sum(math.exp(x / tau) for x in t_scores)
    zs = sum(math.exp(x / tau) for x in s_scores)
    kl = 0.0
    for a, c in zip(t_scores, s_scores):
        p = math.exp(a / tau) / zt
        q = math.exp(c / tau) / zs
        kl += p * math.log(p / q)
    return kl * tau * tau


@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_soft_kl_full_matches_brute_force(tau):
    B, N = 3, 9
    g = torch.Generator().manual_seed(5)
    s = torch.randn(B, N + 1, generator=g, dtype=torch.float64)
    t = torch.randn(B, N + 1, generator=g, dtype=torch.float64)
    t[:, 0] = 50.0  # padding column must be ignored
    got = SoftLabelKLLoss(temperature=tau)(s, teacher_logits=t)
    ref = sum(_brute_kl(t[b, 1:].tolist(), s[b, 1:].tolist(), tau) for b in range(B)) / B
    assert got.item() == pytest.approx(ref, rel=1e-10)


def test_soft_kl_zero_iff_equal_and_teacher_gets_no_grad():
    g = torch.Generator().manual_seed(6)
    z = torch.randn(4, 11, generator=g)
    loss = SoftLabelKLLoss(temperature=2.0)
    assert loss(z, teacher_logits=z.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(z, teacher_logits=z + 3.0).item() == pytest.approx(0.0, abs=1e-5)  # shift-invariant
    s = torch.randn(4, 11, generator=g, requires_grad=True)
    t = z.clone().requires_grad_(True)
    out = loss(s, teacher_logits=t)
    assert out.item() > 0
    out.backward()
    assert t.grad is None and s.grad is not None and torch.all(s.grad[:, 0] == 0)


def test_soft_kl_topk_matches_brute_force_with_target_and_padding():
    B, N, K, tau = 3, 12, 4, 2.0
    s, ids = _data(B=B, N=N, K=K, seed=7, pad_rows=[(1, 1)])
    g = torch.Generator().manual_seed(8)
    scores = torch.randn(B, K, generator=g, dtype=torch.float64)
    target = torch.tensor([0, 0, 0])
    for b in range(B):
        target[b] = next(i for i in range(1, N + 1) if i not in ids[b].tolist())
    target[2] = ids[2, 1]  # target already in the list: counted once
    tscore = torch.randn(B, generator=g, dtype=torch.float64)
    got = SoftLabelKLLoss(temperature=tau)(
        s, teacher_topk_ids=ids, teacher_topk_scores=scores, target=target, teacher_target_score=tscore
    )
    ref = 0.0
    for b in range(B):
        items, ts = [], []
        for k in range(K):
            if int(ids[b, k]) > 0:
                items.append(int(ids[b, k]))
                ts.append(scores[b, k].item())
        if int(target[b]) not in items:
            items.append(int(target[b]))
            ts.append(tscore[b].item())
        ref += _brute_kl(ts, [s[b, i].item() for i in items], tau)
    assert got.item() == pytest.approx(ref / B, rel=1e-10)
    # without target: only the top-K items
    got2 = SoftLabelKLLoss(temperature=tau)(s, teacher_topk_ids=ids, teacher_topk_scores=scores)
    ref2 = 0.0
    for b in range(B):
        items = [int(i) for i in ids[b].tolist() if i > 0]
        ts = [scores[b, k].item() for k in range(K) if int(ids[b, k]) > 0]
        ref2 += _brute_kl(ts, [s[b, i].item() for i in items], tau)
    assert got2.item() == pytest.approx(ref2 / B, rel=1e-10)


def test_soft_kl_topk_equals_full_when_k_covers_catalogue():
    B, N, tau = 3, 7, 1.5
    g = torch.Generator().manual_seed(9)
    s = torch.randn(B, N + 1, generator=g, dtype=torch.float64)
    t = torch.randn(B, N + 1, generator=g, dtype=torch.float64)
    full = SoftLabelKLLoss(temperature=tau)(s, teacher_logits=t)
    order = torch.argsort(t[:, 1:], dim=1, descending=True) + 1
    topk = SoftLabelKLLoss(temperature=tau)(s, teacher_topk_ids=order, teacher_topk_scores=t.gather(1, order))
    assert topk.item() == pytest.approx(full.item(), rel=1e-10)
    # K = N-1 plus the target (the one item left out) also covers the catalogue
    target = order[:, -1]
    ids = order[:, :-1]
    with_t = SoftLabelKLLoss(temperature=tau)(
        s, teacher_topk_ids=ids, teacher_topk_scores=t.gather(1, ids), target=target,
        teacher_target_score=t.gather(1, target[:, None]).squeeze(1),
    )
    assert with_t.item() == pytest.approx(full.item(), rel=1e-10)


def test_soft_kl_missing_inputs_error():
    s = torch.randn(2, 5)
    with pytest.raises(ValueError, match="teacher_topk_scores"):
        SoftLabelKLLoss()(s, teacher_topk_ids=torch.tensor([[1, 2], [3, 4]]))
    with pytest.raises(ValueError, match="teacher_target_score"):
        SoftLabelKLLoss()(
            s, teacher_topk_ids=torch.tensor([[1, 2], [3, 4]]), teacher_topk_scores=torch.randn(2, 2),
            target=torch.tensor([3, 1]),
        )
    with pytest.raises(ValueError, match="0..4"):
        SoftLabelKLLoss()(s, teacher_topk_ids=torch.tensor([[1, 5], [3, 4]]), teacher_topk_scores=torch.randn(2, 2))


def test_listnet_matches_brute_force_and_grads():
    B, N, K, tau = 3, 10, 4, 2.0
    s, ids = _data(B=B, N=N, K=K, seed=11, pad_rows=[(0, 2)])
    scores = torch.randn(B, K, dtype=torch.float64, generator=torch.Generator().manual_seed(12))
    s = s.requires_grad_(True)
    sc = scores.clone().requires_grad_(True)
    got = ListNetLoss(temperature=tau)(s, ids, sc)
    ref = 0.0
    for b in range(B):
        ks = [k for k in range(K) if int(ids[b, k]) > 0]
        zt = sum(math.exp(scores[b, k].item() / tau) for k in ks)
        zs = sum(math.exp(s[b, int(ids[b, k])].item() / tau) for k in ks)
        for k in ks:
            p = math.exp(scores[b, k].item() / tau) / zt
            q = math.exp(s[b, int(ids[b, k])].item() / tau) / zs
            ref += -p * math.log(q)
    assert got.item() == pytest.approx(ref / B, rel=1e-10)
    got.backward()
    assert sc.grad is None and torch.all(s.grad[:, 0] == 0)
    # ListNet = top-K KL / τ² + teacher entropy (constant): same student gradient up to τ²
    s2 = s.detach().clone().requires_grad_(True)
    (SoftLabelKLLoss(temperature=tau)(s2, teacher_topk_ids=ids, teacher_topk_scores=scores) / tau**2).backward()
    assert torch.allclose(s.grad, s2.grad, atol=1e-12)


def test_ctr_soft_bce_matches_brute_force():
    g = torch.Generator().manual_seed(13)
    s = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    tau, alpha = 2.0, 0.7
    got = CTRSoftLabelLoss(temperature=tau, alpha=alpha)(s, t, y)
    ref = 0.0
    for j in range(6):
        q = 1 / (1 + math.exp(-s[j].item()))
        p = 1 / (1 + math.exp(-t[j].item() / tau))
        soft = -(p * math.log(q) + (1 - p) * math.log(1 - q))
        hard = -(y[j].item() * math.log(q) + (1 - y[j].item()) * math.log(1 - q))
        ref += alpha * soft + (1 - alpha) * hard
    assert got.item() == pytest.approx(ref / 6, rel=1e-10)
    got.backward()
    assert t.grad is None and s.grad is not None
    with pytest.raises(ValueError, match="label"):
        CTRSoftLabelLoss(alpha=0.5)(s, t)
    assert torch.isfinite(CTRSoftLabelLoss(alpha=1.0)(s, t))



def test_full_catalogue_kl_equals_the_masked_log_softmax_formula_in_value_and_gradient():
    from recdistill.distill.soft_label import _kl_rows, full_catalogue_kl

    torch.manual_seed(4)
    teacher = torch.randn(5, 30, dtype=torch.float64) * 3
    teacher[:, 0] = float("-inf")
    teacher[2, 7] = float("-inf")  # an item the teacher masks: probability 0
    student = torch.randn(5, 30, dtype=torch.float64)
    a, b = student.clone().requires_grad_(True), student.clone().requires_grad_(True)
    valid = torch.ones_like(teacher, dtype=torch.bool)
    valid[:, 0] = False
    new = full_catalogue_kl(teacher, a, 2.0)
    old = _kl_rows(teacher, b, valid, 2.0)  # the former full-catalogue path
    assert torch.allclose(new, old, rtol=1e-10, atol=1e-12)
    w = torch.rand(5, dtype=torch.float64)
    (w * new).sum().backward()
    (w * old).sum().backward()
    assert torch.allclose(a.grad, b.grad, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda s: full_catalogue_kl(teacher, s, 2.0), (student.clone().requires_grad_(True),))
