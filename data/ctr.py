"""CTR task on the same split: features, labels and a vectorised torch dataset.

Every event of a user is one example, ``label = rating >= threshold``. Split per user, in the
same stable chronological order as the sequential task: the last ``test_fraction`` of a user's
events (at least one) -> test, the ``valid_fraction`` before them (at least one) -> valid, all
earlier events -> train; so every user has several impressions in valid/test and GAUC is
defined, and nothing a user did later ever reaches training. ``history`` holds the user's previous ``history_len`` items
before the event in that order (events sharing a timestamp count as earlier only if they come
first in the file), never the event itself or later ones. Example ids follow the sequential
convention ``user * EXAMPLE_STRIDE + pos``.

Sparse fields are indexed from 0 within their own vocabulary, 0 being "unknown/missing".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recdistill.data.batching import BatchedDataset, left_pad, offsets_of
from recdistill.data.columns import DataFormatError
from recdistill.data.schema import EXAMPLE_STRIDE, SequentialSplit
from recdistill.errors import ConfigError

AGE_BINS = (18, 25, 35, 45, 50, 56)  # MovieLens-1M age groups


@dataclass
class CTRFeatures:
    """Per-user and per-item feature tables; a batch gathers rows from them."""

    user_sparse: np.ndarray  # [U, Fu] int64
    item_sparse: np.ndarray  # [N + 1, Fi] int64, row 0 = padding item
    item_dense: np.ndarray  # [N + 1, Di] float32
    feature_names: list[str]  # sparse field names, user fields then item fields
    field_dims: list[int]
    dense_names: list[str]  # item dense names, then "history_length"


def build_ctr_features(split: SequentialSplit) -> CTRFeatures:
    """Categorical fields (user, item, gender, age bucket, occupation, zip prefix, decade, first genre)
    and dense features (genre multi-hot, normalised year) from the split's side tables."""
    users, items, n_items = split.users, split.items, split.num_items
    u_cols = [np.arange(1, split.num_users + 1)]
    names, dims = ["user"], [split.num_users + 1]
    if users is not None:
        if "gender" in users:
            _add(u_cols, names, dims, "gender", _categorical(users["gender"]))
        if "age" in users:
            age = pd.to_numeric(users["age"], errors="coerce").to_numpy(float)
            codes = np.where(np.isnan(age), 0, np.digitize(np.nan_to_num(age), AGE_BINS) + 1)
            _add(u_cols, names, dims, "age_bucket", (codes, len(AGE_BINS) + 2))
        if "occupation" in users:
            _add(u_cols, names, dims, "occupation", _categorical(users["occupation"]))
        if "zip_code" in users:
            zips = users["zip_code"].astype(str).str.strip()
            valid = users["zip_code"].notna() & zips.ne("") & zips.ne("nan")
            _add(u_cols, names, dims, "zip_prefix", _categorical(zips.str[:1].where(valid)))
    i_cols = [np.arange(0, n_items + 1)]
    item_names, item_dims = ["item"], [n_items + 1]
    dense_cols: list[np.ndarray] = []
    dense_names: list[str] = []
    if items is not None:
        if "year" in items:
            year = pd.to_numeric(items["year"], errors="coerce").to_numpy(float)
            decade = pd.Series(np.floor(year / 10) * 10)
            _add(i_cols, item_names, item_dims, "decade", _categorical(decade, pad=True))
            lo, hi = np.nanmin(year) if np.isfinite(year).any() else 0, np.nanmax(year) if np.isfinite(year).any() else 1
            dense_cols.append(np.concatenate([[0.0], np.nan_to_num((year - lo) / max(hi - lo, 1.0))]))
            dense_names.append("year_norm")
        if "genres" in items:
            lists = [g if isinstance(g, (list, tuple, np.ndarray)) else [] for g in items["genres"]]
            vocab = sorted({str(x) for g in lists for x in g})
            first = pd.Series([str(g[0]) if len(g) else None for g in lists])
            _add(i_cols, item_names, item_dims, "first_genre", _categorical(first, pad=True))
            pos = {g: j for j, g in enumerate(vocab)}
            hot = np.zeros((n_items + 1, len(vocab)), dtype=np.float32)
            for i, g in enumerate(lists):
                hot[i + 1, [pos[str(x)] for x in g]] = 1.0
            dense_cols.extend(hot.T)
            dense_names.extend(f"genre={g}" for g in vocab)
    dense = np.stack(dense_cols, axis=1).astype(np.float32) if dense_cols else np.zeros((n_items + 1, 0), np.float32)
    return CTRFeatures(
        user_sparse=np.stack(u_cols, axis=1).astype(np.int64),
        item_sparse=np.stack(i_cols, axis=1).astype(np.int64),
        item_dense=dense,
        feature_names=names + item_names,
        field_dims=dims + item_dims,
        dense_names=dense_names + ["history_length"],
    )


@dataclass
class CTRExamples:
    """Flat per-event arrays for one split."""

    user: np.ndarray
    pos: np.ndarray
    label: np.ndarray  # float32

    def __len__(self) -> int:
        return len(self.user)


