"""Column handling shared by the readers: id normalisation, timestamps, column maps, errors."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
]
USER_FEATURES = ["age", "gender", "occupation", "zip_code"]
TABLE_FORMATS = ("parquet", "csv", "tsv")
FORMATS = ("movielens-100k", "ml-100k", "ml-1m", "recbole", *TABLE_FORMATS)
MAP_KEYS = ("user", "item", "timestamp", "rating", "item_text")
_DEFAULT_NAMES = {
    "user": ("user_id", "user", "uid", "userid", "user_idx"),
    "item": ("item_id", "item", "iid", "itemid", "movie_id", "movieid", "item_idx"),
    "timestamp": ("timestamp", "ts", "time", "datetime", "date", "unix_time"),
    "rating": ("rating", "ratings", "score", "stars"),
    "item_text": ("title", "item_text", "name", "movie_title"),
}


class DataFormatError(ValueError):
    """A data file is missing, malformed or lacks a needed column; the message names the fix."""


def resolve_columns(df: pd.DataFrame, column_map: dict[str, str] | None, filename: str,
                    required: tuple[str, ...]) -> dict[str, str]:
    """Map our keys to ``df``'s columns: explicit ``column_map`` first, then common names."""
    column_map = dict(column_map or {})
    for alias, key in (("user_id", "user"), ("item_id", "item")):
        if alias in column_map:
            if key in column_map and column_map[key] != column_map[alias]:
                raise DataFormatError(f"{filename}: column_map gives {key} twice ({key}: {column_map[key]!r}, "
                                      f"{alias}: {column_map[alias]!r}); keep one of them")
            column_map.setdefault(key, column_map.pop(alias))
    unknown = sorted(set(column_map) - set(MAP_KEYS))
    if unknown:
        raise DataFormatError(f"column_map keys {unknown} are not understood; use {', '.join(MAP_KEYS)}")
    missing = {k: v for k, v in column_map.items() if v not in df.columns}
    if missing:
        raise DataFormatError(
            f"{filename}: column(s) {', '.join(f'{v!r} (for {k})' for k, v in missing.items())} not found; "
            f"available columns: {list(df.columns)}. Fix column_map.")
    # One column feeds one of user/item/timestamp/rating (item_text may repeat one, e.g. items named by title):
    # reading the same column as two of them would mislabel it silently.
    taken: dict[str, str] = {}
    for key, column in column_map.items():
        if key != "item_text" and column in taken:
            raise DataFormatError(f"{filename}: column_map maps column {column!r} to both {taken[column]} and {key}; "
                                  f"map each of {', '.join(k for k in MAP_KEYS if k != 'item_text')} to its own column")
        if key != "item_text":
            taken[column] = key
    out = dict(column_map)
    for key, names in _DEFAULT_NAMES.items():
        if key not in out:
            found = next((c for c in df.columns if str(c).lower() in names
                          and (key == "item_text" or c not in taken)), None)
            if found is not None:
                out[key] = found
                if key != "item_text":
                    taken[found] = key
    absent = [k for k in required if k not in out]
    if absent:
        raise DataFormatError(
            f"{filename}: missing required column(s) for {', '.join(absent)}; available columns: "
            f"{list(df.columns)}. Pass column_map={{{', '.join(f'{k!r}: <column>' for k in absent)}}}.")
    return out


def interactions_frame(df: pd.DataFrame, user: str, item: str, timestamp: str | None, rating: str | None,
                       filename: str) -> pd.DataFrame:
    """Our interactions columns from ``df``'s; no timestamp column means file row order (logged)."""
    missing = [c for c in (user, item, timestamp, rating) if c is not None and c not in df.columns]
    if missing:
        raise DataFormatError(f"{filename}: missing column(s) {missing}; available columns: {list(df.columns)}")
    out = pd.DataFrame({"user_id": normalise_ids(df[user]), "item_id": normalise_ids(df[item])})
    if timestamp is None:
        log.warning("%s has no timestamp column: using the file's row order as time", filename)
        out["timestamp"] = np.arange(len(df), dtype=np.int64)
    else:
        out["timestamp"] = _to_int_timestamp(df[timestamp], filename)
    if rating is not None:
        out["rating"] = pd.to_numeric(df[rating], errors="coerce").to_numpy(float)
    bad = out["user_id"].isna() | out["item_id"].isna()
    if bad.any():
        raise DataFormatError(f"{filename}: {int(bad.sum())} rows have an empty user or item id (first at row "
                              f"{int(np.flatnonzero(bad.to_numpy())[0])}); clean the file")
    return out


def _to_int_timestamp(col: pd.Series, filename: str) -> np.ndarray:
    """Numbers are rounded to int64; dates become Unix seconds (UTC)."""
    if pd.api.types.is_datetime64_any_dtype(col):
        return _unix_seconds(col)
    num = pd.to_numeric(col, errors="coerce")
    if num.isna().any():
        parsed = pd.to_datetime(col, errors="coerce", utc=True)
        if parsed.isna().any():
            raise DataFormatError(f"{filename}: timestamp column {col.name!r} has values that are neither numbers "
                                  f"nor dates (e.g. {col[parsed.isna()].iloc[0]!r}); fix or map another column")
        return _unix_seconds(parsed)
    return np.round(num.to_numpy(float)).astype(np.int64)


def _unix_seconds(col: pd.Series) -> np.ndarray:
    if isinstance(col.dtype, pd.DatetimeTZDtype):
        col = col.dt.tz_convert("UTC").dt.tz_localize(None)
    return (col.astype("datetime64[ns]").astype("int64") // 10**9).to_numpy(np.int64)


def normalise_ids(col: pd.Series) -> pd.Series:
    """Integer-valued ids -> int64 (text too, unless a leading zero would be lost); anything else -> str."""
    col = pd.Series(col).reset_index(drop=True)
    if pd.api.types.is_integer_dtype(col):
        return col.astype(np.int64)
    if pd.api.types.is_float_dtype(col) and col.notna().all() and (col == np.floor(col)).all():
        return col.astype(np.int64)
    as_str = col.astype(str).str.strip()
    if col.notna().all() and as_str.str.fullmatch(r"-?(0|[1-9]\d{0,17})").all():
        return as_str.astype(np.int64)
    return col.where(col.isna(), as_str)


def users_frame(users: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({"user_id": normalise_ids(users["user_id"])})
    for col in USER_FEATURES:
        if col in users.columns:
            out[col] = users[col].to_numpy()
    if "age" in out:
        out["age"] = pd.to_numeric(out["age"], errors="coerce")
    if "zip_code" in out:
        out["zip_code"] = out["zip_code"].astype(str)
    return out


def year_from_title(titles: pd.Series) -> np.ndarray:
    """``"Name (1995)"`` -> 1995.0 (NaN when the title has no trailing year)."""
    return titles.astype(str).str.extract(r"\((\d{4})\)\s*$")[0].astype(float).to_numpy()
