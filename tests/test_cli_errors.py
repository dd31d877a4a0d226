"""Every expected failure of the `recdistill` command: one line on stderr naming the field, file or
fix, exit status 2, no traceback, and nothing written half (the output folder absent or unchanged)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from recdistill.cli import main

COLUMNS = {"user": "uid", "item": "iid", "timestamp": "ts"}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Data files, a student recipe, a teacher recipe and fitted runs to break things against."""
    from recdistill.data import load_split, synthetic_interactions
    from recdistill.teacher.testing import make_tiny_llama

    root = tmp_path_factory.mktemp("cli-errors")
    inter = synthetic_interactions(num_users=40, num_items=15, mean_length=8, seed=3).interactions
    csv = root / "events.csv"
    inter.rename(columns={"user_id": "uid", "item_id": "iid", "timestamp": "ts"}).to_csv(csv, index=False)
    plain = root / "plain.csv"
    inter[["user_id", "item_id", "timestamp"]].to_csv(plain, index=False)
    other = root / "other.csv"  # another dataset
    synthetic_interactions(num_users=30, num_items=12, mean_length=8, seed=9).interactions[
        ["user_id", "item_id", "timestamp"]].to_csv(other, index=False)
    (root / "junk.parquet").write_bytes(os.urandom(200))
    (root / "broken.csv").write_text('uid,iid,ts\n1,2,"x\n')
    (root / "dates.csv").write_text("uid,iid,ts\n1,2,yesterday\n1,3,today\n")
    (root / "nouser.csv").write_text("a,iid,ts\n1,2,3\n")
    (root / "empty_folder").mkdir()
    (root / "not_yaml.yaml").write_text("data: [unclosed\n")

    student = yaml.safe_load(Path(__file__).parents[1].joinpath("recipes/ml100k_sasrec.yaml").read_text())
    student["data"].update(dataset=str(csv), column_map=COLUMNS, max_len=5, batch_size=64)
    student["model"]["student"]["init_args"].update(hidden_size=8, num_layers=1, max_len=5)
    student["trainer"].update(max_epochs=1, enable_progress_bar=False, enable_model_summary=False,
                              accelerator="cpu")
    (root / "student.yaml").write_text(yaml.safe_dump(student))
    student["model"]["student"]["init_args"].update(hidden_size=16)
    (root / "student_wide.yaml").write_text(yaml.safe_dump(student))
    bad_key = yaml.safe_load((root / "student.yaml").read_text())
    bad_key["model"]["learning_rate"] = bad_key["model"].pop("lr")
    (root / "student_badkey.yaml").write_text(yaml.safe_dump(bad_key))
    bad_type = yaml.safe_load((root / "student.yaml").read_text())
    bad_type["data"]["batch_size"] = "lots"
    (root / "student_badtype.yaml").write_text(yaml.safe_dump(bad_type))

    tiny = make_tiny_llama(root / "tiny", texts=load_split(str(plain)).item_text, num_layers=2)
    teacher = {"seed_everything": 0,
               "data": {"dataset": str(plain), "max_len": 5, "batch_size": 16, "eval_batch_size": 32},
               "model": {"base_model": str(tiny), "num_layers": 1, "progress": False,
                         "embedding_cache_dir": str(root / "emb-cache")},
               "trainer": {"max_epochs": 1, "accelerator": "cpu", "enable_progress_bar": False,
                           "enable_model_summary": False, "num_sanity_val_steps": 0},
               "emit": {"k": 3, "shard_size": 200, "splits": ["valid", "test"], "accelerator": "cpu"},
               "eval": {"latency_users": 2}}
    (root / "teacher.yaml").write_text(yaml.safe_dump(teacher))
    teacher["model"]["base_model"] = str(root / "no-such-model")
    (root / "teacher_nobase.yaml").write_text(yaml.safe_dump(teacher))

    assert main(["student", "fit", "--config", str(root / "student.yaml"), "--output-dir", str(root / "srun")]) == 0
    trun = root / "trun"
    assert main(["teacher", "fit", "--config", str(root / "teacher.yaml"), "--output-dir", str(trun)]) == 0
    assert main(["teacher", "emit", "--config", str(root / "teacher.yaml"), "--output-dir", str(trun)]) == 0
    corrupt = root / "corrupt"
    (corrupt / "adapter").mkdir(parents=True)
    (corrupt / "adapter" / "teacher.json").write_text("{not json")
    return root


def _state(folder: Path) -> dict[str, tuple[int, int]] | None:
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


