"""Serve an exported student with ONNX Runtime: numpy and onnxruntime only, no torch at import.

``OnnxRecommender(path)`` opens the file with pinned intra-op threads and full graph
optimisation (plus, on first use, a batch-1 session with the input shape fixed for one-user
requests: ``single_session``), reads the recdistill metadata (kind, graph, ``max_len``, ``k``) and:

- sequential students: ``recommend(histories, k) -> (ids, scores)``. Histories are padded and
  truncated like the data module (left padding with 0, the newest ``max_len`` items kept).
  With a vocabulary sidecar (``model.items.json``, written when the export was given the
  dataset's raw item ids) histories and results are *raw* item ids; without one they are item
  indices ``1..N``. Unknown ids are dropped from the history and counted
  (``last_unknown``/``unknown_total``), never a crash. Items already in the (truncated) history
  are never recommended (a ``k`` larger than the unseen items a history leaves is an error, not a
  seen item or the padding index). Serving graphs do masking + TopK in ONNX Runtime; logits graphs
  are masked and ranked here in numpy.
- CTR students: ``predict(sparse, dense, history) -> probabilities``. Sparse ids outside their
  field's vocabulary (negative ones included) and history ids outside ``0..num_items`` become 0
  (unknown), NaN/inf dense values become 0, all counted in ``last_unknown``/``unknown_total``;
  histories of different lengths are left-padded to the longest.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from recdistill.export.metadata import decode_metadata, item_space_hash, items_path


class VocabularyMismatchError(ValueError):
    """The vocabulary sidecar does not hash to the item space recorded in the ONNX metadata."""


def make_session(
    path: str | Path,
    threads: int = 1,
    optimization: str = "all",
    inter_op_threads: int = 1,
    fixed_dims: Mapping[str, int] | None = None,
) -> ort.InferenceSession:
    """An ``InferenceSession`` on the CPU provider with ``threads`` intra-op threads.

    ``optimization``: ``"disable" | "basic" | "extended" | "all"`` (``GraphOptimizationLevel``).
    ``fixed_dims``: symbolic input dimensions fixed at session creation (ONNX Runtime's free
    dimension overrides, e.g. ``{"batch": 1, "sequence": 50}``; ``fixed_shape_dims`` builds them),
    so the graph optimiser folds the shape arithmetic; such a session accepts only those sizes.
    """
    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    if optimization not in levels:
        raise ValueError(f"optimization must be one of {sorted(levels)}, got {optimization!r}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = int(inter_op_threads)
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = levels[optimization]
    for name, size in (fixed_dims or {}).items():
        options.add_free_dimension_override_by_name(name, int(size))
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def fixed_shape_dims(session: ort.InferenceSession, batch: int, length: int | None = None) -> dict[str, int]:
    """Free-dimension overrides for one input shape: each input's symbolic dim 0 -> ``batch`` and,
    for sequence inputs (``input_ids``, ``history``), symbolic dim 1 -> ``length``."""
    dims: dict[str, int] = {}
    for value in session.get_inputs():
        shape = list(value.shape)
        if shape and isinstance(shape[0], str):
            dims[shape[0]] = int(batch)
        if length is not None and value.name in ("input_ids", "history") and len(shape) > 1 \
                and isinstance(shape[1], str):
            dims[shape[1]] = int(length)
    return dims


def left_pad_histories(histories: Sequence[Sequence[int]], max_len: int) -> np.ndarray:
    """``Long[B, max_len]``: each history's newest ``max_len`` items, left-padded with 0."""
    out = np.zeros((len(histories), max_len), dtype=np.int64)
    for row, history in enumerate(histories):
        tail = list(history)[-max_len:] if max_len > 0 else []
        if tail:
            out[row, max_len - len(tail):] = tail
    return out


