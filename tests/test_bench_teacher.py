"""The teacher benchmark's table: medians and spreads over seeds, the fused teacher's parts."""

from __future__ import annotations

from recdistill.benchmarks.teacher import render_markdown


def _run(variant: str, seed: int, ndcg: float, llm: float, alpha: float) -> dict:
    part = lambda v: {"valid": {"ndcg@10": v + 0.01}, "test": {"ndcg@10": v, "hr@10": 2 * v},  # noqa: E731
                      "long_tail_test": {"ndcg@10": v / 10}}
    return {"variant": variant, "seed": seed, "valid": {"ndcg@10": ndcg + 0.01},
            "test": {"ndcg@10": ndcg, "hr@10": 2 * ndcg},
            "long_tail": {"test": {"num_examples": 47, "ndcg@10": ndcg / 10}},
            "untuned_llm": {"test": {"ndcg@10": 0.019}}, "fit_seconds": 60.0 * (seed + 1), "threads": 2,
            "fusion": {"alpha": alpha, "llm_only": part(llm), "collaborative_only": part(0.11)}}


def test_table_reports_medians_spreads_parts_and_references():
    payload = {
        "recipe": "ml100k_teacher_smollm2", "protocol": "p", "seeds": [0, 1, 2], "torch": "2.x",
        "students": {"sasrec": {"valid_ndcg@10": [0.11, 0.12, 0.13], "test_ndcg@10": [0.102, 0.105, 0.106],
                                "test_hr@10": [0.19, 0.2, 0.21]}},
        "runs": [_run("teacher", 0, 0.120, 0.09, 0.3), _run("teacher", 1, 0.126, 0.08, 0.4),
                 _run("teacher", 2, 0.118, 0.10, 0.3), _run("no text", 0, 0.111, 0.05, 0.1)],
    }
    table = render_markdown(payload)
    rows = {line.split(" | ")[0].strip("| *"): line for line in table.splitlines() if line.startswith("| ")}
    hybrid = rows["hybrid teacher: LLM + CF logit mixture"]
    assert "| 0.1200 (0.1180–0.1260) |" in hybrid  # test NDCG@10: median (min–max)
    assert "| 0.3, 0.4, 0.3 |" in hybrid and "| 2.0 |" in hybrid  # alphas per seed, median fit minutes
    llm = rows["SmolLM2 + LoRA teacher alone (the LLM part)"]
    assert "| 0.0900 (0.0800–0.1000) |" in llm and "| 0.0090 (0.0080–0.0100) |" in llm  # its long tail
    assert "| 0.1050 (0.1020–0.1060) |" in rows["SASRec, student recipe (last window)"]
    assert "| 0.1110 |" in rows["ablation: no text"] and "| 0.0500 |" in rows["ablation: no text, LLM part"]
    assert "0.0190" in rows["untuned SmolLM2 (item-text cosine to the last 5 items)"]
    assert "47 test targets" in table
