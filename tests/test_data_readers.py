"""Readers: each on-disk format, written tiny into tmp_path, loads to the same Interactions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recdistill.data import DataFormatError, build_sequential_split, detect_format, load_dataset, load_interactions
from recdistill.data.columns import ML100K_GENRES

# user, item, rating, timestamp (row order matters: user 1 has a timestamp tie)
ROWS = [
    (1, 10, 5, 100), (1, 20, 3, 200), (2, 10, 4, 150), (1, 30, 4, 200), (2, 30, 2, 160),
    (3, 20, 5, 50), (2, 40, 5, 170), (3, 10, 1, 60), (3, 40, 4, 70), (1, 40, 1, 300),
]
MOVIES = {10: ("Toy Story", 1995, ["Animation", "Comedy"]), 20: ("Heat", 1995, ["Action"]),
          30: ("Fargo", 1996, ["Crime", "Drama"]), 40: ("Alien", 1979, ["Horror", "Sci-Fi"])}
USERS = {1: (24, "M", "technician", "85711"), 2: (53, "F", "other", "94043"), 3: (23, "M", "writer", "32067")}


def write_ml100k(root: Path) -> Path:
    folder = root / "ml-100k"
    folder.mkdir()
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ROWS))
    lines = []
    for i, (title, year, genres) in MOVIES.items():
        flags = "|".join("1" if g in genres else "0" for g in ML100K_GENRES)
        lines.append(f"{i}|{title} ({year})|01-Jan-{year}||http://x|{flags}\n")
    (folder / "u.item").write_bytes("".join(lines).encode("latin-1"))
    (folder / "u.user").write_text("".join(f"{u}|{a}|{g}|{o}|{z}\n" for u, (a, g, o, z) in USERS.items()))
    return folder


def write_ml1m(root: Path) -> Path:
    folder = root / "ml-1m"
    folder.mkdir()
    (folder / "ratings.dat").write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in ROWS))
    (folder / "movies.dat").write_bytes("".join(
        f"{i}::{t} ({y})::{'|'.join(g)}\n" for i, (t, y, g) in MOVIES.items()).encode("latin-1"))
    (folder / "users.dat").write_text("".join(f"{u}::{g}::{a}::{o}::{z}\n" for u, (a, g, o, z) in USERS.items()))
    return folder


def write_recbole(root: Path) -> Path:
    folder = root / "tiny"
    folder.mkdir()
    header = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    (folder / "tiny.inter").write_text(header + "".join(f"{u}\t{i}\t{r}\t{t}.0\n" for u, i, r, t in ROWS))
    item_header = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    (folder / "tiny.item").write_text(item_header + "".join(
        f"{i}\t{t}\t{y}\t{' '.join(g)}\n" for i, (t, y, g) in MOVIES.items()))
    return folder


def frame() -> pd.DataFrame:
    df = pd.DataFrame(ROWS, columns=["uid", "iid", "stars", "ts"])
    df["name"] = [f"{MOVIES[i][0]} ({MOVIES[i][1]})" for i in df["iid"]]
    return df


CMAP = {"user": "uid", "item": "iid", "timestamp": "ts", "rating": "stars", "item_text": "name"}


def write_table(root: Path, kind: str) -> Path:
    path = root / f"events.{kind}"
    if kind == "parquet":
        frame().to_parquet(path)
    else:
        frame().to_csv(path, sep="," if kind == "csv" else "\t", index=False)
    return path


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, tuple[Path, dict]]:
    return {
        "ml-100k": (write_ml100k(tmp_path), {}),
        "ml-1m": (write_ml1m(tmp_path), {}),
        "recbole": (write_recbole(tmp_path), {}),
        "parquet": (write_table(tmp_path, "parquet"), {"column_map": CMAP}),
        "csv": (write_table(tmp_path, "csv"), {"column_map": CMAP}),
        "tsv": (write_table(tmp_path, "tsv"), {"column_map": CMAP}),
    }


@pytest.mark.parametrize("fmt", ["ml-100k", "ml-1m", "recbole", "parquet", "csv", "tsv"])
def test_every_format_is_detected_and_agrees(sources, fmt):
    path, kw = sources[fmt]
    assert detect_format(path) == fmt
    data = load_interactions(path, **kw)
    expected = pd.DataFrame(ROWS, columns=["user_id", "item_id", "rating", "timestamp"])
    got = data.interactions
    assert list(got.columns[:3]) == ["user_id", "item_id", "timestamp"]
    for col in ("user_id", "item_id", "timestamp"):
        assert got[col].dtype == np.int64, col
        np.testing.assert_array_equal(got[col].to_numpy(), expected[col].to_numpy())
    np.testing.assert_allclose(got["rating"].to_numpy(), expected["rating"].to_numpy())
    ref = build_sequential_split(load_interactions(*[sources["ml-100k"][0]]))
    split = build_sequential_split(data)
    np.testing.assert_array_equal(split.item_ids, ref.item_ids)
    for a, b in zip(split.sequences, ref.sequences):
        np.testing.assert_array_equal(a, b)


def test_item_side_info_agrees_across_movielens_and_recbole(sources):
    texts = {}
    for fmt in ("ml-100k", "ml-1m", "recbole"):
        data = load_interactions(sources[fmt][0])
        items = data.items.set_index("item_id")
        assert items.loc[30, "year"] == 1996
        assert list(items.loc[30, "genres"]) == ["Crime", "Drama"]
        texts[fmt] = build_sequential_split(data).item_text
    assert texts["ml-100k"] == texts["ml-1m"] == texts["recbole"]
    assert texts["ml-100k"][0] == "Toy Story (1995). Genres: Animation, Comedy"
    # a table with only item text still gets the year parsed from the title
    table = load_interactions(sources["csv"][0], column_map=CMAP)
    assert build_sequential_split(table).item_text[2] == "Fargo (1996)"


def test_user_features_are_read(sources):
    for fmt in ("ml-100k", "ml-1m"):
        users = load_interactions(sources[fmt][0]).users.set_index("user_id")
        assert users.loc[2, "gender"] == "F" and users.loc[2, "occupation"] == "other"
        assert users.loc[1, "zip_code"] == "85711" and users.loc[3, "age"] == 23


def test_recbole_accepts_stem_and_inter_file(sources):
    folder = sources["recbole"][0]
    for path in (folder / "tiny", folder / "tiny.inter"):
        assert detect_format(path) == "recbole"
        assert len(load_interactions(path).interactions) == len(ROWS)


def test_default_column_names_need_no_map(tmp_path):
    df = pd.DataFrame(ROWS, columns=["user_id", "item_id", "rating", "timestamp"])
    df.to_csv(tmp_path / "plain.csv", index=False)
    data = load_dataset(tmp_path / "plain.csv")
    assert len(data.interactions) == len(ROWS) and "rating" in data.interactions


def test_string_ids_and_date_timestamps(tmp_path):
    df = pd.DataFrame({"u": ["bob", "amy", "bob"], "i": ["x", "y", "z"],
                       "when": ["2024-01-02", "2024-01-01", "2024-01-01"]})
    df.to_csv(tmp_path / "s.csv", index=False)
    data = load_interactions(tmp_path / "s.csv", column_map={"user": "u", "item": "i", "timestamp": "when"})
    assert data.interactions["user_id"].tolist() == ["bob", "amy", "bob"]
    ts = data.interactions["timestamp"].to_numpy()
    assert ts[0] - ts[1] == 86400 and ts[1] == ts[2]


def test_missing_path_names_the_path(tmp_path):
    with pytest.raises(DataFormatError, match="nowhere.csv.*not found"):
        load_interactions(tmp_path / "nowhere.csv")


def test_missing_mapped_column_is_named_with_available_columns(sources):
    path, _ = sources["csv"]
    with pytest.raises(DataFormatError) as err:
        load_interactions(path, column_map={"user": "uid", "item": "item_code", "timestamp": "ts"})
    msg = str(err.value)
    assert "'item_code'" in msg and "events.csv" in msg and "'iid'" in msg and "column_map" in msg


def test_missing_required_column_without_map(tmp_path):
    pd.DataFrame({"uid": [1], "thing": [2]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataFormatError, match=r"missing required column\(s\) for item.*'thing'"):
        load_interactions(tmp_path / "bad.csv")


def test_unknown_format_and_undetectable_file(tmp_path, sources):
    with pytest.raises(DataFormatError, match="unknown data format 'xml'"):
        load_interactions(sources["csv"][0], format="xml")
    (tmp_path / "data.bin").write_bytes(b"\x00")
    with pytest.raises(DataFormatError, match="pass format="):
        load_interactions(tmp_path / "data.bin")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataFormatError, match="u.data"):
        load_interactions(empty)


def test_unknown_column_map_key(sources):
    with pytest.raises(DataFormatError, match="'usr'"):
        load_interactions(sources["csv"][0], column_map={"usr": "uid"})


def test_explicit_sep(tmp_path):
    (tmp_path / "semi.csv").write_text("user_id;item_id;timestamp\n1;2;3\n1;3;4\n")
    data = load_interactions(tmp_path / "semi.csv", sep=";")
    assert data.interactions["item_id"].tolist() == [2, 3]


@pytest.mark.real_assets
def test_raw_ml100k_folder_matches_the_cached_asset(tmp_path):
    asset = load_interactions("movielens-100k")
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    inter = asset.interactions
    inter[["user_id", "item_id", "rating", "timestamp"]].astype({"rating": int}).to_csv(
        folder / "u.data", sep="\t", header=False, index=False)
    items = asset.items
    flags = np.array([[int(g in set(gs)) for g in ML100K_GENRES] for gs in items["genres"]])
    dates = ["" if np.isnan(y) else f"01-Jan-{int(y)}" for y in items["year"]]
    lines = [f"{i}|{t}|{d}||url|{'|'.join(map(str, f))}\n" for i, t, d, f in zip(items["item_id"], items["title"], dates, flags)]
    (folder / "u.item").write_bytes("".join(lines).encode("latin-1"))
    raw = load_interactions(folder)
    pd.testing.assert_frame_equal(raw.interactions, asset.interactions)
    a, b = build_sequential_split(asset), build_sequential_split(raw)
    assert a.item_text == b.item_text and len(a.item_text) == 1682
    assert all(np.array_equal(x, y) for x, y in zip(a.sequences, b.sequences))


def test_table_without_timestamp_uses_row_order_and_warns(tmp_path, caplog):
    pd.DataFrame({"user_id": [1, 1, 2], "item_id": [3, 4, 5]}).to_csv(tmp_path / "nots.csv", index=False)
    with caplog.at_level("WARNING"):
        data = load_interactions(tmp_path / "nots.csv")
    assert data.interactions["timestamp"].tolist() == [0, 1, 2]
    assert "no timestamp column" in caplog.text


def test_reading_data_does_not_import_lightning():
    import subprocess
    import sys

    code = ("import sys; from recdistill.data import load_split, data_info, synthetic_interactions; "
            "print('lightning' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_ids_with_leading_zeros_stay_text(tmp_path):
    (tmp_path / "z.csv").write_text("user_id,item_id,timestamp\n7,0012,1\n7,012,2\n7,12,3\n")
    data = load_interactions(tmp_path / "z.csv", column_map={"item": "item_id"})
    assert data.interactions["item_id"].tolist() == ["0012", "012", "12"]
    assert data.interactions["user_id"].tolist() == [7, 7, 7]


def test_timezone_aware_datetimes(tmp_path):
    df = pd.DataFrame({"user_id": [1, 1], "item_id": [1, 2],
                       "timestamp": pd.to_datetime(["2024-01-01 01:00", "2024-01-01 02:00"]).tz_localize("Europe/Paris")})
    df.to_parquet(tmp_path / "tz.parquet")
    ts = load_interactions(tmp_path / "tz.parquet").interactions["timestamp"].tolist()
    assert ts == [1704067200, 1704070800]  # 00:00 and 01:00 UTC


@pytest.mark.parametrize("column_map, both", [
    ({"user": "user_id", "item": "user_id"}, "'user_id' to both user and item"),  # explicit, twice
    ({"item": "item_id", "timestamp": "item_id"}, "'item_id' to both item and timestamp"),
    ({"user": "user_id", "user_id": "item_id"}, "gives user twice"),  # a key and its alias disagree
])
def test_one_column_for_two_keys_is_refused(tmp_path, column_map, both):
    pd.DataFrame(ROWS, columns=["user_id", "item_id", "rating", "timestamp"]).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataFormatError, match=both):  # was: loaded, user == item or timestamp == item
        load_interactions(tmp_path / "t.csv", column_map=column_map)


def test_a_default_name_never_reuses_a_mapped_column(tmp_path):
    # 'timestamp' is mapped to the item column: the item must not silently default to the same column
    pd.DataFrame(ROWS, columns=["user_id", "item_id", "rating", "timestamp"]).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataFormatError, match=r"missing required column\(s\) for item"):
        load_interactions(tmp_path / "t.csv", column_map={"timestamp": "item_id"})
    # a column that names the item may still give its text
    pd.DataFrame({"user": [1, 1, 2], "title": ["A (1999)", "B", "A (1999)"], "ts": [1, 2, 3]}).to_csv(
        tmp_path / "titles.csv", index=False)
    data = load_interactions(tmp_path / "titles.csv", column_map={"item": "title", "timestamp": "ts"})
    assert data.interactions["item_id"].tolist() == ["A (1999)", "B", "A (1999)"]
    assert data.items["title"].tolist() == ["A (1999)", "B"]
