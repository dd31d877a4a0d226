"""The gate: overlap against a hand computation, verdicts with reasons, nothing silently chosen."""

from __future__ import annotations

import pytest
import torch

from recdistill.compress.gate import GateThresholds, evaluate, gate_variant, pick_best, topk_overlap, torch_scorer
from recdistill.compress.prune import probe_inputs, prune_student
from recdistill.student import build_student


def test_topk_overlap_by_hand():
    ref = torch.tensor([[5.0, 4, 3, 2, 1], [1, 2, 3, 4, 5]])
    other = torch.tensor([[5.0, 1, 3, 2, 4], [1, 2, 3, 4, 5]])
    # row 0: top-2 {0,1} vs {0,4} -> 1/2; row 1: identical -> 1
    assert topk_overlap(ref, other, k=2) == pytest.approx(0.75)


def _seq_batches():
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(1, 21, (8, 6), generator=g), "target": torch.randint(1, 21, (8,), generator=g),
             "history": torch.randint(0, 21, (8, 6), generator=g)} for _ in range(2)]


def test_gate_reports_a_worse_and_slower_variant():
    torch.manual_seed(0)
    model = build_student("sasrec", num_items=20, hidden_size=16, num_layers=1, max_len=6, dropout=0.0).eval()
    batches = _seq_batches()
    parent = evaluate(torch_scorer(model), batches)
    same = gate_variant("same", parent, evaluate(torch_scorer(model), batches), GateThresholds(),
                        latency_ms=1.0, parent_latency_ms=1.0)
    assert same["passed"] and same["reasons"] == [] and same["top10_overlap"] == pytest.approx(1.0)

    def reversed_scorer(batch):
        return -model(batch["input_ids"]).detach()

    worse = evaluate(reversed_scorer, batches)
    record = gate_variant("reversed", parent, worse, GateThresholds(must_be_faster=True, max_size_ratio=0.5),
                          latency_ms=2.0, parent_latency_ms=1.0, size_bytes=90, parent_size_bytes=100)
    assert not record["passed"]
    text = " | ".join(record["reasons"])
    assert "top-10 overlap" in text and "not faster" in text and "size" in text
    choice = pick_best([record])
    assert choice["chosen"] is None and "reversed" in choice["why"]
    assert pick_best([record, same])["chosen"] == "same"


def test_gate_on_ctr_uses_auc():
    torch.manual_seed(0)
    model = build_student("deepfm", field_dims=[5, 7], dense_dim=2, embed_dim=8, mlp_dims=[32, 16],
                          dropout=0.0).eval()
    sparse, dense, history = probe_inputs(model, batch=64)
    batch = {"sparse": sparse, "dense": dense, "history": history, "label": (torch.arange(64) % 2).float()}
    parent = evaluate(torch_scorer(model), [batch])
    pruned, _ = prune_student(model, 0.5)
    record = gate_variant("pruned", parent, evaluate(torch_scorer(pruned), [batch]), GateThresholds(max_auc_drop=1.0))
    assert record["kind"] == "ctr" and "auc_delta" in record and record["passed"]
    strict = gate_variant("pruned", parent, {"kind": "ctr", "auc": parent["auc"] - 0.1}, GateThresholds())
    assert not strict["passed"] and "AUC" in strict["reasons"][0]


def test_unknown_threshold_is_an_error():
    with pytest.raises(ValueError, match="min_top10"):
        GateThresholds.from_dict({"min_top_10_overlap": 0.9})


