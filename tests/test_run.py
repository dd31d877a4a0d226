"""`recdistill run`: every stage into one run folder, cached by its inputs, resumable; `recdistill compare`.

One tiny configuration (synthetic CSV, random-init tiny Llama, 16-wide SASRec; ``run.write_tiny_run``)
is run once with a stage that fails, resumed, re-run unchanged, then with one distillation setting
changed: only the stages downstream of it run again.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from recdistill import run as run_module
from recdistill.cli import main
from recdistill.run import run_recipe, write_tiny_run

BEFORE_COMPRESS = ["data", "vanilla/seed0", "vanilla/seed1", "teacher-fit", "teacher-emit", "teacher-eval",
                   "distilled/seed0", "distilled/seed1"]
ALL_STAGES = BEFORE_COMPRESS + ["compress", "export", "profile", "report"]


def _status(run_dir: Path) -> dict[str, str]:
    return {s["stage"]: s["status"] for s in json.loads((run_dir / "run.json").read_text())["stages"]}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished tiny run whose first attempt failed in the compress stage."""
    root = tmp_path_factory.mktemp("tinyrun")
    recipe = write_tiny_run(root / "config", seeds=(0, 1))
    out = root / "run"
    real = run_module._compress_stage
    calls = {"n": 0}

    def fail_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt("interrupted in compress")
        return real(*args, **kwargs)

    first_log: list[str] = []
    second_log: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RECDISTILL_CACHE", str(root / "cache"))
        mp.setattr(run_module, "_compress_stage", fail_once)
        with pytest.raises(KeyboardInterrupt):
            run_recipe(recipe, out, log=first_log.append)
        first = _status(out)
        first_info = json.loads((out / "run.json").read_text())
        first_info["compress_marked_done"] = (out / "compressed" / "stage.json").exists()
        run_recipe(recipe, out, log=second_log.append)
    return {"root": root, "recipe": recipe, "out": out, "first": first, "first_info": first_info,
            "first_log": first_log, "second_log": second_log}


def test_interrupted_run_resumes_where_it_stopped(tiny_run):
    first = tiny_run["first"]
    assert all(first[s] == "ran" for s in BEFORE_COMPRESS) and first["compress"] == "failed"
    assert "export" not in first and tiny_run["first_info"]["status"] == "failed"
    assert not tiny_run["first_info"]["compress_marked_done"]
    resumed = _status(tiny_run["out"])
    assert [s for s in ALL_STAGES if resumed[s] == "skipped"] == BEFORE_COMPRESS
    assert all(resumed[s] == "ran" for s in ("compress", "export", "profile", "report"))
    # one line per stage saying what happened and how long it took
    assert any(line.startswith("[teacher-fit] skipped") for line in tiny_run["second_log"])
    assert any(line.startswith("[compress] ran in ") and line.endswith(" s") for line in tiny_run["second_log"])


def test_run_folder_describes_itself(tiny_run):
    out = tiny_run["out"]
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "finished" and info["seeds"] == [0, 1]
    assert {"python", "torch", "lightning", "transformers", "recdistill"} <= set(info["versions"])
    assert info["threads"]["torch"] >= 1
    data = json.loads((out / "data" / "data.json").read_text())
    assert info["dataset"]["fingerprint"] == data["fingerprint"]
    assert info["teacher"]["class"].endswith("HLLMTeacher") and info["teacher"]["base_model"].endswith("tiny-llama")
    assert info["recipe"]["student"]["recipe"].endswith("student.yaml")
    # each stage's resolved recipe is in its folder, with the links the runner filled in
    teacher = yaml.safe_load((out / "teacher" / "recipe.yaml").read_text())
    assert teacher["model"]["collaborative_model"] == str(out / "students" / "vanilla" / "seed0" / "student")
    distilled = yaml.safe_load((out / "students" / "distilled" / "seed1" / "recipe.yaml").read_text())
    assert distilled["model"]["signals"] == str(out / "teacher" / "signals") and distilled["seed_everything"] == 1
    for path in ("export/distilled.onnx", "compressed/compress.json", "profile/profile.json", "report/report.md",
                 "report/report.json", "report/quality_vs_latency.png", "report/size.png", "report/stages.png"):
        assert (out / path).is_file(), path


