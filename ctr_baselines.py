"""What a practitioner tries first on the CTR split: the bar the neural CTR students must clear.

* :func:`gbdt_baseline`: gradient-boosted trees (scikit-learn ``HistGradientBoostingClassifier``)
  over the same fields as the students: for every sparse field its **train-only target
  statistic** (smoothed mean label of the field value over the training events; out-of-fold
  for the training rows themselves so a row never sees its own label) and its training count,
  the low-cardinality fields as native categorical features, and the dense features.
* :func:`logistic_baseline`: L2 logistic regression over the one-hot sparse ids plus the dense
  features.

Both read exactly the rows the students read (``CTRDataModule`` train / valid / test, through
the same ``CTRDataset.batch``), choose their hyper-parameters (GBDT: tree size, leaf size, learning rate and
the number of boosting rounds; logistic: the L2 strength ``C``) on **validation LogLoss only**,
never fit on validation or test rows, and are scored with the project's
:func:`recdistill.metrics.ctr_metrics` (AUC, GAUC, LogLoss from logits). Each returns
``{"valid": metrics, "test": metrics, "selected": {...}, "model": name}``; the lower-level
:func:`fit_gbdt` / :func:`fit_logistic` return the fitted object (``.logits(split)``).

Importing this module is light; scikit-learn and scipy are imported when a baseline is fitted.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

__all__ = [
    "CTRArrays",
    "GBDTBaseline",
    "LogisticBaseline",
    "TargetStatistics",
    "ctr_arrays",
    "fit_gbdt",
    "fit_logistic",
    "gbdt_baseline",
    "logistic_baseline",
]

SPLITS = ("train", "valid", "test")
#: default GBDT grid (selected on validation LogLoss; the number of rounds is selected too)
GBDT_GRID: dict[str, Sequence[Any]] = {
    "max_leaf_nodes": (15, 63),
    "min_samples_leaf": (20, 200),
    "l2_regularization": (1.0,),
    "learning_rate": (0.05, 0.1),
}
GBDT_MAX_ITER = 2000
#: default inverse L2 strengths of the logistic regression (selected on validation LogLoss)
LOGISTIC_CS: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
#: fields with at most this many values also enter the trees as native categorical features
MAX_CATEGORICAL = 64


@dataclass
class CTRArrays:
    """All rows of one CTR split, exactly as the students' batches hold them."""

    sparse: np.ndarray  # int64 [N, F]
    dense: np.ndarray  # float32 [N, D]
    label: np.ndarray  # float32 [N]
    user: np.ndarray  # int64 [N]

    def __len__(self) -> int:
        return len(self.label)


def ctr_arrays(datamodule: Any, split: str) -> CTRArrays:
    """The rows of ``split`` ('train', 'valid', 'test') of a ``CTRDataModule``, gathered by the
    students' own dataset (``CTRDataset.batch``), so the baselines see the same fields and rows."""
    dataset = datamodule._dataset(split)
    batch = dataset.batch(np.arange(len(dataset)))
    return CTRArrays(sparse=np.asarray(batch["sparse"], dtype=np.int64),
                     dense=np.asarray(batch["dense"], dtype=np.float32),
                     label=np.asarray(batch["label"], dtype=np.float32),
                     user=np.asarray(batch["user"], dtype=np.int64))


def _metrics(logits: np.ndarray, arrays: CTRArrays) -> dict[str, float]:
    import torch

    from recdistill.metrics import ctr_metrics

    return ctr_metrics(torch.as_tensor(np.asarray(logits, dtype=np.float64)),
                       torch.as_tensor(arrays.label), torch.as_tensor(arrays.user))


def _logloss(logits: np.ndarray, label: np.ndarray) -> float:
    x = np.asarray(logits, dtype=np.float64)
    return float(np.mean(np.logaddexp(0.0, x) - label * x))


# ----------------------------------------------------------------------------- target statistics


