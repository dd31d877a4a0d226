"""Interactions -> :class:`SequentialSplit`: indexing, chronological order, leave-one-out.

Order: each user's events are sorted by timestamp with a *stable* sort, so events with equal
timestamps keep the file's original row order (on MovieLens-100K this decides the test item of
hundreds of users). Users are indexed ``0..U-1`` by sorted raw id and items ``1..N`` by sorted
raw id; the item vocabulary holds the items that occur in the kept users' interactions.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from recdistill.data.columns import DataFormatError
from recdistill.data.readers import load_interactions
from recdistill.data.schema import EXAMPLE_STRIDE, Interactions, SequentialSplit
from recdistill.errors import ConfigError

log = logging.getLogger(__name__)

MIN_LEAVE_ONE_OUT = 3


def build_sequential_split(data: Interactions, *, min_interactions: int = 3) -> SequentialSplit:
    """Index, order and split ``data``; users with < ``min_interactions`` events are dropped (logged)."""
    if min_interactions < MIN_LEAVE_ONE_OUT:
        raise ConfigError(f"min_interactions={min_interactions} is too small: leave-one-out needs at least "
                          f"{MIN_LEAVE_ONE_OUT} interactions per user (train, valid and test); use >= 3")
    df = data.interactions
    missing = [c for c in ("user_id", "item_id", "timestamp") if c not in df.columns]
    if missing:
        raise DataFormatError(f"{data.name}: interactions lack column(s) {missing} (have {list(df.columns)}); "
                              f"load data with recdistill.data.load_interactions or rename the columns")
    user_codes, user_uniques = pd.factorize(df["user_id"], sort=True)
    counts = np.bincount(user_codes, minlength=len(user_uniques))
    keep_user = counts >= min_interactions
    filtering_log: list[str] = []
    if not keep_user.all():
        dropped = np.asarray(user_uniques)[~keep_user]
        msg = (f"dropped {len(dropped)} of {len(user_uniques)} users with fewer than {min_interactions} "
               f"interactions ({int(counts[~keep_user].sum())} interactions), e.g. user ids "
               f"{[_plain(u) for u in dropped[:5]]}")
        log.warning("%s: %s", data.name, msg)
        filtering_log.append(msg)
    if not keep_user.any():
        raise DataFormatError(f"{data.name}: no user has at least {min_interactions} interactions; nothing to split")
    rows = np.flatnonzero(keep_user[user_codes])
    sub = df.iloc[rows]
    user_idx, user_ids = pd.factorize(sub["user_id"], sort=True)
    item_idx, item_ids = pd.factorize(sub["item_id"], sort=True)
    timestamps = sub["timestamp"].to_numpy(np.int64)
    order = np.lexsort((timestamps, user_idx))  # lexsort is stable: ties keep original row order
    lengths = np.bincount(user_idx, minlength=len(user_ids))
    if lengths.max() >= EXAMPLE_STRIDE:
        raise DataFormatError(f"{data.name}: a user has {lengths.max()} interactions; example ids support "
                              f"< {EXAMPLE_STRIDE}")
    bounds = np.cumsum(lengths)[:-1]
    flat_items = item_idx[order].astype(np.int64) + 1
    sequences = np.split(flat_items, bounds)
    per_ts = np.split(timestamps[order], bounds)
    per_rating = np.split(sub["rating"].to_numpy(float)[order], bounds) if "rating" in sub.columns else None
    item_ids = np.asarray(item_ids)
    user_ids = np.asarray(user_ids)
    items = _align(data.items, "item_id", item_ids)
    users = _align(data.users, "user_id", user_ids)
    result = SequentialSplit(
        name=data.name,
        user_ids=user_ids,
        item_ids=item_ids,
        sequences=sequences,
        item_text=item_texts(item_ids, items),
        fingerprint=fingerprint(data.name, item_ids, lengths, flat_items),
        items=items,
        users=users,
        filtering_log=filtering_log,
        timestamps=per_ts,
        ratings=per_rating,
    )
    for which in ("valid", "test"):
        cold = result.cold_targets(which)
        if cold:
            msg = (f"{cold} {which} targets are items never seen in training; they are kept in the "
                   f"catalogue and ranked like any other item (reported as cold_{which}_targets)")
            log.info("%s: %s", data.name, msg)
    return result


def load_split(source: str | Path = "movielens-100k", *, min_interactions: int = 3, **reader_kwargs) -> SequentialSplit:
    """``load_interactions`` then ``build_sequential_split``."""
    return build_sequential_split(load_interactions(source, **reader_kwargs), min_interactions=min_interactions)


def data_info(source: str | Path = "movielens-100k", *, min_interactions: int = 3,
              rating_threshold: float = 4.0, **reader_kwargs) -> dict:
    """Sizes of the dataset and of the sequential and CTR splits (``recdistill data info --json``)."""
    from recdistill.data.ctr import ctr_summary

    split = load_split(source, min_interactions=min_interactions, **reader_kwargs)
    info = split.summary()
    info["sequential"] = {k: info[k] for k in ("num_train", "num_valid", "num_test")}
    info["ctr"] = ctr_summary(split, rating_threshold) if split.ratings is not None else None
    info["filtering_log"] = list(split.filtering_log)
    info["source"] = str(source)
    return info


def fingerprint(name: str, item_ids: np.ndarray, lengths: np.ndarray, flat_items: np.ndarray) -> str:
    """sha256 over the dataset name, the raw item vocabulary (in index order) and every sequence."""
    digest = hashlib.sha256()
    digest.update(name.encode())
    digest.update(b"\x00items\x00")
    digest.update("\x1f".join(str(_plain(i)) for i in item_ids).encode())
    digest.update(b"\x00lengths\x00")
    digest.update(np.ascontiguousarray(lengths, dtype="<i8").tobytes())
    digest.update(b"\x00sequences\x00")
    digest.update(np.ascontiguousarray(flat_items, dtype="<i8").tobytes())
    return digest.hexdigest()


def item_texts(item_ids: np.ndarray, items: pd.DataFrame | None) -> list[str]:
    """``"Title (year). Genres: a, b"`` per item; ``"Item <raw id>"`` when there is no title."""
    n = len(item_ids)
    titles = items["title"].tolist() if items is not None and "title" in items else [None] * n
    years = items["year"].tolist() if items is not None and "year" in items else [None] * n
    genres = items["genres"].tolist() if items is not None and "genres" in items else [None] * n
    out = []
    for raw, title, year, gen in zip(item_ids, titles, years, genres):
        text = title if isinstance(title, str) and title.strip() else f"Item {_plain(raw)}"
        if year is not None and year == year and f"({int(year)})" not in text:
            text = f"{text} ({int(year)})"
        if isinstance(gen, (list, tuple, np.ndarray)) and len(gen):
            text = f"{text}. Genres: {', '.join(map(str, gen))}"
        out.append(text)
    return out


def _align(table: pd.DataFrame | None, key: str, ids: np.ndarray) -> pd.DataFrame | None:
    """Rows of ``table`` reordered to ``ids`` (missing ids give NaN rows); ``key`` kept as a column."""
    if table is None:
        return None
    keys = table[key]
    if pd.api.types.is_integer_dtype(keys) != pd.api.types.is_integer_dtype(ids):  # e.g. int vs text ids
        table = table.assign(**{key: keys.astype(str)})
        ids_index = pd.Index(np.asarray(ids).astype(str), name=key)
    else:
        ids_index = pd.Index(ids, name=key)
    aligned = table.drop_duplicates(key).set_index(key).reindex(ids_index)
    aligned.index = pd.Index(ids, name=key)
    return aligned.reset_index()


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value
