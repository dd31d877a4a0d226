"""Ranking distillation losses (RD, DLLM2Rec) and the shared candidate NLL vs. brute-force loop
references (fast, CPU); the soft-label losses are in test_distill_soft_label.py."""

from __future__ import annotations

import math

import pytest
import torch

from recdistill.distill import ImportanceRankingDistillationLoss, RankingDistillationLoss
from recdistill.distill.registry import DISTILL_LOSSES, build_loss, register_loss

torch.set_default_dtype(torch.float32)


# ----------------------------------------------------------------------------- helpers
def _logsig(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _data(B=4, N=12, K=4, seed=0, pad_rows=()):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, N + 1, generator=g, dtype=torch.float64)
    ids = torch.stack([torch.randperm(N, generator=g)[:K] + 1 for _ in range(B)])
    for b, n_missing in pad_rows:
        ids[b, K - n_missing :] = 0
    return logits, ids


def _brute_rank(row, item, excluded):
    """1-based pessimistic rank of ``item`` among non-excluded columns (loop)."""
    r = 1
    for j in range(len(row)):
        if j == item or j in excluded:
            continue
        if row[j] >= row[item]:
            r += 1
    return r


def _brute_rd(logits, ids, lam=1.0, mu=0.1, dynamic=False, renorm=True, history=None):
    rows = []
    for b in range(logits.shape[0]):
        row = logits[b].tolist()
        slots = [(k, int(ids[b, k])) for k in range(ids.shape[1]) if int(ids[b, k]) > 0]
        if not slots:
            continue
        excl = {0}
        if history is not None:
            excl |= {int(h) for h in history[b].tolist()}
        z = sum(math.exp(-(k + 1) / lam) for k, _ in slots)
        ws = []
        for k, i in slots:
            w = math.exp(-(k + 1) / lam) / z
            if dynamic:
                rhat = _brute_rank(row, i, excl)
                w *= max(math.tanh(mu * (rhat - (k + 1))), 0.0)
            ws.append(w)
        if dynamic and renorm:
            s = sum(ws)
            ws = [w / s if s > 0 else 0.0 for w in ws]
        rows.append(sum(w * -_logsig(row[i]) for w, (_, i) in zip(ws, slots)))
    return sum(rows) / len(rows)


# ----------------------------------------------------------------------------- registry
def test_registry_names_and_error():
    for name in ("rd", "dllm2rec", "soft_kl", "listnet", "ctr_soft_bce"):
        assert name in DISTILL_LOSSES
    assert isinstance(build_loss("rd", lam=2.0), RankingDistillationLoss)
    assert build_loss("soft_kl", temperature=3.0).temperature == 3.0
    with pytest.raises(ValueError, match="known losses:.*dllm2rec.*rd"):
        build_loss("no_such_loss")
    with pytest.raises(ValueError, match="already registered"):
        register_loss("rd")(type("Other", (), {}))


# ----------------------------------------------------------------------------- RD
@pytest.mark.parametrize("lam", [1.0, 2.5])
def test_rd_static_matches_brute_force(lam):
    logits, ids = _data(pad_rows=[(1, 2), (3, 4)])
    got = RankingDistillationLoss(lam=lam)(logits, ids)
    assert got.item() == pytest.approx(_brute_rd(logits, ids, lam=lam), rel=1e-10)


@pytest.mark.parametrize("renorm", [True, False])
def test_rd_dynamic_matches_brute_force(renorm):
    logits, ids = _data(B=5, N=30, K=6, seed=1, pad_rows=[(2, 1)])
    logits[0, 5] = logits[0, 7]  # a tie: pessimistic rank
    history = torch.tensor([[1, 2, 0], [3, 0, 0], [4, 5, 6], [0, 0, 0], [7, 8, 9]])
    for mu in (0.1, 0.7):
        loss = RankingDistillationLoss(mu=mu, dynamic=True, renormalize=renorm)
        for h in (None, history):
            got = loss(logits, ids, history=h)
            ref = _brute_rd(logits, ids, mu=mu, dynamic=True, renorm=renorm, history=h)
            assert got.item() == pytest.approx(ref, rel=1e-10)