@dataclass
class TargetStatistics:
    """Per-field-value smoothed mean label and count, from the training rows only.

    ``mean(v) = (sum_label(v) + smoothing * prior) / (count(v) + smoothing)`` with ``prior`` the
    training click rate; a value never seen in training gets ``prior`` and count 0. For the
    training rows themselves :meth:`fit_transform` uses ``folds``-fold out-of-fold statistics
    (each row's mean comes from the other folds), so the trees cannot read a row's own label.
    """

    field_dims: Sequence[int]
    smoothing: float = 20.0
    folds: int = 5
    seed: int = 0
    prior: float = field(init=False, default=0.5)
    sums: list[np.ndarray] = field(init=False, default_factory=list)
    counts: list[np.ndarray] = field(init=False, default_factory=list)

    def fit(self, sparse: np.ndarray, label: np.ndarray) -> "TargetStatistics":
        """Tables from the training rows ``(sparse, label)``."""
        self.prior = float(np.mean(label)) if len(label) else 0.5
        self.sums, self.counts = [], []
        for f, dim in enumerate(self.field_dims):
            codes = np.clip(sparse[:, f], 0, dim - 1)
            self.sums.append(np.bincount(codes, weights=label, minlength=dim).astype(np.float64))
            self.counts.append(np.bincount(codes, minlength=dim).astype(np.float64))
        return self

    def _encode(self, sparse: np.ndarray, sums: list[np.ndarray], counts: list[np.ndarray],
                prior: float) -> np.ndarray:
        cols = []
        for f, dim in enumerate(self.field_dims):
            codes = np.clip(sparse[:, f], 0, dim - 1)
            s, c = sums[f][codes], counts[f][codes]
            cols.append((s + self.smoothing * prior) / (c + self.smoothing))
        return np.stack(cols, axis=1) if cols else np.zeros((len(sparse), 0))

    def means(self, sparse: np.ndarray) -> np.ndarray:
        """``[N, F]`` smoothed mean label of each row's value of each field (training tables)."""
        return self._encode(sparse, self.sums, self.counts, self.prior)

    def log_counts(self, sparse: np.ndarray) -> np.ndarray:
        """``[N, F]`` ``log1p`` of each value's training count (labels are not used)."""
        return np.stack([np.log1p(self.counts[f][np.clip(sparse[:, f], 0, dim - 1)])
                         for f, dim in enumerate(self.field_dims)], axis=1)

    def transform(self, sparse: np.ndarray) -> np.ndarray:
        """``[N, 2F]``: means then log-counts, for rows that are not training rows."""
        return np.concatenate([self.means(sparse), self.log_counts(sparse)], axis=1)

    def fit_transform(self, sparse: np.ndarray, label: np.ndarray) -> np.ndarray:
        """Fit on the training rows and encode them out-of-fold (means) / in full (counts)."""
        self.fit(sparse, label)
        means = np.empty((len(label), len(self.field_dims)))
        fold = np.random.default_rng(self.seed).integers(0, max(self.folds, 2), len(label))
        for k in range(max(self.folds, 2)):
            held = fold == k
            rest = TargetStatistics(self.field_dims, self.smoothing).fit(sparse[~held], label[~held])
            means[held] = rest._encode(sparse[held], rest.sums, rest.counts, rest.prior)
        return np.concatenate([means, self.log_counts(sparse)], axis=1)


# ----------------------------------------------------------------------------- GBDT


@dataclass
class GBDTBaseline:
    """A fitted GBDT baseline: the encoder, the selected model and its number of rounds."""

    stats: TargetStatistics
    model: Any
    num_rounds: int
    selected: dict[str, Any]
    categorical: list[int]
    arrays: dict[str, CTRArrays]
    search: list[dict[str, Any]]

    def features(self, arrays: CTRArrays, train: bool = False) -> np.ndarray:
        return _gbdt_features(self.stats, arrays, self.categorical, train)

    def logits(self, split: str) -> np.ndarray:
        """Logits on ``split`` with the selected number of rounds (train: in-sample encodings)."""
        return _staged_at(self.model, self.features(self.arrays[split]), self.num_rounds)


def _gbdt_features(stats: TargetStatistics, arrays: CTRArrays, categorical: list[int],
                   train: bool = False) -> np.ndarray:
    encoded = stats.fit_transform(arrays.sparse, arrays.label) if train else stats.transform(arrays.sparse)
    codes = arrays.sparse[:, categorical].astype(np.float64)
    return np.concatenate([codes, encoded, arrays.dense.astype(np.float64)], axis=1)


def _staged_at(model: Any, x: np.ndarray, rounds: int) -> np.ndarray:
    for i, raw in enumerate(model.staged_decision_function(x), start=1):
        if i == rounds:
            return np.asarray(raw, dtype=np.float64).ravel()
    return np.asarray(model.decision_function(x), dtype=np.float64).ravel()


def _grow(model: Any, x: np.ndarray, y: np.ndarray, x_valid: np.ndarray, y_valid: np.ndarray, max_iter: int,
          chunk: int) -> Any:
    """Add boosting rounds ``chunk`` at a time (warm start) until the validation LogLoss has not
    improved for two chunks or ``max_iter`` rounds exist."""
    best, stale, rounds = np.inf, 0, 0
    while rounds < max_iter and stale < 2:
        rounds = min(rounds + chunk, max_iter)
        model.set_params(max_iter=rounds)
        model.fit(x, y)
        loss = _logloss(model.decision_function(x_valid), y_valid)
        best, stale = (loss, 0) if loss < best else (best, stale + 1)
    return model


