"""Compression of a trained SASRec on a planted dataset: recovery, PQ item table, the int8
item-table policy and the ``compress`` command end to end. One student is trained per module
(~5 s, one thread); measured numbers are printed (``pytest -s``) and recorded by the asserts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from recdistill.compress.gate import evaluate, onnx_scorer, pick_best, gate_variant, GateThresholds, torch_scorer
from recdistill.compress.gate import topk_overlap
from recdistill.compress.onnx_quant import quantize_dynamic_onnx, unfold_int8_item_table
from recdistill.compress.pq import fit_pq, load_pq_student, pq_compress, save_pq_student
from recdistill.compress.prune import prune_student
from recdistill.compress.quantize import quantize_item_table
from recdistill.compress.recover import recover
from recdistill.data import build_sequential_split, synthetic_interactions
from recdistill.data.datamodules import SequentialDataModule
from recdistill.export import export_onnx
from recdistill.student import build_student
from recdistill.student.io import load_student, save_student

MAX_LEN = 20


@pytest.fixture(scope="module")
def planted():
    data = synthetic_interactions(num_users=600, num_items=800, mean_length=20, seed=1, pattern_strength=0.9)
    split = build_sequential_split(data)
    dm = SequentialDataModule.from_split(split, max_len=MAX_LEN, batch_size=64, train_windows="all")
    torch.manual_seed(0)
    model = build_student("sasrec", num_items=dm.num_items, hidden_size=32, num_layers=1, num_heads=2,
                          max_len=MAX_LEN, dropout=0.1)
    recover(model, None, dm.train_dataloader(), epochs=12, lr=3e-3)
    test = list(dm.dataloader("test"))
    parent = evaluate(torch_scorer(model), test)
    assert parent["ndcg@10"] > 0.5  # the planted patterns were learned
    return {"data": data, "dm": dm, "model": model, "test": test, "valid": list(dm.dataloader("valid")),
            "parent": parent}


def test_recovery_improves_agreement_with_the_parent(planted):
    model, dm, test, parent = planted["model"], planted["dm"], planted["test"], planted["parent"]
    pruned, report = prune_student(model, 0.5)
    before = evaluate(torch_scorer(pruned), test)
    overlap_before = topk_overlap(parent["scores"], before["scores"])
    history = recover(pruned, model, dm.train_dataloader(), epochs=5, lr=3e-3, kd_weight=1.0, temperature=2.0)
    after = evaluate(torch_scorer(pruned), test)
    overlap_after = topk_overlap(parent["scores"], after["scores"])
    print(f"\nprune 0.5: params x{report.param_ratio:.3f}; top-10 overlap {overlap_before:.3f} -> {overlap_after:.3f} "
          f"after recovery; NDCG@10 {parent['ndcg@10']:.4f} parent, {before['ndcg@10']:.4f} pruned, "
          f"{after['ndcg@10']:.4f} recovered")
    assert history["kd_loss"] and history["teacher"] == "unpruned parent"
    assert overlap_after > overlap_before + 0.02
    assert after["ndcg@10"] > before["ndcg@10"]


def test_pq_reconstruction_error_falls_with_more_centroids(planted):
    weight = planted["model"].item_embedding.weight.detach()[1:]
    errors = []
    for k in (4, 16, 64):
        codes, books = fit_pq(weight, 4, k, seed=0)
        recon = books[torch.arange(4), codes].flatten(1)
        errors.append(float((recon - weight).pow(2).mean()))
    assert errors[0] > errors[1] > errors[2]
    again = fit_pq(weight, 4, 16, seed=0)
    assert torch.equal(again[0], fit_pq(weight, 4, 16, seed=0)[0])  # seeded


def test_pq_item_table_keeps_ndcg_at_8x(planted, tmp_path):
    model, parent, test = planted["model"], planted["parent"], planted["test"]
    pq, info = pq_compress(model, num_subspaces=8, num_centroids=16)
    result = evaluate(torch_scorer(pq), test)
    ratio = result["ndcg@10"] / parent["ndcg@10"]
    print(f"\nPQ M=8 K=16: item table {info['item_table_bytes_before']} -> {info['item_table_bytes_after']} B "
          f"(x{info['item_table_ratio']:.2f} smaller), NDCG@10 {parent['ndcg@10']:.4f} -> {result['ndcg@10']:.4f} "
          f"(x{ratio:.3f}), top-10 overlap {topk_overlap(parent['scores'], result['scores']):.3f}")
    assert info["item_table_ratio"] >= 8.0
    assert ratio >= 0.9
    save_pq_student(pq, tmp_path / "pq", info)
    loaded = load_pq_student(tmp_path / "pq")
    x = test[0]["input_ids"][:8]
    torch.testing.assert_close(loaded(x), pq(x))
    export_onnx(loaded, tmp_path / "pq.onnx")  # traceable, parity-checked by the exporter
    # recovery fine-tune of the codebooks (codes fixed)
    codes = pq.item_embedding.codes.clone()
    recover(pq, model, planted["dm"].train_dataloader(), epochs=1, lr=1e-3)
    assert torch.equal(pq.item_embedding.codes, codes)


def test_per_tensor_vs_per_row_item_table(planted, tmp_path):
    model, test = planted["model"], planted["test"][:2]
    export_onnx(model, tmp_path / "fp32.onnx")
    fp32, _ = onnx_scorer(tmp_path / "fp32.onnx")
    ref = evaluate(fp32, test)
    quantize_dynamic_onnx(tmp_path / "fp32.onnx", tmp_path / "tensor.onnx", operators=("MatMul", "Gemm", "Gather"))
    export_onnx(quantize_item_table(model, "per_row"), tmp_path / "row_fp32.onnx")
    score_nodes = unfold_int8_item_table(tmp_path / "row_fp32.onnx", tmp_path / "row_unfolded.onnx")
    quantize_dynamic_onnx(tmp_path / "row_unfolded.onnx", tmp_path / "row.onnx", nodes_to_exclude=score_nodes)
    records = []
    for name in ("tensor", "row"):
        scorer, _ = onnx_scorer(tmp_path / f"{name}.onnx")
        records.append(gate_variant(name, ref, evaluate(scorer, test), GateThresholds(min_top10_overlap=0.5),
                                    size_bytes=(tmp_path / f"{name}.onnx").stat().st_size,
                                    parent_size_bytes=(tmp_path / "fp32.onnx").stat().st_size))
    print("\nitem table int8 (ONNX Runtime, vs fp32 ONNX): " + "; ".join(
        f"{r['name']}: top-10 overlap {r['top10_overlap']:.3f}, NDCG@10 x{r['ndcg10_ratio']:.3f}, "
        f"size x{r['size_ratio']:.3f}" for r in records))
    choice = pick_best(records)
    assert choice["chosen"] in ("tensor", "row")
    assert all(r["top10_overlap"] > 0.5 for r in records)


def test_compress_command_end_to_end(planted, tmp_path):
    from recdistill.compress.cli import add_compress_commands, compress_command

    csv = tmp_path / "planted.csv"
    planted["data"].interactions.to_csv(csv, index=False)
    save_student(planted["model"], tmp_path / "student")
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "compress_sasrec.yaml"
    overrides = [f"data.dataset={csv}", "data.max_len=20", "data.batch_size=64", "data.max_eval_batches=1",
                 "data.calibration_batches=1", "latency.runs=5", "steps.recover.epochs=1",
                 "steps.pq.num_centroids=16", "steps.pq.recover_epochs=1"]
    parser = argparse.ArgumentParser()
    add_compress_commands(parser.add_subparsers())
    args = parser.parse_args(["compress", "--student", str(tmp_path / "student"), "--config", str(recipe),
                              "--output-dir", str(tmp_path / "out"), *[f"--set={o}" for o in overrides]])
    assert args.handler(args, []) == 0
    summary = json.loads((tmp_path / "out" / "compress.json").read_text())
    names = [r["name"] for r in summary["variants"]]
    assert names == ["pruned", "pruned_recovered", "torch_dynamic_int8", "onnx_fp32", "onnx_int8_dynamic",
                     "onnx_int8_static", "onnx_fp16", "onnx_int8_item_table_per_tensor",
                     "onnx_int8_item_table_per_row", "onnx_pruned_int8", "pq_item_table"]
    for record in summary["variants"]:
        assert isinstance(record["passed"], bool) and record["passed"] == (not record["reasons"])
        assert record["latency_p50_ms"] > 0 and record["size_bytes"] > 0
    pruned = summary["variants"][0]
    assert not pruned["passed"] and "top-10 overlap" in pruned["reasons"][0]  # reported, not hidden
    assert "item_table_choice" in summary
    assert load_student(tmp_path / "out" / "pruned").init_args["hidden_size"] == 16
    for name in ("int8_dynamic", "int8_static", "fp16"):
        assert (tmp_path / "out" / "onnx" / f"{name}.quant.json").is_file()
    assert compress_command is args.handler


def test_pq_student_folder_is_checked(planted, tmp_path):
    from recdistill.errors import CheckpointError

    pq, info = pq_compress(planted["model"], num_subspaces=4, num_centroids=8, iters=3)
    save_pq_student(pq, tmp_path, info)
    spec = json.loads((tmp_path / "pq_student.json").read_text())
    assert spec["compression"]["item_table_ratio"] == pytest.approx(info["item_table_ratio"])
    (tmp_path / "model.safetensors").write_bytes((tmp_path / "model.safetensors").read_bytes()[:-1] + b"\0")
    with pytest.raises(CheckpointError, match="sha256"):
        load_pq_student(tmp_path)
    spec["name"] = "os.system"
    (tmp_path / "pq_student.json").write_text(json.dumps(spec))
    with pytest.raises(CheckpointError, match="cannot rebuild"):
        load_pq_student(tmp_path)


def _cache_from(model, dm, directory: Path) -> Path:
    """A signal cache whose teacher logits are ``model``'s own (score_user = its hidden state at each
    training label, score_items = its item table), written through the public writer."""
    from recdistill.student.tasks import SequentialRecommender
    from recdistill.teacher.cache_writer import write_cache

    task = SequentialRecommender(model).eval()
    ids, users = [], []
    with torch.no_grad():
        for batch in dm.train_dataloader():
            out = task.task_loss(batch)
            keep = out.example_ids >= 0
            ids.append(out.example_ids[keep])
            users.append(out.encoded.sequence[out.positions][keep])
    ids_all, users_all = torch.cat(ids), torch.cat(users)
    order = torch.argsort(ids_all)
    unique = torch.ones(len(order), dtype=torch.bool)
    unique[1:] = ids_all[order][1:] != ids_all[order][:-1]
    rows = {"example_id": ids_all[order][unique], "score_user": users_all[order][unique].half()}
    table = model.item_embedding.weight.detach()
    return write_cache(directory, {"train": rows}, split=dm.split,
                       item_tables={"item_embeddings": table, "score_items": table.clone()},
                       teacher={"kind": "test: the parent's own scores"})


def test_recovery_from_a_teacher_cache_alone(planted, tmp_path):
    """The cache holds the parent's scores, so distilling it (no parent in memory) must recover
    like distilling the parent does: agreement with the parent and NDCG@10 go up."""
    model, dm, test, parent = planted["model"], planted["dm"], planted["test"], planted["parent"]
    cache = _cache_from(model, dm, tmp_path / "signals")
    pruned, _ = prune_student(model, 0.5)
    before = evaluate(torch_scorer(pruned), test)
    history = recover(pruned, None, dm.train_dataloader(), epochs=5, lr=3e-3, signals=cache, cache_weight=1.0)
    after = evaluate(torch_scorer(pruned), test)
    assert history["teacher"] == "teacher cache" and history["kd_loss"] is None
    assert history["cache_coverage"] > 0.9  # every training label has a row (the first window may repeat)
    assert history["cache_loss"][-1] < history["cache_loss"][0]
    overlap_before = topk_overlap(parent["scores"], before["scores"])
    overlap_after = topk_overlap(parent["scores"], after["scores"])
    print(f"\ncache recovery: top-10 overlap {overlap_before:.3f} -> {overlap_after:.3f}; "
          f"NDCG@10 {before['ndcg@10']:.4f} -> {after['ndcg@10']:.4f}")
    assert overlap_after > overlap_before + 0.02
    assert after["ndcg@10"] > before["ndcg@10"]


def test_recovery_refuses_a_cache_without_scores(planted, tmp_path):
    from recdistill.teacher.cache_writer import write_cache

    dm = planted["dm"]
    table = planted["model"].item_embedding.weight.detach()
    cache = write_cache(tmp_path / "topk_only", {"train": {"example_id": torch.tensor([1, 2]),
                                                          "topk_items": torch.ones(2, 3, dtype=torch.int32),
                                                          "topk_scores": torch.zeros(2, 3)}},
                        split=dm.split, item_tables={"item_embeddings": table}, teacher={"kind": "test"}, k=3)
    pruned, _ = prune_student(planted["model"], 0.5)
    with pytest.raises(Exception, match="score_user"):
        recover(pruned, None, dm.train_dataloader(), epochs=1, signals=cache)