def test_unchanged_rerun_skips_everything_and_a_changed_setting_reruns_only_its_dependants(tiny_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(tiny_run["out"], out)
    log: list[str] = []
    run_recipe(tiny_run["recipe"], out, log=log.append)
    status = _status(out)
    assert all(status[s] == "skipped" for s in ALL_STAGES if s != "report"), status
    recipe = yaml.safe_load(tiny_run["recipe"].read_text())
    # change one distillation setting: teacher and vanilla students stay, distillation and below rerun
    recipe["distill"]["set"] = {"model.terms": [{"name": "dllm2rec", "weight": 0.5, "top_k": 5,
                                                 "params": {"beta": 1.0, "gamma": [0.3, 0.5, 0.1],
                                                            "distance": "cosine", "student_output": "softmax"}}]}
    changed = tiny_run["recipe"].parent / "run_changed.yaml"
    changed.write_text(yaml.safe_dump(recipe))
    run_recipe(changed, out, log=log.append)
    status = _status(out)
    assert [s for s in ALL_STAGES if status[s] == "skipped"] == BEFORE_COMPRESS[:6]
    assert [s for s in ALL_STAGES if status[s] == "ran"] == ALL_STAGES[6:]
    metrics = json.loads((out / "students" / "distilled" / "seed0" / "metrics.json").read_text())
    assert metrics["distill"]["terms"][0]["weight"] == 0.5
    # a changed compression setting reruns compress, profile and the report only
    recipe["compress"]["set"] = {"steps.recover.epochs": 2}
    changed.write_text(yaml.safe_dump(recipe))
    run_recipe(changed, out, log=log.append)
    status = _status(out)
    assert [s for s in ALL_STAGES if status[s] == "ran"] == ["compress", "profile", "report"]


def _value(run_dir: Path, source: str):
    """Follow a report source 'path#key.key' (or '#variants[name]') to the number in the file."""
    path, _, key = source.partition("#")
    node = json.loads((run_dir / path).read_text())
    for part in key.split("."):
        if part.startswith("variants["):
            node = next(v for v in node["variants"] if v["name"] == part[9:-1])
        else:
            node = node[part]
    return node


def test_report_numbers_equal_the_metrics_files(tiny_run):
    out = tiny_run["out"]
    report = json.loads((out / "report" / "report.json").read_text())
    rows = {r["key"]: r for r in report["rows"]}
    assert {"teacher", "teacher-llm", "teacher-cf", "vanilla", "distilled", "pruned", "quantized",
            "pruned+quantized"} <= set(rows)
    teacher = json.loads((out / "teacher" / "metrics.json").read_text())
    assert rows["teacher"]["metrics"]["ndcg@10"] == teacher["test"]["ndcg@10"]
    assert rows["teacher"]["p99_ms"] == teacher["latency"]["p99_ms"]
    assert rows["teacher-llm"]["metrics"]["hr@10"] == teacher["fusion"]["llm_only"]["test"]["hr@10"]
    for key in ("vanilla", "distilled"):
        seeds = [json.loads((out / "students" / key / f"seed{s}" / "metrics.json").read_text())["test"] for s in (0, 1)]
        assert rows[key]["seeds"] == 2
        assert rows[key]["metrics"]["ndcg@10"] == pytest.approx((seeds[0]["ndcg@10"] + seeds[1]["ndcg@10"]) / 2)
        assert rows[key]["std"]["ndcg@10"] == pytest.approx(abs(seeds[0]["ndcg@10"] - seeds[1]["ndcg@10"]) / 2 ** 0.5)
        assert [_value(out, s)["ndcg@10"] for s in rows[key]["sources"]["metrics"]] == [x["ndcg@10"] for x in seeds]
    compress = json.loads((out / "compressed" / "compress.json").read_text())
    records = {r["name"]: r for r in compress["variants"]}
    assert rows["quantized"]["metrics"]["ndcg@10"] == records["onnx_int8_dynamic"]["ndcg10"]
    assert rows["pruned+quantized"]["metrics"]["ndcg@10"] == records["onnx_pruned_int8"]["ndcg10"]
    assert rows["pruned"]["metrics"]["ndcg@10"] == records["pruned_recovered"]["ndcg10"]
    profile = json.loads((out / "profile" / "profile.json").read_text())
    for key in ("vanilla", "distilled", "pruned", "quantized", "pruned+quantized"):
        runs = {r["batch_size"]: r for r in profile["models"][key]["runs"]}
        assert rows[key]["p50_ms"] == runs[1]["latency_ms"]["p50"] and rows[key]["p99_ms"] == runs[1]["latency_ms"]["p99"]
        assert rows[key]["throughput"] == runs[16]["throughput_per_s"] and rows[key]["threads"] == 1
        assert rows[key]["file_bytes"] == (out / profile["models"][key]["file"]).stat().st_size
    markdown = (out / "report" / "report.md").read_text()
    assert f"{rows['distilled']['metrics']['ndcg@10']:.4f} ± {rows['distilled']['std']['ndcg@10']:.4f}" in markdown
    assert "## Protocol" in markdown and "full ranking" in markdown and "within noise" in markdown
    assert "| vanilla | passed |" in markdown  # ONNX parity gate


def test_compare_command_over_two_runs(tiny_run, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(tiny_run["out"], other)
    target = tmp_path / "cmp"
    assert main(["compare", str(tiny_run["out"]), str(other), "--output-dir", str(target)]) == 0
    report = json.loads((target / "report.json").read_text())
    labels = [r["label"] for r in report["rows"]]
    assert "run: distilled" in labels and "other: distilled" in labels
    assert set(report["stage_changes"]) == {"run", "other"}
    for name in ("quality_vs_latency.png", "size.png", "stages.png"):
        assert (target / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["compare", str(tmp_path)]) == 2  # not a run folder: one line, exit 2
    assert "no run.json" in capsys.readouterr().err


def test_run_recipe_errors_are_named(tmp_path):
    from recdistill.errors import ConfigError

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"student": {"recipe": "quickstart_sasrec"}, "teacher": {"recipe": "x"},
                                   "distill": {"recipe": "x"}, "compress": {"recipe": "x"}, "sedes": [0]}))
    with pytest.raises(ConfigError, match="sedes"):
        run_recipe(bad, tmp_path / "out")
    bad.write_text(yaml.safe_dump({"student": {"recipe": "quickstart_sasrec"}}))
    with pytest.raises(ConfigError, match="teacher"):
        run_recipe(bad, tmp_path / "out")


