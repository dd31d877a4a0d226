"""The planted-text teacher benchmark's bookkeeping on hand-made payloads: slices, targets, table, README block."""

from __future__ import annotations

import pytest

from recdistill.benchmarks.teacher_planted import (
    README_ANCHOR,
    README_MARKERS,
    judge_targets,
    render_markdown,
    slice_summary,
    update_readme_block,
)


def _split(overall: float, cold: float, rare: float, warm: float, n: tuple[int, int, int] = (492, 517, 991)) -> dict:
    return {"overall": overall, "hr@10": 2 * overall, "cold": cold, "rare": rare, "warm": warm,
            "counts": dict(zip(("cold", "rare", "warm"), n))}


def _run(seed: int, teacher: tuple[float, float, float, float], sasrec_warm: float = 0.285) -> dict:
    test = {"teacher": _split(*teacher), "llm_part": _split(0.070, 0.094, 0.062, 0.063),
            "sasrec": _split(0.141, 0.0, 0.0, sasrec_warm), "text_tfidf": _split(0.061, 0.055, 0.060, 0.065),
            "untuned_llm": _split(0.068, 0.074, 0.062, 0.068), "most_popular": _split(0.016, 0.0, 0.0, 0.032)}
    models = {name: {"valid": split, "test": split} for name, split in test.items()}
    return {"seed": seed, "models": models, "alpha": 0.0, "fit_seconds": 420.0, "eval_seconds": 240.0}


def test_slice_summary_reads_overall_and_each_slice_with_counts():
    metrics = {"ndcg@10": 0.16, "hr@10": 0.3, "cold/ndcg@10": 0.2, "cold/count": 492.0, "rare/ndcg@10": 0.01,
               "rare/count": 517.0, "warm/ndcg@10": 0.22, "warm/count": 991.0, "cold/hr@10": 0.4}
    out = slice_summary(metrics)
    assert out == {"overall": 0.16, "hr@10": 0.3, "cold": 0.2, "rare": 0.01, "warm": 0.22,
                   "counts": {"cold": 492, "rare": 517, "warm": 991}}


def test_targets_are_judged_per_seed_and_met_only_on_every_seed():
    runs = [_run(0, (0.164, 0.206, 0.010, 0.224)), _run(1, (0.150, 0.050, 0.010, 0.290), sasrec_warm=0.280),
            _run(2, (0.170, 0.210, 0.010, 0.230))]
    targets = {t["target"]: t for t in judge_targets(runs)}
    tfidf = targets["teacher cold >= TF-IDF cold"]
    assert [s["met"] for s in tfidf["per_seed"]] == [True, False, True] and not tfidf["met"]
    far = targets["teacher cold far above SASRec cold (by >= 0.05)"]
    assert [s["met"] for s in far["per_seed"]] == [True, True, True] and far["met"]
    assert far["per_seed"][1]["difference"] == pytest.approx(0.05)
    assert targets["teacher overall >= SASRec overall"]["met"]
    warm = targets["teacher warm >= SASRec warm"]
    assert [s["met"] for s in warm["per_seed"]] == [False, True, False] and not warm["met"]
    assert warm["per_seed"][0]["difference"] == pytest.approx(0.224 - 0.285)


def test_missing_model_is_skipped_not_judged_as_met():
    run = _run(0, (0.164, 0.206, 0.010, 0.224))
    del run["models"]["text_tfidf"]
    target = next(t for t in judge_targets([run]) if t["reference"] == "text_tfidf")
    assert target["per_seed"] == [] and target["met"] is False


def test_table_has_medians_spreads_counts_and_verdicts():
    runs = [_run(0, (0.164, 0.206, 0.010, 0.224)), _run(1, (0.150, 0.180, 0.012, 0.210)),
            _run(2, (0.170, 0.230, 0.008, 0.230))]
    runs[1]["models"]["teacher"]["test"]["counts"] = {"cold": 480, "rare": 530, "warm": 990}
    payload = {"recipes": {"teacher": "planted_text_teacher", "sasrec": "planted_text_sasrec"}, "dataset": "d",
               "protocol": "p", "slices": "s", "seeds": [0, 1, 2], "torch": "2.x", "runs": runs}
    payload["targets"] = judge_targets(runs)
    table = render_markdown(payload)
    lines = table.splitlines()
    header = next(line for line in lines if line.startswith("| model"))
    assert "cold test (n 492/480/492)" in header and "rare test (n 517/530/517)" in header
    teacher = next(line for line in lines if line.startswith("| **hybrid teacher**")).rstrip(" |").split(" | ")
    assert teacher[2:6] == ["0.164 (0.150–0.170)", "0.206 (0.180–0.230)", "0.010 (0.008–0.012)",
                            "0.224 (0.210–0.230)"]
    assert any(line.startswith("| MostPopular | 0.016 (0.016–0.016) |") for line in lines)
    warm = next(line for line in lines if line.startswith("| teacher warm >= SASRec warm"))
    assert "-0.061, -0.075, -0.055" in warm and warm.endswith("| no (0/3 seeds) |")
    tfidf = next(line for line in lines if line.startswith("| teacher cold >= TF-IDF cold"))
    assert tfidf.endswith("| **yes** (3/3 seeds) |")
    assert "--dataset planted --seeds 0 1 2" in table and "alpha" in table


