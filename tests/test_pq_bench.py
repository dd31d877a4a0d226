"""The PQ stage bookkeeping of ``bench compress``: PQ rows replaced by the stage's, the PQ target
judged on the best validated variant at least 8x smaller."""

from __future__ import annotations

from recdistill.benchmarks.compress_pq import best_pq, merge_pq, pq_config


def _v(name: str, valid: float | None, ratio: float) -> dict:
    return {"name": name, "valid_ndcg10": valid, "ndcg10_ratio": 0.9, "pq": {"item_table_ratio": ratio}}


def test_merge_replaces_pq_rows_and_best_is_chosen_on_validation() -> None:
    entry = {"compress": {"variants": [{"name": "onnx_fp32"}, _v("pq_item_table", None, 11.8),
                                       _v("pq_joint_m4_k4", 0.5, 20.0)]}}
    stage = {"variants": [_v("pq_item_table", 0.10, 14.4), _v("pq_joint_m16_k64", 0.13, 9.9),
                          _v("pq_joint_m8_k256", 0.20, 5.4)],
             "run_dir": "runs/pq-sasrec-seed0", "pq_joint_choice": {"chosen": "pq_joint_m16_k64"}}
    merge_pq(entry, stage)
    names = [v["name"] for v in entry["compress"]["variants"]]
    assert names == ["onnx_fp32", "pq_item_table", "pq_joint_m16_k64", "pq_joint_m8_k256"]  # stale rows gone
    assert entry["compress"]["pq_joint_choice"]["chosen"] == "pq_joint_m16_k64"
    assert best_pq(entry)["name"] == "pq_joint_m16_k64"  # 8x256 validates better but is < 8x smaller
    assert best_pq(entry, min_ratio=1.0)["name"] == "pq_joint_m8_k256"
    assert best_pq({"compress": {"variants": [{"name": "onnx_fp32"}]}}) is None


def test_pq_config_keeps_only_the_pq_steps() -> None:
    config = pq_config("sasrec")
    assert set(config["steps"]) == {"pq", "pq_joint"}
    assert config["steps"]["pq_joint"]["codes"] == "svd" and config["data"]["dataset"] == "movielens-100k"
