"""SequentialDataModule / CTRDataModule: batch formats, padding, history, no leakage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from recdistill.data import (
    CTRDataModule,
    EXAMPLE_STRIDE,
    Interactions,
    SequentialDataModule,
    build_sequential_split,
    split_example_id,
    synthetic_interactions,
)


@pytest.fixture(scope="module")
def split():
    return build_sequential_split(synthetic_interactions(40, 30, mean_length=9, seed=7))


def tiny_split():
    # user 0: 7 events, user 1: 3 events (no training row), user 2: 4 events
    rows = [(0, i, i) for i in [5, 6, 7, 8, 9, 10, 11]] + [(1, i, i) for i in [5, 6, 7]] + \
           [(2, i, i) for i in [8, 9, 10, 11]]
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    df["timestamp"] = np.arange(len(df))
    df["rating"] = [5, 1, 4, 3, 5, 2, 4, 4, 4, 1, 2, 5, 3, 4]
    return build_sequential_split(Interactions("tiny", df))


def test_sizes_exist_right_after_construction(split):
    dm = SequentialDataModule.from_split(split, max_len=6)
    assert dm.num_items == split.num_items == 30 and dm.num_users == 40
    assert dm.fingerprint == split.fingerprint and dm.dataset == split.name


def test_train_batch_is_left_padded_and_shifted():
    dm = SequentialDataModule.from_split(tiny_split(), max_len=5, batch_size=8)
    batch = next(iter(dm.dataloader("train")))
    assert set(batch) == {"input_ids", "labels", "example_ids", "user"}
    assert batch["input_ids"].dtype == batch["labels"].dtype == batch["user"].dtype == torch.long
    assert batch["user"].tolist() == [0, 2]  # user 1's training part has a single item: no row
    # user 0: seq = 1..7, train part 1..5 -> input 1..4, labels 2..5
    assert batch["input_ids"][0].tolist() == [0, 1, 2, 3, 4]
    assert batch["labels"][0].tolist() == [0, 2, 3, 4, 5]
    # user 2: seq = items 8,9,10,11 -> indices 4..7; train part [4, 5] -> input [4], label [5]
    assert batch["input_ids"][1].tolist() == [0, 0, 0, 0, 4]
    assert batch["labels"][1].tolist() == [0, 0, 0, 0, 5]
    stride = EXAMPLE_STRIDE
    assert batch["example_ids"][0].tolist() == [0, 1, 2, 3, 4]  # user 0, target positions 1..4
    assert batch["example_ids"][1].tolist() == [0, 0, 0, 0, 2 * stride + 1]


def test_train_truncation_keeps_most_recent(split):
    dm = SequentialDataModule.from_split(split, max_len=3, batch_size=1000)
    batch = next(iter(dm.dataloader("train")))
    for row, user in enumerate(batch["user"].tolist()):
        train = split.train_sequence(user)
        assert batch["input_ids"][row].tolist()[-min(3, len(train) - 1):] == train[:-1][-3:].tolist()
        assert batch["labels"][row].tolist()[-min(3, len(train) - 1):] == train[1:][-3:].tolist()
    n_labels = int((batch["labels"] > 0).sum())
    assert n_labels <= split.summary()["num_train"]
    # every label's example id names a train target holding exactly that item
    ids = batch["example_ids"][batch["labels"] > 0].numpy()
    assert set(ids) <= set(split.example_ids("train").tolist())
    users, pos = split_example_id(ids)
    got = np.array([split.sequences[u][p] for u, p in zip(users, pos)])
    np.testing.assert_array_equal(got, batch["labels"][batch["labels"] > 0].numpy())


def test_train_labels_cover_every_train_target_when_long_enough(split):
    dm = SequentialDataModule.from_split(split, max_len=500, batch_size=7)
    ids = torch.cat([b["example_ids"][b["labels"] > 0] for b in dm.train_dataloader()])
    assert sorted(ids.tolist()) == split.example_ids("train").tolist()


def test_all_windows_cover_every_train_target_once_with_short_windows(split):
    dm = SequentialDataModule.from_split(split, max_len=3, batch_size=1000, train_windows="all")
    batch = next(iter(dm.dataloader("train")))
    ids = batch["example_ids"][batch["labels"] > 0]
    assert sorted(ids.tolist()) == split.example_ids("train").tolist()  # each label exactly once
    users, pos = split_example_id(ids.numpy())
    labels = batch["labels"][batch["labels"] > 0].numpy()
    np.testing.assert_array_equal(labels, [split.sequences[u][p] for u, p in zip(users, pos)])
    # every labelled position's input is the item right before its label, in the same sequence
    inputs = batch["input_ids"][batch["labels"] > 0].numpy()
    np.testing.assert_array_equal(inputs, [split.sequences[u][p - 1] for u, p in zip(users, pos)])
    # windows are at most max_len long and a user's last window equals the "last" mode row
    last = next(iter(SequentialDataModule.from_split(split, max_len=3, batch_size=1000).dataloader("train")))
    assert len(batch["user"]) > len(last["user"])
    for row, user in enumerate(last["user"].tolist()):
        rows = (batch["user"] == user).nonzero().flatten()
        final = rows[batch["example_ids"][rows].amax(1).argmax()]
        assert torch.equal(batch["input_ids"][final], last["input_ids"][row])
        assert torch.equal(batch["labels"][final], last["labels"][row])


def test_unknown_train_windows_is_named(split):
    with pytest.raises(ValueError, match="train_windows"):
        SequentialDataModule.from_split(split, max_len=3, train_windows="random")


def test_eval_batches_history_and_targets(split):
    dm = SequentialDataModule.from_split(split, max_len=4, eval_batch_size=16)
    for name, cut in (("valid", 2), ("test", 1)):
        seen = 0
        for batch in dm.dataloader(name):
            assert set(batch) == {"input_ids", "target", "history", "user", "example_id"}
            assert batch["history"].shape[1] == int((batch["history"] > 0).sum(1).max())
            for row, user in enumerate(batch["user"].tolist()):
                seq = split.sequences[user]
                assert batch["target"][row] == seq[-cut]
                hist = batch["history"][row]
                assert hist[hist > 0].tolist() == seq[:-cut].tolist()  # exactly the earlier items
                assert (hist[: len(hist) - (len(seq) - cut)] == 0).all()  # left-padded
                assert batch["input_ids"][row].tolist()[-4:] == ([0] * 4 + seq[:-cut].tolist())[-4:]
                assert batch["example_id"][row] == user * EXAMPLE_STRIDE + len(seq) - cut
                seen += 1
        assert seen == split.num_users
    predict = next(iter(dm.predict_dataloader()))
    test = next(iter(dm.test_dataloader()))
    assert torch.equal(predict["target"], test["target"])
    assert torch.equal(next(iter(dm.val_dataloader()))["target"], next(iter(dm.dataloader("val")))["target"])


def test_shuffle_is_seeded(split):
    def order(seed):
        dm = SequentialDataModule.from_split(split, batch_size=8, seed=seed)
        return torch.cat([b["user"] for b in dm.train_dataloader()]).tolist()

    assert order(1) == order(1)
    assert order(1) != order(2)
    assert sorted(order(1)) == sorted(set(order(1)))  # each user at most once


def test_unknown_split_name(split):
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        SequentialDataModule.from_split(split).dataloader("dev")


def test_loads_from_a_file(tmp_path):
    synthetic_interactions(15, 12, mean_length=6, seed=2).interactions.to_parquet(tmp_path / "s.parquet")
    dm = SequentialDataModule(dataset=str(tmp_path / "s.parquet"), max_len=8)
    assert dm.num_users == 15 and dm.num_items <= 12
    assert next(iter(dm.val_dataloader()))["input_ids"].shape[1] == 8


# ------------------------------------------------------------------ CTR


def test_ctr_contract_and_split_positions():
    sp = tiny_split()
    dm = CTRDataModule.from_split(sp, history_len=3, batch_size=64, eval_batch_size=64)
    assert dm.num_items == sp.num_items and dm.history_len == 3
    assert dm.feature_names[0] == "user" and "item" in dm.feature_names
    assert len(dm.field_dims) == len(dm.feature_names) == 2  # no side tables: user and item only
    sizes = {}
    for name in ("train", "valid", "test"):
        batch = next(iter(dm.dataloader(name)))
        b = len(batch["label"])
        sizes[name] = b
        assert batch["sparse"].shape == (b, len(dm.field_dims)) and batch["sparse"].dtype == torch.long
        assert batch["dense"].shape == (b, dm.dense_dim) and batch["dense"].dtype == torch.float32
        assert batch["history"].shape == (b, 3) and batch["label"].dtype == torch.float32
        users, pos = split_example_id(batch["example_id"].numpy())
        lengths = sp.lengths[users]
        if name == "test":
            assert (pos == lengths - 1).all()
        elif name == "valid":
            assert (pos == lengths - 2).all()
        else:
            assert (pos < lengths - 2).all()
        ratings = np.array([sp.ratings[u][p] for u, p in zip(users, pos)])
        np.testing.assert_array_equal(batch["label"].numpy(), (ratings >= 4).astype(np.float32))
    assert sizes == {"train": 14 - 6, "valid": 3, "test": 3}


def test_ctr_history_holds_only_earlier_events(split):
    dm = CTRDataModule.from_split(split, history_len=4, batch_size=10_000, eval_batch_size=10_000)
    for name in ("train", "valid", "test"):
        batch = next(iter(dm.dataloader(name)))
        users, pos = split_example_id(batch["example_id"].numpy())
        for row, (u, p) in enumerate(zip(users, pos)):
            seq = split.sequences[u]
            hist = batch["history"][row]
            expect = seq[max(0, p - 4):p].tolist()  # strictly before position p
            assert hist[hist > 0].tolist() == expect
            assert hist.tolist()[: 4 - len(expect)] == [0] * (4 - len(expect))
            assert batch["item"][row] == seq[p] and batch["sparse"][row, dm.feature_names.index("item")] == seq[p]
            assert split.timestamps[u][:p].max(initial=-1) <= split.timestamps[u][p]


def test_ctr_fields_are_in_range_and_unknowns_map_to_zero():
    data = synthetic_interactions(30, 20, mean_length=6, seed=4)
    data.users = data.users.iloc[1:]  # user 1 has no side features
    data.items.loc[0, "year"] = np.nan
    sp = build_sequential_split(data)
    dm = CTRDataModule.from_split(sp, rating_threshold=3.5, batch_size=10_000)
    assert dm.feature_names == ["user", "gender", "age_bucket", "occupation", "zip_prefix",
                                "item", "decade", "first_genre"]
    assert dm.dense_names[0] == "year_norm" and dm.dense_names[-1] == "history_length"
    batch = next(iter(dm.train_dataloader()))
    sparse = batch["sparse"]
    assert (sparse >= 0).all()
    assert (sparse < torch.tensor(dm.field_dims)).all()
    u0 = batch["user"] == 0
    assert u0.any() and (sparse[u0][:, 1:5] == 0).all()  # unknown user features -> 0
    assert (sparse[~u0][:, 1:5] > 0).all()
    assert torch.isfinite(batch["dense"]).all()


def test_ctr_needs_ratings():
    sp = build_sequential_split(synthetic_interactions(5, 10, ratings=False))
    with pytest.raises(ValueError, match="no ratings"):
        CTRDataModule.from_split(sp)


def test_constructor_signatures_work_with_jsonargparse(tmp_path):
    jsonargparse = pytest.importorskip("jsonargparse")
    synthetic_interactions(12, 10, mean_length=5, seed=3).interactions.to_csv(tmp_path / "e.csv", index=False)
    parser = jsonargparse.ArgumentParser()
    parser.add_class_arguments(SequentialDataModule, "data")
    parser.add_class_arguments(CTRDataModule, "ctr")
    cfg = parser.parse_args([f"--data.dataset={tmp_path / 'e.csv'}", "--data.max_len=7",
                             '--data.column_map={"user": "user_id"}', f"--ctr.dataset={tmp_path / 'e.csv'}",
                             "--ctr.rating_threshold=3"])
    init = parser.instantiate_classes(cfg)
    assert init.data.max_len == 7 and init.data.num_users == 12 and init.data.column_map == {"user": "user_id"}
    assert init.ctr.rating_threshold == 3 and init.ctr.num_items == init.data.num_items


def test_ctr_split_takes_the_last_fractions_of_each_user_in_time_order():
    import numpy as np

    from recdistill.data import build_sequential_split, synthetic_interactions
    from recdistill.data.ctr import ctr_examples

    split = build_sequential_split(synthetic_interactions(num_users=30, num_items=20, mean_length=25, seed=4))
    parts = ctr_examples(split, valid_fraction=0.2, test_fraction=0.1)
    for user, seq in enumerate(split.sequences):
        n = len(seq)
        n_test, n_valid = max(1, round(0.1 * n)), max(1, round(0.2 * n))
        got = {name: sorted(part.pos[part.user == user].tolist()) for name, part in parts.items()}
        assert got["test"] == list(range(n - n_test, n))
        assert got["valid"] == list(range(n - n_test - n_valid, n - n_test))
        assert got["train"] == list(range(0, n - n_test - n_valid))
    assert np.all([len(p) for p in parts.values()])
