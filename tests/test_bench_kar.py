"""The KAR benchmark's bookkeeping: medians, spreads, per-seed deltas, the target, provenance for reuse."""

from __future__ import annotations

import json

import pytest

from recdistill.benchmarks import kar
from recdistill.benchmarks.kar import recorded_runs, render_markdown, reusable, summarise


def _run(model: str, variant: str, seed: int, auc: float, logloss: float, digest: str = "d") -> dict:
    return {"model": model, "variant": variant, "recipe": kar.recipes(model)[variant], "recipe_sha256": digest,
            "seed": seed, "extra_args": [], "teacher": None,
            "valid": {"auc": auc + 0.001, "logloss": logloss - 0.001, "gauc": 0.7},
            "test": {"auc": auc, "logloss": logloss, "gauc": auc - 0.08}}


def _payload(runs: list[dict]) -> dict:
    return {"seeds": [0, 1, 2], "torch": "2.x", "signals": "/x/teacher_ctr/signals", "runs": runs,
            "summary": summarise(runs)}


RUNS = [_run("deepfm", "plain", 0, 0.800, 0.542), _run("deepfm", "plain", 1, 0.802, 0.540),
        _run("deepfm", "plain", 2, 0.801, 0.541),
        _run("deepfm", "kar", 0, 0.806, 0.539), _run("deepfm", "kar", 1, 0.810, 0.538),
        _run("deepfm", "kar", 2, 0.808, 0.536),
        _run("din", "plain", 0, 0.790, 0.550), _run("din", "kar", 0, 0.795, 0.552),
        _run("deepfm", "distill", 0, 0.802, 0.539), _run("deepfm", "distill", 1, 0.802, 0.540)]


def test_summary_medians_spreads_deltas_and_target():
    summary = summarise(RUNS)
    deepfm = summary["deepfm"]
    assert deepfm["stats"]["kar"]["test/auc"] == pytest.approx({"median": 0.808, "min": 0.806, "max": 0.810})
    assert deepfm["stats"]["plain"]["valid/logloss"]["median"] == pytest.approx(0.540)
    assert deepfm["deltas"]["kar"]["test/auc"] == pytest.approx([0.006, 0.008, 0.007])
    assert deepfm["deltas"]["kar"]["test/logloss"] == pytest.approx([-0.003, -0.002, -0.005])
    assert deepfm["target"]["kar"] == {"met": True, "every_seed": True}
    # DIN: better AUC but worse LogLoss -> the target (both) is missed
    assert summary["din"]["seeds"]["kar"] == [0]
    assert summary["din"]["target"]["kar"] == {"met": False, "every_seed": False}
    # the distilled variant is judged on its own seeds against the same plain runs
    assert deepfm["seeds"]["distill"] == [0, 1] and deepfm["deltas"]["distill"]["test/auc"] == pytest.approx([0.002, 0.0])
    assert deepfm["target"]["distill"] == {"met": True, "every_seed": False}
    assert "distill" not in summary["din"]["stats"]


def test_markdown_rows_and_delta_table():
    table = render_markdown(_payload(RUNS))
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    kar_row = rows["DeepFM + KAR item vectors"]
    assert "`ml100k_deepfm_kar`" in kar_row and "| 0.8080 (0.8060–0.8100) |" in kar_row
    assert "| 0.5380 (0.5360–0.5390) |" in kar_row  # test LogLoss median (min–max)
    assert "| 0.7950 |" in rows["DIN + KAR item vectors"]  # one seed: no spread
    assert "| 0.8020 |" in rows["DeepFM distilled (soft labels + contrastive)"]
    assert "`ml100k_deepfm_distill`" in rows["DeepFM distilled (soft labels + contrastive)"]
    deltas = [line for line in table.splitlines() if line.startswith("| DeepFM | kar | [0, 1, 2]")]
    assert deltas and "+0.0060, +0.0080, +0.0070" in deltas[0] and "-0.0030, -0.0020, -0.0050" in deltas[0]
    assert deltas[0].endswith("| yes | yes |")
    assert "| DIN | kar | [0] |" in table and "make bench-kar" in table
    assert "| DeepFM | distill | [0, 1] | +0.0020, +0.0000 |" in table


def test_reuse_needs_recipe_digest_seed_and_metrics(tmp_path):
    good = _run("deepfm", "kar", 1, 0.81, 0.53, digest="abc")
    assert reusable(good, "ml100k_deepfm_kar", 1, "abc")
    assert not reusable(good, "ml100k_deepfm_kar", 1, "changed")  # the recipe text changed since
    assert not reusable(good, "ml100k_deepfm_kar", 2, "abc")
    assert not reusable({**good, "extra_args": ["--trainer.max_epochs=1"]}, "ml100k_deepfm_kar", 1, "abc")
    assert not reusable({**good, "test": {"auc": 0.8}}, "ml100k_deepfm_kar", 1, "abc")
    # the hand-run file: rows keyed by label, runs without recipe or digest -> nothing reused
    hand = {"runs": {"DeepFM (ml100k_deepfm)": [{"seed": 0, "valid": {"auc": 0.8}, "test": {"auc": 0.8}}]}}
    (tmp_path / "kar_ctr.json").write_text(json.dumps(hand))
    assert recorded_runs(tmp_path / "kar_ctr.json") == []
    (tmp_path / "kar.json").write_text(json.dumps(_payload([good])))
    assert recorded_runs(tmp_path / "kar.json") == [good]
    assert recorded_runs(tmp_path / "missing.json") == []


def test_missing_teacher_cache_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="ml100k_teacher_ctr"):
        kar.run_kar_benchmark(tmp_path, seeds=[0], signals=tmp_path / "nothing")


def test_cli_lists_the_kar_suite():
    from recdistill.cli import build_parser

    args = build_parser().parse_args(["bench", "kar", "--seeds", "0", "1", "--signals", "s"])
    assert args.suite == "kar" and args.seeds == [0, 1] and args.signals == "s"