def test_run_compress_on_a_ctr_student(tmp_path):
    """CTR students go through the same gate (AUC delta); steps that do not apply are noted, not dropped silently."""
    from recdistill.compress.pipeline import run_compress
    from recdistill.data import synthetic_interactions
    from recdistill.data.datamodules import CTRDataModule
    from recdistill.student.io import save_student

    csv = tmp_path / "x.csv"
    synthetic_interactions(num_users=100, num_items=60, mean_length=12, seed=1).interactions.to_csv(csv, index=False)
    dm = CTRDataModule(dataset=str(csv), batch_size=256, eval_batch_size=512)
    batch = next(iter(dm.dataloader("test")))
    torch.manual_seed(0)
    model = build_student("deepfm", field_dims=dm.field_dims, dense_dim=batch["dense"].shape[1], embed_dim=8,
                          mlp_dims=[32, 16])
    save_student(model, tmp_path / "student")
    summary = run_compress(tmp_path / "student", {
        "data": {"dataset": str(csv), "max_eval_batches": 1, "calibration_batches": 1},
        "gate": {"max_auc_drop": 1.0}, "latency": {"runs": 3},
        "steps": {"prune": {"ratio": 0.5}, "recover": {},
                  "onnx": {"static_int8": False, "fp16": False, "item_table": ["per_tensor", "per_row"]},
                  "pq": {}}}, tmp_path / "out")
    names = [r["name"] for r in summary["variants"]]
    assert names == ["pruned", "onnx_fp32", "onnx_int8_dynamic", "onnx_int8_item_table_per_tensor",
                     "onnx_int8_item_table_per_row", "onnx_pruned_int8"]
    assert all("auc_delta" in r and r["passed"] for r in summary["variants"])
    # the field tables are the CTR student's embedding tables: quantized, and the better passing scheme named
    assert summary["item_table_choice"]["chosen"] in names[3:5] and "highest auc" in summary["item_table_choice"]["why"]
    per_row = next(r for r in summary["variants"] if r["name"] == "onnx_int8_item_table_per_row")
    assert "per-row" in per_row["quantization"]["item_table"]
    assert "sequential students only" in summary["notes"]["recover"] and "no item table" in summary["notes"]["pq"]


@pytest.mark.parametrize("bad, named", [
    ({"steps": {"prune": {"raito": 0.3}}}, "steps.prune: unknown setting(s) ['raito']"),
    ({"steps": {"recover": {"epoch": 3}}}, "steps.recover: unknown setting(s) ['epoch']"),
    ({"steps": {"pq": {"recover": {"lr": 0.01, "epochs": 2}}}}, "steps.pq.recover: unknown setting(s) ['epochs']"),
    ({"steps": {"onnx": {"item_table": ["per_col"]}}}, "steps.onnx.item_table"),
    ({"steps": {"prune": 0.5}}, "steps.prune must be a mapping"),
    ({"steps": {"quantise": {}}}, "unknown compress step(s) ['quantise']"),
    ({"gate": {"min_top_10_overlap": 0.9}, "steps": {}}, "unknown gate threshold(s) ['min_top_10_overlap']"),
    ({"step": {"prune": {}}}, "unknown compress config key(s) ['step']"),
])
def test_compress_config_mistakes_are_one_line_errors_naming_the_key(tmp_path, capsys, bad, named):
    """A typo in a compress config is refused up front, in one line naming the key, exit status 2: never
    silently ignored (the default used instead) nor a traceback from deep inside a step."""
    import yaml

    from recdistill.cli import main
    from recdistill.data import synthetic_interactions
    from recdistill.student.io import save_student

    csv = tmp_path / "x.csv"
    synthetic_interactions(num_users=20, num_items=15, mean_length=6, seed=1).interactions.to_csv(csv, index=False)
    save_student(build_student("sasrec", num_items=15, hidden_size=8, num_layers=1, max_len=6), tmp_path / "student")
    config = {"data": {"dataset": str(csv), "max_len": 6}, "latency": {"runs": 1}, **bad}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    code = main(["compress", "--student", str(tmp_path / "student"), "--config", str(tmp_path / "c.yaml"),
                 "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and named in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "compress.json").exists()


def test_compress_on_another_dataset_is_a_one_line_error(tmp_path, capsys):
    from recdistill.cli import main
    from recdistill.data import synthetic_interactions
    from recdistill.student.io import save_student

    csv = tmp_path / "x.csv"
    data = synthetic_interactions(num_users=20, num_items=15, mean_length=6, seed=1).interactions
    data.to_csv(csv, index=False)
    n = int(data["item_id"].nunique())
    save_student(build_student("sasrec", num_items=n + 3, hidden_size=8, num_layers=1, max_len=6),
                 tmp_path / "student")
    (tmp_path / "c.yaml").write_text(f"data: {{dataset: {csv}, max_len: 6}}\nsteps: {{}}\n")
    code = main(["compress", "--student", str(tmp_path / "student"), "--config", str(tmp_path / "c.yaml"),
                 "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "data.dataset" in err and "wrong dataset" in err and "Traceback" not in err
