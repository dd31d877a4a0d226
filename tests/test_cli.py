"""The `recdistill` command line on tiny synthetic data written as an ordinary CSV file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from recdistill.cli import main
from recdistill.student.io import load_student


@pytest.fixture(scope="module")
def csv_dataset(tmp_path_factory, tiny_interactions) -> Path:
    path = tmp_path_factory.mktemp("data") / "events.csv"
    frame = tiny_interactions.interactions.rename(columns={"user_id": "uid", "item_id": "iid", "timestamp": "ts"})
    frame.to_csv(path, index=False)
    return path


def _recipe(tmp_path: Path, csv: Path, **model_extra) -> Path:
    recipe = yaml.safe_load(Path(__file__).parents[1].joinpath("recipes/ml100k_sasrec.yaml").read_text())
    recipe["data"].update(dataset=str(csv), column_map={"user": "uid", "item": "iid", "timestamp": "ts"},
                          max_len=10, batch_size=32)
    recipe["model"]["student"]["init_args"].update(hidden_size=16, num_layers=1, max_len=10)
    recipe["model"].update(model_extra)
    recipe["trainer"].update(max_epochs=2, log_every_n_steps=1, enable_progress_bar=False)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_student_fit_writes_metrics_config_and_reloadable_student(tmp_path, csv_dataset):
    out = tmp_path / "run"
    assert main(["student", "fit", "--config", str(_recipe(tmp_path, csv_dataset)), "--output-dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("ndcg@10", "hr@10", "mrr@10", "ndcg@20"):
        assert 0.0 <= metrics["test"][key] <= 1.0 and key in metrics["valid"]
    assert metrics["num_parameters"] > 0 and metrics["train_seconds"] > 0
    assert metrics["selected_on"] == "valid/ndcg@10"
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["model"]["student"]["init_args"]["hidden_size"] == 16

    student = load_student(out / "student")
    best = torch.load(out / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    saved = load_file(str(out / "student" / "model.safetensors"))
    for name, value in saved.items():  # the saved student is the validation-selected checkpoint
        assert torch.equal(value, best["state_dict"][f"student.{name}"])
    x = torch.tensor([[0, 0, 3, 5, 7]])
    assert student(x).shape == (1, student.num_items + 1)


def test_override_from_command_line(tmp_path, csv_dataset):
    out = tmp_path / "run"
    main(["student", "fit", "--config", str(_recipe(tmp_path, csv_dataset)), "--output-dir", str(out),
          "--trainer.max_epochs", "1"])
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 1


def test_unknown_config_key_is_named(tmp_path, csv_dataset):
    recipe = _recipe(tmp_path, csv_dataset, learning_rate=0.1)  # the real key is `lr`
    result = subprocess.run([sys.executable, "-m", "recdistill.cli", "student", "fit", "--config", str(recipe),
                             "--output-dir", str(tmp_path / "run")], capture_output=True, text=True)
    assert result.returncode != 0
    assert "learning_rate" in result.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_wrong_type_is_named(tmp_path, csv_dataset):
    result = subprocess.run([sys.executable, "-m", "recdistill.cli", "student", "fit", "--config",
                             str(_recipe(tmp_path, csv_dataset)), "--output-dir", str(tmp_path / "run"),
                             "--data.max_len", "fifty"], capture_output=True, text=True)
    assert result.returncode != 0
    assert "max_len" in result.stderr


def test_resumed_fit_equals_uninterrupted(tmp_path, csv_dataset):
    recipe = str(_recipe(tmp_path, csv_dataset))
    main(["student", "fit", "--config", recipe, "--output-dir", str(tmp_path / "full"), "--trainer.max_epochs", "3"])
    main(["student", "fit", "--config", recipe, "--output-dir", str(tmp_path / "cut"), "--trainer.max_epochs", "1"])
    main(["student", "fit", "--config", recipe, "--output-dir", str(tmp_path / "cut"), "--trainer.max_epochs", "3",
          "--resume"])
    full = torch.load(tmp_path / "full/checkpoints/last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    cut = torch.load(tmp_path / "cut/checkpoints/last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert full.keys() == cut.keys()
    for name in full:
        torch.testing.assert_close(cut[name], full[name], rtol=0, atol=1e-6, msg=name)


def test_data_info_json(capsys, csv_dataset):
    main(["data", "info", str(csv_dataset), "--json", "--column-map",
          '{"user": "uid", "item": "iid", "timestamp": "ts"}'])
    info = json.loads(capsys.readouterr().out)
    assert info["num_users"] == 120 and info["num_items"] <= 40
    assert info["num_interactions"] == sum(1 for _ in open(csv_dataset)) - 1


def test_missing_dataset_path_is_a_clear_error(tmp_path, capsys):
    assert main(["data", "info", str(tmp_path / "does-not-exist.csv")]) == 2  # one line, no traceback
    err = capsys.readouterr().err
    assert "does-not-exist" in err and "Traceback" not in err


def test_ctr_student_fit_writes_ctr_metrics(tmp_path, csv_dataset):
    recipe = yaml.safe_load(Path(__file__).parents[1].joinpath("recipes/ml100k_deepfm.yaml").read_text())
    recipe["data"].update(dataset=str(csv_dataset), batch_size=128,
                          column_map={"user": "uid", "item": "iid", "timestamp": "ts", "rating": "rating"})
    recipe["model"]["student"]["init_args"].update(embed_dim=8)
    recipe["trainer"].update(max_epochs=2, enable_progress_bar=False)
    path = tmp_path / "deepfm.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    main(["student", "fit", "--config", str(path), "--output-dir", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "ctr" and metrics["selected_on"] == "valid/auc"
    assert 0.0 <= metrics["test"]["auc"] <= 1.0 and metrics["test"]["logloss"] > 0
    assert load_student(out / "student").registry_name == "deepfm"
