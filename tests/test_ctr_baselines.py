"""The practitioner's CTR baselines (GBDT + train-only target statistics, one-hot logistic):
they learn a planted signal, their target statistics read training labels only, and their
selection never reads test labels."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn")

from recdistill.ctr_baselines import (  # noqa: E402
    TargetStatistics,
    ctr_arrays,
    fit_gbdt,
    fit_logistic,
    gbdt_baseline,
    logistic_baseline,
)
from recdistill.data import CTRDataModule, build_sequential_split, synthetic_interactions  # noqa: E402
from recdistill.data.ctr import CTRExamples  # noqa: E402

SMALL_GRID = {"max_leaf_nodes": (7, 15), "min_samples_leaf": (20,), "learning_rate": (0.1,)}


def _planted_split():
    """Clicks = (user is F) or (item genre in Drama/Romance), 10% label noise: additive, so a
    linear model on one-hot ids can learn it as well as trees."""
    data = synthetic_interactions(num_users=200, num_items=50, mean_length=16, seed=3)
    genre = dict(zip(data.items["item_id"], data.items["genres"].map(lambda g: g[0])))
    gender = dict(zip(data.users["user_id"], data.users["gender"]))
    frame = data.interactions
    likes = np.array([(gender[u] == "F") or (genre[i] in ("Drama", "Romance"))
                      for u, i in zip(frame["user_id"], frame["item_id"])])
    flip = np.random.default_rng(0).random(len(frame)) < 0.1
    frame["rating"] = np.where(likes ^ flip, 5.0, 1.0)
    return build_sequential_split(data)


@pytest.fixture(scope="module")
def split():
    return _planted_split()


def _datamodule(split, flip: tuple[str, ...] = ()) -> CTRDataModule:
    dm = CTRDataModule.from_split(split)
    for name in flip:
        ex = dm.examples[name]
        dm.examples[name] = CTRExamples(ex.user, ex.pos, (1.0 - ex.label).astype(np.float32))
    dm._datasets.clear()
    return dm


def test_arrays_are_the_students_rows(split):
    dm = _datamodule(split)
    for name in ("train", "valid", "test"):
        arrays = ctr_arrays(dm, name)
        assert len(arrays) == len(dm.examples[name])
        assert arrays.sparse.shape[1] == len(dm.field_dims)
        assert arrays.dense.shape[1] == dm.dense_dim
        np.testing.assert_array_equal(arrays.label, dm.examples[name].label)


@pytest.mark.parametrize("baseline", [gbdt_baseline, logistic_baseline])
def test_baselines_learn_the_planted_signal(split, baseline):
    kwargs = {"grid": SMALL_GRID, "max_iter": 60} if baseline is gbdt_baseline else {"cs": (0.1, 1.0)}
    result = baseline(_datamodule(split), **kwargs)
    assert set(result) >= {"valid", "test", "selected", "model"}
    for name in ("valid", "test"):
        assert set(result[name]) == {"auc", "gauc", "logloss"}
        assert result[name]["auc"] > 0.75, result  # oracle ~0.9 (10% noise), chance 0.5
        assert result[name]["logloss"] < 0.6, result  # the prior alone is ~0.69 at this click rate


def test_target_statistics_smoothing_and_out_of_fold():
    sparse = np.array([[1], [1], [1], [2], [0]], dtype=np.int64)
    label = np.array([1, 1, 0, 1, 0], dtype=np.float32)
    stats = TargetStatistics([4], smoothing=2.0).fit(sparse, label)
    prior = 3 / 5
    expected = [(2 + 2 * prior) / (3 + 2), (1 + 2 * prior) / (1 + 2), prior]  # values 1, 2, unseen 3
    np.testing.assert_allclose(stats.means(np.array([[1], [2], [3]]))[:, 0], expected)
    np.testing.assert_allclose(stats.log_counts(np.array([[1], [3]]))[:, 0], np.log1p([3, 0]))
    # out of fold: a value seen in one row only falls back to the prior of the other rows
    encoded = TargetStatistics([4], smoothing=2.0, folds=5).fit_transform(sparse, label)
    row = 3  # the only row with value 2, label 1
    assert encoded[row, 0] < (1 + 2 * prior) / 3


def test_target_statistics_read_training_labels_only(split):
    fitted = fit_gbdt(_datamodule(split), grid=SMALL_GRID, max_iter=30)
    flipped = fit_gbdt(_datamodule(split, flip=("valid", "test")), grid=SMALL_GRID, max_iter=30)
    assert fitted.stats.prior == flipped.stats.prior
    for a, b in zip(fitted.stats.sums + fitted.stats.counts, flipped.stats.sums + flipped.stats.counts):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("fit", [fit_gbdt, fit_logistic])
def test_selection_never_reads_test_labels(split, fit):
    kwargs = {"grid": SMALL_GRID, "max_iter": 40} if fit is fit_gbdt else {"cs": (0.01, 0.1, 1.0)}
    fitted = fit(_datamodule(split), **kwargs)
    flipped = fit(_datamodule(split, flip=("test",)), **kwargs)
    assert fitted.selected == flipped.selected
    assert fitted.search == flipped.search
    np.testing.assert_array_equal(fitted.logits("valid"), flipped.logits("valid"))
    np.testing.assert_array_equal(fitted.logits("test"), flipped.logits("test"))


def test_selection_follows_validation(split):
    """Flipping the validation labels changes the validation losses the choice is made on."""
    fitted = fit_logistic(_datamodule(split), cs=(0.01, 1.0))
    flipped = fit_logistic(_datamodule(split, flip=("valid",)), cs=(0.01, 1.0))
    assert [r["valid_logloss"] for r in fitted.search] != [r["valid_logloss"] for r in flipped.search]
    assert fitted.selected == {"C": 1.0} and flipped.selected == {"C": 0.01}


def test_baselines_are_rows_of_the_ctr_table():
    from recdistill.benchmarks.students import render_markdown

    metrics = {"auc": 0.78, "gauc": 0.70, "logloss": 0.556}
    run = {"student": "deepfm", "task": "ctr", "valid": metrics, "test": metrics, "num_parameters": 10,
           "seconds_per_epoch": 1.0, "threads": 1, "epochs": 3}
    payload = {"seeds": [0], "protocol": "p", "torch": "x", "runs": [run],
               "ctr_baselines": {"gbdt": {"valid": metrics, "test": {**metrics, "logloss": 0.5559}},
                                 "logistic": {"valid": metrics, "test": metrics}}}
    table = render_markdown(payload)
    assert "| GBDT + train-only target stats | 0.7800 | 0.7800 | 0.7000 | 0.5559 | - |" in table
    assert "| one-hot logistic regression | 0.7800 |" in table
    assert table.index("GBDT") < table.index("| deepfm |")
    assert "ctr_baselines" not in render_markdown({**payload, "ctr_baselines": None})
