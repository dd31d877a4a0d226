"""MovieLens readers: the cached 100K asset and the raw ml-100k / ml-1m folders."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pandas as pd

from recdistill.data.columns import (
    ML100K_GENRES,
    USER_FEATURES,
    interactions_frame,
    normalise_ids,
    users_frame,
    year_from_title,
)
from recdistill.data.schema import Interactions


def read_movielens_asset() -> Interactions:
    """The three checksummed MovieLens-100K parquet files from the asset cache."""
    from recdistill.assets import asset_paths

    paths = asset_paths("movielens-100k")
    inter = pd.read_parquet(paths["MovieLens100k_data.parquet.brotli"])
    items = pd.read_parquet(paths["MovieLens100k_items.parquet.brotli"])
    users = pd.read_parquet(paths["MovieLens100k_users.parquet.brotli"])
    return Interactions(
        name="movielens-100k",
        interactions=interactions_frame(inter, "user_id", "movie_id", "timestamp", "rating", "MovieLens100k_data"),
        items=_ml100k_items(items.rename(columns={"movie_id": "item_id", "movie_title": "title"})),
        users=users_frame(users),
        source="asset:movielens-100k",
    )


def read_ml100k(folder: Path) -> Interactions:
    """``u.data`` (tab separated) + optional ``u.item`` (pipe, latin-1, 19 genre flags) and ``u.user``."""
    inter = pd.read_csv(folder / "u.data", sep="\t", header=None, names=["user_id", "item_id", "rating", "timestamp"])
    items = users = None
    if (folder / "u.item").exists():
        cols = ["item_id", "title", "release_date", "video_release_date", "url", *ML100K_GENRES]
        items = pd.read_csv(folder / "u.item", sep="|", header=None, names=cols, encoding="latin-1")
        items = _ml100k_items(items)
    if (folder / "u.user").exists():
        users = pd.read_csv(folder / "u.user", sep="|", header=None, names=["user_id", *USER_FEATURES],
                            dtype={"zip_code": str})
        users = users_frame(users)
    return Interactions(folder.name, interactions_frame(inter, "user_id", "item_id", "timestamp", "rating", "u.data"),
                        items, users, str(folder))


def _ml100k_items(items: pd.DataFrame) -> pd.DataFrame:
    flags = items[ML100K_GENRES].to_numpy().astype(bool)
    names = np.array(ML100K_GENRES, dtype=object)
    years = pd.to_datetime(items["release_date"], format="%d-%b-%Y", errors="coerce").dt.year.astype(float)
    return pd.DataFrame({
        "item_id": normalise_ids(items["item_id"]),
        "title": items["title"].astype(str).to_numpy(),
        "year": years.to_numpy(),
        "genres": [list(names[row]) for row in flags],
    })


def read_ml1m(folder: Path) -> Interactions:
    """``ratings.dat`` + optional ``movies.dat`` / ``users.dat`` (``::`` separated, latin-1)."""
    def read(name: str, cols: list[str], **kw) -> pd.DataFrame:
        # "::" -> tab lets the fast C parser read it (no field contains a tab)
        text = (folder / name).read_bytes().replace(b"::", b"\t")
        return pd.read_csv(io.BytesIO(text), sep="\t", header=None, names=cols, encoding="latin-1",
                           quoting=csv.QUOTE_NONE, **kw)

    inter = read("ratings.dat", ["user_id", "item_id", "rating", "timestamp"])
    items = users = None
    if (folder / "movies.dat").exists():
        movies = read("movies.dat", ["item_id", "title", "genres"])
        items = pd.DataFrame({
            "item_id": normalise_ids(movies["item_id"]),
            "title": movies["title"].astype(str).to_numpy(),
            "year": year_from_title(movies["title"]),
            "genres": [g.split("|") if isinstance(g, str) and g else [] for g in movies["genres"]],
        })
    if (folder / "users.dat").exists():
        users = users_frame(read("users.dat", ["user_id", "gender", "age", "occupation", "zip_code"],
                                  dtype={"zip_code": str}))
    return Interactions(folder.name, interactions_frame(inter, "user_id", "item_id", "timestamp", "rating",
                                                         "ratings.dat"), items, users, str(folder))
