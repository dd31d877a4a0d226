"""The exporter's transposed copy of the item table is dropped: the table is stored once, logits unchanged,
and quantizers that need one axis per table still work (the lookup and scoring copies are split again)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from recdistill.compress.onnx_quant import quantize_static_onnx
from recdistill.export import export_onnx
from recdistill.export.runtime import make_session
from recdistill.export.shared_tables import share_transposed_tables, unshare_lookup_tables
from recdistill.student import build_student

N, D = 500, 32


def _tables(path: Path) -> list[tuple[int, ...]]:
    """Shapes of the float initializers with N+1 rows or columns (the item table and any copy)."""
    model = onnx.load(str(path))
    return [tuple(t.dims) for t in model.graph.initializer
            if t.data_type == onnx.TensorProto.FLOAT and N + 1 in tuple(t.dims)]


@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
def test_item_table_is_stored_once_and_logits_match_torch(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    kwargs = dict(num_items=N, hidden_size=D)
    if name == "sasrec":
        kwargs.update(num_layers=1, num_heads=2, max_len=12)
    model = build_student(name, **kwargs).eval()
    result = export_onnx(model, tmp_path / "m.onnx")
    assert result.provenance["shared_tables"], "the exporter's transposed copy should have been found"
    assert _tables(result.path) == [(N + 1, D)]
    ops = result.provenance["op_counts"]
    assert ops.get("Gemm", 0) >= 1  # scoring reads the table through Gemm(transB=1): no copy at run time
    ids = torch.randint(1, N + 1, (5, 9))
    logits = make_session(result.path).run(None, {"input_ids": ids.numpy()})[0]
    np.testing.assert_allclose(logits, model(ids).detach().numpy(), rtol=1e-4, atol=1e-4)


def test_share_then_unshare_round_trip() -> None:
    """Hand-built graph: Gather(W) and MatMul(x, Wᵀ-copy) -> one W (+ Transpose for a rank-unknown x)."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((40, 32)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["W", "ids"], ["emb"]), helper.make_node("MatMul", ["x", "WT"], ["scores"])],
        "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [None]),
              helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 32])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(w.T.copy(), "WT")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    blind = onnx.ModelProto()
    blind.CopyFrom(model)
    assert share_transposed_tables(blind) == ["WT"]  # no feed: the rank of x is unknown -> Transpose
    assert [n.op_type for n in blind.graph.node] == ["Transpose", "Gather", "MatMul"]
    feed = {"ids": np.array([1, 2]), "x": rng.standard_normal((3, 32)).astype(np.float32)}
    before = _run(model, feed)
    assert share_transposed_tables(model, feed) == ["WT"]
    assert [t.name for t in model.graph.initializer] == ["W"]
    assert [n.op_type for n in model.graph.node] == ["Gather", "Gemm"]
    for got, want in zip(_run(model, feed), before):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert unshare_lookup_tables(model) == ["W"]
    assert sorted(t.name for t in model.graph.initializer) == ["W", "W_scoring"]
    assert [list(n.input)[:2] for n in model.graph.node] == [["W", "ids"], ["x", "W_scoring"]]


def _run(model: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)


def test_static_per_channel_quantization_of_a_shared_table(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_student("sasrec", num_items=N, hidden_size=D, num_layers=1, num_heads=2, max_len=12).eval()
    fp32 = export_onnx(model, tmp_path / "fp32.onnx").path
    g = torch.Generator().manual_seed(1)
    feeds = [{"input_ids": torch.randint(1, N + 1, (8, 12), generator=g).numpy()} for _ in range(2)]
    config = quantize_static_onnx(fp32, tmp_path / "static.onnx", feeds, per_channel=True)
    assert config["tables_split_for_scoring"]
    ids = feeds[0]["input_ids"]
    out = make_session(tmp_path / "static.onnx").run(None, {"input_ids": ids})[0]
    ref = make_session(fp32).run(None, {"input_ids": ids})[0]
    top = lambda s: np.argsort(-s, axis=1)[:, :10]  # noqa: E731
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top(out), top(ref))])
    assert overlap > 0.5


def test_compact_names_keep_the_interface_and_the_outputs(tmp_path: Path) -> None:
    from recdistill.export.compact import compact_names

    torch.manual_seed(0)
    model = build_student("sasrec", num_items=N, hidden_size=D, num_layers=2, num_heads=2, max_len=12).eval()
    path = export_onnx(model, tmp_path / "m.onnx").path  # exported compact
    proto = onnx.load(str(path))
    assert all(n.name.startswith("n") for n in proto.graph.node)
    ids = torch.randint(1, N + 1, (4, 12)).numpy()
    before = make_session(path).run(None, {"input_ids": ids})[0]
    long_names = onnx.ModelProto()
    long_names.CopyFrom(proto)
    for node in long_names.graph.node:  # names as an exporter writes them
        node.name = "/student/blocks.0/attention/query/" + node.name
    assert compact_names(long_names) > 30 * len(long_names.graph.node)
    assert [i.name for i in long_names.graph.input] == ["input_ids"]
    assert {t.name for t in long_names.graph.initializer} == {t.name for t in proto.graph.initializer}
    onnx.save(long_names, str(tmp_path / "c.onnx"))
    np.testing.assert_array_equal(make_session(tmp_path / "c.onnx").run(None, {"input_ids": ids})[0], before)