class OnnxRecommender:
    """ONNX Runtime serving wrapper for an exported recdistill student (see module docstring)."""

    def __init__(
        self,
        path: str | Path,
        threads: int = 1,
        optimization: str = "all",
        max_len: int | None = None,
        item_ids: Sequence[Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.threads = int(threads)
        self.optimization = optimization
        self.session = make_session(self.path, threads=self.threads, optimization=optimization)
        self._single: ort.InferenceSession | None = None
        self.metadata = decode_metadata(self.session.get_modelmeta().custom_metadata_map)
        self.kind = self.metadata.get("kind", "sequential")
        self.graph = self.metadata.get("graph", "logits")
        self.max_len = int(max_len or self.metadata.get("max_len") or 50)
        self.num_items = int(self.metadata.get("num_items") or 0)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.unknown_total = 0
        self.last_unknown = 0
        self.item_ids: np.ndarray | None = None
        self._index_of: dict[Any, int] | None = None
        if item_ids is None and items_path(self.path).exists():
            item_ids = json.loads(items_path(self.path).read_text())["item_ids"]
        if item_ids is not None:
            self._set_vocabulary(list(item_ids))

    def _set_vocabulary(self, item_ids: list[Any]) -> None:
        expected = self.metadata.get("item_space_sha256")
        if expected and item_space_hash(item_ids) != expected:
            raise VocabularyMismatchError(
                f"the item vocabulary ({len(item_ids)} ids) does not match the item space of {self.path} "
                f"(item_space_sha256 {expected[:12]}...)"
            )
        if self.num_items and len(item_ids) != self.num_items:
            raise VocabularyMismatchError(f"{len(item_ids)} item ids for a model of {self.num_items} items")
        self.item_ids = np.asarray(item_ids)
        self._index_of = {raw: i + 1 for i, raw in enumerate(item_ids)}

    # ------------------------------------------------------------------ sequential
    def to_indices(self, history: Sequence[Any]) -> tuple[list[int], int]:
        """Raw ids (or indices without a vocabulary) -> valid item indices, and how many were dropped."""
        if self._index_of is not None:
            kept = [self._index_of[r] for r in history if _hashable(r) and r in self._index_of]
        else:
            kept = [int(r) for r in history if _is_index(r, self.num_items)]
        return kept, len(history) - len(kept)

    def recommend(self, histories: Sequence[Sequence[Any]], k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` unseen items per history: ``(ids [B, k], scores [B, k])``, best first.

        ``ids`` are raw item ids with a vocabulary, item indices otherwise.
        """
        if self.kind != "sequential":
            raise TypeError(f"{self.path} is a CTR model: use predict(sparse, dense, history)")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"k must be an integer, got {k!r}")
        k = int(k)
        if self.graph == "serving":
            graph_k = int(self.metadata.get("k") or 0)
            if k > graph_k:
                raise ValueError(f"k={k} exceeds the K={graph_k} built into the serving graph {self.path}")
            if k < 1:
                raise ValueError(f"k={k} must be in 1..{graph_k}")
        elif k < 1 or (self.num_items and k > self.num_items):
            raise ValueError(f"k={k} must be in 1..{self.num_items or 'num_items'}")
        if len(histories) == 0:  # ONNX Runtime cannot run a batch of 0 rows
            self.last_unknown = 0
            return self.to_raw(np.zeros((0, k), dtype=np.int64)), np.zeros((0, k), dtype=np.float32)
        converted = [self.to_indices(h) for h in histories]
        self.last_unknown = sum(dropped for _, dropped in converted)
        self.unknown_total += self.last_unknown
        input_ids = left_pad_histories([ids for ids, _ in converted], self.max_len)
        session = self.single_session() if len(histories) == 1 else self.session
        if self.graph == "serving":
            scores, index = session.run(["scores", "item_ids"], {"input_ids": input_ids})
            available = np.isfinite(scores).sum(axis=1)  # K >= k, so this counts every unseen item when < k
            scores, index = scores[:, :k], index[:, :k]
        else:
            (logits,) = session.run(["logits"], {"input_ids": input_ids})
            if not 1 <= k <= logits.shape[1] - 1:
                raise ValueError(f"k={k} must be in 1..{logits.shape[1] - 1}")
            masked = logits.astype(np.float32, copy=True)
            masked[:, 0] = -np.inf
            np.put_along_axis(masked, input_ids, -np.inf, axis=1)
            available = np.isfinite(masked).sum(axis=1)
            part = np.argpartition(-masked, k - 1, axis=1)[:, :k]
            order = np.argsort(-np.take_along_axis(masked, part, axis=1), axis=1, kind="stable")
            index = np.take_along_axis(part, order, axis=1)
            scores = np.take_along_axis(masked, index, axis=1)
        exhausted = np.flatnonzero(np.isneginf(scores).any(axis=1))
        if exhausted.size:  # the remaining slots would hold seen items or the padding index (item 1 once mapped)
            row = int(exhausted[0])
            raise ValueError(f"k={k} exceeds the {int(available[row])} unseen items left for history {row} "
                             f"({exhausted.size} such histories; seen items are never recommended): lower k to at "
                             f"most {int(available.min())}")
        return self.to_raw(index), scores

    def single_session(self) -> ort.InferenceSession:
        """A second session of the same file with batch 1 and sequence ``max_len`` fixed (every
        history is padded to ``max_len``), made on first use: the optimiser folds the graph's
        shape arithmetic, which one-user requests pay on every call otherwise."""
        if self._single is None:
            self._single = make_session(self.path, threads=self.threads, optimization=self.optimization,
                                        fixed_dims=fixed_shape_dims(self.session, 1, self.max_len))
        return self._single

    def to_raw(self, index: np.ndarray) -> np.ndarray:
        """Item indices -> raw ids (identity without a vocabulary)."""
        if self.item_ids is None:
            return index.astype(np.int64)
        return self.item_ids[np.clip(index, 1, len(self.item_ids)) - 1]

    # ------------------------------------------------------------------ CTR
    def predict_logits(self, sparse: Any, dense: Any = None, history: Any = None) -> np.ndarray:
        if self.kind != "ctr":
            raise TypeError(f"{self.path} is a sequential model: use recommend(histories, k)")
        sparse = np.array(sparse, dtype=np.int64)  # copies: invalid entries are replaced below
        batch = sparse.shape[0]
        if batch == 0:  # ONNX Runtime cannot run a batch of 0 rows
            self.last_unknown = 0
            return np.zeros(0, dtype=np.float32)
        dense = np.zeros((batch, 0), np.float32) if dense is None else np.array(dense, dtype=np.float32)
        if history is None:
            history = np.zeros((batch, 1), np.int64)
        else:
            try:
                history = np.array(history, dtype=np.int64)
            except ValueError:  # rows of different lengths: the newest items, left-padded like the data module
                history = left_pad_histories(history, max(1, max(len(h) for h in history)))
        # Ids outside a field's vocabulary (a Gather would fail on them, or wrap negative ones to the last
        # rows) become 0, the unknown/missing id of the data module; NaN/inf dense values become 0 too.
        field_dims = (self.metadata.get("init_args") or {}).get("field_dims")
        bad_sparse = sparse < 0
        if field_dims and sparse.ndim == 2 and sparse.shape[1] == len(field_dims):
            bad_sparse |= sparse >= np.asarray(field_dims, dtype=np.int64)
        bad_history = (history < 0) | (history > self.num_items) if self.num_items else history < 0
        bad_dense = ~np.isfinite(dense)
        sparse[bad_sparse], history[bad_history], dense[bad_dense] = 0, 0, 0.0
        self.last_unknown = int(bad_sparse.sum() + bad_history.sum() + bad_dense.sum())
        self.unknown_total += self.last_unknown
        feed = {"sparse": sparse, "dense": dense, "history": history}
        return self.session.run(["logit"], {n: feed[n] for n in self.input_names})[0]

    def predict(self, sparse: Any, dense: Any = None, history: Any = None) -> np.ndarray:
        """Click probabilities ``[B]`` for ``sparse Long[B, F]``, ``dense Float[B, D]``, ``history Long[B, H]``."""
        return 1.0 / (1.0 + np.exp(-self.predict_logits(sparse, dense, history).astype(np.float64)))


Recommender = OnnxRecommender


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _is_index(value: Any, num_items: int) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        return False
    return 1 <= int(value) <= num_items if num_items else int(value) >= 1
