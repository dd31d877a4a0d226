"""Student evaluation reports cold / rare / warm slices (by the target's training count) for
valid and test, computed exactly over the whole evaluation set; `student fit` writes them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml

from recdistill.data import SequentialDataModule
from recdistill.metrics import SLICES, mask_history, target_ranks
from recdistill.student import build_student
from recdistill.student.tasks import SequentialRecommender


def _trainer() -> L.Trainer:
    return L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, accelerator="cpu", devices=1)


def _brute_force(module: SequentialRecommender, loader, counts: np.ndarray, k: int = 10) -> dict[str, float]:
    """Rank each example by comparison, bucket it by its target's training count, average."""
    buckets: dict[str, list[float]] = {"all": [], "cold": [], "rare": [], "warm": []}
    module.eval()
    with torch.no_grad():
        for batch in loader:
            scores = mask_history(module(batch["input_ids"]), batch["history"], batch["target"])
            for row, t in zip(scores, batch["target"].tolist()):
                rank = int((row[1:] >= row[t]).sum())  # pessimistic ties, column 0 ignored
                gain = 1 / math.log2(rank + 1) if rank <= k else 0.0
                c = int(counts[t])
                buckets["all"].append(gain)
                buckets["cold" if c == 0 else "rare" if c <= 10 else "warm"].append(gain)
    return {name: (float(np.mean(v)) if v else float("nan")) for name, v in buckets.items()} | {
        f"{name}/count": float(len(v)) for name, v in buckets.items()}


@pytest.fixture(scope="module")
def sliced_split():
    """A long-tailed catalogue (300 items, 150 short histories): every slice has targets."""
    from recdistill.data import build_sequential_split, synthetic_interactions

    return build_sequential_split(synthetic_interactions(num_users=150, num_items=300, mean_length=10, seed=0))


@pytest.fixture(scope="module")
def evaluated(sliced_split):
    tiny_split = sliced_split
    torch.manual_seed(0)
    datamodule = SequentialDataModule.from_split(tiny_split, max_len=8, eval_batch_size=17)  # uneven batches
    student = build_student("sasrec", num_items=tiny_split.num_items, hidden_size=16, num_layers=1, max_len=8)
    module = SequentialRecommender(student, sampled_negatives=5)
    trainer = _trainer()
    valid = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    test = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    return module, datamodule, valid, test


def test_slice_keys_for_valid_and_test(evaluated, sliced_split):
    tiny_split = sliced_split
    _, _, valid, test = evaluated
    for stage, logged in (("valid", valid), ("test", test)):
        for name, _, _ in SLICES:
            assert f"{stage}/{name}/count" in logged
        total = sum(logged[f"{stage}/{name}/count"] for name, _, _ in SLICES)
        assert total == tiny_split.num_users
        for name, _, _ in SLICES:
            if logged[f"{stage}/{name}/count"]:
                for key in ("ndcg@10", "hr@10", "mrr@20", "sampled5_ndcg@10"):
                    assert 0.0 <= logged[f"{stage}/{name}/{key}"] <= 1.0


def test_slice_values_equal_brute_force(evaluated, sliced_split):
    tiny_split = sliced_split
    module, datamodule, valid, test = evaluated
    counts = tiny_split.item_train_counts()
    for stage, logged in (("valid", valid), ("test", test)):
        ref = _brute_force(module, datamodule.dataloader(stage), counts)
        assert logged[f"{stage}/ndcg@10"] == pytest.approx(ref["all"], abs=1e-6)
        for name, _, _ in SLICES:
            assert logged[f"{stage}/{name}/count"] == ref[f"{name}/count"]
            if ref[f"{name}/count"]:
                assert logged[f"{stage}/{name}/ndcg@10"] == pytest.approx(ref[name], abs=1e-6)
            else:
                assert f"{stage}/{name}/ndcg@10" not in logged


