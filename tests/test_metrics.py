"""Tests for recdistill.metrics against brute-force Python/numpy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recdistill.metrics import (
    CTRAccumulator,
    RankingAccumulator,
    auc,
    ctr_metrics,
    full_ranking_metrics,
    gauc,
    log_loss,
    mask_history,
    ranking_metrics_from_ranks,
    SLICES,
    metrics_from_sums,
    ranking_metric_sums,
    sample_negatives,
    sampled_ranks,
    sliced_metrics_from_sums,
    sliced_ranking_metrics,
    sliced_ranking_sums,
    target_ranks,
    target_slices,
)

SEEDS = [0, 1, 2, 3, 4]
KS = (1, 5, 10, 20)


# ----------------------------------------------------------------------------- references


def ref_rank(row: np.ndarray, t: int, seen: set[int]) -> int:
    """Pessimistic rank of item t among items 1..N, skipping seen items (never the target)."""
    st = row[t]
    rank = 1
    for j in range(1, len(row)):
        if j == t or j in seen:
            continue
        if row[j] >= st:
            rank += 1
    return rank


def ref_metrics(ranks: list[int], ks=KS) -> dict[str, float]:
    out = {}
    for k in ks:
        out[f"hr@{k}"] = float(np.mean([r <= k for r in ranks]))
        out[f"ndcg@{k}"] = float(np.mean([1 / math.log2(r + 1) if r <= k else 0.0 for r in ranks]))
        out[f"mrr@{k}"] = float(np.mean([1 / r if r <= k else 0.0 for r in ranks]))
    return out


def ref_auc(s: np.ndarray, y: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    total = 0.0
    for p in pos:
        for n in neg:
            total += 1.0 if p > n else (0.5 if p == n else 0.0)
    return total / (len(pos) * len(neg))


def make_batch(seed: int, b: int = 40, n: int = 30, h: int = 8, max_score: int = 6):
    """Integer-valued scores (many ties), 0-padded histories, some containing the target."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, max_score, (b, n + 1), generator=g).float()
    scores[:, 0] = 100.0  # padding column holds the best score: must never be ranked
    target = torch.randint(1, n + 1, (b,), generator=g)
    history = torch.randint(1, n + 1, (b, h), generator=g)
    lengths = torch.randint(0, h + 1, (b,), generator=g)
    history[torch.arange(h)[None, :] >= lengths[:, None]] = 0
    history[::3, 0] = target[::3]  # target appears in history
    return scores, target, history


def assert_dict_close(a: dict[str, float], b: dict[str, float], tol: float = 1e-9) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], abs=tol), k


# ----------------------------------------------------------------------------- ranking


@pytest.mark.parametrize("seed", SEEDS)
def test_target_ranks_and_metrics_match_brute_force(seed: int) -> None:
    scores, target, history = make_batch(seed)
    s_np, t_np, h_np = scores.numpy(), target.numpy(), history.numpy()
    for mask_seen in (True, False):
        ref = []
        for i in range(len(t_np)):
            seen = {int(x) for x in h_np[i] if x != 0} if mask_seen else set()
            ref.append(ref_rank(s_np[i], int(t_np[i]), seen))
        sc = mask_history(scores, history, target) if mask_seen else scores
        ranks = target_ranks(sc, target)
        assert ranks.dtype == torch.long
        assert ranks.tolist() == ref
        assert max(ref) > 20  # some targets rank beyond every k
        got = full_ranking_metrics(scores, target, history, ks=KS, mask_seen=mask_seen)
        assert_dict_close(got, ref_metrics(ref))


