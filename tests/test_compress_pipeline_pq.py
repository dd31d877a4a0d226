"""The ``pq_joint`` compress step (RecJPQ joint training) end to end on a tiny planted dataset:
one gated record per setting, the best validated one exported to ONNX, students reloadable."""

from __future__ import annotations

import json

import torch

from recdistill.compress.pipeline import run_compress
from recdistill.compress.pq import load_pq_student
from recdistill.data import synthetic_interactions
from recdistill.student import build_student
from recdistill.student.io import save_student


def _planted_parent(tmp_path, num_users: int, num_items: int, length: int, seed: int, hidden: int):
    """A planted CSV and an untrained SASRec parent saved in ``tmp_path/student``; returns the CSV."""
    torch.set_num_threads(1)
    data = synthetic_interactions(num_users=num_users, num_items=num_items, mean_length=length, seed=seed,
                                  pattern_strength=0.9)
    csv = tmp_path / "planted.csv"
    data.interactions.to_csv(csv, index=False)
    torch.manual_seed(0)
    n = int(data.interactions["item_id"].nunique())
    save_student(build_student("sasrec", num_items=n, hidden_size=hidden, num_layers=1, num_heads=2, max_len=length),
                 tmp_path / "student")
    return csv


def test_pq_joint_step_gates_every_setting_and_exports_the_best(tmp_path):
    csv = _planted_parent(tmp_path, 120, 60, 10, seed=2, hidden=16)
    config = {"data": {"dataset": str(csv), "max_len": 10, "batch_size": 32, "train_windows": "all",
                       "max_eval_batches": 1, "calibration_batches": 1},
              "gate": {"min_top10_overlap": 0.0, "max_ndcg_drop": 1.0, "max_latency_ratio": None},
              "latency": {"runs": 3},
              "steps": {"pq_joint": {"settings": [[4, 8], [8, 8]], "min_item_table_ratio": 1.0, "max_epochs": 2,
                                     "patience": 2, "lr": 0.003, "seed": 0}}}
    summary = run_compress(tmp_path / "student", config, tmp_path / "out")
    records = {r["name"]: r for r in summary["variants"]}
    assert list(records) == ["pq_joint_m4_k8", "pq_joint_m8_k8"]
    choice = summary["pq_joint_choice"]
    best = max(records, key=lambda n: records[n]["valid_ndcg10"])
    assert choice["chosen"] == best and choice["selected_on"] == "valid ndcg@10"
    assert records[best]["onnx"]["parity_passed"] is True and (tmp_path / "out" / "onnx" / "pq_joint.onnx").is_file()
    for name, record in records.items():
        info = record["pq"]
        assert info["method"] == "joint (RecJPQ)" and info["codes"] == "svd" and info["item_table_ratio"] > 1
        assert record["ndcg10"] is not None and record["valid_ndcg10"] is not None
        model = load_pq_student(tmp_path / "out" / record["dir"])
        assert model.item_embedding.num_subspaces == info["num_subspaces"]
    saved = json.loads((tmp_path / "out" / "compress.json").read_text())
    assert saved["pq_joint_choice"]["chosen"] == best


def test_pq_joint_reuses_a_setting_trained_with_the_same_parent_and_settings(tmp_path, monkeypatch):
    """Adding a setting (or resuming) trains only what is missing; other training settings retrain."""
    import recdistill.compress.pq_train as pq_train

    csv = _planted_parent(tmp_path, 60, 30, 8, seed=3, hidden=8)
    trained = []
    real = pq_train.train_joint_pq
    monkeypatch.setattr(pq_train, "train_joint_pq",
                        lambda *a, **kw: trained.append((kw["num_subspaces"], kw["num_centroids"])) or
                        taught.append(kw["parent"] is not None) or real(*a, **kw))
    taught: list[bool] = []

    def config(settings, lr=0.003, **extra):
        return {"data": {"dataset": str(csv), "max_len": 8, "batch_size": 32, "max_eval_batches": 1,
                         "calibration_batches": 1},
                "gate": {"min_top10_overlap": 0.0, "max_ndcg_drop": 1.0, "max_latency_ratio": None},
                "latency": {"runs": 2},
                "steps": {"pq_joint": {"settings": settings, "min_item_table_ratio": 1.0, "max_epochs": 1,
                                       "patience": 1, "lr": lr, "seed": 0, **extra}}}

    out = tmp_path / "out"
    first = run_compress(tmp_path / "student", config([[4, 8]]), out)
    weights = (out / "pq_joint" / "m4_k8" / "model.safetensors").read_bytes()
    assert trained == [(4, 8)]
    second = run_compress(tmp_path / "student", config([[4, 8], [2, 8]]), out)
    assert trained == [(4, 8), (2, 8)]  # the first setting was reused, not retrained
    assert (out / "pq_joint" / "m4_k8" / "model.safetensors").read_bytes() == weights
    by_name = {r["name"]: r for r in second["variants"]}
    assert by_name["pq_joint_m4_k8"]["ndcg10"] == first["variants"][0]["ndcg10"]
    run_compress(tmp_path / "student", config([[4, 8]], lr=0.01), out)
    assert trained[-1] == (4, 8) and len(trained) == 3  # another learning rate: trained again
    third = run_compress(tmp_path / "student", config([[4, 8]], kd_weight=1.0), out)  # distilled from the parent
    assert len(trained) == 4 and taught == [False, False, False, True]
    assert third["variants"][0]["pq"]["teacher"] == "fp32 parent"


def test_pq_joint_retrains_when_the_training_data_change(tmp_path, monkeypatch):
    """The reuse key covers what the training reads besides its own settings: the data-module settings
    (e.g. batch size) and the data (a file edited in place, same catalogue); evaluation-only keys do not count."""
    import pandas as pd

    import recdistill.compress.pq_train as pq_train

    csv = _planted_parent(tmp_path, 60, 30, 8, seed=3, hidden=8)
    trained = []
    real = pq_train.train_joint_pq
    monkeypatch.setattr(pq_train, "train_joint_pq", lambda *a, **kw: trained.append(kw["num_subspaces"]) or
                        real(*a, **kw))

    def config(batch_size=32, max_eval_batches=1):
        return {"data": {"dataset": str(csv), "max_len": 8, "batch_size": batch_size,
                         "max_eval_batches": max_eval_batches, "calibration_batches": 1},
                "gate": {"min_top10_overlap": 0.0, "max_ndcg_drop": 1.0, "max_latency_ratio": None},
                "latency": {"runs": 2},
                "steps": {"pq_joint": {"settings": [[4, 8]], "min_item_table_ratio": 1.0, "max_epochs": 1,
                                       "patience": 1, "lr": 0.003, "seed": 0}}}

    out = tmp_path / "out"
    run_compress(tmp_path / "student", config(), out)
    assert len(trained) == 1
    run_compress(tmp_path / "student", config(max_eval_batches=2), out)  # evaluation only: reused
    assert len(trained) == 1
    run_compress(tmp_path / "student", config(batch_size=16), out)  # another batch size: trained again
    assert len(trained) == 2
    frame = pd.read_csv(csv)  # the same users and items, each user's order reversed: other sequences
    frame["timestamp"] = frame.groupby("user_id")["timestamp"].transform(lambda t: t.iloc[::-1].to_numpy())
    frame.to_csv(csv, index=False)
    summary = run_compress(tmp_path / "student", config(batch_size=16), out)
    assert len(trained) == 3
    run_compress(tmp_path / "student", config(batch_size=16), out)  # nothing changed: reused
    assert len(trained) == 3 and summary["variants"][0]["pq"]["setting_key"]