def test_readme_block_is_inserted_after_the_teacher_block_then_replaced(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n<!-- bench:teacher:start -->\nold\n{README_ANCHOR}\n\nWhat we tried\n")
    update_readme_block(readme, "table one\n")
    start, end = README_MARKERS
    text = readme.read_text()
    assert text == (f"intro\n<!-- bench:teacher:start -->\nold\n{README_ANCHOR}\n\n{start}\ntable one\n{end}\n\n"
                    "What we tried\n")
    update_readme_block(readme, "table two\n")
    assert readme.read_text() == text.replace("table one", "table two")


def test_readme_without_anchor_or_markers_is_an_error(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("nothing here\n")
    with pytest.raises(ValueError):
        update_readme_block(readme, "t\n")


def test_frontier_reads_the_eval_grid_and_marks_the_chosen_fusion(tmp_path):
    import json

    from recdistill.benchmarks.teacher_planted import fusion_grid, render_frontier

    def metrics(ndcg, cold, warm):
        return {"ndcg@10": ndcg, "cold/ndcg@10": cold, "cold/count": 5, "rare/ndcg@10": 0.0, "rare/count": 5,
                "warm/ndcg@10": warm, "warm/count": 10}

    grid = [{"alpha": a, "collaborative_gate_count": c, "valid": metrics(0.1 + a, 0.2, 0.3),
             "test": metrics(0.1 + a / 2, 0.2 - a / 10 + c / 1000, 0.3 - c / 1000)}
            for c in (5.0, 20.0) for a in (0.0, 0.1, 0.2, 0.5)]
    (tmp_path / "metrics.json").write_text(json.dumps({"fusion": {"alpha": 0.2, "grid": grid}}))
    assert fusion_grid(tmp_path / "missing.json") == []
    read = fusion_grid(tmp_path / "metrics.json")
    assert len(read) == 8 and read[1]["c_cf"] == 5.0 and read[1]["test"]["cold"] == pytest.approx(0.195)
    runs = [{"seed": 0, "alpha": 0.2, "cf_gate_count": 20.0, "fusion_grid": read},
            {"seed": 1, "alpha": 0.0, "cf_gate_count": 5.0, "fusion_grid": read}, {"seed": 2, "fusion_grid": []}]
    lines = render_frontier(runs)
    rows = [line for line in lines if line.startswith("| 0.") or line.startswith("| 0.0")]
    assert len(rows) == 6  # alphas 0, 0.2, 0.5 (not 0.1) x c_cf 5, 20
    assert rows[0].startswith("| 0.0 * | 5 | 0.100 (0.100–0.100) |") and rows[4].startswith("| 0.2 * | 20 |")
    assert rows[1].startswith("| 0.2 | 5 |")  # not chosen for any seed
    assert "seeds [0, 1]" in lines[1]
    assert render_frontier([{"seed": 0}]) == []


def test_bounds_refuse_other_data_and_render_the_frontier_per_seed():
    """The oracle rows come from the seed's regenerated data, refused when its fingerprint moved."""
    from recdistill.benchmarks.planted_bounds import planted_bounds, render_bounds

    with pytest.raises(ValueError, match="no longer matches"):
        planted_bounds(0, fingerprint="0" * 64)
    bounds = planted_bounds(0)
    oracle, warm_only = bounds["models"]["bayes_oracle"]["test"], bounds["models"]["bayes_oracle_warm"]["test"]
    assert warm_only["warm"] > oracle["warm"] and oracle["cold"] > warm_only.get("cold", 0.0)
    assert oracle["overall"] > warm_only["overall"]
    run = _run(0, (0.16, 0.18, 0.03, 0.215))
    run["models"].update(bounds["models"])
    run["models"]["text_tfidf"] = {"test": _split(0.06, 0.055, 0.06, 0.06)}
    run["oracle_frontier"] = bounds["frontier"]
    lines = render_bounds([run])
    row = lines[-1].split(" | ")
    assert row[0] == "| 0" and row[1] == "0.285" and row[4] == "0.180 / 0.215"
    at_tfidf, at_teacher = float(row[3]), float(row[5].rstrip(" |"))
    assert float(row[2]) >= at_tfidf > at_teacher  # more cold NDCG costs warm NDCG on the frontier
