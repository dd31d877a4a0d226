"""Sequential split: ordering, leakage, filtering, example ids, fingerprint, data_info."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from recdistill.data import (
    EXAMPLE_STRIDE,
    Interactions,
    build_sequential_split,
    data_info,
    load_split,
    split_example_id,
    synthetic_interactions,
)


def make(rows, name="tiny", items=None) -> Interactions:
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    return Interactions(name, df, items)


def test_tie_break_is_original_row_order():
    rows = [("u", 1, 10), ("u", 2, 20), ("u", 3, 30), ("u", 4, 30)]
    split = build_sequential_split(make(rows))
    assert split.sequences[0].tolist() == [1, 2, 3, 4]
    assert split.test_example(0).target == 4 and split.valid_example(0).target == 3
    swapped = build_sequential_split(make([rows[0], rows[1], rows[3], rows[2]]))
    assert swapped.sequences[0].tolist() == [1, 2, 4, 3]
    assert swapped.test_example(0).target == 3


def test_rows_are_sorted_by_time_per_user_and_indexed_by_sorted_raw_ids():
    rows = [(9, 300, 5), (9, 100, 1), (2, 200, 7), (9, 200, 3), (2, 100, 1), (2, 300, 9)]
    split = build_sequential_split(make(rows))
    assert split.user_ids.tolist() == [2, 9]
    assert split.item_ids.tolist() == [100, 200, 300]
    assert split.sequences[0].tolist() == [1, 2, 3]  # user 2: 100@1, 200@7, 300@9
    assert split.sequences[1].tolist() == [1, 2, 3]  # user 9: 100@1, 200@3, 300@5
    assert [t.tolist() for t in split.timestamps] == [[1, 7, 9], [1, 3, 5]]


def test_no_leakage_on_synthetic_data():
    data = synthetic_interactions(60, 40, mean_length=8, seed=3)
    # shuffle the file so sorting actually matters
    data.interactions = data.interactions.sample(frac=1.0, random_state=0).reset_index(drop=True)
    split = build_sequential_split(data)
    for u in range(split.num_users):
        ts = split.timestamps[u]
        assert np.all(np.diff(ts) >= 0)
        train = split.train_sequence(u)
        valid, test = split.valid_example(u), split.test_example(u)
        assert len(train) == len(split.sequences[u]) - 2
        assert ts[: len(train)].max() <= ts[-2] <= ts[-1]  # nothing in training is later than valid
        np.testing.assert_array_equal(valid.input, train)
        np.testing.assert_array_equal(test.input, split.sequences[u][:-1])
        assert test.input[-1] == valid.target  # validation precedes test
        np.testing.assert_array_equal(test.history, split.sequences[u][:-1])


def test_too_short_users_are_dropped_and_logged(caplog):
    rows = [(1, 1, 1), (1, 2, 2), (1, 3, 3), (2, 1, 1), (2, 2, 2), (3, 4, 1)]
    with caplog.at_level(logging.WARNING):
        split = build_sequential_split(make(rows), min_interactions=3)
    assert split.user_ids.tolist() == [1]
    assert split.item_ids.tolist() == [1, 2, 3]  # item 4 only belonged to a dropped user
    assert len(split.filtering_log) == 1 and "dropped 2 of 3 users" in split.filtering_log[0]
    assert "fewer than 3" in caplog.text


def test_min_interactions_below_three_is_rejected():
    with pytest.raises(ValueError, match="at least 3"):
        build_sequential_split(make([(1, 1, 1), (1, 2, 2), (1, 3, 3)]), min_interactions=2)


def test_missing_interaction_column_is_named():
    data = Interactions("x", pd.DataFrame({"user_id": [1], "item_id": [2]}))
    with pytest.raises(ValueError, match=r"\['timestamp'\]"):
        build_sequential_split(data)


def test_no_user_left_is_an_error():
    with pytest.raises(ValueError, match="no user"):
        build_sequential_split(make([(1, 1, 1), (1, 2, 2)]))


def test_example_ids_and_summary():
    rows = [(0, i, i) for i in range(1, 6)] + [(1, i, i) for i in range(1, 4)]
    split = build_sequential_split(make(rows))
    train = split.example_ids("train")
    users, pos = split_example_id(train)
    assert users.tolist() == [0, 0] and pos.tolist() == [1, 2]  # user 1 (len 3) has no train target
    assert split.example_ids("valid").tolist() == [3, EXAMPLE_STRIDE + 1]
    assert split.example_ids("test").tolist() == [4, EXAMPLE_STRIDE + 2]
    assert split.valid_example(0).example_id == 3
    summary = split.summary()
    assert summary == {"name": "tiny", "num_users": 2, "num_items": 5, "num_interactions": 8, "num_train": 2,
                       "num_valid": 2, "num_test": 2, "fingerprint": split.fingerprint,
                       "cold_valid_targets": 1, "cold_test_targets": 1}  # items 4 and 5 never trained on
    with pytest.raises(ValueError, match="unknown split"):
        split.example_ids("dev")


def test_item_train_counts_exclude_valid_and_test():
    rows = [(0, 1, 1), (0, 2, 2), (0, 1, 3), (0, 3, 4), (0, 4, 5), (1, 2, 1), (1, 3, 2), (1, 4, 3)]
    split = build_sequential_split(make(rows))
    counts = split.item_train_counts()
    assert counts.tolist() == [0, 2, 2, 0, 0]  # item 3 is only valid, item 4 only test


def test_fingerprint_is_stable_and_tracks_vocab_and_sequences():
    rows = [(1, 10, 1), (1, 20, 2), (1, 30, 3), (2, 20, 1), (2, 10, 2), (2, 30, 3)]
    a = build_sequential_split(make(rows)).fingerprint
    assert a == build_sequential_split(make(rows)).fingerprint
    assert len(a) == 64
    # same sequences of indices, different raw vocabulary
    renamed = [(u, {10: 10, 20: 20, 30: 31}[i], t) for u, i, t in rows]
    b = build_sequential_split(make(renamed))
    assert [s.tolist() for s in b.sequences] == [s.tolist() for s in build_sequential_split(make(rows)).sequences]
    assert b.fingerprint != a
    # different order of events
    assert build_sequential_split(make([(1, 20, 1), (1, 10, 2), *rows[2:]])).fingerprint != a
    assert build_sequential_split(make(rows, name="other")).fingerprint != a


def test_item_text_uses_titles_and_falls_back_to_raw_id():
    items = pd.DataFrame({"item_id": [10, 20], "title": ["Heat", ""], "year": [1995.0, np.nan],
                          "genres": [["Action", "Crime"], []]})
    split = build_sequential_split(make([(1, 10, 1), (1, 20, 2), (1, 30, 3)], items=items))
    assert split.item_text == ["Heat (1995). Genres: Action, Crime", "Item 20", "Item 30"]
    assert split.items["item_id"].tolist() == [10, 20, 30]


def test_side_tables_align_when_id_types_differ():
    items = pd.DataFrame({"item_id": ["10", "20", "x"], "title": ["Ten", "Twenty", "Ex"]})
    split = build_sequential_split(make([(1, 10, 1), (1, 20, 2), (1, 10, 3)], items=items))
    assert split.item_text == ["Ten", "Twenty"]
    assert split.items["item_id"].tolist() == [10, 20]


def test_data_info_on_a_csv(tmp_path):
    df = synthetic_interactions(20, 15, mean_length=6, seed=1).interactions
    df.to_csv(tmp_path / "syn.csv", index=False)
    info = data_info(tmp_path / "syn.csv")
    assert json.loads(json.dumps(info)) == info
    split = load_split(tmp_path / "syn.csv")
    assert info["num_users"] == 20 and info["num_interactions"] == len(df)
    assert info["sequential"]["num_train"] == split.summary()["num_train"]
    assert info["ctr"]["num_train"] + info["ctr"]["num_valid"] + info["ctr"]["num_test"] == len(df)
    assert info["ctr"]["num_test"] == 20 and info["fingerprint"] == split.fingerprint


@pytest.mark.real_assets
def test_real_movielens_100k():
    split = load_split("movielens-100k")
    s = split.summary()
    assert (s["num_interactions"], s["num_users"], s["num_items"]) == (100_000, 943, 1_682)
    assert s["num_train"] == 100_000 - 3 * 943 and s["num_valid"] == s["num_test"] == 943
    assert split.item_text[0] == "Toy Story (1995). Genres: Animation, Children's, Comedy"
    assert set(split.users.columns) >= {"age", "gender", "occupation", "zip_code"}
    assert split.items["genres"].map(len).sum() == 2_893 and split.items["year"].isna().sum() == 1
    # methods.md: in 415 users the test item shares its timestamp with the item before it
    assert sum(int(t[-1] == t[-2]) for t in split.timestamps) == 415
    info = data_info("movielens-100k")
    per_user_test = [max(1, round(0.1 * len(seq))) for seq in split.sequences]  # last 10%, at least one
    assert info["ctr"]["num_test"] == sum(per_user_test) == info["ctr"]["num_valid"]
    assert info["ctr"]["num_train"] == 100_000 - 2 * sum(per_user_test)


def test_cold_targets_are_counted_and_logged(caplog):
    import logging

    import pandas as pd

    from recdistill.data import Interactions, build_sequential_split

    # user 0 ends on item 9 (never seen in anyone's training part); user 1 never sees item 9 at all
    frame = pd.DataFrame({"user_id": [0, 0, 0, 0, 1, 1, 1, 1], "item_id": [1, 2, 3, 9, 2, 3, 1, 2],
                          "timestamp": [1, 2, 3, 4, 1, 2, 3, 4]})
    with caplog.at_level(logging.INFO, logger="recdistill.data"):
        split = build_sequential_split(Interactions("cold", frame))
    assert split.cold_targets("test") == 1 and split.cold_targets("valid") == 0
    assert split.summary()["cold_test_targets"] == 1
    assert any("never seen in training" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("text, expected", [
    ("uid,iid,ts\n1,2,3\n1,3,4\n2,3,5\n", "no user has at least 3 interactions"),
    ("user_id,item_id,timestamp,rating\n1,2,3,4\n1,3,4,\n1,4,5,3\n", "1 events without a rating"),
])
def test_data_errors_are_one_line_on_the_command_line(tmp_path, capsys, text, expected):
    from recdistill.cli import main

    (tmp_path / "d.csv").write_text(text)
    argv = ["data", "info", str(tmp_path / "d.csv"), "--column-map", '{"user": "uid", "item": "iid", "timestamp": "ts"}']
    assert main(argv if text.startswith("uid") else argv[:3]) == 2  # was: a ValueError traceback
    err = capsys.readouterr().err.strip()
    assert expected in err and "\n" not in err and "Traceback" not in err


def test_split_errors_are_user_errors():
    from recdistill.errors import user_message

    for call in (lambda: build_sequential_split(make([(1, 10, 1)]), min_interactions=2),
                 lambda: build_sequential_split(make([(1, 10, 1)]))):
        with pytest.raises(ValueError) as err:
            call()
        assert user_message(err.value) is not None