def ctr_examples(split: SequentialSplit, rating_threshold: float = 4.0, valid_fraction: float = 0.1,
                 test_fraction: float = 0.1) -> dict[str, CTRExamples]:
    """Every event as an example, assigned to train/valid/test by its position from the end."""
    if not (0 < valid_fraction < 0.5 and 0 < test_fraction < 0.5):
        raise ConfigError(f"valid_fraction and test_fraction must be in (0, 0.5), got {valid_fraction}, "
                          f"{test_fraction}")
    if split.ratings is None:
        raise DataFormatError(f"dataset {split.name!r} has no ratings, which the CTR task needs for labels; "
                              f"load it with a rating column (e.g. column_map={{'rating': '<column>'}})")
    lengths = split.lengths
    users = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    pos = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(offsets_of(lengths), lengths)
    from_end = np.repeat(lengths, lengths) - pos
    ratings = np.concatenate(split.ratings)
    if np.isnan(ratings).any():
        raise DataFormatError(f"dataset {split.name!r} has {int(np.isnan(ratings).sum())} events without a rating; "
                              f"the CTR task needs a rating for every event (drop or fill them before loading)")
    labels = (ratings >= rating_threshold).astype(np.float32)
    num_valid, num_test = (np.repeat(n, lengths) for n in held_out_counts(lengths, valid_fraction, test_fraction))
    is_test = from_end <= num_test
    is_valid = ~is_test & (from_end <= num_test + num_valid)
    out = {}
    for name, mask in (("train", ~is_test & ~is_valid), ("valid", is_valid), ("test", is_test)):
        out[name] = CTRExamples(users[mask], pos[mask], labels[mask])
    return out


def ctr_train_prefix(split: SequentialSplit, valid_fraction: float = 0.1, test_fraction: float = 0.1) -> SequentialSplit:
    """The split cut to each user's CTR *training* events (everything before the CTR valid/test
    events of :func:`ctr_examples`), for a sequential teacher whose signals distil into a CTR
    student: a teacher fitted on the full leave-one-out split has trained on the events the CTR
    split holds out. Users, items and example ids are unchanged (positions are prefixes); the
    fingerprint is derived from the full split's and the fractions, so a cache states which one
    its teacher saw."""
    import dataclasses
    import hashlib

    num_valid, num_test = held_out_counts(split.lengths, valid_fraction, test_fraction)
    train = split.lengths - num_valid - num_test
    short = [int(u) for u, n in enumerate(train) if n < 3]
    if short:
        raise ConfigError(f"{len(short)} user(s) keep fewer than 3 CTR training events (e.g. user index {short[0]}), "
                          f"too few for the teacher's leave-one-out; raise data.min_interactions or lower the CTR "
                          f"fractions")

    def cut(per_user: list[np.ndarray] | None) -> list[np.ndarray] | None:
        return None if per_user is None else [values[:n] for values, n in zip(per_user, train)]

    digest = hashlib.sha256(f"{split.fingerprint}:ctr-train-prefix:{valid_fraction}:{test_fraction}".encode())
    return dataclasses.replace(split, sequences=cut(split.sequences), timestamps=cut(split.timestamps),
                               ratings=cut(split.ratings), fingerprint=digest.hexdigest(),
                               filtering_log=[*split.filtering_log, f"cut to the CTR training events "
                                              f"(valid {valid_fraction}, test {test_fraction} held out)"])


def held_out_counts(lengths: np.ndarray, valid_fraction: float, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Per user, how many of the last events are CTR valid and test (at least one each)."""
    num_valid = np.maximum(1, np.round(lengths * valid_fraction)).astype(np.int64)
    num_test = np.maximum(1, np.round(lengths * test_fraction)).astype(np.int64)
    return num_valid, num_test


def ctr_summary(split: SequentialSplit, rating_threshold: float = 4.0, valid_fraction: float = 0.1,
                test_fraction: float = 0.1) -> dict:
    ex = ctr_examples(split, rating_threshold, valid_fraction, test_fraction)
    info: dict = {"rating_threshold": rating_threshold, "valid_fraction": valid_fraction,
                  "test_fraction": test_fraction}
    for name, e in ex.items():
        info[f"num_{name}"] = len(e)
        info[f"positive_rate_{name}"] = float(e.label.mean()) if len(e) else 0.0
    return info


class CTRDataset(BatchedDataset):
    """Batches ``{sparse, dense, history, label, user, example_id}`` gathered from feature tables."""

    def __init__(self, split: SequentialSplit, features: CTRFeatures, examples: CTRExamples, history_len: int = 20):
        lengths = split.lengths
        self.flat = np.concatenate(split.sequences).astype(np.int64)
        self.offsets = offsets_of(lengths)
        self.features = features
        self.examples = examples
        self.history_len = history_len
        self.max_pos_scale = float(np.log1p(max(int(lengths.max(initial=1)) - 1, 1)))

    def __len__(self) -> int:
        return len(self.examples)

    def batch(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        user, pos = self.examples.user[idx], self.examples.pos[idx]
        start = self.offsets[user]
        item = self.flat[start + pos]
        f = self.features
        sparse = np.concatenate([f.user_sparse[user], f.item_sparse[item]], axis=1)
        hist_feat = (np.log1p(pos) / self.max_pos_scale).astype(np.float32)[:, None]
        dense = np.concatenate([f.item_dense[item], hist_feat], axis=1)
        history = left_pad(self.flat, start + np.maximum(pos - self.history_len, 0), start + pos, self.history_len)
        return {"sparse": sparse, "dense": dense, "history": history, "label": self.examples.label[idx],
                "user": user, "item": item, "example_id": user * EXAMPLE_STRIDE + pos}


def _categorical(values: pd.Series, pad: bool = False) -> tuple[np.ndarray, int]:
    """Codes ``1..K`` for sorted distinct values, 0 for missing; with ``pad`` a leading 0 row is added."""
    codes, uniques = pd.factorize(pd.Series(values).reset_index(drop=True), sort=True)
    codes = (codes + 1).astype(np.int64)  # factorize gives -1 for NaN -> 0
    if pad:
        codes = np.concatenate([[0], codes])
    return codes, len(uniques) + 1


def _add(cols: list, names: list, dims: list, name: str, coded: tuple[np.ndarray, int]) -> None:
    cols.append(coded[0])
    names.append(name)
    dims.append(coded[1])
