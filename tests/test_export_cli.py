"""``recdistill export --output-dir OUT --int8 --fp16``: reduced-precision copies gated on top-K agreement."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from recdistill.cli import main
from recdistill.compress.int8_onnx import topk_agreement
from recdistill.compress.onnx_quant import count_ops
from recdistill.export.onnx_export import export_onnx
from recdistill.student import build_student
from recdistill.student.io import save_student

SASREC = dict(num_items=2000, hidden_size=32, num_layers=1, num_heads=2, max_len=20)


def _saved(tmp_path: Path, name: str = "sasrec", seed: int = 0, **kwargs) -> Path:
    torch.manual_seed(seed)
    model = build_student(name, **(kwargs or SASREC)).eval()
    return save_student(model, tmp_path / f"{name}-{seed}")


def test_output_dir_writes_fp32_int8_fp16_with_gates(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "export"
    assert main(["export", "--student", str(_saved(tmp_path)), "--output-dir", str(out), "--int8", "--fp16"]) == 0
    fp32, int8, fp16 = out / "model.onnx", out / "model.int8.onnx", out / "model.fp16.onnx"
    assert fp32.exists() and int8.exists() and fp16.exists()
    ops = count_ops(int8)
    assert sum(ops["quantized"].values()) > 0 and ops["int8_initializers"] > 0, ops  # not a renamed fp32 file
    # the item table (300 x 32) dominates: int8 with the table included is well under half the file
    assert int8.stat().st_size < 0.5 * fp32.stat().st_size
    config = json.loads((out / "model.int8.quant.json").read_text())
    assert config["passed"] and config["agreement"]["metric"] == "top10_overlap"
    assert config["agreement"]["value"] >= 0.9
    assert "per-row" in config["item_table"]
    assert json.loads((out / "model.fp16.quant.json").read_text())["agreement"]["value"] >= 0.95
    assert "int8:" in capsys.readouterr().out


def test_agreement_gate_failure_exits_1_and_is_recorded(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "export"
    assert main(["export", "--student", str(_saved(tmp_path)), "--output-dir", str(out), "--int8",
                 "--min-topk-agreement", "1.01"]) == 1
    assert "FAILED" in capsys.readouterr().out
    assert json.loads((out / "model.int8.quant.json").read_text())["passed"] is False


def test_topk_agreement_tells_same_from_different_models(tmp_path: Path) -> None:
    a = export_onnx(build_student("sasrec", **SASREC).eval(), tmp_path / "a.onnx").path
    torch.manual_seed(123)
    b = export_onnx(build_student("sasrec", **SASREC).eval(), tmp_path / "b.onnx").path
    assert topk_agreement(a, a)["value"] == 1.0
    assert topk_agreement(a, b)["value"] < 0.3  # two random models: chance overlap is 10/2000


def test_ctr_int8_agreement_is_a_probability_difference(tmp_path: Path) -> None:
    student = _saved(tmp_path, "deepfm", field_dims=[5, 40, 3], dense_dim=2, embed_dim=8, mlp_dims=(16, 8))
    out = tmp_path / "ctr"
    assert main(["export", "--student", str(student), "--output-dir", str(out), "--int8"]) == 0
    agreement = json.loads((out / "model.int8.quant.json").read_text())["agreement"]
    assert agreement["metric"] == "max_probability_diff"
    assert 0.0 <= agreement["value"] <= 0.02


@pytest.mark.parametrize("extra, ids_text, expected", [
    (["--serving", "--k", "0"], None, "k=0 must be in 1..num_items=6"),
    (["--serving", "--k", "7"], None, "k=7 must be in 1..num_items=6"),
    ([], "[1, 2,", "is not valid JSON"),
    ([], '{"ids": [1, 2]}', "must hold a JSON list"),
    ([], "[1, 2]", "2 item ids for a student of 6 items"),
])
def test_export_setting_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str],
                                            ids_text: str | None, expected: str) -> None:
    student = _saved(tmp_path, num_items=6, hidden_size=8, num_layers=1, num_heads=2, max_len=4)
    if ids_text is not None:
        (tmp_path / "ids.json").write_text(ids_text)
        extra = [*extra, "--item-ids", str(tmp_path / "ids.json")]
    out = tmp_path / "out.onnx"
    assert main(["export", "--student", str(student), "--output", str(out), *extra]) == 2  # was: a traceback
    err = capsys.readouterr().err.strip()
    assert expected in err and "\n" not in err and "Traceback" not in err
    assert not out.exists()
