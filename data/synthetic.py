"""Seeded synthetic interactions with learnable structure, for tests and scale benchmarks.

Each user's sequence is a Markov chain: with probability ``pattern_strength`` the next item is the
planted successor ``successor[prev]`` (a fixed random permutation of the catalogue), otherwise a
draw from a Zipf popularity law. A sequence model can therefore reach hit rates far above random;
a popularity ranker cannot. Generation is vectorised over users (one numpy step per position).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from recdistill.data.schema import Interactions

GENRES = ("Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi", "Documentary", "Animation")
OCCUPATIONS = ("student", "engineer", "artist", "doctor", "writer", "other")


def _draw(rng: np.random.Generator, cdf: np.ndarray, size: int) -> np.ndarray:
    return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), len(cdf) - 1)


def synthetic_interactions(
    num_users: int,
    num_items: int,
    *,
    mean_length: float = 20,
    seed: int = 0,
    pattern_strength: float = 0.8,
    zipf_exponent: float = 1.0,
    min_length: int = 3,
    max_length: int | None = None,
    num_genres: int = 5,
    ratings: bool = True,
    name: str = "synthetic",
) -> Interactions:
    """``num_users`` users with ~``mean_length`` events each over ``num_items`` items (raw ids 1..N).

    Lengths are ``min_length`` + Poisson(``mean_length - min_length``), capped at ``max_length``
    (default ``4 * mean_length``). Ratings (1..5) are higher when the item's genre is the user's
    favourite, so a CTR model has signal too. Returns rows user-major in chronological order.
    """
    if num_users < 1 or num_items < 2:
        raise ValueError("synthetic_interactions needs num_users >= 1 and num_items >= 2")
    if not 0.0 <= pattern_strength <= 1.0:
        raise ValueError(f"pattern_strength must be in [0, 1], got {pattern_strength}")
    num_genres = max(1, min(num_genres, len(GENRES)))
    rng = np.random.default_rng(seed)
    cap = int(max_length or max(min_length, 4 * mean_length))
    lengths = np.minimum(min_length + rng.poisson(max(mean_length - min_length, 0.0), num_users), cap)
    lengths = np.maximum(lengths, min_length).astype(np.int64)

    popularity = 1.0 / np.arange(1, num_items + 1) ** zipf_exponent
    popularity = popularity[np.argsort(rng.permutation(num_items))]  # popular items spread over ids
    cdf = np.cumsum(popularity / popularity.sum())
    successor = planted_successor(num_items, seed)[1:] - 1

    steps = int(lengths.max())
    seq = np.empty((num_users, steps), dtype=np.int64)
    seq[:, 0] = _draw(rng, cdf, num_users)
    for t in range(1, steps):
        follow = rng.random(num_users) < pattern_strength
        seq[:, t] = np.where(follow, successor[seq[:, t - 1]], _draw(rng, cdf, num_users))
    mask = np.arange(steps)[None, :] < lengths[:, None]
    items0 = seq[mask]  # row-major: user-major, chronological
    users0 = np.repeat(np.arange(num_users), lengths)

    gaps = rng.integers(1, 3600, size=items0.shape[0], dtype=np.int64)
    starts = np.repeat(rng.integers(0, 10**8, size=num_users) + 9 * 10**8, lengths)
    first = np.cumsum(lengths) - lengths
    csum = np.cumsum(gaps)
    timestamps = starts + csum - np.repeat(csum[first], lengths)  # strictly increasing per user

    item_genre = rng.integers(0, num_genres, size=num_items)
    favourite = rng.integers(0, num_genres, size=num_users)
    inter = pd.DataFrame({"user_id": users0 + 1, "item_id": items0 + 1, "timestamp": timestamps})
    if ratings:
        score = 3.0 + 1.5 * (item_genre[items0] == favourite[users0]) + rng.normal(0, 1.0, size=items0.shape[0])
        inter["rating"] = np.clip(np.round(score), 1, 5)

    genre_names = np.array(GENRES[:num_genres], dtype=object)
    items = pd.DataFrame({
        "item_id": np.arange(1, num_items + 1),
        "title": [f"Item {i + 1} ({genre_names[g]})" for i, g in enumerate(item_genre)],
        "year": rng.integers(1950, 2021, size=num_items).astype(float),
        "genres": [[genre_names[g]] for g in item_genre],
    })
    users = pd.DataFrame({
        "user_id": np.arange(1, num_users + 1),
        "age": rng.integers(15, 70, size=num_users),
        "gender": np.where(rng.random(num_users) < 0.5, "M", "F"),
        "occupation": np.array(OCCUPATIONS, dtype=object)[rng.integers(0, len(OCCUPATIONS), size=num_users)],
        "zip_code": [f"{z:05d}" for z in rng.integers(0, 100000, size=num_users)],
    })
    return Interactions(name, inter, items, users, f"synthetic(seed={seed}, pattern_strength={pattern_strength})")


def planted_successor(num_items: int, seed: int = 0) -> np.ndarray:
    """The planted successor map of ``synthetic_interactions(..., seed=seed)``: ``succ[raw_id] -> raw_id``.

    Index 0 is unused (0). It depends only on ``num_items`` and ``seed``.
    """
    succ0 = np.random.default_rng([seed, 1]).permutation(num_items)
    return np.concatenate([[0], succ0 + 1]).astype(np.int64)
