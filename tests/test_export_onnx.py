"""ONNX export of every student: dynamic axes, checker, metadata, provenance, parity gate, serving graph."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from recdistill.atomic import sha256_file
from recdistill.export.graphs import ServingGraph, example_inputs
from recdistill.export.metadata import item_space_hash, items_path, provenance_path, read_onnx_metadata
from recdistill.export.onnx_export import export_onnx
from recdistill.export.parity import ParityError, ParityResult, ShapeResult, _ranking, check_parity
from recdistill.export.runtime import make_session
from recdistill.student import STUDENTS, build_student
from recdistill.student.io import save_student

N = 12
FIELD_DIMS = [4, N + 1, 3]
KWARGS: dict[str, dict[str, Any]] = {
    "sasrec": dict(num_items=N, hidden_size=16, num_layers=2, num_heads=2, max_len=10),
    "gru4rec": dict(num_items=N, hidden_size=16, num_layers=2, gru_size=12),
    "caser": dict(num_items=N, hidden_size=16, window=3, num_horizontal=4, num_vertical=2),
    "bert4rec": dict(num_items=N, hidden_size=16, num_layers=2, num_heads=2, max_len=10),
    "deepfm": dict(field_dims=FIELD_DIMS, dense_dim=2, embed_dim=8, mlp_dims=(16, 8)),
    "dcnv2": dict(field_dims=FIELD_DIMS, dense_dim=2, embed_dim=8, num_cross_layers=2, mlp_dims=(16, 8)),
    "din": dict(field_dims=FIELD_DIMS, dense_dim=2, num_items=N, embed_dim=8, attention_dims=(8,), mlp_dims=(16, 8)),
    "kar": dict(field_dims=FIELD_DIMS, dense_dim=2, backbone="deepfm",
                backbone_args={"embed_dim": 8, "mlp_dims": [16, 8], "dropout": 0.0},
                user_vector_dim=4, item_vector_dim=4, adapter_dim=3, interaction=True, item_field=1),
}
SEQUENTIAL = ["sasrec", "gru4rec", "caser", "bert4rec"]
GRID = [(1, 5), (3, 1), (3, 10), (17, 5), (17, 10)]  # export shape is (2, 7)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def student(name: str, **overrides: Any) -> torch.nn.Module:
    return build_student(name, **{**KWARGS[name], **overrides}).eval()


def test_every_student_is_covered() -> None:
    assert set(KWARGS) == set(STUDENTS)


@pytest.mark.parametrize("name", sorted(KWARGS))
def test_export_passes_parity_over_the_shape_grid(name: str, tmp_path: Path) -> None:
    model = student(name)
    result = export_onnx(model, tmp_path / f"{name}.onnx", parity_shapes=GRID)
    onnx.checker.check_model(onnx.load(str(result.path)), full_check=True)
    assert result.parity is not None and result.parity.passed
    assert [(s.batch, s.length) for s in result.parity.shapes] == GRID
    assert result.parity.max_abs_diff < 1e-5
    if name in SEQUENTIAL:
        assert all(s.topk_identical and s.topk_overlap_min == 1.0 for s in result.parity.shapes)
    provenance = json.loads(provenance_path(result.path).read_text())
    assert provenance["status"] == "passed" and provenance["parity"]["passed"]
    assert provenance["file"]["sha256"] == sha256_file(result.path)
    assert len(provenance["parity"]["shapes"]) == len(GRID)
    # dynamic axes are symbolic in the graph, not the export example's sizes
    inputs = {i["name"]: i["shape"] for i in provenance["inputs"]}
    if name in SEQUENTIAL:
        assert inputs == {"input_ids": ["batch", "sequence"]}
    else:
        assert inputs["sparse"] == ["batch", len(FIELD_DIMS)] and inputs["dense"] == ["batch", 2]
        if name == "din":  # DeepFM and DCN-V2 ignore history: the exporter drops the unused input
            assert inputs["history"] == ["batch", "history"]


def test_bert4rec_logits_exclude_the_mask_token(tmp_path: Path) -> None:
    """N + 2 embedding rows (mask token), N + 1 logit columns."""
    model = student("bert4rec")
    assert model.item_embedding.num_embeddings == N + 2
    result = export_onnx(model, tmp_path / "b.onnx", parity_shapes=[(1, 5)])
    assert result.provenance["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["batch", N + 1]}]


def test_metadata_and_sidecars_from_a_student_folder(tmp_path: Path) -> None:
    folder = save_student(student("sasrec"), tmp_path / "students" / "sasrec")
    raw_ids = [f"movie-{i}" for i in range(N)]
    result = export_onnx(folder, tmp_path / "export" / "sasrec.onnx", item_ids=raw_ids,
                         data_fingerprint="abc123", parity_shapes=[(3, 5)], opset=18)
    meta = read_onnx_metadata(result.path)
    assert meta["student"] == "sasrec" and meta["kind"] == "sequential" and meta["graph"] == "logits"
    assert meta["parent_sha256"] == sha256_file(folder / "model.safetensors")
    assert meta["item_space_sha256"] == item_space_hash(raw_ids)
    assert meta["data_fingerprint"] == "abc123"
    assert meta["opset"] == 18 and meta["max_len"] == 10 and meta["num_items"] == N
    assert meta["inputs"] == [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]}]
    assert meta["init_args"]["hidden_size"] == 16
    assert meta["version"]
    opsets = {o.domain: o.version for o in onnx.load(str(result.path)).opset_import}
    assert opsets[""] == 18
    assert json.loads(items_path(result.path).read_text())["item_ids"] == raw_ids
    assert result.provenance["source"] == str(folder)
    # no temporary files left behind
    assert sorted(p.name for p in result.path.parent.iterdir()) == [
        "sasrec.items.json", "sasrec.onnx", "sasrec.provenance.json"]


@pytest.mark.parametrize("name", SEQUENTIAL)
def test_serving_graph_equals_masked_torch_topk(name: str, tmp_path: Path) -> None:
    model = student(name)
    result = export_onnx(model, tmp_path / "s.onnx", serving=True, k=5, parity_shapes=[(3, 4)])
    assert result.provenance["outputs"][1]["name"] == "item_ids"
    session = make_session(result.path)
    input_ids = example_inputs(model, 9, 6, seed=7)[0]
    scores, ids = session.run(["scores", "item_ids"], {"input_ids": input_ids.numpy()})
    with torch.inference_mode():
        logits = model(input_ids)
    masked = logits.clone()
    masked[:, 0] = float("-inf")
    for row in range(input_ids.size(0)):
        masked[row, input_ids[row]] = float("-inf")
    want_scores, want_ids = torch.topk(masked, 5, dim=1)
    np.testing.assert_array_equal(ids, want_ids.numpy())
    np.testing.assert_allclose(scores, want_scores.numpy(), rtol=1e-5, atol=1e-5)
    for row in range(input_ids.size(0)):  # nothing seen, never padding
        assert not set(ids[row].tolist()) & (set(input_ids[row].tolist()) | {0})


def test_serving_k_must_fit_the_catalogue() -> None:
    with pytest.raises(ValueError, match="k=13"):
        ServingGraph(student("sasrec"), 13)


def test_ctr_serving_graph_adds_probability(tmp_path: Path) -> None:
    model = student("din")
    result = export_onnx(model, tmp_path / "din.onnx", serving=True, parity_shapes=[(3, 4)])
    sparse, dense, history = example_inputs(model, 5, 6, seed=3)
    logit, probability = make_session(result.path).run(
        None, {"sparse": sparse.numpy(), "dense": dense.numpy(), "history": history.numpy()})
    np.testing.assert_allclose(probability, torch.sigmoid(model(sparse, dense, history)).detach().numpy(), atol=1e-6)


def test_deepfm_without_dense_or_mlp_exports(tmp_path: Path) -> None:
    model = build_student("deepfm", field_dims=FIELD_DIMS, embed_dim=8, mlp_dims=()).eval()
    assert export_onnx(model, tmp_path / "d.onnx", parity_shapes=[(1, 3), (17, 3)]).parity.passed


def test_failed_gate_raises_keeps_old_file_and_records_failure(tmp_path: Path) -> None:
    path = tmp_path / "sasrec.onnx"
    path.write_bytes(b"previous artefact")
    with pytest.raises(ParityError, match=r"'sasrec' at shape \(batch=1, length=5\)") as caught:
        export_onnx(student("sasrec"), path, parity_shapes=[(1, 5), (3, 10)], atol=-1.0, rtol=0.0)
    assert caught.value.student == "sasrec" and caught.value.shape == (1, 5)
    assert path.read_bytes() == b"previous artefact"  # the failing export never landed
    provenance = json.loads(provenance_path(path).read_text())
    assert provenance["status"] == "failed" and not provenance["parity"]["passed"]
    assert len(provenance["parity"]["shapes"]) == 2  # every shape checked and recorded
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_drifted_student_fails_parity_naming_the_shape(tmp_path: Path) -> None:
    model = student("caser")
    path = export_onnx(model, tmp_path / "c.onnx", parity=False).path
    assert json.loads(provenance_path(path).read_text())["status"] == "unchecked"
    with torch.no_grad():
        model.output.weight.add_(torch.randn_like(model.output.weight))
    with pytest.raises(ParityError, match="'caser' at shape") as caught:
        check_parity(model, path, [(3, 5)])
    assert "tolerance" in str(caught.value)
    # int8-style gate: values unchecked, ranking agreement against a threshold
    loose = check_parity(model, path, [(3, 5)], atol=None, min_topk_overlap=0.0)
    assert loose.passed and loose.shapes[0].tolerance is None
    with pytest.raises(ParityError, match="overlap"):
        check_parity(model, path, [(3, 5)], atol=None, min_topk_overlap=1.01)
    record = check_parity(model, path, [(3, 5)], raise_on_failure=False)
    assert not record.passed and record.first_failure is not None


def test_topk_identity_is_tie_aware() -> None:
    ref = np.array([[0.0, 5.0, 4.0, 3.0, 3.0, 1.0]])  # items 3 and 4 tie for 3rd place
    result = ParityResult("toy", "logits", True, 1e-4, 0.0, 3, None)

    def shape() -> ShapeResult:
        return ShapeResult(1, 6, 0.0, 1e-4, True)

    swapped = _ranking(shape(), ref, np.array([[1, 2, 4]]), result)
    assert swapped.topk_identical and swapped.passed and swapped.topk_overlap_mean == pytest.approx(2 / 3)
    wrong = _ranking(shape(), ref, np.array([[1, 2, 5]]), result)
    assert not wrong.topk_identical and not wrong.passed
    duplicated = _ranking(shape(), ref, np.array([[1, 1, 2]]), result)
    assert not duplicated.topk_identical


def test_dynamo_exporter_for_a_transformer(tmp_path: Path) -> None:
    result = export_onnx(student("sasrec"), tmp_path / "d.onnx", exporter="dynamo", parity_shapes=[(1, 5), (17, 10)])
    assert result.parity.passed and result.provenance["exporter"] == "dynamo"
    actual = {o.domain: o.version for o in onnx.load(str(result.path)).opset_import}[""]
    assert read_onnx_metadata(result.path)["opset"] == result.provenance["opset"] == actual


def test_dynamo_exporter_is_refused_for_gru4rec(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="torchscript"):
        export_onnx(student("gru4rec"), tmp_path / "g.onnx", exporter="dynamo")