def test_hand_computed_ranks() -> None:
    m = ranking_metrics_from_ranks(torch.tensor([1, 3, 11]), ks=(10,))
    assert m["hr@10"] == pytest.approx(2 / 3)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4)) / 3)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 3) / 3)
    assert set(m) == {"hr@10", "ndcg@10", "mrr@10"}
    m = ranking_metrics_from_ranks(torch.tensor([1, 3, 11]), ks=(1, 20))
    assert m["hr@1"] == pytest.approx(1 / 3)
    assert m["hr@20"] == pytest.approx(1.0)
    assert m["ndcg@20"] == pytest.approx((1 + 0.5 + 1 / math.log2(12)) / 3)


def test_hand_computed_small_scores() -> None:
    # items 1..4; padding column 0 has the highest score.
    scores = torch.tensor([[9.0, 0.1, 0.5, 0.5, 0.2], [9.0, 0.4, 0.3, 0.2, 0.1]])
    target = torch.tensor([2, 4])
    # row 0: item 3 ties with target 2 -> pessimistic rank 2; row 1: target is last -> rank 4
    assert target_ranks(scores, target).tolist() == [2, 4]
    # history masks item 3 (row 0) and items 1, 4(=target) (row 1)
    history = torch.tensor([[3, 0], [1, 4]])
    masked = mask_history(scores, history, target)
    assert torch.isinf(masked[:, 0]).all() and (masked[:, 0] < 0).all()
    assert masked[0, 3] == -math.inf and masked[1, 1] == -math.inf
    assert masked[1, 4] == scores[1, 4]  # target restored
    assert target_ranks(masked, target).tolist() == [1, 3]
    assert scores[0, 3] == 0.5  # input not modified


def test_constant_scores_are_not_rewarded() -> None:
    b, n = 16, 50
    scores = torch.zeros(b, n + 1)
    target = torch.randint(1, n + 1, (b,))
    ranks = target_ranks(scores, target)
    assert (ranks == n).all()
    m = full_ranking_metrics(scores, target, ks=(10,))
    assert m["hr@10"] == 0.0 and m["ndcg@10"] == 0.0 and m["mrr@10"] == 0.0
    g = torch.Generator().manual_seed(0)
    assert (sampled_ranks(scores, target, 20, g) == 21).all()


def test_padding_column_never_ranked() -> None:
    scores = torch.tensor([[50.0, 1.0, 2.0, 3.0]])
    assert target_ranks(scores, torch.tensor([3])).item() == 1
    scores = torch.tensor([[3.0, 3.0, 1.0, 2.0]])  # padding ties with target
    assert target_ranks(scores, torch.tensor([1])).item() == 1
    with pytest.raises(ValueError):
        target_ranks(scores, torch.tensor([0]))
    g = torch.Generator().manual_seed(0)
    neg = sample_negatives(torch.tensor([1] * 200), 3, 2, g)
    assert (neg != 0).all()


def test_neg_inf_and_nan_handling() -> None:
    scores = torch.tensor([[0.0, -math.inf, -math.inf, 1.0, -math.inf]])
    assert target_ranks(scores, torch.tensor([3])).item() == 1  # -inf never above/ties
    assert target_ranks(scores, torch.tensor([1])).item() == 4  # -inf target: worst rank
    scores = torch.tensor([[0.0, float("nan"), 0.5, float("nan")]])
    assert target_ranks(scores, torch.tensor([2])).item() == 1
    assert target_ranks(scores, torch.tensor([1])).item() == 3


def test_double_and_half_and_int_inputs() -> None:
    scores, target, history = make_batch(7)
    ref = target_ranks(mask_history(scores, history, target), target)
    for dt in (torch.float64, torch.float16, torch.bfloat16, torch.long):
        sc = scores.to(dt)
        assert torch.equal(target_ranks(mask_history(sc, history, target), target), ref)