def test_rd_student_rank_exact_with_ties_and_exclusions():
    from recdistill.distill.ranking import student_ranks
    from recdistill.distill._response_utils import excluded_columns

    logits = torch.tensor([[9.0, 1.0, 3.0, 3.0, 2.0, 5.0]])
    ids = torch.tensor([[2, 3, 4, 1, 5]])
    ranks = student_ranks(logits, ids, excluded_columns(logits, None))
    # col 0 (padding, 9.0) never counts; ties 2/3 pessimistic -> both rank 3
    assert ranks.tolist() == [[3.0, 3.0, 4.0, 5.0, 1.0]]
    ranks_h = student_ranks(logits, ids, excluded_columns(logits, torch.tensor([[5, 3]])))
    # items 5 and 3 excluded from the competitors: item 2 now beats everything left
    assert ranks_h.tolist() == [[1.0, 2.0, 2.0, 3.0, 1.0]]


def test_rd_weights_sum_to_one_and_padding_ignored():
    logits, ids = _data(B=3, N=20, K=5, pad_rows=[(1, 3)])
    loss = RankingDistillationLoss(mu=0.5)
    for dyn in (False, True):
        w = loss.weights(logits, ids, dynamic=dyn)
        assert torch.all(w[ids == 0] == 0)
        sums = w.sum(1)
        for b in range(3):
            assert sums[b].item() == pytest.approx(1.0) or (dyn and sums[b].item() == 0.0)
    # padding id 0 contributes nothing even if the padding logit is huge or tiny
    l1 = loss(logits, ids)
    logits2 = logits.clone()
    logits2[:, 0] = -1e4
    assert loss(logits2, ids).item() == pytest.approx(l1.item())
    # a row of only padding is excluded from the mean
    ids_all = ids.clone()
    ids_all[2] = 0
    per_row = RankingDistillationLoss(reduction="none")(logits, ids_all)
    assert per_row[2].item() == 0.0
    assert RankingDistillationLoss()(logits, ids_all).item() == pytest.approx(per_row[:2].mean().item())


def test_rd_dynamic_weight_zero_when_student_ranks_above_teacher():
    N = 10
    logits = torch.zeros(1, N + 1)
    logits[0, 1:] = torch.arange(N, 0, -1, dtype=torch.float32)  # student ranks item i at rank i
    # teacher ranks item 1 at position 3 (student better: r̂=1 < 3), item 9 at position 1 (student worse)
    ids = torch.tensor([[9, 5, 1]])
    loss = RankingDistillationLoss(mu=0.5, dynamic=True, renormalize=False)
    w = loss.weights(logits, ids)
    assert w[0, 2].item() == 0.0  # item 1: r̂=1 < r=3 (student already ranks it higher)
    assert w[0, 1].item() > 0.0  # item 5: r̂=5 > r=2 (student ranks it lower)
    assert w[0, 0].item() > 0.0  # item 9: r̂=9 > r=1
    # equal ranks also give zero weight
    assert loss.weights(logits, torch.tensor([[1, 2, 3]])).abs().sum().item() == 0.0
    # with renormalisation a row whose weights all vanish contributes 0
    loss_n = RankingDistillationLoss(mu=0.5, dynamic=True, renormalize=True)
    assert loss_n(logits, torch.tensor([[1, 2, 3]])).item() == 0.0


def test_rd_gradient_only_to_student():
    logits, ids = _data(N=15)
    s = logits.clone().float().requires_grad_(True)
    loss = RankingDistillationLoss(dynamic=True)(s, ids)
    loss.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()
    grad_cols = set(torch.nonzero(s.grad)[:, 1].tolist())
    assert grad_cols <= set(ids.flatten().tolist()) - {0}
    assert torch.all(s.grad[:, 0] == 0)
    # gradient equals w * (σ(ŷ)-1) / B_valid, i.e. the weights are detached (no grad through r̂)
    w = RankingDistillationLoss(dynamic=True).weights(s.detach(), ids)
    exp = torch.zeros_like(s)
    for b in range(ids.shape[0]):
        for k in range(ids.shape[1]):
            i = int(ids[b, k])
            if i:
                exp[b, i] += w[b, k] * (torch.sigmoid(s[b, i].detach()) - 1) / ids.shape[0]
    assert torch.allclose(s.grad, exp, atol=1e-7)