def test_packaged_run_recipes_resolve():
    from recdistill.run import load_run_recipe, stage_recipe

    for name in ("quickstart", "ml100k_full"):
        config = load_run_recipe(name)
        for section in ("student", "teacher", "distill", "compress"):
            assert stage_recipe(config[section], dataset="movielens-100k", seed=0)["data"]["dataset"] == "movielens-100k"
    quick = load_run_recipe("quickstart")
    assert quick["seeds"] == [0] and len(load_run_recipe("ml100k_full")["seeds"]) >= 3
    compress = stage_recipe(quick["compress"])
    assert "pq" not in compress["steps"] and compress["steps"]["recover"]["epochs"] == 3


def test_profile_skips_compressed_files_a_later_compress_run_did_not_make(tmp_path):
    """The compress stage writes into the same folder on every run: a file of a step since turned off (here the
    pruned ONNX files) is stale and must not be profiled as this run's pruned model."""
    from recdistill.run import servable_artefacts

    onnx_dir = tmp_path / "compressed" / "onnx"
    onnx_dir.mkdir(parents=True)
    for name in ("pruned_fp32.onnx", "int8_dynamic.onnx", "pruned_int8.onnx"):
        (onnx_dir / name).write_bytes(b"onnx")
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "distilled.onnx").write_bytes(b"onnx")
    records = [{"name": "pruned_recovered"}, {"name": "onnx_fp32"}, {"name": "onnx_int8_dynamic"},
               {"name": "onnx_pruned_int8"}]
    (tmp_path / "compressed" / "compress.json").write_text(json.dumps({"variants": records}))
    assert set(servable_artefacts(tmp_path)) == {"distilled", "pruned", "quantized", "pruned+quantized"}
    # re-run with steps.onnx.pruned_int8: false: the pruned files on disk are the previous run's
    (tmp_path / "compressed" / "compress.json").write_text(json.dumps({"variants": records[:3]}))
    found = servable_artefacts(tmp_path)
    assert found == {"distilled": tmp_path / "export" / "distilled.onnx", "quantized": onnx_dir / "int8_dynamic.onnx"}