# (name, argv with {root}, output folder that must stay absent/unchanged, text the message must contain)
CASES = [
    # --- data info
    ("data: missing file", ["data", "info", "{root}/missing.csv"], None, "missing.csv' not found"),
    ("data: folder of unknown format", ["data", "info", "{root}/empty_folder"], None, "cannot tell the format"),
    ("data: unknown --format", ["data", "info", "{root}/events.csv", "--format", "xlsx"], None,
     "unknown data format 'xlsx'"),
    ("data: unreadable parquet", ["data", "info", "{root}/junk.parquet"], None, "cannot read"),
    ("data: malformed csv", ["data", "info", "{root}/broken.csv", "--column-map", json.dumps(COLUMNS)], None,
     "cannot read"),
    ("data: column map names a missing column",
     ["data", "info", "{root}/events.csv", "--column-map", '{"user": "uid", "item": "nope"}'], None,
     "'nope' (for item) not found"),
    ("data: unknown column map key", ["data", "info", "{root}/events.csv", "--column-map", '{"usr": "uid"}'], None,
     "column_map keys ['usr'] are not understood"),
    ("data: column map is not JSON", ["data", "info", "{root}/events.csv", "--column-map", "{user: uid"], None,
     "--column-map is not valid JSON"),
    ("data: no user column", ["data", "info", "{root}/nouser.csv"], None, "missing required column(s) for user"),
    ("data: bad timestamps", ["data", "info", "{root}/dates.csv"], None, "timestamp column 'ts'"),
    ("data: unknown option", ["data", "info", "{root}/events.csv", "--bogus"], None, "unrecognized arguments: --bogus"),
    ("fetch: unknown asset", ["fetch", "no-such-asset"], None, "unknown asset 'no-such-asset'"),
    # --- student fit
    ("student: missing config file", ["student", "fit", "--config", "{root}/nope.yaml", "--output-dir", "{root}/s1"],
     "{root}/s1", "recipe '{root}/nope.yaml' is neither a file nor a packaged recipe"),
    ("student: config is not YAML", ["student", "fit", "--config", "{root}/not_yaml.yaml", "--output-dir",
                                     "{root}/s2"], "{root}/s2", "not_yaml.yaml is not valid YAML"),
    ("student: unknown recipe key", ["student", "fit", "--config", "{root}/student.yaml", "--output-dir", "{root}/s3",
                                     "--model.learning_rate", "0.1"], "{root}/s3", "learning_rate"),
    ("student: unknown key in the recipe file", ["student", "fit", "--config", "{root}/student_badkey.yaml",
                                                 "--output-dir", "{root}/s9"], "{root}/s9", "learning_rate"),
    ("student: wrong type in the recipe file", ["student", "fit", "--config", "{root}/student_badtype.yaml",
                                                "--output-dir", "{root}/s10"], "{root}/s10", "data.batch_size"),
    ("student: wrong type", ["student", "fit", "--config", "{root}/student.yaml", "--output-dir", "{root}/s4",
                             "--data.max_len", "fifty"], "{root}/s4", "data.max_len"),
    ("student: missing data", ["student", "fit", "--config", "{root}/student.yaml", "--output-dir", "{root}/s5",
                               "--data.dataset", "{root}/gone.csv"], "{root}/s5", "gone.csv' not found"),
    ("student: bad column map", ["student", "fit", "--config", "{root}/student.yaml", "--output-dir", "{root}/s6",
                                 "--data.column_map", '{"user": "uid", "item": "nope"}'], "{root}/s6",
     "'nope' (for item) not found"),
    ("student: unknown student class", ["student", "fit", "--config", "{root}/student.yaml", "--output-dir",
                                        "{root}/s7", "--model.student", "recdistill.student.NoSuchNet"], "{root}/s7",
     "NoSuchNet"),
    ("student: unknown trainer option", ["student", "fit", "--config", "{root}/student.yaml", "--output-dir",
                                         "{root}/s8", "--trainer.no_such_flag", "1"], "{root}/s8", "no_such_flag"),
    ("student: resume a run of another recipe", ["student", "fit", "--config", "{root}/student_wide.yaml",
                                                 "--output-dir", "{root}/srun", "--resume"], "{root}/srun",
     "another dataset or recipe"),
    # --- teacher fit / emit / eval
    ("teacher fit: missing config", ["teacher", "fit", "--config", "{root}/nope.yaml", "--output-dir", "{root}/t1"],
     "{root}/t1", "recipe '{root}/nope.yaml' is neither"),
    ("teacher fit: unknown model key", ["teacher", "fit", "--config", "{root}/teacher.yaml", "--output-dir",
                                       "{root}/t2", "--model.init_args.no_such_arg", "1"], "{root}/t2", "no_such_arg"),
    ("teacher fit: missing base model", ["teacher", "fit", "--config", "{root}/teacher_nobase.yaml", "--output-dir",
                                         "{root}/t3"], "{root}/t3", "no-such-model does not exist"),
    ("teacher fit: relative base model path", ["teacher", "fit", "--config", "{root}/teacher.yaml", "--output-dir",
                                               "{root}/t3b", "--model.init_args.base_model", "models/a/no-such-model"],
     "{root}/t3b", "no-such-model does not exist"),
    ("teacher fit: not a teacher class", ["teacher", "fit", "--config", "{root}/teacher.yaml", "--output-dir",
                                          "{root}/t4", "--model.class_path", "recdistill.teacher.NoSuchTeacher"],
     "{root}/t4", "NoSuchTeacher"),
    ("teacher fit: missing data", ["teacher", "fit", "--config", "{root}/teacher.yaml", "--output-dir", "{root}/t5",
                                   "--data.dataset", "{root}/gone.csv"], "{root}/t5", "gone.csv' not found"),
    ("teacher fit: resume a run of another dataset", ["teacher", "fit", "--config", "{root}/teacher.yaml",
                                                      "--output-dir", "{root}/trun", "--resume", "--data.dataset",
                                                      "{root}/other.csv"], "{root}/trun", "cannot resume from"),
    ("teacher eval: nothing fitted", ["teacher", "eval", "--config", "{root}/teacher.yaml", "--output-dir",
                                      "{root}/t6"], "{root}/t6", "no fitted teacher in {root}/t6/adapter"),
    ("teacher eval: wrong type", ["teacher", "eval", "--config", "{root}/teacher.yaml", "--output-dir", "{root}/trun",
                                  "--eval.latency_users", "many"], "{root}/trun", "eval.latency_users"),
    ("teacher eval: another dataset", ["teacher", "eval", "--config", "{root}/teacher.yaml", "--output-dir",
                                       "{root}/trun", "--data.dataset", "{root}/other.csv"], "{root}/trun",
     "trained on another dataset"),
    ("teacher emit: cache of other settings", ["teacher", "emit", "--config", "{root}/teacher.yaml", "--output-dir",
                                               "{root}/trun", "--emit.k", "2"], "{root}/trun", "overwrite"),
    ("teacher emit: corrupt teacher.json", ["teacher", "emit", "--config", "{root}/teacher.yaml", "--output-dir",
                                            "{root}/corrupt"], "{root}/corrupt", "teacher.json is corrupt"),
    ("teacher: unknown action", ["teacher", "distill", "--config", "{root}/teacher.yaml", "--output-dir",
                                 "{root}/t7"], "{root}/t7", "invalid choice: 'distill'"),
]