def test_rd_learns_planted_pattern():
    torch.manual_seed(0)
    B, N, K = 6, 40, 5
    teacher = torch.stack([torch.randperm(N)[:K] + 1 for _ in range(B)])
    table = torch.nn.Parameter(torch.randn(B, N + 1) * 0.1)
    opt = torch.optim.Adam([table], lr=0.05)
    loss_fn = RankingDistillationLoss(lam=2.0)
    # only the RD term: it raises the teacher's items (weighted by position), nothing else moves
    before = _overlap(table.detach(), teacher, K)
    for _ in range(200):
        opt.zero_grad()
        loss_fn(table, teacher).backward()
        opt.step()
    after = _overlap(table.detach(), teacher, K)
    assert before < 0.5
    assert after == 1.0


def _overlap(table, teacher, K):
    top = table[:, 1:].topk(K, dim=1).indices + 1
    hits = [len(set(top[b].tolist()) & set(teacher[b].tolist())) / K for b in range(teacher.shape[0])]
    return sum(hits) / len(hits)


# ----------------------------------------------------------------------------- DLLM2Rec
def _brute_dllm2rec(logits, ids, user, E, target, beta=1.0, gamma=(0.3, 0.5, 0.1), conf="sequence", history=None):
    g_p, g_c, g_o = gamma
    rows = []
    for b in range(logits.shape[0]):
        row = logits[b].tolist()
        slots = [(k, int(ids[b, k])) for k in range(ids.shape[1]) if int(ids[b, k]) > 0]
        if not slots:
            continue
        K = ids.shape[1]
        excl = {0} | ({int(h) for h in history[b].tolist()} if history is not None else set())
        order = sorted((j for j in range(len(row)) if j not in excl), key=lambda j: -row[j])
        stud_top = set(order[:K])
        zp = sum(math.exp(-(k + 1) / beta) for k, _ in slots)
        if g_c > 0:
            if conf == "sequence":
                d = math.sqrt(sum((user[b, t] - E[int(target[b]), t]).item() ** 2 for t in range(user.shape[1])))
                wc = [math.exp(-d) for _ in slots]
            else:
                ds = [math.sqrt(sum((user[b, t] - E[i, t]).item() ** 2 for t in range(user.shape[1]))) for _, i in slots]
                zc = sum(math.exp(-d) for d in ds)
                wc = [math.exp(-d) / zc for d in ds]
        else:
            wc = [0.0 for _ in slots]
        raw = []
        for (k, i), c in zip(slots, wc):
            raw.append(g_p * math.exp(-(k + 1) / beta) / zp + g_c * c + g_o * (1.0 if i in stud_top else 0.0))
        s = sum(raw)
        if s == 0:  # no position/confidence term and no overlap: the row weighs 0 (still counted)
            rows.append(0.0)
            continue
        rows.append(sum((w / s) * -_logsig(row[i]) for w, (_, i) in zip(raw, slots)))
    return sum(rows) / len(rows)


def _dllm_data(seed=0, B=4, N=15, K=4, D=3):
    logits, ids = _data(B=B, N=N, K=K, seed=seed, pad_rows=[(2, 2)])
    g = torch.Generator().manual_seed(seed + 100)
    user = torch.randn(B, D, generator=g, dtype=torch.float64)
    E = torch.randn(N + 1, D, generator=g, dtype=torch.float64)
    target = torch.randint(1, N + 1, (B,), generator=g)
    # make the student's top-K overlap the teacher list for some rows
    logits[0, ids[0, 1]] += 10.0
    logits[1, ids[1, 0]] += 10.0
    logits[1, ids[1, 3]] += 10.0
    return logits, ids, user, E, target


@pytest.mark.parametrize("conf", ["sequence", "item"])
@pytest.mark.parametrize("gamma", [(0.3, 0.5, 0.1), (1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.2, 1.0, 0.7)])
def test_dllm2rec_matches_brute_force(conf, gamma):
    logits, ids, user, E, target = _dllm_data()
    history = torch.tensor([[0, 0], [int(ids[1, 0]), 0], [1, 2], [3, 0]])
    loss = ImportanceRankingDistillationLoss(gamma=gamma, confidence=conf, beta=1.5)
    for h in (None, history):
        got = loss(logits, ids, teacher_user=user, teacher_item_emb=E, target=target, history=h)
        ref = _brute_dllm2rec(logits, ids, user, E, target, beta=1.5, gamma=gamma, conf=conf, history=h)
        assert got.item() == pytest.approx(ref, rel=1e-9)


