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


def _seed(chosen: str, parent: float, *rows: tuple[str, float, float, float]) -> dict:
    return {"run_dir": "r", "parent_ndcg10": parent, "chosen": chosen,
            "variants": [{"name": n, "item_table_ratio": t, "valid_ndcg10": v, "ndcg10": r * parent,
                          "ndcg10_ratio": r} for n, t, v, r in rows]}


def test_pq_target_over_seeds_is_the_median_of_each_seeds_validation_choice() -> None:
    from recdistill.benchmarks.compress_pq import pq_seeds_target, render_pq_seeds, seed_summary

    stage = {"run_dir": "runs/pq-sasrec-seed1", "parent": {"ndcg@10": 0.12},
             "variants": [{"name": "onnx_fp32"}, _v("pq_item_table", 0.10, 14.4), _v("pq_joint_m8_k64", 0.13, 14.4),
                          _v("pq_joint_m8_k256", 0.20, 5.4)]}
    summary = seed_summary(stage)
    assert summary["chosen"] == "pq_joint_m8_k64" and summary["parent_ndcg10"] == 0.12
    assert [v["name"] for v in summary["variants"]] == ["pq_item_table", "pq_joint_m8_k64", "pq_joint_m8_k256"]
    seeds = {"0": _seed("a", 0.1, ("a", 9.9, 0.13, 0.99), ("b", 14.4, 0.12, 0.90)),
             "1": _seed("b", 0.1, ("a", 9.9, 0.11, 0.95), ("b", 14.4, 0.12, 0.97)),
             "2": _seed("a", 0.1, ("a", 9.9, 0.14, 0.60), ("b", 14.4, 0.10, 1.10))}
    target = pq_seeds_target(seeds)
    assert target["median_ndcg10_ratio"] == 0.97  # of 0.99, 0.97, 0.60: the chosen ones, not the best (1.10)
    assert target["min_item_table_ratio"] == 9.9
    assert target["per_seed"]["1"] == ("b", 0.97, 14.4)
    table = "\n".join(render_pq_seeds(seeds))
    assert "**0.1300 / 0.0990 / 0.990**" in table and "| b | 14.4 |" in table
    assert "0.970 (0.900–1.100)" in table  # b's median over seeds, chosen or not
