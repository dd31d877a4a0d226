"""RecBole atomic files: ``<name>.inter`` (+ optional ``<name>.item`` / ``<name>.user``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from recdistill.data.columns import DataFormatError, interactions_frame, normalise_ids, resolve_columns, users_frame
from recdistill.data.schema import Interactions


def read_recbole(path: Path, column_map: dict[str, str] | None) -> Interactions:
    """Read from the folder, the path stem or the ``.inter`` file; ``.item``/``.user`` beside it are optional."""
    if path.is_dir():
        inters = sorted(path.glob("*.inter"))
        named = [p for p in inters if p.stem == path.name]
        if len(named) != 1 and len(inters) != 1:
            raise DataFormatError(f"RecBole folder {path} must hold exactly one .inter file (or {path.name}.inter); "
                                  f"found {[p.name for p in inters]}; pass the path stem instead")
        inter_path = (named or inters)[0]
    elif path.suffix == ".inter":
        inter_path = path
    else:
        inter_path = path.with_name(path.name + ".inter")
    if not inter_path.exists():
        raise DataFormatError(f"RecBole interactions file {inter_path} not found")
    stem = inter_path.with_suffix("")
    inter = _read_atomic(inter_path)
    cmap = resolve_columns(inter, column_map, inter_path.name, required=("user", "item"))
    frame = interactions_frame(inter, cmap["user"], cmap["item"], cmap.get("timestamp"), cmap.get("rating"),
                                inter_path.name)
    items = users = None
    if stem.with_suffix(".item").exists():
        items = _recbole_items(_read_atomic(stem.with_suffix(".item")), stem.with_suffix(".item").name)
    if stem.with_suffix(".user").exists():
        users = users_frame(_read_atomic(stem.with_suffix(".user")))
    return Interactions(stem.name, frame, items, users, str(inter_path))


def _read_atomic(path: Path) -> pd.DataFrame:
    """Read a RecBole atomic file; ``name:type`` headers lose their type suffix."""
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_values=[""])
    df.columns = [c.split(":", 1)[0] for c in df.columns]
    return df


def _recbole_items(df: pd.DataFrame, filename: str) -> pd.DataFrame:
    if "item_id" not in df.columns:
        raise DataFormatError(f"{filename} has no item_id column (found {list(df.columns)})")
    title = next((c for c in ("movie_title", "title", "name", "item_name") if c in df.columns), None)
    year = next((c for c in ("release_year", "year") if c in df.columns), None)
    genre = next((c for c in ("class", "genre", "genres", "categories") if c in df.columns), None)
    out = pd.DataFrame({"item_id": normalise_ids(df["item_id"])})
    if title:
        out["title"] = df[title].fillna("").astype(str).to_numpy()
    out["year"] = pd.to_numeric(df[year], errors="coerce").to_numpy(float) if year else np.nan
    if genre:
        out["genres"] = [g.split() if isinstance(g, str) else [] for g in df[genre]]
    return out
