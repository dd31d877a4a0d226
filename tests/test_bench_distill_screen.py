"""``screen_variant`` adds one variant's run to an existing ``distill.json``: the recorded seed-0 teacher
is reused (never refitted), an earlier run of the same variant and seed is replaced, every other run
is kept, and the Markdown (and README block) is re-rendered from the merged payload."""

from __future__ import annotations

import json

import pytest

from recdistill.benchmarks import distill as bench


def _run(variant: str, seed: int, ndcg: float) -> dict:
    metrics = {"ndcg@10": ndcg, "hr@10": 2 * ndcg, "cold/ndcg@10": 0.0, "cold/count": 1,
               "rare/ndcg@10": ndcg / 2, "rare/count": 40, "warm/ndcg@10": ndcg, "warm/count": 900}
    return {"variant": variant, "seed": seed, "valid": dict(metrics), "test": dict(metrics),
            "seconds_per_epoch": 3.0, "threads": 2}


@pytest.fixture()
def results(tmp_path):
    teacher = {"valid": {"ndcg@10": 0.13}, "test": {"ndcg@10": 0.12, "hr@10": 0.2}, "signals": "s"}
    stage = tmp_path / "runs" / "distill-teacher-seed0" / "stage.json"
    stage.parent.mkdir(parents=True)
    stage.write_text(json.dumps({"outputs": teacher}))
    payload = {"best_on_validation": "plain", "seeds": [0], "teachers": {"0": teacher}, "torch": "t",
               "runs": [_run("plain", 0, 0.110), _run("soft-label KL (full catalogue, tau 2)", 0, 0.111)]}
    (tmp_path / "distill.json").write_text(json.dumps(payload))
    (tmp_path / "README.md").write_text("intro\n" + "\n".join(bench.README_MARKERS) + "\nend\n")
    return tmp_path


def test_screen_variant_replaces_its_own_run_and_keeps_the_others(results, monkeypatch):
    name = "soft-label KL (full catalogue, tau 2)"
    calls = []

    def fake_run(output_dir, variant, seed, teacher, spec):
        calls.append((variant, seed, teacher["signals"]))
        return {k: v for k, v in _run(variant, seed, 0.125).items() if k not in ("variant", "seed")}

    monkeypatch.setattr(bench, "_distil_run", fake_run)
    bench.screen_variant(name, seed=0, output_dir=results, readme=results / "README.md")
    assert calls == [(name, 0, "s")]  # the recorded teacher, not a refit
    payload = json.loads((results / "distill.json").read_text())
    runs = {(r["variant"], r["seed"]): r["test"]["ndcg@10"] for r in payload["runs"]}
    assert runs == {("plain", 0): 0.110, (name, 0): 0.125}  # replaced, not duplicated; plain kept
    assert payload["best_on_validation"] == "plain"
    markdown = (results / "distill.md").read_text()
    assert "0.1250" in markdown and "0.1100" in markdown and "0.1110" not in markdown
    readme = (results / "README.md").read_text()
    assert readme.startswith("intro\n") and readme.rstrip().endswith("end") and "0.1250" in readme


def test_screen_variant_needs_a_known_variant_and_a_recorded_teacher(results, tmp_path):
    with pytest.raises(ValueError, match="unknown distillation variant 'nope'"):
        bench.screen_variant("nope", output_dir=results)
    with pytest.raises(FileNotFoundError, match="run `recdistill bench distill` first"):
        bench.screen_variant("RD (top-10)", output_dir=tmp_path / "empty")


def test_a_control_variant_uses_the_recorded_control_teacher(results, monkeypatch):
    control = {"valid": {"ndcg@10": 0.13}, "test": {"ndcg@10": 0.12}, "signals": "control-signals"}
    stage = results / "runs" / "distill-teacher-control-seed0" / "stage.json"
    stage.parent.mkdir(parents=True)
    stage.write_text(json.dumps({"outputs": control}))
    calls = []

    def fake_run(output_dir, variant, seed, teacher, spec):
        calls.append((variant, seed, teacher["signals"], spec))
        return {k: v for k, v in _run(variant, seed, 0.121).items() if k not in ("variant", "seed")}

    monkeypatch.setattr(bench, "_distil_run", fake_run)
    name = "hidden-state (cosine)" + bench.CONTROL_SUFFIX
    bench.screen_variant(name, seed=2, output_dir=results)
    # the control teacher's cache, the base variant's overrides, the row named as the full benchmark names it
    assert calls == [(name, 2, "control-signals", bench.VARIANTS["hidden-state (cosine)"])]
    runs = {(r["variant"], r["seed"]) for r in json.loads((results / "distill.json").read_text())["runs"]}
    assert (name, 2) in runs and ("plain", 0) in runs


def test_bench_distill_add_runs_every_variant_on_every_seed(results, monkeypatch):
    from recdistill import cli

    calls = []
    monkeypatch.setattr(bench, "screen_variant", lambda name, seed, out, readme=None: calls.append((name, seed)))
    assert cli.main(["bench", "distill", "--add", "--output-dir", str(results), "--seeds", "1", "2",
                     "--variants", "RD (top-10)", "hidden-state (cosine)"]) == 0
    assert calls == [("RD (top-10)", 1), ("RD (top-10)", 2), ("hidden-state (cosine)", 1), ("hidden-state (cosine)", 2)]
    assert cli.main(["bench", "distill", "--add", "--output-dir", str(results)]) != 0  # no --variants: refused


def test_the_kl_recipe_is_the_benchmarks_validation_best_variant():
    """``ml100k_sasrec_distill_kl`` trains exactly the table's soft-label KL row: the DLLM2Rec recipe
    with that variant's overrides (same data, student, trainer and selection)."""
    import yaml

    from recdistill.recipes import recipe_path

    base = yaml.safe_load(recipe_path(bench.DISTILL_RECIPE).read_text())
    mine = yaml.safe_load(recipe_path("ml100k_sasrec_distill_kl").read_text())
    model = bench._override_model(base["model"], bench.VARIANTS["soft-label KL (full catalogue, tau 2)"])
    assert {k: v for k, v in model.items() if v is not None} == mine["model"]
    assert {k: v for k, v in base.items() if k != "model"} == {k: v for k, v in mine.items() if k != "model"}
