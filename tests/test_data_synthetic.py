"""Synthetic generator: deterministic, structured, valid."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recdistill.data import build_sequential_split, planted_successor, synthetic_interactions


def test_same_seed_same_data_other_seed_other_data():
    a = synthetic_interactions(50, 40, seed=5)
    b = synthetic_interactions(50, 40, seed=5)
    c = synthetic_interactions(50, 40, seed=6)
    pd.testing.assert_frame_equal(a.interactions, b.interactions)
    pd.testing.assert_frame_equal(a.items, b.items)
    pd.testing.assert_frame_equal(a.users, b.users)
    assert build_sequential_split(a).fingerprint == build_sequential_split(b).fingerprint
    assert not a.interactions.equals(c.interactions)


def test_shape_ranges_and_increasing_time():
    data = synthetic_interactions(200, 60, mean_length=12, seed=1, min_length=4)
    df = data.interactions
    assert set(df.columns) == {"user_id", "item_id", "timestamp", "rating"}
    assert df["user_id"].nunique() == 200
    assert df["item_id"].between(1, 60).all() and df["rating"].between(1, 5).all()
    lengths = df.groupby("user_id").size()
    assert lengths.min() >= 4 and abs(lengths.mean() - 12) < 1.5
    assert (df.groupby("user_id")["timestamp"].diff().dropna() > 0).all()
    assert data.items["title"].iloc[0].startswith("Item 1 (")
    assert data.items["genres"].map(len).eq(1).all()
    assert {"age", "gender", "occupation", "zip_code"} <= set(data.users.columns)


@pytest.mark.parametrize("strength", [0.0, 0.8])
def test_planted_successor_rate_matches_pattern_strength(strength):
    data = synthetic_interactions(400, 100, mean_length=20, seed=2, pattern_strength=strength)
    df = data.interactions
    succ = planted_successor(100, seed=2)
    same_user = df["user_id"].to_numpy()[1:] == df["user_id"].to_numpy()[:-1]
    hit = (succ[df["item_id"].to_numpy()[:-1]] == df["item_id"].to_numpy()[1:])[same_user].mean()
    assert abs(hit - strength) < 0.05 if strength else hit < 0.1


def test_popularity_is_skewed():
    df = synthetic_interactions(500, 200, seed=3, pattern_strength=0.0).interactions
    counts = df["item_id"].value_counts().to_numpy()
    assert counts[0] > 10 * np.median(counts)


def test_optional_ratings_and_bad_arguments():
    assert "rating" not in synthetic_interactions(5, 10, ratings=False).interactions
    with pytest.raises(ValueError, match="pattern_strength"):
        synthetic_interactions(5, 10, pattern_strength=1.5)


def test_scales_to_hundreds_of_thousands():
    data = synthetic_interactions(20_000, 5_000, mean_length=20, seed=0)
    assert 350_000 < len(data.interactions) < 450_000
    split = build_sequential_split(data)
    assert split.num_users == 20_000
