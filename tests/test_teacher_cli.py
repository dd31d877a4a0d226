"""`recdistill teacher fit|emit|eval` end to end on a CSV dataset and a tiny local llama."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from recdistill.teacher.cache_reader import TeacherSignals
from recdistill.teacher.cli import run_teacher_command
from recdistill.teacher.testing import make_tiny_llama


def test_teacher_cli_fit_eval_emit(tmp_path, monkeypatch):
    from recdistill.data import load_split, synthetic_interactions

    monkeypatch.setenv("RECDISTILL_CACHE", str(tmp_path / "cache"))
    inter = synthetic_interactions(40, 20, mean_length=12, seed=5).interactions
    csv = tmp_path / "events.csv"
    inter[["user_id", "item_id", "timestamp"]].to_csv(csv, index=False)
    split = load_split(str(csv))
    tiny = make_tiny_llama(tmp_path / "tiny", texts=split.item_text, num_layers=2)
    recipe = {
        "seed_everything": 0,
        "data": {"dataset": str(csv), "max_len": 8, "batch_size": 8, "eval_batch_size": 16},
        "model": {"base_model": str(tiny), "num_layers": 2, "lr": 0.005, "progress": False},
        "trainer": {"max_epochs": 2, "accelerator": "cpu", "enable_progress_bar": False,
                    "enable_model_summary": False},
        "emit": {"k": 5, "layers": [1], "shard_size": 100},
        "eval": {"latency_users": 5},
    }
    cfg = tmp_path / "teacher.yaml"
    cfg.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run" / "teacher"
    assert run_teacher_command("fit", cfg, out) == 0
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and (out / "config.yaml").is_file()
    fit = json.loads((out / "fit.json").read_text())
    assert len(fit["history"]) == 2 and fit["dataset_fingerprint"] == split.fingerprint
    # a flat `model:` section still means HLLMTeacher
    meta = json.loads((out / "adapter" / "teacher.json").read_text())
    assert meta["class"] == "recdistill.teacher.hllm.HLLMTeacher" and meta["init_args"]["num_layers"] == 2
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["class_path"].endswith("HLLMTeacher")
    assert run_teacher_command("eval", cfg, out) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"valid", "test", "latency", "long_tail"} <= set(metrics)
    assert metrics["valid"]["ndcg@10"] == pytest.approx(fit["best_score"], abs=1e-6)
    # an impossible emit setting is a one-line error that writes nothing (else the corrected run is refused)
    from recdistill.errors import ConfigError, user_message

    with pytest.raises(ConfigError, match=r"emit\.k must be in 1\.\.20") as info:
        run_teacher_command("emit", cfg, out, ["--emit.k", "0"])
    assert "\n" not in user_message(info.value) and not (out / "signals").exists()
    assert run_teacher_command("emit", cfg, out, ["--emit.train_every", "2"]) == 0
    reader = TeacherSignals(out / "signals", split=split)
    assert reader.k == 5 and reader.layers == [1]
    assert np.array_equal(reader.example_ids("test"), split.example_ids("test"))
    assert len(reader.example_ids("train")) < len(split.example_ids("train"))
    # a changed setting on an existing cache is refused, with the rebuild hint
    from recdistill.teacher.signals import CacheMismatchError

    with pytest.raises(CacheMismatchError, match="overwrite"):
        run_teacher_command("emit", cfg, out, ["--emit.k", "3"])
    assert run_teacher_command("emit", cfg, out, ["--emit.k", "3", "--emit.overwrite", "true"]) == 0
    assert TeacherSignals(out / "signals").k == 3


@pytest.mark.parametrize("layout", ["current", "before_the_lightning_wrapper"])
def test_interrupted_teacher_fit_resumes_to_the_same_weights(tmp_path, monkeypatch, layout):
    """Also from a checkpoint of the earlier layout, when the teacher was its own LightningModule
    (state-dict keys without the wrapper's ``teacher.`` prefix): migrated on load, same weights."""
    import torch
    from safetensors.torch import load_file

    from recdistill.data import load_split, synthetic_interactions

    monkeypatch.setenv("RECDISTILL_CACHE", str(tmp_path / "cache"))
    csv = tmp_path / "events.csv"
    synthetic_interactions(30, 15, mean_length=10, seed=6).interactions[["user_id", "item_id", "timestamp"]].to_csv(
        csv, index=False)
    tiny = make_tiny_llama(tmp_path / "tiny", texts=load_split(str(csv)).item_text, num_layers=2)
    recipe = {"seed_everything": 0, "data": {"dataset": str(csv), "max_len": 6, "batch_size": 8},
              "model": {"base_model": str(tiny), "num_layers": 2, "lr": 0.01, "dropout": 0.2, "progress": False},
              "trainer": {"max_epochs": 3, "accelerator": "cpu", "enable_progress_bar": False,
                          "enable_model_summary": False}}
    cfg = tmp_path / "teacher.yaml"
    cfg.write_text(yaml.safe_dump(recipe))
    run_teacher_command("fit", cfg, tmp_path / "full", ["--trainer.max_epochs", "3"])
    run_teacher_command("fit", cfg, tmp_path / "cut", ["--trainer.max_epochs", "1"])
    ckpt = torch.load(tmp_path / "cut/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["state_dict"] and all(k.startswith("teacher.") for k in ckpt["state_dict"])
    assert not any(k.startswith("teacher.backbone.") and "lora_" not in k for k in ckpt["state_dict"])  # no base
    if layout != "current":
        ckpt["state_dict"] = {k.removeprefix("teacher."): v for k, v in ckpt["state_dict"].items()}
        torch.save(ckpt, tmp_path / "cut/checkpoints/last.ckpt")
    run_teacher_command("fit", cfg, tmp_path / "cut", ["--trainer.max_epochs", "3"], resume=True)
    for name in ("head.safetensors", "adapter_model.safetensors"):
        full, cut = (load_file(str(tmp_path / run / "adapter" / name)) for run in ("full", "cut"))
        assert full.keys() == cut.keys()
        for key in full:
            torch.testing.assert_close(cut[key], full[key], rtol=0, atol=1e-6, msg=key)
    history = lambda run: json.loads((tmp_path / run / "fit.json").read_text())["history"]  # noqa: E731
    assert [h["epoch"] for h in history("cut")] == [0, 1, 2]
    assert history("cut")[-1]["valid/ndcg@10"] == pytest.approx(history("full")[-1]["valid/ndcg@10"], abs=1e-6)


def test_wrong_teacher_class_path_is_named(tmp_path, monkeypatch, capsys):
    from recdistill.data import synthetic_interactions

    monkeypatch.setenv("RECDISTILL_CACHE", str(tmp_path / "cache"))
    csv = tmp_path / "events.csv"
    synthetic_interactions(20, 10, mean_length=8, seed=1).interactions[["user_id", "item_id", "timestamp"]].to_csv(
        csv, index=False)
    recipe = {"data": {"dataset": str(csv), "max_len": 6},
              "model": {"class_path": "recdistill.teacher.NoSuchTeacher", "init_args": {"num_layers": 2}},
              "trainer": {"max_epochs": 1, "accelerator": "cpu"}}
    cfg = tmp_path / "teacher.yaml"
    cfg.write_text(yaml.safe_dump(recipe))
    from recdistill.errors import ConfigError  # printed as one line by `recdistill` (exit status 2)

    with pytest.raises(ConfigError, match="recdistill.teacher.NoSuchTeacher"):
        run_teacher_command("fit", cfg, tmp_path / "run")
    # a class that is not a teacher is refused too, naming the base class it must derive from
    recipe["model"] = {"num_layers": 2}  # flat (HLLMTeacher), switched on the command line
    cfg.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ConfigError) as info:
        run_teacher_command("fit", cfg, tmp_path / "run",
                            ["--model.class_path", "recdistill.data.SequentialDataModule"])
    err = str(info.value)
    assert "recdistill.data.SequentialDataModule" in err and "HLLMTeacher" in err
    assert not (tmp_path / "run" / "adapter").exists()


def test_constructor_error_surfaces_without_the_config_dump(tmp_path, monkeypatch):
    """A missing collaborative student is reported as our FileNotFoundError (naming the field and
    the command that builds it), not as jsonargparse's union error that prints the whole config."""
    from recdistill.data import load_split, synthetic_interactions

    monkeypatch.setenv("RECDISTILL_CACHE", str(tmp_path / "cache"))
    csv = tmp_path / "events.csv"
    synthetic_interactions(20, 10, mean_length=8, seed=1).interactions[["user_id", "item_id", "timestamp"]].to_csv(
        csv, index=False)
    tiny = make_tiny_llama(tmp_path / "tiny", texts=load_split(str(csv)).item_text, num_layers=2)
    recipe = {"data": {"dataset": str(csv), "max_len": 6},
              "model": {"base_model": str(tiny), "num_layers": 2, "item_table": "fusion", "progress": False,
                        "collaborative_model": str(tmp_path / "no-such-student")},
              "trainer": {"max_epochs": 1, "accelerator": "cpu"}}
    cfg = tmp_path / "teacher.yaml"
    cfg.write_text(yaml.safe_dump(recipe))
    with pytest.raises(FileNotFoundError, match="model.collaborative_model=.*recdistill student fit") as info:
        run_teacher_command("fit", cfg, tmp_path / "run")
    assert "item_text" not in str(info.value)
