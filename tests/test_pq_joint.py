"""RecJPQ joint training (codes assigned before training, codebooks learned with the student):
code assignment, learning a planted pattern, save/load and ONNX export. Tiny models, one thread."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recdistill.compress.pq import PQItemEmbedding, load_pq_student, pq_table_bytes, save_pq_student
from recdistill.compress.pq_codes import assign_codes, interaction_matrix, random_codes, shared_subids, svd_codes
from recdistill.compress.pq_train import build_joint_pq_student, train_joint_pq
from recdistill.data import build_sequential_split, synthetic_interactions
from recdistill.data.datamodules import SequentialDataModule

MAX_LEN = 20
TINY = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "max_len": MAX_LEN, "dropout": 0.1}


def _grouped_histories(num_users: int = 240, groups: int = 6, per_group: int = 20, seed: int = 0):
    """Users of group g interact with half of group g's items (plus one random item): items of one
    group have similar interaction columns."""
    rng = np.random.default_rng(seed)
    histories = []
    for u in range(num_users):
        g = u % groups
        items = 1 + g * per_group + rng.choice(per_group, per_group // 2, replace=False)
        histories.append(np.append(items, rng.integers(1, groups * per_group + 1)))
    return histories, groups * per_group


def test_svd_codes_are_seeded_and_similar_items_share_subids():
    histories, n = _grouped_histories()
    matrix = interaction_matrix(histories, n)
    assert matrix.shape == (len(histories), n + 1) and matrix[:, 0].sum() == 0
    codes = svd_codes(matrix, 4, 8, seed=0)
    assert codes.shape == (n + 1, 4) and int(codes.min()) >= 0 and int(codes.max()) < 8
    assert torch.equal(codes, svd_codes(matrix, 4, 8, seed=0))  # reproducible
    assert torch.equal(codes, assign_codes("svd", histories, n, 4, 8, seed=0))
    for m in range(4):  # quantile bins: every centroid used, about n / K items each
        counts = torch.bincount(codes[1:, m], minlength=8)
        assert int(counts.min()) >= n // 8 - 1
    g = torch.Generator().manual_seed(0)
    a = torch.randint(1, n + 1, (2000,), generator=g)
    same = 1 + ((a - 1) // 20) * 20 + torch.randint(0, 20, (2000,), generator=g)  # same group as a
    other = torch.randint(1, n + 1, (2000,), generator=g)
    keep = same != a
    within = shared_subids(codes, a[keep], same[keep]).float().mean()
    random_pairs = shared_subids(codes, a, other).float().mean()
    print(f"\nsvd codes: shared sub-ids {within:.2f} within a group vs {random_pairs:.2f} for random pairs (of 4)")
    assert within > 2 * random_pairs
    rand = random_codes(n, 4, 8, seed=0)
    assert torch.equal(rand, assign_codes("random", histories, n, 4, 8, seed=0)) and rand[0].sum() == 0
    with pytest.raises(ValueError, match="unknown code strategy"):
        assign_codes("kmeans", histories, n, 4, 8)


@pytest.fixture(scope="module")
def planted():
    torch.set_num_threads(1)
    data = synthetic_interactions(num_users=300, num_items=200, mean_length=15, seed=1, pattern_strength=0.9)
    dm = SequentialDataModule.from_split(build_sequential_split(data), max_len=MAX_LEN, batch_size=64,
                                         train_windows="all")
    model, info = train_joint_pq(dm, "sasrec", TINY, num_subspaces=8, num_centroids=16, max_epochs=10,
                                 patience=4, lr=3e-3, seed=0)
    return {"dm": dm, "model": model, "info": info}


def test_joint_pq_sasrec_learns_the_planted_pattern(planted):
    import lightning as L

    from recdistill.student import build_student
    from recdistill.student.tasks import SequentialRecommender

    dm, info = planted["dm"], planted["info"]
    L.seed_everything(0, verbose=False)
    plain = SequentialRecommender(build_student("sasrec", num_items=dm.num_items, **TINY), lr=3e-3)
    trainer = L.Trainer(max_epochs=info["best_epoch"] + 1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(plain, datamodule=dm)
    plain_test = trainer.test(plain, datamodule=dm, verbose=False)[0]["test/ndcg@10"]
    _, random_info = train_joint_pq(dm, "sasrec", TINY, num_subspaces=8, num_centroids=16, codes="random",
                                    max_epochs=info["best_epoch"] + 1, patience=4, lr=3e-3, seed=0)
    print(f"\njoint PQ M=8 K=16 (x{info['item_table_ratio']:.1f} smaller table): test NDCG@10 "
          f"{info['test_ndcg@10']:.4f} (best epoch {info['best_epoch']}) with SVD codes, "
          f"{random_info['test_ndcg@10']:.4f} with random codes; plain SASRec {plain_test:.4f}")
    assert info["item_table_ratio"] > 5 and info["code_seconds"] >= 0
    assert info["test_ndcg@10"] > 0.3  # random ranking of 200 items: ~0.03
    assert info["test_ndcg@10"] > plain_test - 0.15
    assert info["test_ndcg@10"] > random_info["test_ndcg@10"]  # RecJPQ: SVD codes beat random ones
    table = planted["model"].item_embedding
    assert isinstance(table, PQItemEmbedding) and table.codes.dtype == torch.uint8
    assert info["item_table_bytes_after"] == pq_table_bytes(table) == table.codes.numel() + 16 * 32 * 4  # uint8 codes + fp32 codebooks
    assert torch.count_nonzero(table.weight[0]) == 0  # the padding row stays zero


def test_codes_stay_fixed_and_extra_rows_get_codes():
    codes = random_codes(30, 4, 8, seed=3)
    model = build_joint_pq_student("bert4rec", {"num_items": 30, "hidden_size": 16, "num_layers": 1,
                                                "num_heads": 2, "max_len": 10}, codes, 8, seed=0)
    table = model.item_embedding
    assert table.num_embeddings == 32 and torch.equal(table.codes[:31].long(), codes)  # + the mask token
    assert [n for n, p in model.named_parameters() if "item_embedding" in n] == ["item_embedding.codebooks"]
    with pytest.raises(ValueError, match="codes must lie"):
        PQItemEmbedding.from_codes(codes + 8, 16, 8)


def test_joint_pq_save_load_and_onnx_parity(planted, tmp_path):
    import onnxruntime as ort

    from recdistill.export import export_onnx

    model, info, dm = planted["model"], planted["info"], planted["dm"]
    save_pq_student(model, tmp_path / "pq", info)
    loaded = load_pq_student(tmp_path / "pq")
    x = next(iter(dm.dataloader("test")))["input_ids"][:16]
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert torch.equal(loaded.item_embedding.codes, model.item_embedding.codes)
    result = export_onnx(loaded, tmp_path / "pq.onnx")  # raises ParityError when the gate fails
    assert result.parity is not None and result.parity.passed
    session = ort.InferenceSession(str(tmp_path / "pq.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"input_ids": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(logits, loaded(x).numpy(), atol=1e-4, rtol=1e-4)


def test_joint_pq_distilled_from_its_parent_follows_it(planted):
    """``kd_weight``: the PQ student learns its fp32 parent's distribution over items (soft-label KL
    to the parent's logits): on held-out sequences its KL to the parent is lower than after the same
    training without the term; the parent is left untouched."""
    import copy

    import lightning as L

    from recdistill.distill.soft_label import full_catalogue_kl
    from recdistill.student import build_student
    from recdistill.student.tasks import SequentialRecommender

    dm = planted["dm"]
    L.seed_everything(1, verbose=False)
    parent = build_student("sasrec", num_items=dm.num_items, **TINY)
    trainer = L.Trainer(max_epochs=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(SequentialRecommender(parent, lr=3e-3), datamodule=dm)
    parent.eval()
    before = copy.deepcopy(parent.state_dict())
    kwargs = dict(num_subspaces=8, num_centroids=16, max_epochs=5, patience=5, lr=3e-3, seed=0)
    plain, plain_info = train_joint_pq(dm, "sasrec", TINY, **kwargs)
    taught, info = train_joint_pq(dm, "sasrec", TINY, parent=parent, kd_weight=5.0, kd_temperature=1.0, **kwargs)
    assert info["kd_weight"] == 5.0 and info["teacher"] == "fp32 parent" and plain_info["teacher"] is None
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())
    x = next(iter(dm.dataloader("test")))["input_ids"]
    with torch.no_grad():
        reference = parent(x)
        kl = {name: float(full_catalogue_kl(reference, model(x), 1.0).mean())
              for name, model in (("distilled", taught), ("plain", plain))}
    print(f"\nKL(parent || PQ student) on test sequences: {kl['distilled']:.3f} distilled vs {kl['plain']:.3f} plain")
    assert kl["distilled"] < 0.8 * kl["plain"]
    with pytest.raises(ValueError, match="needs the fp32 parent"):
        train_joint_pq(dm, "sasrec", TINY, kd_weight=1.0, **kwargs)


def test_joint_training_silences_library_tips_like_the_cli(planted, monkeypatch):
    """Called from Python (a notebook, the benchmarks), RecJPQ training keeps Lightning's tips off the
    console as the CLI does: it installs the known-noise filters before building its Trainer."""
    import recdistill.training as training

    calls = []
    monkeypatch.setattr(training, "quiet_known_noise", lambda: calls.append(True))
    train_joint_pq(planted["dm"], "sasrec", TINY, num_subspaces=8, num_centroids=16, max_epochs=1,
                   limit_train_batches=1, seed=0)
    assert calls