@pytest.mark.parametrize("mask_seen", [True, False])
def test_accumulator_equals_one_shot(mask_seen: bool) -> None:
    scores, target, history = make_batch(11, b=103)
    acc = RankingAccumulator(ks=KS)
    for sl in (slice(0, 7), slice(7, 60), slice(60, 103)):  # unequal batch sizes
        acc.update(scores[sl], target[sl], history[sl], mask_seen=mask_seen)
    assert acc.num_examples == 103
    one = full_ranking_metrics(scores, target, history, ks=KS, mask_seen=mask_seen)
    assert_dict_close(acc.compute(), one, tol=1e-12)
    sc = mask_history(scores, history, target) if mask_seen else scores
    assert torch.equal(acc.ranks(), target_ranks(sc, target))
    assert torch.equal(acc.targets(), target)
    # the exact mean differs from a (wrong) mean of per-batch means on these unequal batches
    means = [
        full_ranking_metrics(scores[sl], target[sl], history[sl], mask_seen=mask_seen)["mrr@20"]
        for sl in (slice(0, 7), slice(7, 60), slice(60, 103))
    ]
    assert abs(sum(means) / 3 - one["mrr@20"]) > 1e-6
    assert "seen items" in acc.describe()
    acc.reset()
    assert acc.num_examples == 0


def test_accumulator_rejects_mixed_masking() -> None:
    scores, target, history = make_batch(0, b=4)
    acc = RankingAccumulator()
    acc.update(scores, target, history, mask_seen=True)
    with pytest.raises(ValueError):
        acc.update(scores, target, history, mask_seen=False)


# ----------------------------------------------------------------------------- sampled ranking


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("exclude_seen", [True, False])
def test_sampled_ranks_brute_force(seed: int, exclude_seen: bool) -> None:
    scores, target, history = make_batch(seed)
    n_items, n_neg = scores.shape[1] - 1, 10
    neg = sample_negatives(
        target, n_items, n_neg, torch.Generator().manual_seed(seed), history, exclude_seen
    )
    assert neg.shape == (len(target), n_neg)
    for i in range(len(target)):
        row = neg[i].tolist()
        assert len(set(row)) == n_neg  # without replacement
        assert all(1 <= x <= n_items for x in row)
        assert int(target[i]) not in row
        if exclude_seen:
            assert not set(row) & {int(x) for x in history[i] if x != 0}
    # same generator seed -> same negatives inside sampled_ranks
    ranks = sampled_ranks(
        scores, target, n_neg, torch.Generator().manual_seed(seed), history, exclude_seen
    )
    ref = [
        1 + sum(float(scores[i, j]) >= float(scores[i, target[i]]) for j in neg[i].tolist())
        for i in range(len(target))
    ]
    assert ranks.tolist() == ref
    # explicit fixed sample
    assert torch.equal(sampled_ranks(scores, target, n_neg, negatives=neg), ranks)


def test_sampled_ranks_hand_computed() -> None:
    scores = torch.tensor([[9.0, 0.3, 0.7, 0.5, 0.5, 0.1]])
    target = torch.tensor([3])
    neg = torch.tensor([[1, 4, 5]])  # 0.3 < 0.5, tie 0.5 counts against, 0.1 below
    assert sampled_ranks(scores, target, 3, negatives=neg).item() == 2
    neg = torch.tensor([[2, 4, 1]])
    assert sampled_ranks(scores, target, 3, negatives=neg).item() == 3


def test_sample_negatives_roughly_uniform_and_errors() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.full((4000,), 1)
    history = torch.tensor([[2, 0]]).expand(4000, 2)
    neg = sample_negatives(target, 6, 2, g, history)
    counts = torch.bincount(neg.flatten(), minlength=7)
    assert counts[:3].sum() == 0  # 0 padding, 1 target, 2 seen
    frac = counts[3:].double() / counts.sum()
    assert torch.allclose(frac, torch.full((4,), 0.25, dtype=torch.float64), atol=0.02)
    with pytest.raises(ValueError):
        sample_negatives(target[:2], 6, 5, g, history[:2])  # only 4 eligible


