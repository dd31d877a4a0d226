"""The planted distillation stage: its targets on hand-made runs, its recipe, and its two stages
(emit, distill fit) driven through a fake CLI: arguments, order, reuse, rebuild and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recdistill.benchmarks import planted_distill
from recdistill.benchmarks.planted_distill import DISTILL_RECIPE, judge_distill_targets, run_planted_distill


def _split(overall: float, cold: float, rare: float = 0.01, warm: float = 0.2) -> dict:
    return {"overall": overall, "hr@10": 2 * overall, "cold": cold, "rare": rare, "warm": warm,
            "counts": {"cold": 492, "rare": 517, "warm": 991}}


def _run(seed: int, distilled_cold: float | None, teacher_cold: float, sasrec_cold: float = 0.0) -> dict:
    models = {"teacher": _split(0.165, teacher_cold), "sasrec": _split(0.141, sasrec_cold)}
    if distilled_cold is not None:
        models["distilled"] = _split(0.160, distilled_cold)
    return {"seed": seed, "models": {name: {"valid": s, "test": s} for name, s in models.items()}}


def test_distill_targets_are_judged_per_seed_with_the_slack_as_difference():
    runs = [_run(0, 0.155, 0.181), _run(1, 0.070, 0.143, sasrec_cold=0.02), _run(2, 0.110, 0.220)]
    cold, sasrec = judge_distill_targets(runs)
    assert cold["target"] == "distilled SASRec cold >= 0.5 x teacher cold" and cold["reference"] == "teacher"
    assert [s["met"] for s in cold["per_seed"]] == [True, False, True] and not cold["met"]
    assert cold["per_seed"][0]["difference"] == pytest.approx(0.155 - 0.5 * 0.181)
    assert cold["per_seed"][2]["difference"] == pytest.approx(0.0)  # exactly half: met
    assert cold["per_seed"][1]["distilled"] == 0.070 and cold["per_seed"][1]["reference"] == 0.143
    assert sasrec["target"] == "plain SASRec cold <= 0.01"
    assert [s["met"] for s in sasrec["per_seed"]] == [True, False, True] and not sasrec["met"]
    assert sasrec["per_seed"][1]["difference"] == pytest.approx(0.01 - 0.02)
    for row in (cold, sasrec):  # the row format of teacher_planted.judge_targets
        assert {"target", "slice", "reference", "margin", "per_seed", "met"} <= set(row)
        assert all({"seed", "reference", "difference", "met"} <= set(s) for s in row["per_seed"])


def test_distill_targets_met_on_every_seed_and_missing_models_are_skipped():
    cold, sasrec = judge_distill_targets([_run(0, 0.155, 0.181), _run(1, 0.100, 0.143)])
    assert cold["met"] and sasrec["met"]
    cold, sasrec = judge_distill_targets([_run(0, None, 0.181)])  # no distilled run yet
    assert cold["per_seed"] == [] and cold["met"] is False and sasrec["met"]
    assert not any(t["met"] for t in judge_distill_targets([]))


def test_the_recipe_is_the_planted_sasrec_with_the_dllm2rec_model_and_parses():
    import yaml
    from jsonargparse import ArgumentParser

    from recdistill.data import SequentialDataModule
    from recdistill.distill.module import DistilledSequentialRecommender
    from recdistill.distill.terms import TermSpec
    from recdistill.recipes import recipe_path
    from recdistill.student.fit import read_recipe, student_task

    path = recipe_path(DISTILL_RECIPE)
    mine, sasrec = read_recipe(path), yaml.safe_load(recipe_path("planted_text_sasrec").read_text())
    dllm2rec = yaml.safe_load(recipe_path("ml100k_sasrec_dllm2rec").read_text())
    assert student_task(mine) == "sequential"
    assert mine["data"] == sasrec["data"] and mine["trainer"] == sasrec["trainer"]
    assert mine["early_stopping_patience"] == sasrec["early_stopping_patience"] == 8
    assert mine["model"]["student"] == sasrec["model"]["student"] == dllm2rec["model"]["student"]
    for key in ("terms", "embedding_fusion", "lr", "weight_decay", "mask_seen"):
        assert mine["model"][key] == dllm2rec["model"][key], key
    assert [TermSpec.parse(t, i).name for i, t in enumerate(mine["model"]["terms"])] == ["dllm2rec"]
    assert mine["model"]["signals"] == "runs/planted_text/teacher/signals"  # a placeholder the bench overrides
    # every key and type is known to the classes `distill fit` builds (parsed, not instantiated)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--config", action="config")
    parser.add_argument("--seed_everything", type=int)
    parser.add_argument("--early_stopping_patience", type=int)
    parser.add_argument("--trainer", type=dict)
    parser.add_class_arguments(DistilledSequentialRecommender, "model", fail_untyped=False)
    parser.add_class_arguments(SequentialDataModule, "data")
    cfg = parser.parse_args(["--config", str(path), "--model.signals=elsewhere/signals"])
    assert cfg.model.signals == "elsewhere/signals" and cfg.model.embedding_fusion == {"w_ed": 0.25}
    assert cfg.model.student.class_path == "recdistill.student.SASRec"
    with pytest.raises(Exception):  # the parser does refuse what the classes do not take
        parser.parse_args(["--config", str(path), "--model.w_ed=0.25"])


class FakeCLI:
    """Stands in for ``recdistill``: records each call and writes what the real command would."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.emissions = 0
        self.fail_distill = False

    def __call__(self, *args: str) -> None:
        self.calls.append(args)
        if args[:2] == ("teacher", "emit"):
            self.emissions += 1
            out = Path(_value(args, "--emit.output_dir="))
            out.mkdir(parents=True, exist_ok=True)
            (out / "manifest.json").write_text(json.dumps({"complete": True, "teacher": {"n": self.emissions}}))
        elif args[:2] == ("distill", "fit"):
            out = Path(args[args.index("--output-dir") + 1])
            (out / "checkpoints").mkdir(parents=True, exist_ok=True)
            (out / "checkpoints" / "last.ckpt").write_text("ckpt")
            if self.fail_distill:
                raise RuntimeError("killed")
            split = {"ndcg@10": 0.16, "hr@10": 0.3, "cold/ndcg@10": 0.15, "cold/count": 492.0,
                     "rare/ndcg@10": 0.007, "rare/count": 517.0, "warm/ndcg@10": 0.24, "warm/count": 991.0}
            (out / "metrics.json").write_text(json.dumps({"valid": split, "test": split, "best_epoch": 9,
                                                          "epochs": 18, "threads": 1, "train_seconds": 58.4}))
        else:
            raise AssertionError(f"unexpected command {args}")


