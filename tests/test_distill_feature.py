"""Feature-based distillation losses vs. brute-force loop references (fast, CPU)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from recdistill.distill import (
    ContrastiveAlignmentLoss,
    EmbeddingAlignmentLoss,
    HiddenStateAlignmentLoss,
    MultiLayerAlignmentLoss,
    TeacherEmbeddingFusion,
    evenly_spaced_mapping,
    pca_init,
)
from recdistill.distill.registry import DISTILL_LOSSES, build_loss


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _vec_sub(a, b):
    return [x - y for x, y in zip(a, b)]


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _norm(a):
    return math.sqrt(_dot(a, a))


def _cos(a, b):
    return _dot(a, b) / max(_norm(a) * _norm(b), 1e-8)


# ----------------------------------------------------------------------------- registry
def test_registered_names_and_build():
    for name, cls in [("hidden_state", HiddenStateAlignmentLoss), ("multilayer", MultiLayerAlignmentLoss),
                      ("contrastive", ContrastiveAlignmentLoss), ("embedding_align", EmbeddingAlignmentLoss)]:
        assert DISTILL_LOSSES[name] is cls
        assert cls.__doc__ and "default" in cls.__doc__.lower()  # docstring states the defaults
    loss = build_loss("hidden_state", student_dim=4, teacher_dim=6, metric="cosine")
    assert isinstance(loss, HiddenStateAlignmentLoss) and loss.metric == "cosine"


# ----------------------------------------------------------------------------- hidden-state (LEADER)
@pytest.mark.parametrize("metric", ["mse", "cosine"])
@pytest.mark.parametrize("projector", ["linear", "mlp"])
def test_hidden_matches_brute_force(metric, projector):
    torch.manual_seed(0)
    g = _gen(1)
    B, dS, dT = 5, 3, 7
    hs = torch.randn(B, dS, generator=g, dtype=torch.float64)
    ht = torch.randn(B, dT, generator=g, dtype=torch.float64)
    mask = torch.tensor([True, False, True, True, False])
    loss = HiddenStateAlignmentLoss(dS, dT, projector=projector, metric=metric, weight=0.3).double()
    got = loss(hs, ht, mask)
    per_row = []
    with torch.no_grad():
        for r in range(B):
            p = loss.projector(hs[r:r + 1])[0].tolist()
            t = ht[r].tolist()
            if metric == "mse":
                v = sum((a - b) ** 2 for a, b in zip(p, t)) / dT
            else:
                v = 1 - _cos(p, t)
            per_row.append(v if mask[r] else 0.0)
    ref = 0.3 * sum(per_row) / int(mask.sum())
    assert got.item() == pytest.approx(ref, rel=1e-10)
    none = HiddenStateAlignmentLoss(dS, dT, projector=projector, metric=metric, reduction="none").double()
    none.load_state_dict(loss.state_dict())
    assert torch.allclose(none(hs, ht, mask), torch.tensor(per_row, dtype=torch.float64), atol=1e-12)
    if metric == "mse":  # without a mask it is exactly F.mse_loss on the projected states
        full = HiddenStateAlignmentLoss(dS, dT, projector=projector).double()
        full.load_state_dict(loss.state_dict())
        assert full(hs, ht).item() == pytest.approx(F.mse_loss(full.projector(hs), ht).item(), rel=1e-12)


def test_hidden_stopgrad_projector_grad_and_masked_rows():
    torch.manual_seed(0)
    hs = torch.randn(4, 3, requires_grad=True)
    ht = torch.randn(4, 8, requires_grad=True)
    ht_nan = ht.detach().clone()
    ht_nan[1] = float("nan")  # a row without a teacher state holds a NaN placeholder
    ht_nan.requires_grad_(True)
    mask = torch.tensor([True, False, True, True])
    loss = HiddenStateAlignmentLoss(3, 8)
    out = loss(hs, ht_nan, mask)
    assert torch.isfinite(out)
    out.backward()
    assert ht_nan.grad is None  # stop-gradient: nothing reaches the teacher tensor
    assert loss.projector.weight.grad is not None and loss.projector.weight.grad.abs().sum() > 0
    assert torch.isfinite(loss.projector.weight.grad).all()
    assert torch.all(hs.grad[1] == 0) and hs.grad[0].abs().sum() > 0  # masked row gets nothing
    # changing the masked row's inputs changes nothing
    hs2 = hs.detach().clone()
    hs2[1] += 100.0
    ht2 = ht.detach().clone()
    ht2[1] = -50.0
    assert loss(hs2, ht2, mask).item() == pytest.approx(loss(hs.detach(), ht_nan.detach(), mask).item(), rel=1e-6)
    # all rows masked -> 0, still differentiable
    z = loss(hs, ht_nan, torch.zeros(4, dtype=torch.bool))
    assert z.item() == 0.0 and z.requires_grad


def test_hidden_fp16_teacher_and_shape_errors():
    loss = HiddenStateAlignmentLoss(4, 6)
    out = loss(torch.randn(3, 4), torch.randn(3, 6).half())
    assert out.dtype == torch.float32
    with pytest.raises(ValueError, match="last dim 6"):
        loss(torch.randn(3, 4), torch.randn(3, 5))
    with pytest.raises(ValueError, match="mask must have shape"):
        loss(torch.randn(3, 4), torch.randn(3, 6), torch.ones(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="identity"):
        HiddenStateAlignmentLoss(4, 6, projector="identity")


def test_hidden_learns_planted_linear_teacher():
    """Teacher state = A·h_S + c (a planted linear relation): fitting the projector drives MSE ~ 0."""
    torch.manual_seed(0)
    g = _gen(3)
    dS, dT, N = 6, 16, 256
    A = torch.randn(dT, dS, generator=g)
    c = torch.randn(dT, generator=g)
    hs = torch.randn(N, dS, generator=g)
    ht = hs @ A.t() + c
    loss = HiddenStateAlignmentLoss(dS, dT)
    start = loss(hs, ht).item()
    opt = torch.optim.Adam(loss.parameters(), lr=0.05)
    for _ in range(400):
        opt.zero_grad()
        val = loss(hs, ht)
        val.backward()
        opt.step()
    end = loss(hs, ht).item()
    assert start > 1.0
    assert end < 1e-3 * start and end < 1e-2


# ----------------------------------------------------------------------------- multi-layer (SLMRec)
def test_evenly_spaced_mapping_documented_examples():
    assert evenly_spaced_mapping(4, 8) == [1, 3, 5, 7]
    assert evenly_spaced_mapping(3, 4) == [1, 2, 3]
    assert evenly_spaced_mapping(4, 4) == [0, 1, 2, 3]
    assert evenly_spaced_mapping(1, 5) == [4]
    for B in range(1, 9):
        for L in range(B, 13):
            m = evenly_spaced_mapping(B, L)
            assert len(m) == B and m[-1] == L - 1
            assert all(a < b for a, b in zip(m, m[1:])) and m[0] >= 0


def test_multilayer_impossible_mapping_errors_name_counts():
    with pytest.raises(ValueError, match=r"cannot map 6 student blocks onto 4 teacher layers"):
        evenly_spaced_mapping(6, 4)
    with pytest.raises(ValueError, match=r"6 student blocks onto 4 teacher layers"):
        MultiLayerAlignmentLoss(4, 8, num_student_blocks=6, num_teacher_layers=4)
    with pytest.raises(ValueError, match=r"3 entries but there are 2 student blocks"):
        MultiLayerAlignmentLoss(4, 8, num_student_blocks=2, num_teacher_layers=4, mapping=[0, 1, 2])
    with pytest.raises(ValueError, match=r"outside 0..3 \(4 teacher layers"):
        MultiLayerAlignmentLoss(4, 8, num_student_blocks=2, num_teacher_layers=4, mapping=[0, 4])
    loss = MultiLayerAlignmentLoss(4, 8, num_student_blocks=2, num_teacher_layers=4)
    with pytest.raises(ValueError, match=r"got 3 student block states .* 2 student blocks"):
        loss([torch.randn(2, 4)] * 3, torch.randn(2, 4, 8))
    with pytest.raises(ValueError, match=r"4 teacher layers\), got shape \(2, 3, 8\)"):
        loss([torch.randn(2, 4)] * 2, torch.randn(2, 3, 8))


@pytest.mark.parametrize("mapping", [None, [0, 0, 2]])
def test_multilayer_matches_brute_force(mapping):
    torch.manual_seed(0)
    g = _gen(5)
    R, Bk, LT, dS, dT = 4, 3, 5, 3, 6
    loss = MultiLayerAlignmentLoss(dS, dT, num_student_blocks=Bk, num_teacher_layers=LT, mapping=mapping,
                                   lam=0.7, l2_coef=0.1).double()
    expect_map = evenly_spaced_mapping(Bk, LT) if mapping is None else mapping
    assert loss.mapping == expect_map
    if mapping is None:
        assert expect_map == [1, 3, 4]
    states = [torch.randn(R, dS, generator=g, dtype=torch.float64) for _ in range(Bk)]
    teacher = torch.randn(R, LT, dT, generator=g, dtype=torch.float64)
    mask = torch.tensor([True, True, False, True])
    got = loss(states, teacher, mask)
    got_stacked = loss(torch.stack(states, 1), teacher, mask)
    ref_rows = []
    with torch.no_grad():
        for r in range(R):
            tot = 0.0
            for b in range(Bk):
                p = loss.projectors[b](states[b][r:r + 1])[0].tolist()
                t = teacher[r, expect_map[b]].tolist()
                tot += 0.7 * (1 - _cos(p, t)) + 0.1 * _norm(_vec_sub(p, t))
            ref_rows.append(tot if mask[r] else 0.0)
    ref = sum(ref_rows) / 3
    assert got.item() == pytest.approx(ref, rel=1e-10)
    assert got_stacked.item() == pytest.approx(ref, rel=1e-10)
    loss.reduction = "none"
    assert torch.allclose(loss(states, teacher, mask), torch.tensor(ref_rows, dtype=torch.float64), atol=1e-12)


def test_multilayer_blocks_of_different_widths_match_brute_force():
    """The layer contract lets blocks differ in width (GRU4Rec's inner blocks are ``gru_size`` wide):
    ``student_dims`` gives each block a projector of its own input width."""
    g = _gen(7)
    R, dT = 3, 5
    widths = [6, 4]
    loss = MultiLayerAlignmentLoss(4, dT, num_student_blocks=2, num_teacher_layers=2, student_dims=widths,
                                   lam=1.0, l2_coef=0.1).double()
    assert [p.in_features for p in loss.projectors] == widths
    states = [torch.randn(R, w, generator=g, dtype=torch.float64) for w in widths]
    teacher = torch.randn(R, 2, dT, generator=g, dtype=torch.float64)
    got = loss(states, teacher)
    ref = 0.0
    with torch.no_grad():
        for r in range(R):
            for b in range(2):
                p = loss.projectors[b](states[b][r:r + 1])[0].tolist()
                t = teacher[r, loss.mapping[b]].tolist()
                ref += (1 - _cos(p, t)) + 0.1 * _norm(_vec_sub(p, t))
    assert got.item() == pytest.approx(ref / R, rel=1e-10)
    with pytest.raises(ValueError, match=r"student block 0 state must be \[3, 6\]"):
        loss([states[1], states[1]], teacher)
    with pytest.raises(ValueError, match=r"student_dims has 3 entries but there are 2 student blocks"):
        MultiLayerAlignmentLoss(4, dT, num_student_blocks=2, num_teacher_layers=2, student_dims=[4, 4, 4])


def test_multilayer_stopgrad_every_projector_gets_grad_masked_rows():
    torch.manual_seed(0)
    states = [torch.randn(3, 4, requires_grad=True) for _ in range(2)]
    teacher = torch.randn(3, 4, 6)
    teacher[2] = float("nan")
    teacher.requires_grad_(True)
    loss = MultiLayerAlignmentLoss(4, 6, num_student_blocks=2, num_teacher_layers=4)
    mask = torch.tensor([True, True, False])
    out = loss(states, teacher, mask)
    assert torch.isfinite(out)
    out.backward()
    assert teacher.grad is None
    for p in loss.projectors:
        assert p.weight.grad is not None and p.weight.grad.abs().sum() > 0 and torch.isfinite(p.weight.grad).all()
    for s in states:
        assert torch.all(s.grad[2] == 0) and s.grad[0].abs().sum() > 0
    # perfect alignment (identity projectors, teacher = student) -> exactly 0 with finite grads
    same = [torch.randn(3, 6, requires_grad=True) for _ in range(2)]
    ident = MultiLayerAlignmentLoss(6, 6, num_student_blocks=2, num_teacher_layers=2, projector="identity")
    z = ident(same, torch.stack([s.detach() for s in same], 1))
    assert z.item() == pytest.approx(0.0, abs=1e-6)
    z.backward()
    assert all(torch.isfinite(s.grad).all() for s in same)


# ----------------------------------------------------------------------------- contrastive (RLMRec)
def _brute_infonce(s, t, tau):
    """Loop reference: ℓ_i = −log exp(cos(s_i,t_i)/τ) / Σ_j exp(cos(s_i,t_j)/τ)."""
    M = len(s)
    rows = []
    for i in range(M):
        logits = [_cos(s[i], t[j]) / tau for j in range(M)]
        mx = max(logits)
        lse = mx + math.log(sum(math.exp(x - mx) for x in logits))
        rows.append(lse - logits[i])
    return rows


@pytest.mark.parametrize("symmetric", [False, True])
def test_contrastive_matches_hand_cross_entropy(symmetric):
    torch.manual_seed(0)
    g = _gen(7)
    R, dS, dT = 6, 4, 10
    s = torch.randn(R, dS, generator=g, dtype=torch.float64)
    z = torch.randn(R, dT, generator=g, dtype=torch.float64)
    mask = torch.tensor([True, False, True, True, True, False])
    loss = ContrastiveAlignmentLoss(dS, dT, symmetric=symmetric, reduction="none").double()
    got = loss(s, z, mask)
    idx = [i for i in range(R) if mask[i]]
    with torch.no_grad():
        t = loss.projector(z).tolist()
    sl = [s[i].tolist() for i in idx]
    tl = [t[i] for i in idx]
    fwd = _brute_infonce(sl, tl, 0.2)
    if symmetric:
        bwd = _brute_infonce(tl, sl, 0.2)  # column direction: teacher anchors, students as candidates
        rows = [(a + b) / 2 for a, b in zip(fwd, bwd)]
    else:
        rows = fwd
    ref = torch.zeros(R, dtype=torch.float64)
    ref[idx] = torch.tensor(rows, dtype=torch.float64)
    assert torch.allclose(got, ref, atol=1e-10)
    loss.reduction = "mean"
    assert loss(s, z, mask).item() == pytest.approx(sum(rows) / len(rows), rel=1e-10)
    # the similarity matrix used is cos/τ and the loss is CE over it
    S = loss.logits(s[idx], z[idx])
    ce = F.cross_entropy(S, torch.arange(len(idx)))
    if not symmetric:
        assert loss(s, z, mask).item() == pytest.approx(ce.item(), rel=1e-10)


def test_contrastive_aligned_lower_than_shuffled_and_grads():
    torch.manual_seed(0)
    g = _gen(9)
    R, d = 16, 8
    z = torch.randn(R, d, generator=g)
    loss = ContrastiveAlignmentLoss(d, d, projector="identity")
    aligned = loss(z.clone(), z)
    perm = torch.roll(torch.arange(R), 1)
    shuffled = loss(z[perm].clone(), z)
    assert aligned.item() < shuffled.item()
    # with the MLP projector: stopgrad to the teacher, gradients to the MLP and the student
    s = torch.randn(R, 4, requires_grad=True)
    zt = torch.randn(R, d, requires_grad=True)
    mlp = ContrastiveAlignmentLoss(4, d, weight=1e-2)
    out = mlp(s, zt, torch.tensor([True] * 15 + [False]))
    out.backward()
    assert zt.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mlp.projector.parameters())
    assert torch.all(s.grad[15] == 0) and s.grad[0].abs().sum() > 0
    assert mlp.weight == 1e-2 and ContrastiveAlignmentLoss.paper_weight == 1e-2
    # weight scales linearly
    unweighted = ContrastiveAlignmentLoss(4, d)
    unweighted.load_state_dict(mlp.state_dict())
    assert out.item() == pytest.approx(1e-2 * unweighted(s, zt, torch.tensor([True] * 15 + [False])).item(), rel=1e-5)
    # fewer than 2 valid rows -> 0
    one = mlp(s, zt, torch.tensor([True] + [False] * 15))
    assert one.item() == 0.0


# ----------------------------------------------------------------------------- embeddings (DLLM2Rec, PCA, CLIP)
def test_fusion_formula_fold_identical_and_export_dims():
    torch.manual_seed(0)
    N, dT, dS = 9, 32, 4
    z = torch.randn(N + 1, dT)
    fus = TeacherEmbeddingFusion(z, dS)
    assert fus.w_ed == 0.25
    ids = torch.tensor([[1, 2, 0], [9, 9, 3]])
    e = fus(ids)
    folded = fus.fold()
    assert folded.shape == (N + 1, dS) and not folded.requires_grad
    assert torch.equal(folded[ids], e.detach())
    assert torch.equal(folded, fus.weight.detach())
    assert torch.all(folded[0] == 0)
    # formula, row by row
    with torch.no_grad():
        for i in range(1, N + 1):
            ref = fus.id_embedding.weight[i] + 0.25 * (fus.g.weight @ z[i] + fus.g.bias)
            assert torch.allclose(folded[i], ref, atol=1e-6)
    # exported embedding carries only a d_S-wide table and gives identical lookups
    emb = fus.to_embedding()
    assert torch.equal(emb(ids), e.detach())
    assert all(p.shape[-1] == dS for p in emb.parameters())
    # teacher table is frozen (buffer, no gradient); b and g train
    e.sum().backward()
    assert not any(p is fus.teacher_table for p in fus.parameters())
    assert fus.g.weight.grad is not None and fus.id_embedding.weight.grad is not None
    # drop-in for nn.Embedding in a SASRec-style scorer: F.linear(h, item_embedding.weight)
    h = torch.randn(2, dS)
    assert torch.allclose(F.linear(h, fus.weight), h @ folded.t(), atol=1e-6)
    # extra student rows (BERT4Rec mask token)
    fus2 = TeacherEmbeddingFusion(z, dS, num_embeddings=N + 2)
    assert fus2.fold().shape == (N + 2, dS)


def test_pca_init_preserves_inner_products_low_rank():
    g = _gen(11)
    N, dT, rank, dS = 30, 20, 3, 5
    X = torch.randn(N, rank, generator=g, dtype=torch.float64) @ torch.randn(rank, dT, generator=g, dtype=torch.float64)
    X = X + 2.0  # non-zero mean: centring matters
    table = torch.cat([torch.full((1, dT), 7.0, dtype=torch.float64), X])  # row 0 = padding (garbage)
    E, kept = pca_init(table, dS, return_explained_variance=True)
    assert E.shape == (N + 1, dS) and E.dtype == torch.float32
    assert torch.all(E[0] == 0)
    assert kept == pytest.approx(1.0, abs=1e-9)
    Xc = X - X.mean(0)
    gram = Xc @ Xc.t()
    got = E[1:].double() @ E[1:].double().t()
    assert torch.allclose(got, gram, atol=1e-4 * gram.abs().max())
    # full rank, k < rank: error equals the first dropped eigenvalue (spectral norm), kept variance matches
    Y = torch.randn(N, dT, generator=g, dtype=torch.float64)
    E2, kept2 = pca_init(torch.cat([torch.zeros(1, dT, dtype=torch.float64), Y]), dS, return_explained_variance=True)
    Yc = Y - Y.mean(0)
    sv = torch.linalg.svdvals(Yc)
    err = torch.linalg.matrix_norm(Yc @ Yc.t() - E2[1:].double() @ E2[1:].double().t(), ord=2)
    assert err.item() == pytest.approx(sv[dS].item() ** 2, rel=1e-4)
    assert kept2 == pytest.approx((sv[:dS] ** 2).sum().item() / (sv ** 2).sum().item(), rel=1e-9)
    # d_S larger than the available components -> zero columns; target_std rescales by one scalar
    E3 = pca_init(table[:4], 8)
    assert E3.shape == (4, 8) and torch.all(E3[:, 3:] == 0)
    E4 = pca_init(table, dS, target_std=0.02)
    assert E4[1:].std().item() == pytest.approx(0.02, rel=1e-3)


def test_embedding_align_matches_brute_clip_and_dedupes():
    torch.manual_seed(0)
    g = _gen(13)
    M, dS, dT = 5, 4, 6
    e = torch.randn(M, dS, generator=g, dtype=torch.float64, requires_grad=True)
    z = torch.randn(M, dT, generator=g, dtype=torch.float64, requires_grad=True)
    loss = EmbeddingAlignmentLoss(dS, dT).double()
    assert loss.temperature == 2.0 and EmbeddingAlignmentLoss.paper_weight == 0.01
    ids = torch.tensor([3, 5, 3, 0, 8])  # repeat of 3 and padding dropped -> items 3, 5, 8 (rows 0, 1, 4)
    got = loss(e, z, ids)
    with torch.no_grad():
        t = loss.projector(z).tolist()
    keep = [0, 1, 4]
    sl = [e[i].tolist() for i in keep]
    tl = [t[i] for i in keep]
    rows = [(a + b) / 2 for a, b in zip(_brute_infonce(sl, tl, 2.0), _brute_infonce(tl, sl, 2.0))]
    assert got.item() == pytest.approx(sum(rows) / 3, rel=1e-10)
    got.backward()
    assert z.grad is None and loss.projector.weight.grad.abs().sum() > 0
    assert torch.all(e.grad[2] == 0) and torch.all(e.grad[3] == 0)