def test_sampled_accumulator_keys_and_exactness() -> None:
    scores, target, history = make_batch(3, b=50)
    acc = RankingAccumulator(ks=(5, 10), protocol="sampled", num_negatives=10, seed=5)
    acc.update(scores[:20], target[:20], history[:20])
    acc.update(scores[20:], target[20:], history[20:])
    m = acc.compute()
    assert set(m) == {f"sampled10_{x}@{k}" for x in ("hr", "ndcg", "mrr") for k in (5, 10)}
    ref = ranking_metrics_from_ranks(acc.ranks(), ks=(5, 10))
    for k, v in ref.items():
        assert m[f"sampled10_{k}"] == pytest.approx(v)
    assert (acc.ranks() >= 1).all() and (acc.ranks() <= 11).all()
    # reproducible with the same seed
    acc2 = RankingAccumulator(ks=(5, 10), protocol="sampled", num_negatives=10, seed=5)
    acc2.update(scores[:20], target[:20], history[:20])
    acc2.update(scores[20:], target[20:], history[20:])
    assert torch.equal(acc.ranks(), acc2.ranks())
    assert "sampled ranking (10 negatives)" in acc.describe()
    with pytest.raises(ValueError):
        RankingAccumulator(protocol="sampled")
    with pytest.raises(ValueError):
        RankingAccumulator(protocol="bogus")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- CTR


def make_ctr(seed: int, n: int = 300, users: int = 25):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randint(-4, 5, (n,), generator=g).float() / 2  # many ties
    labels = torch.randint(0, 2, (n,), generator=g)
    groups = torch.randint(0, users, (n,), generator=g) * 7 + 3  # non-contiguous ids
    # a couple of single-class users (must be skipped by GAUC)
    groups[:5] = 1000
    labels[:5] = 1
    groups[5:9] = 2000
    labels[5:9] = 0
    return logits, labels, groups


@pytest.mark.parametrize("seed", SEEDS)
def test_auc_brute_force(seed: int) -> None:
    s, y, _ = make_ctr(seed)
    assert auc(s, y) == pytest.approx(ref_auc(s.numpy(), y.numpy()), abs=1e-12)
    assert auc(s, y.bool()) == pytest.approx(ref_auc(s.numpy(), y.numpy()), abs=1e-12)


def test_auc_hand_and_edge_cases() -> None:
    s, y = torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])
    assert auc(s, y) == pytest.approx(0.75)
    assert auc(torch.ones(10), torch.tensor([0, 1] * 5)) == pytest.approx(0.5)  # constant
    assert math.isnan(auc(torch.rand(5), torch.ones(5)))
    with pytest.raises(ValueError):
        auc(torch.rand(3), torch.tensor([0.0, 0.5, 1.0]))


@pytest.mark.parametrize("seed", SEEDS)
def test_gauc_vs_per_user_loop(seed: int) -> None:
    s, y, g = make_ctr(seed)
    s_np, y_np, g_np = s.numpy(), y.numpy(), g.numpy()
    num = den = 0.0
    for u in np.unique(g_np):
        m = g_np == u
        if len(set(y_np[m].tolist())) < 2:
            continue
        num += m.sum() * ref_auc(s_np[m], y_np[m])
        den += m.sum()
    assert gauc(s, y, g) == pytest.approx(num / den, abs=1e-12)
    perm = torch.randperm(len(s), generator=torch.Generator().manual_seed(seed))
    assert gauc(s[perm], y[perm], g[perm]) == pytest.approx(num / den, abs=1e-12)


def test_gauc_hand_and_all_single_class() -> None:
    s = torch.tensor([0.9, 0.1, 0.5, 0.2, 0.3, 0.7, 0.7])
    y = torch.tensor([1, 0, 1, 1, 1, 0, 1])
    g = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    # user 0: auc 1 (w 2); user 1: single class, skipped; user 2: tie -> 0.5 (w 2)
    assert gauc(s, y, g) == pytest.approx((2 * 1.0 + 2 * 0.5) / 4)
    assert math.isnan(gauc(s[2:5], y[2:5], g[2:5]))