def _value(args: tuple[str, ...], prefix: str) -> str:
    return next(a for a in args if a.startswith(prefix))[len(prefix):]


@pytest.fixture
def fake(tmp_path, monkeypatch):
    cli = FakeCLI()
    monkeypatch.setattr(planted_distill, "_cli", cli)
    adapter = tmp_path / "runs" / "planted-teacher-seed3" / "adapter"
    adapter.mkdir(parents=True)
    for name in planted_distill.TEACHER_FILES:
        (adapter / name).write_text(name)
    return cli


def _go(tmp_path: Path) -> dict:
    data_args = ["--seed_everything=3", "--data.dataset=d.csv", '--data.column_map={"user": "u"}']
    teacher_args = [*data_args, "--model.collaborative_model=s/student"]
    return run_planted_distill(tmp_path / "runs", 3, data_args, teacher_args, "sha-of-data")


def test_emit_then_distill_with_the_teachers_arguments_then_both_reused(fake, tmp_path):
    out = _go(tmp_path)
    runs = tmp_path / "runs"
    signals = runs / "planted-emit-seed3" / "signals"
    emit, distill = fake.calls
    assert emit == ("teacher", "emit", "--config", "planted_text_teacher", "--output-dir",
                    str(runs / "planted-teacher-seed3"), "--seed_everything=3", "--data.dataset=d.csv",
                    '--data.column_map={"user": "u"}', "--model.collaborative_model=s/student",
                    f"--emit.output_dir={signals}")
    assert distill == ("distill", "fit", "--config", DISTILL_RECIPE, "--output-dir",
                       str(runs / "planted-distill-seed3"), "--seed_everything=3", "--data.dataset=d.csv",
                       '--data.column_map={"user": "u"}', f"--model.signals={signals}")
    assert out["distilled"]["test"] == {"overall": 0.16, "hr@10": 0.3, "cold": 0.15, "rare": 0.007, "warm": 0.24,
                                        "counts": {"cold": 492, "rare": 517, "warm": 991}}
    assert out["best_epoch"] == 9 and out["threads"] == 1 and out["signals"] == str(signals)
    assert (runs / "planted-emit-seed3" / "stage.json").is_file()
    assert (runs / "planted-distill-seed3" / "stage.json").is_file()
    again = _go(tmp_path)
    assert len(fake.calls) == 2 and again == out  # both stages reused, nothing run


def test_a_refitted_teacher_rebuilds_the_signals_and_then_the_student(fake, tmp_path):
    _go(tmp_path)
    (tmp_path / "runs" / "planted-teacher-seed3" / "adapter" / "head.safetensors").write_text("refitted")
    _go(tmp_path)
    emit, distill = fake.calls[2:]
    assert emit[:2] == ("teacher", "emit") and emit[-1] == "--emit.overwrite=true"  # the old cache is stale
    assert distill[:2] == ("distill", "fit") and "--resume" not in distill  # new signals: a fresh fit


def test_a_killed_distill_fit_resumes_and_a_missing_teacher_is_an_error(fake, tmp_path):
    fake.fail_distill = True
    with pytest.raises(RuntimeError, match="killed"):
        _go(tmp_path)
    fake.fail_distill = False
    _go(tmp_path)
    assert [c[:2] for c in fake.calls] == [("teacher", "emit"), ("distill", "fit"), ("distill", "fit")]
    assert fake.calls[-1][-1] == "--resume" and "--resume" not in fake.calls[1]
    with pytest.raises(FileNotFoundError, match="bench teacher --dataset planted"):
        run_planted_distill(tmp_path / "runs", 4, [], [], "sha")


def test_planted_args_are_the_teacher_benchmarks(tmp_path, monkeypatch):
    """The same strings as ``teacher_planted._run_seed`` builds (so each bench reuses the other's stages)."""
    calls = []

    def write(directory, num_users, num_items, seed):
        calls.append((num_users, num_items, seed))
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "planted_text.csv").write_text("user_id,item_id\n")
        return Path(directory) / "planted_text.csv", {"user": "user_id", "item": "item_id"}

    import recdistill.data.planted_text as planted_text

    monkeypatch.setattr(planted_text, "write_planted_text_csv", write)
    data_args, teacher_args, sha = planted_distill.planted_args(tmp_path, 2, ["--model.logq=0.5"])
    csv = tmp_path / "planted-data-seed2" / "planted_text.csv"
    assert calls == [(2000, 600, 2)]
    assert data_args == ["--seed_everything=2", f"--data.dataset={csv}",
                         '--data.column_map={"user": "user_id", "item": "item_id"}']
    assert teacher_args == [*data_args, f"--model.collaborative_model={tmp_path / 'planted-sasrec-seed2' / 'student'}",
                            "--model.logq=0.5"]
    from recdistill.atomic import sha256_file

    assert sha == sha256_file(csv)