def test_dllm2rec_consistency_term_only_for_student_topk():
    from recdistill.distill.dllm2rec import student_topk_membership

    N = 8
    logits = torch.zeros(2, N + 1)
    logits[:, 1:] = torch.arange(N, 0, -1, dtype=torch.float32)  # student top-3 = {1,2,3}
    logits[:, 0] = 100.0  # padding column must never be in the student's top-K
    ids = torch.tensor([[3, 7, 1], [8, 2, 0]])
    member = student_topk_membership(logits, ids, 3)
    assert member.tolist() == [[True, False, True], [False, True, False]]
    # history masking removes item 1 from the student's ranking -> top-3 = {2,3,4}
    member_h = student_topk_membership(logits, ids, 3, history=torch.tensor([[1], [1]]))
    assert member_h.tolist() == [[True, False, False], [False, True, False]]
    # with only the consistency term the weight is 1/|overlap| on overlapping items, else 0
    w = ImportanceRankingDistillationLoss(gamma=(0.0, 0.0, 1.0)).weights(logits, ids)
    assert torch.allclose(w, torch.tensor([[0.5, 0.0, 0.5], [0.0, 1.0, 0.0]]))


def test_dllm2rec_weights_sum_to_one_padding_and_grad():
    logits, ids, user, E, target = _dllm_data(seed=3)
    s = logits.clone().requires_grad_(True)
    u = user.clone().requires_grad_(True)
    e = E.clone().requires_grad_(True)
    loss_fn = ImportanceRankingDistillationLoss(confidence="item")
    w = loss_fn.weights(s, ids, u, e, target)
    assert torch.all(w[ids == 0] == 0)
    assert torch.allclose(w.sum(1), torch.ones(ids.shape[0], dtype=w.dtype))
    assert not w.requires_grad
    loss = loss_fn(s, ids, teacher_user=u, teacher_item_emb=e, target=target)
    loss.backward()
    assert u.grad is None and e.grad is None
    assert s.grad is not None and torch.all(s.grad[:, 0] == 0)


def test_dllm2rec_missing_inputs_error_names_argument():
    logits, ids, user, E, target = _dllm_data()
    loss = ImportanceRankingDistillationLoss()  # gamma_c = 0.5 > 0
    with pytest.raises(ValueError, match="teacher_user, teacher_item_emb, target"):
        loss(logits, ids)
    with pytest.raises(ValueError, match="target"):
        loss(logits, ids, teacher_user=user, teacher_item_emb=E)
    with pytest.raises(ValueError, match="teacher_item_emb"):
        ImportanceRankingDistillationLoss(confidence="item")(logits, ids, teacher_user=user)
    # gamma_c = 0 drops the term: no inputs needed
    out = ImportanceRankingDistillationLoss(gamma=(0.3, 0.0, 0.1))(logits, ids)
    assert torch.isfinite(out)


def test_dllm2rec_sequence_confidence_shifts_mix():
    """Low-confidence sequences lean on position + consistency; high-confidence on the flat term."""
    logits, ids, user, E, target = _dllm_data()
    E2 = E.clone()
    E2[target] = user  # distance 0 -> w^c = 1 (max confidence)
    loss_fn = ImportanceRankingDistillationLoss(gamma=(0.3, 0.5, 0.0))
    w_hi = loss_fn.weights(logits, ids, user, E2, target)
    E3 = E.clone()
    E3[target] = user + 100.0  # w^c ≈ 0
    w_lo = loss_fn.weights(logits, ids, user, E3, target)
    pos = ImportanceRankingDistillationLoss(gamma=(1.0, 0.0, 0.0)).weights(logits, ids)
    assert torch.allclose(w_lo, pos, atol=1e-6)
    # high confidence flattens the distribution towards uniform
    assert (w_hi[0].max() - w_hi[0].min()) < (w_lo[0].max() - w_lo[0].min())



@pytest.mark.parametrize("name, extra", [("rd", {}), ("dllm2rec", {"gamma": (0.3, 0.0, 0.1)})])
def test_softmax_student_output_matches_hand_value_and_is_shift_invariant(name, extra):
    torch.manual_seed(0)
    logits = torch.randn(4, 12)
    ids = torch.tensor([[3, 5, 0], [1, 2, 4], [7, 0, 0], [11, 10, 9]])
    soft = build_loss(name, student_output="softmax", **extra)
    sig = build_loss(name, **extra)
    # same weights, -log softmax over items 1..N instead of -log sigmoid
    w = sig.weights(logits, ids) if name == "rd" else sig.weights(logits, ids, None, None, None, None)
    log_p = logits[:, 1:].log_softmax(dim=1)
    nll = -torch.cat([torch.zeros(4, 1), log_p], dim=1).gather(1, ids)
    expected = ((w * torch.where(ids > 0, nll, torch.zeros_like(nll))).sum(1)).mean()
    assert torch.allclose(soft(logits, ids), expected, atol=1e-6)
    # a constant added to every logit changes nothing for the softmax form, but lowers the sigmoid one
    assert torch.allclose(soft(logits + 10.0, ids), soft(logits, ids), atol=1e-5)
    assert sig(logits + 10.0, ids) < 0.01 * sig(logits, ids)