def fit_gbdt(datamodule: Any, grid: dict[str, Sequence[Any]] | None = None, max_iter: int = GBDT_MAX_ITER,
             smoothing: float = 20.0, folds: int = 5, seed: int = 0, chunk: int = 100) -> GBDTBaseline:
    """Fit every configuration of ``grid`` on the training rows and keep the configuration and
    number of boosting rounds with the lowest validation LogLoss (rounds are added ``chunk`` at a
    time and stop once validation LogLoss has not improved for two chunks, up to ``max_iter``).
    Test rows are only read after the choice is made (by :meth:`GBDTBaseline.logits`)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    arrays = {split: ctr_arrays(datamodule, split) for split in SPLITS}
    train, valid = arrays["train"], arrays["valid"]
    dims = list(datamodule.field_dims)
    categorical = [f for f, d in enumerate(dims) if d <= MAX_CATEGORICAL]
    stats = TargetStatistics(dims, smoothing=smoothing, folds=folds, seed=seed)
    x_train = _gbdt_features(stats, train, categorical, train=True)
    x_valid = _gbdt_features(stats, valid, categorical)
    is_cat = np.zeros(x_train.shape[1], dtype=bool)
    is_cat[: len(categorical)] = True
    grid = grid or GBDT_GRID
    keys = sorted(grid)
    best: tuple[float, int, Any, dict[str, Any]] | None = None
    search = []
    for values in itertools.product(*(grid[k] for k in keys)):
        params = dict(zip(keys, values))
        model = _grow(HistGradientBoostingClassifier(early_stopping=False, categorical_features=is_cat,
                                                     random_state=seed, warm_start=True, **params),
                      x_train, train.label.astype(np.int64), x_valid, valid.label, max_iter, chunk)
        losses = [_logloss(raw, valid.label) for raw in model.staged_decision_function(x_valid)]
        rounds = int(np.argmin(losses)) + 1
        search.append({**params, "num_rounds": rounds, "valid_logloss": losses[rounds - 1]})
        if best is None or losses[rounds - 1] < best[0]:
            best = (losses[rounds - 1], rounds, model, params)
    assert best is not None
    _, rounds, model, params = best
    selected = {**params, "num_rounds": rounds, "smoothing": smoothing, "folds": folds,
                "categorical_fields": [datamodule.feature_names[f] for f in categorical]}
    return GBDTBaseline(stats=stats, model=model, num_rounds=rounds, selected=selected, categorical=categorical,
                        arrays=arrays, search=search)


def gbdt_baseline(datamodule: Any, **kwargs: Any) -> dict[str, Any]:
    """``{"valid": metrics, "test": metrics, "selected": {...}, "model": "gbdt"}`` (see :func:`fit_gbdt`)."""
    fitted = fit_gbdt(datamodule, **kwargs)
    return {"model": "gbdt", "selected": fitted.selected,
            **{split: _metrics(fitted.logits(split), fitted.arrays[split]) for split in ("valid", "test")}}


# ----------------------------------------------------------------------------- logistic regression


@dataclass
class LogisticBaseline:
    """A fitted one-hot logistic regression."""

    model: Any
    offsets: np.ndarray
    width: int
    selected: dict[str, Any]
    arrays: dict[str, CTRArrays]
    search: list[dict[str, Any]]

    def features(self, arrays: CTRArrays) -> Any:
        return _one_hot(arrays, self.offsets, self.width)

    def logits(self, split: str) -> np.ndarray:
        return np.asarray(self.model.decision_function(self.features(self.arrays[split])), dtype=np.float64)


def _one_hot(arrays: CTRArrays, offsets: np.ndarray, width: int) -> Any:
    """``[N, sum(field_dims) + D]`` CSR: one column per field value, then the dense features."""
    from scipy import sparse as sp

    n, f = arrays.sparse.shape
    dims = np.diff(np.append(offsets, width))
    cols = offsets[None, :] + np.clip(arrays.sparse, 0, dims[None, :] - 1)
    hot = sp.csr_matrix((np.ones(n * f), cols.ravel(), np.arange(0, n * f + 1, f)), shape=(n, width))
    return sp.hstack([hot, sp.csr_matrix(arrays.dense.astype(np.float64))], format="csr")


def fit_logistic(datamodule: Any, cs: Sequence[float] = LOGISTIC_CS, max_iter: int = 2000) -> LogisticBaseline:
    """One model per ``C`` on the training rows; keep the lowest validation LogLoss."""
    from sklearn.linear_model import LogisticRegression

    arrays = {split: ctr_arrays(datamodule, split) for split in SPLITS}
    dims = np.asarray(datamodule.field_dims, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(dims)[:-1]]).astype(np.int64)
    width = int(dims.sum())
    x_train = _one_hot(arrays["train"], offsets, width)
    x_valid = _one_hot(arrays["valid"], offsets, width)
    best: tuple[float, Any, float] | None = None
    search = []
    for c in cs:
        model = LogisticRegression(C=float(c), max_iter=max_iter, solver="lbfgs")
        model.fit(x_train, arrays["train"].label.astype(np.int64))
        loss = _logloss(model.decision_function(x_valid), arrays["valid"].label)
        search.append({"C": float(c), "valid_logloss": loss})
        if best is None or loss < best[0]:
            best = (loss, model, float(c))
    assert best is not None
    return LogisticBaseline(model=best[1], offsets=offsets, width=width, selected={"C": best[2]}, arrays=arrays,
                            search=search)


def logistic_baseline(datamodule: Any, **kwargs: Any) -> dict[str, Any]:
    """``{"valid": metrics, "test": metrics, "selected": {"C": ...}, "model": "logistic"}``."""
    fitted = fit_logistic(datamodule, **kwargs)
    return {"model": "logistic", "selected": fitted.selected,
            **{split: _metrics(fitted.logits(split), fitted.arrays[split]) for split in ("valid", "test")}}
