"""Readers: every supported on-disk format -> :class:`Interactions`.

Formats (``format=``, auto-detected from the path when ``None``):

- ``"movielens-100k"``: the cached, checksummed MovieLens-100K parquet files (see ``assets.py``);
- ``"ml-100k"``: a raw ml-100k folder (``u.data``, ``u.item``, ``u.user``);
- ``"ml-1m"``: a raw ml-1m folder (``ratings.dat``, ``movies.dat``, ``users.dat``);
- ``"recbole"``: RecBole atomic files ``<name>.inter`` (+ optional ``.item`` / ``.user``),
  given as the folder, the path stem or the ``.inter`` file;
- ``"parquet"``, ``"csv"``, ``"tsv"``: one table, columns chosen with ``column_map``
  (keys ``user``, ``item``, ``timestamp``, optional ``rating``, ``item_text``).

Id columns made only of integers (also when stored as text, as RecBole tokens are) become int64,
so the same data read from different formats yields the same ids.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from recdistill.data.columns import (
    FORMATS,
    MAP_KEYS,
    DataFormatError,
    interactions_frame,
    normalise_ids,
    resolve_columns,
    year_from_title,
)
from recdistill.data.movielens import read_ml100k, read_ml1m, read_movielens_asset
from recdistill.data.recbole import read_recbole
from recdistill.data.schema import Interactions

__all__ = ["FORMATS", "MAP_KEYS", "DataFormatError", "detect_format", "load_dataset", "load_interactions"]

log = logging.getLogger(__name__)


def load_interactions(
    source: str | Path = "movielens-100k",
    *,
    format: str | None = None,
    column_map: dict[str, str] | None = None,
    sep: str | None = None,
) -> Interactions:
    """Load ``source`` (an asset name or a path) in ``format`` into :class:`Interactions`."""
    fmt = format or detect_format(source)
    if fmt not in FORMATS:
        raise DataFormatError(f"unknown data format {fmt!r} for {source}; choose one of {', '.join(FORMATS)}")
    if fmt == "movielens-100k":
        data = read_movielens_asset()
    else:
        path = Path(source).expanduser()
        if fmt == "ml-100k":
            data = read_ml100k(_folder(path, "u.data"))
        elif fmt == "ml-1m":
            data = read_ml1m(_folder(path, "ratings.dat"))
        elif fmt == "recbole":
            data = read_recbole(path, column_map)
        else:
            data = _read_table(path, fmt, column_map, sep)
    data.interactions = data.interactions.reset_index(drop=True)
    log.info("loaded %s: %d interactions (%s)", data.name, len(data.interactions), fmt)
    return data


load_dataset = load_interactions


def detect_format(source: str | Path) -> str:
    """Guess the format of ``source`` from its name and, for folders, their contents."""
    if str(source) == "movielens-100k":
        return "movielens-100k"
    path = Path(source).expanduser()
    if not path.exists():
        if path.with_name(path.name + ".inter").exists():
            return "recbole"
        raise DataFormatError(
            f"data source {str(source)!r} not found: pass an existing file or folder, or the asset name "
            f"'movielens-100k' (run `recdistill fetch movielens-100k` to cache it)")
    if path.is_dir():
        if (path / "u.data").exists():
            return "ml-100k"
        if (path / "ratings.dat").exists():
            return "ml-1m"
        if list(path.glob("*.inter")):
            return "recbole"
        raise DataFormatError(
            f"cannot tell the format of folder {path}: expected u.data (ml-100k), ratings.dat (ml-1m) or "
            f"<name>.inter (RecBole); found {sorted(p.name for p in path.iterdir())[:10]}. Pass format=...")
    name = path.name.lower()
    if name.endswith(".inter"):
        return "recbole"
    if ".parquet" in name or name.endswith(".pq"):
        return "parquet"
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    if name.endswith((".tsv", ".tsv.gz", ".txt")):
        return "tsv"
    if name == "ratings.dat":
        return "ml-1m"
    if name == "u.data":
        return "ml-100k"
    raise DataFormatError(f"cannot tell the format of {path} from its name; pass format= one of {', '.join(FORMATS)}")


def _read_table(path: Path, fmt: str, column_map: dict[str, str] | None, sep: str | None) -> Interactions:
    if not path.exists():
        raise DataFormatError(f"data file {path} not found")
    if fmt == "parquet":
        df = _unreadable_is_named(path, fmt, lambda: pd.read_parquet(path))
        cmap = resolve_columns(df, column_map, path.name, required=("user", "item"))
    else:
        sep = sep or ("," if fmt == "csv" else "\t")
        header = _unreadable_is_named(path, fmt, lambda: pd.read_csv(path, sep=sep, nrows=0))
        cmap = resolve_columns(header, column_map, path.name, required=("user", "item"))
        # ids as text, so "007" is not silently read as 7 (normalise_ids turns safe ones into int64)
        df = _unreadable_is_named(path, fmt, lambda: pd.read_csv(path, sep=sep, dtype={cmap["user"]: str,
                                                                                       cmap["item"]: str}))
    frame = interactions_frame(df, cmap["user"], cmap["item"], cmap.get("timestamp"), cmap.get("rating"), path.name)
    items = None
    if "item_text" in cmap:
        first = df.drop_duplicates(cmap["item"])
        items = pd.DataFrame({"item_id": normalise_ids(first[cmap["item"]]),
                              "title": first[cmap["item_text"]].fillna("").astype(str).to_numpy()})
        items["year"] = year_from_title(items["title"])
    name = path.name.split(".")[0]
    return Interactions(name, frame, items, None, str(path))


def _unreadable_is_named(path: Path, fmt: str, read):
    """Run a pandas reader; a file it cannot read (permissions, not a table, bad encoding) becomes a
    :class:`DataFormatError` naming the file and the format it was read as."""
    try:
        return read()
    except DataFormatError:
        raise
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:  # ArrowInvalid is a ValueError
        reason = " ".join(str(exc).split())[:200].rstrip(".") or type(exc).__name__
        raise DataFormatError(f"cannot read {path} as {fmt}: {reason}. Check the file, or pass format= "
                              f"(one of {', '.join(FORMATS)})") from None


def _folder(path: Path, marker: str) -> Path:
    folder = path.parent if path.is_file() else path
    if not (folder / marker).exists():
        raise DataFormatError(f"{folder / marker} not found; point at the dataset folder that contains {marker}")
    return folder
