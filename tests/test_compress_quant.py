"""Quantization: the int8 item-table module, PyTorch dynamic int8, and ONNX Runtime dynamic /
static int8 and fp16 files whose quantized operators are counted."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from recdistill.compress.gate import onnx_scorer, topk_overlap, torch_scorer
from recdistill.compress.onnx_quant import (
    convert_fp16, count_ops, quant_config_path, quantize_dynamic_onnx, quantize_static_onnx, unfold_int8_item_table,
)
from recdistill.compress.quantize import QuantizedEmbedding, dynamic_int8, item_table_bytes, quantize_item_table
from recdistill.export import export_onnx
from recdistill.student import build_student


@pytest.fixture(scope="module")
def sasrec():
    torch.manual_seed(0)
    return build_student("sasrec", num_items=200, hidden_size=32, num_layers=1, num_heads=2, max_len=10,
                         dropout=0.0).eval()


@pytest.fixture(scope="module")
def batches():
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(1, 201, (16, 10), generator=g)} for _ in range(3)]


@pytest.fixture(scope="module")
def fp32_onnx(sasrec, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "fp32.onnx"
    export_onnx(sasrec, path)
    return path


def _masked(scores):
    scores = scores.clone()
    scores[:, 0] = -torch.inf
    return scores


def test_quantized_embedding_per_row_beats_per_tensor_on_uneven_rows():
    torch.manual_seed(0)
    emb = nn.Embedding(50, 16, padding_idx=0)
    with torch.no_grad():
        emb.weight.mul_(torch.logspace(-2, 1, 50)[:, None])  # row norms over 3 decades
        emb.weight[0] = 0
    errors = {}
    for scheme in ("per_row", "per_tensor"):
        q = QuantizedEmbedding.from_embedding(emb, scheme)
        assert q.qweight.dtype == torch.int8
        ids = torch.tensor([[0, 3, 49], [7, 7, 1]])
        torch.testing.assert_close(q(ids), q.weight[ids])  # lookup == dequantized table rows
        assert bool((q(ids)[0, 0] == 0).all())  # padding row stays zero
        w = emb.weight.detach()
        errors[scheme] = float(((q.weight - w) / w.norm(dim=1, keepdim=True).clamp(min=1e-8))
                               .pow(2).sum(1)[1:].mean())
    assert errors["per_row"] < errors["per_tensor"] / 10
    # int8 rows + one fp32 scale per row: (16 + 4) / (16 * 4) of the fp32 table
    assert item_table_bytes(QuantizedEmbedding.from_embedding(emb)) == 50 * (16 + 4)


def test_torch_dynamic_int8_and_item_table(sasrec, batches):
    ref = torch_scorer(sasrec)
    q = dynamic_int8(sasrec)
    assert not any(type(m) is nn.Linear for m in q.modules())
    assert any("quantized" in type(m).__module__ for m in q.modules())
    row = quantize_item_table(sasrec, "per_row")
    assert isinstance(row.item_embedding, QuantizedEmbedding) and isinstance(sasrec.item_embedding, nn.Embedding)
    for model in (q, row):
        b = batches[0]
        out = torch_scorer(model)(b)
        assert out.shape == ref(b).shape
        assert topk_overlap(_masked(ref(b)), _masked(out)) > 0.8


def test_onnx_dynamic_int8_counts_quantized_ops(fp32_onnx, sasrec, batches, tmp_path):
    config = quantize_dynamic_onnx(fp32_onnx, tmp_path / "int8.onnx")
    ops = count_ops(tmp_path / "int8.onnx")["quantized"]
    assert ops.get("MatMulInteger", 0) >= 4 and ops.get("DynamicQuantizeLinear", 0) >= 1  # Q, K, V, out, FFN...
    saved = json.loads(quant_config_path(tmp_path / "int8.onnx").read_text())
    assert saved["method"] == "dynamic_int8" and saved["ops"]["quantized"] == ops and "tool" in saved
    assert config["tool"].startswith("optimum"), config.get("fallback_reason")
    # the lookup keeps the fp32 table and scoring gets an int8 copy (the per-row scheme stores the
    # table once); every other weight is stored in int8: under 0.3x its fp32 bytes with the scales
    assert saved["tables_split_for_scoring"] == ["student.item_embedding.weight"]

    def other_weight_bytes(path) -> int:
        return sum(onnx.numpy_helper.to_array(t).nbytes for t in onnx.load(str(path)).graph.initializer
                   if "item_embedding" not in t.name and onnx.numpy_helper.to_array(t).size >= 256)

    assert other_weight_bytes(tmp_path / "int8.onnx") < 0.3 * other_weight_bytes(fp32_onnx)
    scorer, _ = onnx_scorer(tmp_path / "int8.onnx")
    b = batches[0]
    assert topk_overlap(_masked(torch_scorer(sasrec)(b)), _masked(scorer(b))) > 0.8


def test_onnx_gather_quantization_is_per_tensor(fp32_onnx, tmp_path):
    quantize_dynamic_onnx(fp32_onnx, tmp_path / "gather.onnx", operators=("MatMul", "Gemm", "Gather"))
    model = onnx.load(str(tmp_path / "gather.onnx"))
    assert count_ops(tmp_path / "gather.onnx")["quantized"].get("DequantizeLinear", 0) >= 1
    inits = {t.name: t for t in model.graph.initializer}
    scales = [n.input[1] for n in model.graph.node if n.op_type == "DequantizeLinear"]
    sizes = [int(np.prod(inits[s].dims)) if s in inits else None for s in scales]
    assert sizes and all(size == 1 for size in sizes)  # one scale for the whole table


def test_onnx_static_int8_and_fp16(fp32_onnx, batches, tmp_path):
    feeds = [{"input_ids": b["input_ids"].numpy()} for b in batches[:2]]
    config = quantize_static_onnx(fp32_onnx, tmp_path / "static.onnx", feeds)
    ops = count_ops(tmp_path / "static.onnx")["quantized"]
    assert ops.get("QuantizeLinear", 0) >= 1 and ops.get("DequantizeLinear", 0) >= 1
    assert config["calibration_batches"] == 2 and config["format"] == "QDQ"
    convert_fp16(fp32_onnx, tmp_path / "fp16.onnx")
    model = onnx.load(str(tmp_path / "fp16.onnx"))
    assert sum(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer) >= 4
    for name in ("static.onnx", "fp16.onnx"):
        scorer, _ = onnx_scorer(tmp_path / name)
        assert scorer(batches[0]).shape == (16, 201)


def test_per_row_item_table_exports_int8_once(sasrec, batches, tmp_path):
    model = quantize_item_table(sasrec, "per_row")
    export_onnx(model, tmp_path / "row.onnx")
    assert count_ops(tmp_path / "row.onnx")["int8_initializers"] >= 1
    score_nodes = unfold_int8_item_table(tmp_path / "row.onnx", tmp_path / "unfolded.onnx")
    assert len(score_nodes) == 1  # the scoring MatMul now reads the int8 table
    unfolded = onnx.load(str(tmp_path / "unfolded.onnx"))
    big_float = [t.name for t in unfolded.graph.initializer
                 if t.data_type == onnx.TensorProto.FLOAT and np.prod(t.dims) >= 201 * 32]
    assert big_float == []  # no fp32 copy of the item table is left
    quantize_dynamic_onnx(tmp_path / "unfolded.onnx", tmp_path / "row_int8.onnx", nodes_to_exclude=score_nodes)
    b = batches[1]
    ref = torch_scorer(model)(b)
    for name in ("unfolded.onnx", "row_int8.onnx"):
        scorer, _ = onnx_scorer(tmp_path / name)
        if name == "unfolded.onnx":
            torch.testing.assert_close(scorer(b), ref, atol=1e-4, rtol=1e-4)
        assert topk_overlap(_masked(torch_scorer(sasrec)(b)), _masked(scorer(b))) > 0.8


@pytest.mark.parametrize("name", ["deepfm", "din"])
def test_ctr_int8_quantizes_the_field_tables_per_row(name, tmp_path):
    """A CTR student's int8 file stores its field tables (>= 8 columns) as int8 per row, shrinking the
    file far below dynamic int8 of its MatMuls alone, while its probabilities stay close."""
    import onnxruntime as ort

    from recdistill.compress.int8_onnx import int8_onnx
    from recdistill.export.profile_suite import numpy_inputs
    from recdistill.export.metadata import read_onnx_metadata

    torch.manual_seed(0)
    dims = [900, 1700, 21]
    extra = {"num_items": 1699, "attention_dims": (16,)} if name == "din" else {}
    model = build_student(name, field_dims=dims, dense_dim=2, embed_dim=16, mlp_dims=(32, 16), **extra).eval()
    fp32 = export_onnx(model, tmp_path / "fp32.onnx").path
    matmuls_only = int8_onnx(model, fp32, tmp_path / "none.onnx", item_table="none")
    config = int8_onnx(model, fp32, tmp_path / "per_row.onnx", item_table="per_row")
    per_tensor = int8_onnx(model, fp32, tmp_path / "per_tensor.onnx", item_table="per_tensor")
    size = {p: (tmp_path / f"{p}.onnx").stat().st_size for p in ("fp32", "none", "per_row", "per_tensor")}
    assert "per-row" in config["item_table"] and "per-tensor" in per_tensor["item_table"]
    assert matmuls_only["item_table"] != config["item_table"]
    # the tables are most of the file: per row, d + 4 bytes a row of 16 columns instead of 64 (+ width-1 tables in fp32)
    assert size["per_row"] < 0.45 * size["fp32"] and size["per_row"] < 0.6 * size["none"]
    graph = onnx.load(str(tmp_path / "per_row.onnx")).graph
    int8_tables = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2
                   and t.dims[1] == 16 and t.dims[0] >= 21]
    assert len(int8_tables) >= (3 if name == "deepfm" else 2)
    meta = read_onnx_metadata(fp32)
    feed = numpy_inputs(meta, 64, 5, seed=0)
    outputs = {}
    for p in ("fp32", "per_row"):
        session = ort.InferenceSession(str(tmp_path / f"{p}.onnx"), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        outputs[p] = 1 / (1 + np.exp(-session.run(None, {k: v for k, v in feed.items() if k in names})[0]))
    assert np.abs(outputs["per_row"] - outputs["fp32"]).max() < 0.05


def test_compact_file_interrupted_mid_write_keeps_the_previous_file(fp32_onnx, tmp_path, monkeypatch):
    """A crash while the compacted model is being written leaves the old complete file, never a truncated one."""
    import shutil

    from recdistill.export.compact import compact_file

    path = tmp_path / "m.onnx"
    shutil.copy(fp32_onnx, path)
    before = path.read_bytes()

    def crash_mid_write(model, f, *args, **kwargs):
        data = model.SerializeToString()
        with open(f, "wb") as handle:
            handle.write(data[: len(data) // 2])  # half the file is on disk when the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx, "save", crash_mid_write)
    with pytest.raises(KeyboardInterrupt):
        compact_file(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temp file left behind
    onnx.checker.check_model(onnx.load(str(path)))


def test_failed_requantization_leaves_the_previous_artefact_and_its_config(fp32_onnx, tmp_path, monkeypatch):
    """A quantization that fails after the quantizer wrote its output must not leave that output under the
    artefact's name next to the previous run's ``.quant.json``."""
    import recdistill.compress.onnx_quant as onnx_quant

    dst = tmp_path / "int8.onnx"
    first = quantize_dynamic_onnx(fp32_onnx, dst, per_channel=False)
    before, config_before = dst.read_bytes(), quant_config_path(dst).read_text()

    def fail(path):
        raise KeyboardInterrupt  # killed between quantization and compaction

    monkeypatch.setattr(onnx_quant, "compact_file", fail)
    with pytest.raises(KeyboardInterrupt):
        quantize_dynamic_onnx(fp32_onnx, dst, per_channel=True)
    assert dst.read_bytes() == before and quant_config_path(dst).read_text() == config_before
    assert json.loads(config_before)["per_channel"] is False and first["per_channel"] is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8.onnx", "int8.quant.json"]
