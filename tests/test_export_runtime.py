"""OnnxRecommender: padding like the data module, raw id mapping, unknown ids, CTR, torch-free serving."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from recdistill.data.batching import left_pad, offsets_of
from recdistill.export.onnx_export import export_onnx
from recdistill.export.runtime import OnnxRecommender, VocabularyMismatchError, left_pad_histories
from recdistill.student import build_student

N = 12
MAX_LEN = 6
RAW = [1000 + 7 * i for i in range(N)]  # raw id of item index i + 1


@pytest.fixture(scope="module")
def sasrec() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_student("sasrec", num_items=N, hidden_size=16, num_layers=1, num_heads=2, max_len=MAX_LEN).eval()


@pytest.fixture(scope="module")
def exported(sasrec: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("runtime")
    return {
        "logits": export_onnx(sasrec, folder / "logits.onnx", parity_shapes=[(3, 4)]).path,
        "serving": export_onnx(sasrec, folder / "serving.onnx", serving=True, k=5, parity_shapes=[(3, 4)]).path,
        "raw": export_onnx(sasrec, folder / "raw.onnx", serving=True, k=5, item_ids=RAW, parity_shapes=[(3, 4)]).path,
    }


def torch_topk(model: torch.nn.Module, histories: list[list[int]], k: int) -> tuple[np.ndarray, np.ndarray]:
    input_ids = torch.from_numpy(left_pad_histories(histories, MAX_LEN))
    with torch.inference_mode():
        logits = model(input_ids).clone()
        logits[:, 0] = float("-inf")
        logits.scatter_(1, input_ids, float("-inf"))
    scores, ids = torch.topk(logits, k, dim=1)
    return ids.numpy(), scores.numpy()


def test_left_padding_matches_the_data_module() -> None:
    rows = [[3, 1, 4, 1, 5, 9, 2, 6], [2, 7], []]
    flat = np.array([x for r in rows for x in r], dtype=np.int64)
    starts = offsets_of(np.array([len(r) for r in rows]))
    ends = starts + np.array([len(r) for r in rows])
    np.testing.assert_array_equal(left_pad_histories(rows, 5), left_pad(flat, starts, ends, 5))


@pytest.mark.parametrize("graph", ["logits", "serving"])
def test_recommend_equals_masked_torch_topk(graph: str, sasrec: torch.nn.Module, exported: dict[str, Path]) -> None:
    recommender = OnnxRecommender(exported[graph], threads=1)
    assert recommender.max_len == MAX_LEN and recommender.graph == graph
    histories = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11], [12], []]
    ids, scores = recommender.recommend(histories, k=4)
    want_ids, want_scores = torch_topk(sasrec, histories, 4)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    assert not set(ids[0].tolist()) & {1, 2, 3}


def test_serving_k_larger_than_the_graph_is_an_error(exported: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="K=5"):
        OnnxRecommender(exported["serving"]).recommend([[1]], k=6)


def test_raw_ids_both_ways_and_unknown_ids_are_dropped(sasrec: torch.nn.Module, exported: dict[str, Path]) -> None:
    recommender = OnnxRecommender(exported["raw"])
    raw_histories = [[RAW[0], 424242, RAW[4]], ["not-an-id", RAW[2]], [None]]
    ids, _ = recommender.recommend(raw_histories, k=3)
    assert recommender.last_unknown == 3 and recommender.unknown_total == 3
    want_index, _ = torch_topk(sasrec, [[1, 5], [3], []], 3)
    np.testing.assert_array_equal(ids, np.asarray(RAW)[want_index - 1])
    recommender.recommend([[123]], k=1)
    assert recommender.unknown_total == 4


def test_indices_without_a_vocabulary_drop_out_of_range_ids(exported: dict[str, Path]) -> None:
    recommender = OnnxRecommender(exported["serving"])
    recommender.recommend([[0, 1, N + 1, -3, 2]], k=2)
    assert recommender.last_unknown == 3


def test_a_vocabulary_of_another_item_space_is_refused(exported: dict[str, Path]) -> None:
    with pytest.raises(VocabularyMismatchError):
        OnnxRecommender(exported["raw"], item_ids=list(reversed(RAW)))


def test_ctr_predict_returns_probabilities(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_student("deepfm", field_dims=[4, 5], dense_dim=2, embed_dim=4, mlp_dims=(8,)).eval()
    path = export_onnx(model, tmp_path / "deepfm.onnx", parity_shapes=[(2, 3)]).path
    recommender = OnnxRecommender(path)
    sparse, dense, history = np.array([[0, 4], [3, 1]]), np.random.default_rng(0).normal(size=(2, 2)), np.zeros((2, 3))
    with torch.inference_mode():
        want = torch.sigmoid(model(torch.tensor(sparse), torch.tensor(dense, dtype=torch.float32),
                                   torch.tensor(history, dtype=torch.long))).numpy()
    np.testing.assert_allclose(recommender.predict(sparse, dense, history), want, atol=1e-6)
    with pytest.raises(TypeError, match="predict"):
        recommender.recommend([[1]], k=1)


def test_serving_imports_neither_torch_nor_onnx(exported: dict[str, Path]) -> None:
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any import of torch now raises ImportError
        sys.modules["onnx"] = None
        from recdistill.export import OnnxRecommender
        recommender = OnnxRecommender({str(exported["raw"])!r})
        ids, scores = recommender.recommend([[{RAW[0]}, {RAW[1]}, 99]], k=3)
        print(ids.tolist(), recommender.unknown_total)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    ids, unknown = done.stdout.strip().rsplit(" ", 1)
    assert unknown == "1" and all(i in RAW for i in json.loads(ids)[0])


@pytest.mark.parametrize("graph", ["logits", "serving"])
def test_single_history_uses_a_fixed_shape_session_with_the_same_result(graph: str, sasrec: torch.nn.Module,
                                                                         exported: dict[str, Path]) -> None:
    from recdistill.export.runtime import fixed_shape_dims

    rec = OnnxRecommender(exported[graph])
    assert rec._single is None
    ids, scores = rec.recommend([[3, 1, 4]], k=5)  # one history: the batch-1 session
    single = rec.single_session()
    assert fixed_shape_dims(rec.session, 1, MAX_LEN) == {"batch": 1, "sequence": MAX_LEN}
    assert [tuple(i.shape) for i in single.get_inputs()] == [(1, MAX_LEN)]
    expected_ids, expected_scores = torch_topk(sasrec, [[3, 1, 4]], 5)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-4, atol=1e-5)
    both, _ = rec.recommend([[3, 1, 4], [2]], k=5)  # several histories: the dynamic session
    np.testing.assert_array_equal(both[:1], ids)
