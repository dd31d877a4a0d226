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


def _sliced(metrics: dict, cold: float, rare: float, warm: float) -> dict:
    return {**metrics, "cold/ndcg@10": cold, "cold/count": 3.0, "rare/ndcg@10": rare, "rare/count": 44.0,
            "warm/ndcg@10": warm, "warm/count": 896.0}


def test_table_shows_cold_rare_warm_columns_with_counts_when_every_run_has_slices():
    runs = []
    for seed, rare in ((0, 0.03), (1, 0.05), (2, 0.04)):
        run = _run("teacher", seed, 0.12, 0.09, 0.3)
        run["test"] = _sliced(run["test"], 0.0, rare, 0.12)
        for part in run["fusion"].values():
            if isinstance(part, dict):
                part["test"] = _sliced(part["test"], 0.0, rare / 2, 0.11)
        runs.append(run)
    payload = {"recipe": "r", "protocol": "p", "seeds": [0, 1, 2], "torch": "2.x", "runs": runs}
    table = render_markdown(payload)
    header = next(line for line in table.splitlines() if line.startswith("| model"))
    assert "cold test NDCG@10 (n=3)" in header and "rare test NDCG@10 (n=44)" in header
    assert "warm test NDCG@10 (n=896)" in header and "long tail" not in header
    rows = {line.split(" | ")[0].strip("| *"): line for line in table.splitlines() if line.startswith("| ")}
    hybrid = rows["hybrid teacher: LLM + CF logit mixture"].split(" | ")
    assert hybrid[4:7] == ["0.0000 (0.0000–0.0000)", "0.0400 (0.0300–0.0500)", "0.1200 (0.1200–0.1200)"]
    cf = rows["the teacher's CF part (SASRec, all windows) as evaluated beside it"]
    assert "| 0.0200 (0.0150–0.0250) |" in cf  # the CF part's rare slice
    assert all(len(line.split(" | ")) == len(header.split(" | ")) for line in rows.values())


def test_legacy_runs_keep_the_long_tail_column_and_dash_the_slices():
    payload = {"recipe": "r", "protocol": "p", "seeds": [0], "torch": "2.x", "runs": [_run("teacher", 0, 0.12, 0.09, 0.3)]}
    table = render_markdown(payload)
    header = next(line for line in table.splitlines() if line.startswith("| model"))
    assert "long tail (cold+rare, n=47)" in header and "cold test NDCG@10 |" in header
    hybrid = next(line for line in table.splitlines() if "hybrid teacher" in line).split(" | ")
    assert hybrid[4:8] == ["-", "-", "-", "0.0120"]


def test_students_reference_follows_the_recipe_that_trained_the_runs(tmp_path):
    """A students payload whose SASRec row was trained by ``ml100k_sasrec_windows`` (the same settings)
    feeds the teacher table's collaborative-part row, not the former last-window row."""
    import json

    from recdistill.benchmarks.teacher import COLLABORATIVE, _students_reference

    run = {"seed": 0, "valid": {"ndcg@10": 0.12}, "test": {"ndcg@10": 0.11, "hr@10": 0.2}}
    payload = {"most_popular": None, "runs": [{**run, "student": "sasrec", "recipe": "ml100k_sasrec_windows"}]}
    (tmp_path / "students.json").write_text(json.dumps(payload))
    ref = _students_reference(tmp_path)
    assert "sasrec" not in ref and ref[COLLABORATIVE]["test_ndcg@10"] == [0.11]
    payload["runs"] = [{**run, "student": "sasrec"}]  # older payloads: the student's own recipe
    (tmp_path / "students.json").write_text(json.dumps(payload))
    assert _students_reference(tmp_path)["sasrec"]["seeds"] == [0]


def test_a_joint_fusion_run_without_alpha_renders_a_dash():
    """A joint-fusion teacher reports a fusion record (its content-only part) without an alpha."""
    joint = _run("joint fusion", 0, 0.115, 0.05, 0.0)
    joint["fusion"] = {"content_only": {"test": {"ndcg@10": 0.01}}}
    payload = {"recipe": "r", "protocol": "p", "seeds": [0], "torch": "2.x", "students": {},
               "runs": [_run("teacher", 0, 0.12, 0.09, 0.3), joint]}
    rows = {line.split(" | ")[0].strip("| *"): line for line in render_markdown(payload).splitlines()
            if line.startswith("| ")}
    assert "| 0.1150 |" in rows["ablation: joint fusion"] and "| - |" in rows["ablation: joint fusion"]


def test_ablations_run_on_the_chosen_seeds_and_names(tmp_path, monkeypatch):
    import pytest

    import recdistill.benchmarks.teacher as bench

    (tmp_path / "cf" / "student").mkdir(parents=True)
    (tmp_path / "cf" / "student" / "model.safetensors").write_bytes(b"w")
    ran: list[str] = []
    monkeypatch.setattr(bench, "_collaborative_run", lambda out, seed: tmp_path / "cf")
    monkeypatch.setattr(bench, "run_stage", lambda name, d, inputs, work: ran.append(name) or
                        {"valid": {"ndcg@10": 0.1}, "test": {"ndcg@10": 0.1, "hr@10": 0.2}, "long_tail": {}})
    monkeypatch.setattr(bench, "render_markdown", lambda payload: "")
    joint = "joint fusion (LLM trained on the CF model's residual)"
    bench.run_teacher_benchmark(tmp_path, seeds=[0, 1], ablation_seeds=[1, 2], ablation_names=[joint])
    assert ran == ["teacher-seed0", "teacher-seed1", "ablation-collaborative-fusion-seed1",
                   "ablation-collaborative-fusion-seed2"]
    ran.clear()
    bench.run_teacher_benchmark(tmp_path, seeds=[3])  # default: every ablation on the first seed
    assert ran[0] == "teacher-seed3" and len(ran) == 1 + len(bench.ABLATIONS) and all(r.endswith("seed3") for r in ran)
    with pytest.raises(ValueError, match="unknown teacher ablation"):
        bench.run_teacher_benchmark(tmp_path, seeds=[0], ablation_names=["nope"])