def test_unknown_student_output_is_refused():
    with pytest.raises(ValueError, match="student_output must be one of"):
        build_loss("rd", student_output="probit")


def test_softmax_candidate_nll_equals_the_logsumexp_formula_in_value_and_gradient():
    from recdistill.distill._response_utils import candidate_nll

    torch.manual_seed(3)
    logits = torch.randn(6, 20, dtype=torch.float64)
    logits[1, 5] = float("-inf")  # a masked column
    ids = torch.randint(1, 20, (6, 4))
    ids[2, 1] = 0
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    new = candidate_nll(a, ids, "softmax")
    old = torch.logsumexp(b[:, 1:], dim=1, keepdim=True) - b.gather(1, ids)  # the former formula
    valid = ids > 0
    assert torch.allclose(new[valid], old[valid], rtol=1e-12, atol=1e-12)
    w = torch.rand(6, 4, dtype=torch.float64)
    (w * torch.where(valid, new, torch.zeros_like(new))).sum().backward()
    (w * torch.where(valid, old, torch.zeros_like(old))).sum().backward()
    assert torch.allclose(a.grad, b.grad, rtol=1e-12, atol=1e-12)



@pytest.mark.parametrize("conf", ["sequence", "item"])
def test_dllm2rec_cosine_confidence_equals_torch_cosine_similarity(conf):
    import torch.nn.functional as F

    torch.manual_seed(5)
    user, table = torch.randn(7, 6), torch.randn(12, 6)
    table[3] = 0.0  # a zero row: both clamp its norm at 1e-8
    ids, target = torch.randint(1, 12, (7, 4)), torch.randint(1, 12, (7,))
    loss = build_loss("dllm2rec", confidence=conf, distance="cosine")
    got = loss.confidence_weights(ids, user, table, target)
    if conf == "sequence":
        d = 1 - F.cosine_similarity(user, table[target], dim=-1)
        want = torch.exp(-d).unsqueeze(1).expand_as(ids)
    else:
        want = torch.softmax(-(1 - F.cosine_similarity(user.unsqueeze(1), table[ids], dim=-1)), dim=1)
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-7)
    table.mul_(2.0).add_(1.0)  # an in-place change of the table is seen (its version moves)
    again = loss.confidence_weights(ids, user, table, target)
    want = torch.exp(-(1 - F.cosine_similarity(user, table[target], dim=-1))) if conf == "sequence" else None
    if want is not None:
        assert torch.allclose(again[:, 0], want, rtol=1e-6, atol=1e-7)


def test_candidate_loss_on_the_task_loss_log_probs_equals_its_own_log_softmax_in_value_and_gradient():
    """The softmax-form terms reuse the task loss's ``log_softmax(logits)`` (one log-softmax and one
    backward through it per step); the total and its gradient equal the separate computation."""
    import torch.nn.functional as F

    from recdistill.distill._response_utils import weighted_candidate_loss

    torch.manual_seed(3)
    logits = torch.randn(6, 20, dtype=torch.float64)
    ids = torch.randint(0, 20, (6, 4))
    ids[0, 2] = 0  # a missing candidate
    weights = torch.rand(6, 4, dtype=torch.float64)
    target = torch.randint(1, 20, (6,))
    a, b = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    separate = F.cross_entropy(a, target) + weighted_candidate_loss(a, ids, weights, "softmax", "mean")
    log_probs = F.log_softmax(b, dim=1)
    shared = F.nll_loss(log_probs, target) + weighted_candidate_loss(b, ids, weights, "softmax", "mean", log_probs)
    assert torch.allclose(separate, shared, rtol=1e-12, atol=1e-12)
    separate.backward()
    shared.backward()
    assert torch.allclose(a.grad, b.grad, rtol=1e-10, atol=1e-12)