@pytest.mark.parametrize("seed", SEEDS)
def test_log_loss_direct_formula(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(200, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 2, (200,), generator=g).double()
    p = 1 / (1 + np.exp(-x.numpy()))
    ref = float(-np.mean(y.numpy() * np.log(p) + (1 - y.numpy()) * np.log(1 - p)))
    assert log_loss(x, y) == pytest.approx(ref, rel=1e-10)
    assert log_loss(torch.sigmoid(x), y, from_logits=False) == pytest.approx(ref, rel=1e-6)


def test_log_loss_stable_extremes() -> None:
    x = torch.tensor([1000.0, -1000.0, 1000.0])
    y = torch.tensor([1.0, 0.0, 0.0])
    assert log_loss(x, y) == pytest.approx(1000.0 / 3)
    p, y = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0])
    assert math.isfinite(log_loss(p, y, from_logits=False))


def test_ctr_metrics_and_accumulator() -> None:
    s, y, g = make_ctr(9)
    one = ctr_metrics(s, y, g)
    assert set(one) == {"auc", "logloss", "gauc"}
    assert one["auc"] == pytest.approx(auc(s, y))
    assert one["logloss"] == pytest.approx(log_loss(s, y))
    assert one["gauc"] == pytest.approx(gauc(s, y, g))
    acc = CTRAccumulator()
    for sl in (slice(0, 17), slice(17, 200), slice(200, 300)):
        acc.update(s[sl], y[sl], g[sl])
    assert acc.num_examples == 300
    assert_dict_close(acc.compute(), one, tol=1e-12)
    with pytest.raises(ValueError):
        CTRAccumulator().compute()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    scores, target, history = make_batch(1)
    dev = torch.device("cuda")
    cpu = full_ranking_metrics(scores, target, history)
    gpu = full_ranking_metrics(scores.to(dev), target.to(dev), history.to(dev))
    assert_dict_close(gpu, cpu)
    g = torch.Generator().manual_seed(0)
    r_cpu = sampled_ranks(scores, target, 10, g, history)
    g = torch.Generator().manual_seed(0)
    r_gpu = sampled_ranks(scores.to(dev), target.to(dev), 10, g, history.to(dev))
    assert torch.equal(r_cpu, r_gpu.cpu())
    s, y, u = make_ctr(0)
    assert_dict_close(ctr_metrics(s.to(dev), y.to(dev), u.to(dev)), ctr_metrics(s, y, u))


# ----------------------------------------------------------------------------- slices


def ref_slice(count: int) -> str:
    return "cold" if count == 0 else ("rare" if count <= 10 else "warm")


