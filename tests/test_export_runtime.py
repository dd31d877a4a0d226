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


# ---------------------------------------------------------------- edge cases of serving requests
SMALL_N = 5  # a catalogue smaller than max_len: a history can leave fewer than k unseen items
SMALL_RAW = [10, 20, 30, 40, 50]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.manual_seed(1)
    model = build_student("sasrec", num_items=SMALL_N, hidden_size=8, num_layers=1, num_heads=2,
                          max_len=MAX_LEN).eval()
    folder = tmp_path_factory.mktemp("runtime-small")
    return {
        "logits": export_onnx(model, folder / "logits.onnx", parity_shapes=[(2, 3)]).path,
        "serving": export_onnx(model, folder / "serving.onnx", serving=True, k=SMALL_N, parity_shapes=[(2, 3)]).path,
        "raw": export_onnx(model, folder / "raw.onnx", serving=True, k=SMALL_N, item_ids=SMALL_RAW,
                           parity_shapes=[(2, 3)]).path,
    }


@pytest.mark.parametrize("graph", ["logits", "serving", "raw"])
def test_k_beyond_the_unseen_items_is_an_error_never_a_seen_item(graph: str, small: dict[str, Path]) -> None:
    rec = OnnxRecommender(small[graph])
    seen = [1, 2, 3] if graph != "raw" else SMALL_RAW[:3]
    ids, scores = rec.recommend([seen, seen[:1]], k=2)  # exactly the 2 unseen items: fine
    assert sorted(ids[0].tolist()) == sorted(set(SMALL_RAW if graph == "raw" else range(1, 6)) - set(seen))
    assert np.isfinite(scores).all()
    with pytest.raises(ValueError, match="k=3 exceeds the 2 unseen items left for history 0"):
        rec.recommend([seen, seen[:1]], k=3)  # was: a seen item and the padding index (raw: item 1, twice)


@pytest.mark.parametrize("graph", ["logits", "serving", "raw"])
def test_an_empty_batch_gives_empty_results(graph: str, small: dict[str, Path]) -> None:
    rec = OnnxRecommender(small[graph])
    ids, scores = rec.recommend([], k=2)
    assert ids.shape == (0, 2) and scores.shape == (0, 2)
    with pytest.raises(ValueError, match="k=0"):
        rec.recommend([], k=0)


@pytest.mark.parametrize("k", [0, -1])
def test_serving_k_below_one_is_an_error(k: int, exported: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match=f"k={k} must be in 1..5"):
        OnnxRecommender(exported["serving"]).recommend([[1, 2]], k=k)  # was: [B, 0] or [B, K - 1] results


@pytest.fixture(scope="module")
def din(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = build_student("din", field_dims=[4, N + 1], dense_dim=2, num_items=N, embed_dim=4,
                          attention_dims=(4,), mlp_dims=(8,)).eval()
    return export_onnx(model, tmp_path_factory.mktemp("din") / "din.onnx", parity_shapes=[(2, 3)]).path


def test_ctr_ids_outside_the_vocabulary_become_unknown(din: Path) -> None:
    rec = OnnxRecommender(din)
    dense, history = np.zeros((3, 2)), np.array([[0, 1, 2], [3, 4, 5], [0, 0, 6]])
    want = rec.predict([[0, 0], [2, 0], [0, 3]], dense, history)
    got = rec.predict([[-1, 0], [2, N + 1], [4, 3]], dense, history)  # was: wrapped to the last row / a Gather error
    assert rec.last_unknown == 3
    np.testing.assert_allclose(got, want, rtol=1e-6)
    got = rec.predict([[0, 0], [2, 0], [0, 3]], dense, [[-2, 1, 2], [3, 4, 5], [0, N + 1, 6]])
    assert rec.last_unknown == 2 and rec.unknown_total == 5
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_ctr_non_finite_dense_values_become_zero(din: Path) -> None:
    rec = OnnxRecommender(din)
    sparse, history = [[1, 2], [3, 4]], [[1, 2], [3, 4]]
    want = rec.predict(sparse, [[0.0, 0.5], [0.0, 0.0]], history)
    got = rec.predict(sparse, [[np.nan, 0.5], [np.inf, -np.inf]], history)  # was: NaN probabilities
    assert np.isfinite(got).all() and rec.last_unknown == 3
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_ctr_histories_of_different_lengths_are_left_padded(din: Path) -> None:
    rec = OnnxRecommender(din)
    sparse, dense = [[1, 2], [3, 4], [0, 1]], np.zeros((3, 2))
    want = rec.predict(sparse, dense, [[1, 2, 3], [0, 0, 4], [0, 0, 0]])
    np.testing.assert_allclose(rec.predict(sparse, dense, [[1, 2, 3], [4], []]), want, rtol=1e-6)
    assert rec.predict(np.zeros((0, 2), np.int64)).shape == (0,)