@pytest.mark.parametrize("name, argv, output, expected", CASES, ids=[c[0] for c in CASES])
def test_expected_failure_is_one_clean_line(env, capsys, name, argv, output, expected):
    argv = [a.replace("{root}", str(env)) for a in argv]
    out_dir = Path(output.replace("{root}", str(env))) if output else None
    before = _state(out_dir) if out_dir else None
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("recdistill: error:")]
    assert len(lines) == 1, err
    assert expected.replace("{root}", str(env)) in lines[0], lines[0]
    if out_dir is not None:
        assert _state(out_dir) == before, f"{out_dir} changed"


def test_cases_cover_every_command():
    commands = {" ".join(argv[:2]) if argv[0] != "teacher" else f"teacher {argv[1]}" for _, argv, _, _ in CASES}
    assert {"data info", "student fit", "teacher fit", "teacher emit", "teacher eval"} <= commands
    assert len(CASES) >= 20


def test_subprocess_exit_status_and_debug_traceback(env):
    cmd = [sys.executable, "-m", "recdistill.cli", "data", "info", str(env / "missing.csv")]
    clean = subprocess.run(cmd, capture_output=True, text=True)
    assert clean.returncode == 2 and "Traceback" not in clean.stderr
    assert clean.stderr.strip().splitlines() == [clean.stderr.strip()] and "missing.csv" in clean.stderr
    debug = subprocess.run(cmd + ["--debug"], capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "DataFormatError" in debug.stderr
    by_env = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, RECDISTILL_DEBUG="1"))
    assert "Traceback" in by_env.stderr


def test_subprocess_student_fit_with_unknown_key(env):
    result = subprocess.run([sys.executable, "-m", "recdistill.cli", "student", "fit", "--config",
                             str(env / "student.yaml"), "--output-dir", str(env / "sp"), "--model.learning_rate",
                             "0.1"], capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "learning_rate" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (env / "sp").exists()


def test_a_bug_keeps_its_traceback(monkeypatch):
    import recdistill.cli as cli

    def broken(args, rest):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli, "_data_info", broken)
    with pytest.raises(ZeroDivisionError):
        main(["data", "info", "x.csv"])