def test_split_has_every_slice(evaluated):
    """The fixture data exercises all three slices (otherwise the tests above prove little)."""
    _, _, valid, test = evaluated
    for stage, logged in (("valid", valid), ("test", test)):
        assert all(logged[f"{stage}/{name}/count"] >= 5 for name, _, _ in SLICES)


def test_explicit_counts_and_no_counts(tiny_split):
    datamodule = SequentialDataModule.from_split(tiny_split, max_len=8)
    student = build_student("gru4rec", num_items=tiny_split.num_items, hidden_size=8)
    everything_cold = [0] * (tiny_split.num_items + 1)
    logged = _trainer().test(SequentialRecommender(student, item_train_counts=everything_cold),
                             datamodule=datamodule, verbose=False)[0]
    assert logged["test/cold/count"] == tiny_split.num_users and logged["test/warm/count"] == 0
    assert logged["test/cold/ndcg@10"] == pytest.approx(logged["test/ndcg@10"])
    # no data module and no counts: only the overall metrics
    logged = _trainer().test(SequentialRecommender(student), dataloaders=datamodule.dataloader("test"),
                             verbose=False)[0]
    assert "test/ndcg@10" in logged and not any("/count" in k for k in logged)


def test_student_fit_writes_slices(tmp_path, tiny_interactions, tiny_split):
    from recdistill.student.fit import fit_student

    csv = tmp_path / "events.csv"
    tiny_interactions.interactions.to_csv(csv, index=False)
    recipe = yaml.safe_load(Path(__file__).parents[1].joinpath("recipes/ml100k_sasrec.yaml").read_text())
    recipe["data"].update(dataset=str(csv), max_len=8, batch_size=64)
    recipe["model"]["student"]["init_args"].update(hidden_size=8, num_layers=1, max_len=8)
    recipe["trainer"].update(max_epochs=1, enable_progress_bar=False, enable_model_summary=False)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    fit_student(path, tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for stage in ("valid", "test"):
        assert sum(metrics[stage][f"{name}/count"] for name, _, _ in SLICES) == tiny_split.num_users
        assert 0.0 <= metrics[stage]["warm/ndcg@10"] <= 1.0 and "ndcg@10" in metrics[stage]


def test_processes_combine_by_summing_per_example_sums(sliced_split):
    """Under several processes each rank holds part of the evaluation set; the module sums the
    per-example sums over ranks (strategy.reduce with "sum") before dividing, so every rank logs
    the metrics of the whole set, not a mean of per-rank means."""
    from types import SimpleNamespace

    datamodule = SequentialDataModule.from_split(sliced_split, max_len=8, eval_batch_size=40)
    student = build_student("caser", num_items=sliced_split.num_items, hidden_size=8).eval()
    counts = sliced_split.item_train_counts()
    batches = list(datamodule.dataloader("test"))

    def run(rank_batches, other_batches=None):
        module = SequentialRecommender(student, item_train_counts=counts)
        other = SequentialRecommender(student, item_train_counts=counts)
        logged: dict[str, float] = {}
        with torch.no_grad():
            for i, b in enumerate(rank_batches):
                module._evaluate(b, "test", i)
            for i, b in enumerate(other_batches or []):
                other._evaluate(b, "test", i)
        other_sums = other._sums.get("test", {})

        def reduce(tensor, reduce_op):
            assert reduce_op == "sum"
            return tensor + other_sums[""].to(tensor) if other_batches else tensor

        module._trainer = SimpleNamespace(world_size=2 if other_batches else 1, strategy=SimpleNamespace(reduce=reduce))
        module.log_dict = lambda values, **_: logged.update(values)
        module._finish("test")
        return logged

    whole = run(batches)
    split = run(batches[:1], batches[1:])  # rank 0: 40 users, rank 1: the other 110
    assert split.keys() == whole.keys()
    for key in whole:
        assert split[key] == pytest.approx(whole[key], abs=1e-12), key
    per_rank = [run(batches[:1]), run(batches[1:])]
    assert abs((per_rank[0]["test/ndcg@20"] + per_rank[1]["test/ndcg@20"]) / 2 - whole["test/ndcg@20"]) > 1e-6
