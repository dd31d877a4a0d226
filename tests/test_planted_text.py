"""Planted text dataset: seeded, documented structure, readable through the CSV path."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recdistill.data import build_sequential_split, load_split, planted_text_interactions, write_planted_text_csv
from recdistill.data.planted_text import CATEGORY_WORDS, FILLER_WORDS, category_of_title

SIZE = dict(num_users=500, num_items=240)


@pytest.fixture(scope="module")
def planted():
    data = planted_text_interactions(**SIZE, seed=4)
    return data, build_sequential_split(data)


def test_same_seed_same_data_other_seed_other_data(planted):
    data, split = planted
    again = planted_text_interactions(**SIZE, seed=4)
    other = planted_text_interactions(**SIZE, seed=5)
    pd.testing.assert_frame_equal(data.interactions, again.interactions)
    pd.testing.assert_frame_equal(data.items, again.items)
    pd.testing.assert_frame_equal(data.users, again.users)
    assert build_sequential_split(again).fingerprint == split.fingerprint
    assert not data.interactions.equals(other.interactions)
    assert not data.items["title"].equals(other.items["title"])


def test_sequences_are_valid(planted):
    data, split = planted
    df = data.interactions
    assert df["user_id"].nunique() == SIZE["num_users"] and df["item_id"].between(1, SIZE["num_items"]).all()
    assert (df.groupby("user_id")["timestamp"].diff().dropna() > 0).all()
    assert not df.duplicated(["user_id", "item_id"]).any()  # no repeat within a user
    assert split.num_items == SIZE["num_items"]  # every item occurs somewhere at this size


def test_cold_targets_are_frequent_and_in_the_users_category(planted):
    data, split = planted
    counts = split.item_train_counts()
    item_cat = data.items.set_index("item_id")["category"]
    follows = data.users.set_index("user_id")["categories"].str.split("|")
    cold = in_category = 0
    for u, seq in enumerate(split.sequences):
        target = seq[-1]
        if counts[target] == 0:
            cold += 1
            in_category += item_cat[split.item_ids[target - 1]] in follows[split.user_ids[u]]
    assert cold > 0.15 * split.num_users  # a clear cold slice at the default settings
    assert in_category > 0.5 * cold
    assert split.cold_targets("test") == cold
    # held-out items: training count exactly their planted budget (0 or 1-3), yet frequent as targets
    held = data.items[data.items["held_out"]]
    index = {raw: i + 1 for i, raw in enumerate(split.item_ids)}
    train = np.array([counts[index[i]] for i in held["item_id"]])
    np.testing.assert_array_equal(train, held["train_budget"].to_numpy())
    assert train.max() <= 3 and (train == 0).any() and (train > 0).any()
    targets = [s[-1] for s in split.sequences] + [s[-2] for s in split.sequences]
    held_idx = {index[i] for i in held["item_id"]}
    assert sum(t in held_idx for t in targets) / len(held_idx) > 3  # each held-out item: several targets


def test_category_words_are_recoverable_from_titles(planted):
    data, _ = planted
    words_of = {w: c for c, ws in CATEGORY_WORDS.items() for w in ws}
    for title, category in zip(data.items["title"], data.items["category"]):
        found = category_of_title(title)
        assert list(found) == [category], title
        assert 2 <= len(found[category]) <= 4
        tokens = title.lower().replace("#", " ").split()
        assert all(t in words_of or t in FILLER_WORDS for t in tokens[:-1]) and len(tokens[-1]) == 6
    assert data.items["title"].str.extract(r"#(\w+)$")[0].is_unique  # the id token names one item


def test_csv_round_trip_gives_the_same_split(tmp_path):
    kwargs = dict(num_categories=5, cold_share=0.25, seed=2)
    path, column_map = write_planted_text_csv(tmp_path, 200, 80, **kwargs)
    assert column_map["item_text"] == "item_title" and path.name == "planted_text.csv"
    read = load_split(path, column_map=column_map)
    built = build_sequential_split(planted_text_interactions(200, 80, **kwargs))
    assert read.fingerprint == built.fingerprint
    np.testing.assert_array_equal(read.item_ids, built.item_ids)
    assert all(np.array_equal(a, b) for a, b in zip(read.sequences, built.sequences))
    assert read.item_text == built.item_text
    assert read.item_text[0] == built.items["title"].iloc[0]  # the titles themselves, nothing appended
    truth = pd.read_csv(tmp_path / "planted_text_items.csv")
    assert {"item_id", "title", "category", "held_out", "train_budget"} <= set(truth.columns)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_categories"):
        planted_text_interactions(10, 40, num_categories=9)
    with pytest.raises(ValueError, match="cold_share"):
        planted_text_interactions(10, 40, cold_share=1.0)
    with pytest.raises(ValueError, match="min_length"):
        planted_text_interactions(10, 40, min_length=2)