def make_counts(n: int, seed: int) -> torch.Tensor:
    """Training counts per item 0..n: every slice present, boundaries 0 / 1 / 10 / 11 included."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 30, (n + 1,), generator=g)
    counts[1:5] = torch.tensor([0, 1, 10, 11])
    counts[5:12] = 0
    counts[12:20] = torch.randint(1, 11, (8,), generator=g)
    return counts


@pytest.mark.parametrize("seed", SEEDS)
def test_sliced_metrics_match_brute_force(seed: int) -> None:
    scores, target, history = make_batch(seed)
    n = scores.shape[1] - 1
    counts = make_counts(n, seed)
    s_np, t_np, h_np = scores.numpy(), target.numpy(), history.numpy()
    ranks = target_ranks(mask_history(scores, history, target), target)
    got = sliced_ranking_metrics(ranks, target, counts, ks=KS)
    per_slice: dict[str, list[int]] = {"cold": [], "rare": [], "warm": []}
    every = []
    for i in range(len(t_np)):  # brute force: rank by loops, then group by the target's count
        seen = {int(x) for x in h_np[i] if x != 0}
        r = ref_rank(s_np[i], int(t_np[i]), seen)
        every.append(r)
        per_slice[ref_slice(int(counts[int(t_np[i])]))].append(r)
    expected = dict(ref_metrics(every))
    for name, rs in per_slice.items():
        expected[f"{name}/count"] = float(len(rs))
        if rs:
            expected.update({f"{name}/{k}": v for k, v in ref_metrics(rs).items()})
    assert set(got) == set(expected)
    assert_dict_close(got, expected, tol=1e-12)
    assert sum(got[f"{name}/count"] for name, _, _ in SLICES) == len(t_np)


def test_slice_boundaries_and_keys() -> None:
    counts = torch.tensor([0, 0, 1, 10, 11, 500])
    assert target_slices(torch.tensor([1, 2, 3, 4, 5]), counts).tolist() == [0, 1, 1, 2, 2]
    assert [name for name, _, _ in SLICES] == ["cold", "rare", "warm"]
    m = sliced_ranking_metrics(torch.tensor([1, 3, 11, 2]), torch.tensor([1, 2, 3, 4]), counts, ks=(10,))
    assert m["cold/count"] == 1 and m["rare/count"] == 2 and m["warm/count"] == 1
    assert m["cold/ndcg@10"] == pytest.approx(1.0)
    assert m["rare/hr@10"] == pytest.approx(0.5) and m["rare/mrr@10"] == pytest.approx(1 / 6)
    assert m["warm/ndcg@10"] == pytest.approx(1 / math.log2(3))
    assert m["ndcg@10"] == pytest.approx(ranking_metrics_from_ranks(torch.tensor([1, 3, 11, 2]), (10,))["ndcg@10"])
    with pytest.raises(ValueError, match="item_train_counts"):
        target_slices(torch.tensor([6]), counts)


def test_empty_slice_reports_only_its_count() -> None:
    counts = torch.tensor([0, 20, 20, 20])
    m = sliced_ranking_metrics(torch.tensor([1, 2]), torch.tensor([1, 3]), counts, ks=(10,))
    assert m["cold/count"] == 0 and m["rare/count"] == 0 and m["warm/count"] == 2
    assert not any(k.startswith(("cold/", "rare/")) and not k.endswith("count") for k in m)
    assert all(v == v for v in m.values())  # no NaN


def test_pessimistic_ties_in_slices() -> None:
    b, n = 12, 30
    scores = torch.zeros(b, n + 1)
    target = torch.arange(1, b + 1)
    counts = torch.zeros(n + 1, dtype=torch.long)
    counts[1:5], counts[5:9] = 3, 50
    m = sliced_ranking_metrics(target_ranks(scores, target), target, counts, ks=(10,))
    assert all(m[f"{s}/hr@10"] == 0.0 for s in ("cold", "rare", "warm"))


def test_sums_combine_exactly_over_batches_and_processes() -> None:
    """Per-example sums added over unequal batches (or over processes, reduced with sum) give
    exactly the one-shot metrics; sampled keys carry their prefix inside the slice."""
    scores, target, history = make_batch(5, b=103)
    counts = make_counts(scores.shape[1] - 1, 5)
    ranks = target_ranks(mask_history(scores, history, target), target)
    parts = [sliced_ranking_sums(ranks[sl], target[sl], counts, KS) for sl in (slice(0, 7), slice(7, 60), slice(60, 103))]
    total = parts[0] + parts[1] + parts[2]
    assert total.dtype == torch.float64 and total.shape == (1 + len(SLICES), 1 + 3 * len(KS))
    assert_dict_close(sliced_metrics_from_sums(total, KS), sliced_ranking_metrics(ranks, target, counts, KS), tol=1e-12)
    assert_dict_close(metrics_from_sums(ranking_metric_sums(ranks, KS)[0], KS), ranking_metrics_from_ranks(ranks, KS),
                      tol=1e-12)
    sampled = sliced_metrics_from_sums(total, KS, prefix="sampled50_", counts=False)
    assert "cold/sampled50_ndcg@10" in sampled and "cold/count" not in sampled
