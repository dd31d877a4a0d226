"""A seeded catalogue whose titles carry the words of the categories users follow.

Where ``synthetic_interactions`` plants a *sequential* pattern (a successor map an ID model can
learn), this generator plants a *content* pattern that only a model reading item text can use on
items it has (almost) never seen in training: the cold / long-tail case LLM teachers are for.

Planted structure (``planted_text_interactions``; every draw comes from one ``numpy`` generator
seeded with ``seed``, so the same arguments give the same data):

* **Categories and words.** ``num_categories`` (1..8) themed categories (``CATEGORY_WORDS``:
  space, cooking, sea, music, garden, crime, sports, castle), each with a vocabulary of
  ``words_per_category`` (<= 8) words; no word belongs to two categories. ``FILLER_WORDS`` are
  shared by every category.
* **Items.** Raw ids ``1..num_items``; categories are dealt out evenly (a shuffled round robin).
  A title is 2-4 distinct words of the item's category plus 1-2 filler words, shuffled and
  title-cased, then ``#`` and a unique 6-character hex token that identifies the item and says
  nothing about its category, e.g. ``"Orbit The Comet Galaxy #3fa9c1"``. The category words of
  a title are therefore exactly its tokens that are in ``CATEGORY_WORDS`` (see
  ``category_of_title``).
* **Held-out items.** In each category ``round(cold_share * size)`` items (at least one when
  ``cold_share > 0`` and the category has two items) are *held out*. They never appear in a
  user's generated training events except through a planted budget: a share ``rare_share`` of
  them gets a budget of 1-3 training interactions (placed in the training part of distinct users
  who follow the category), the others 0. Under the leave-one-out split
  (``build_sequential_split``: ``seq[:-2]`` trains, ``seq[-2]`` / ``seq[-1]`` are the valid /
  test targets) a held-out item's ``item_train_counts`` is exactly its budget, so held-out items
  with budget 0 are the *cold* slice and those with 1-3 fall in the rare slice.
* **Warm popularity.** Within a category the other (warm) items have a Zipf(``zipf_exponent``)
  popularity over a random order, so warm items range from popular to rare.
* **Users.** Each user follows one category, or two with probability ``two_category_share``.
  Sequence length is ``min_length + Poisson(mean_length - min_length)``. The training events
  (all but the last two) are distinct warm items drawn without replacement from the mixture
  ``(1 - noise) *`` (the followed categories' warm popularity, equal shares) ``+ noise *`` (the
  warm popularity of the whole catalogue), in random order.
* **Targets.** The last two events (valid and test targets) each come from a followed category
  (chosen uniformly): with probability ``cold_target_prob`` a uniformly drawn held-out item of
  that category, otherwise a warm item by popularity; never an item the user already has. So
  held-out items are frequent as targets and rare (0-3) in training, every target belongs to a
  category the user follows, and only the title tells a cold target's category.

``items`` holds ``item_id``, ``title``, ``year`` (NaN), and the planted truth: ``category``
(name), ``held_out`` (bool), ``train_budget`` (held-out items' planted training count, -1 for
warm items) and ``warm_popularity`` (a warm item's share of its category's popularity law, 0 for
held-out items; what :mod:`recdistill.data.planted_oracle` ranks with). ``users`` holds ``user_id`` and ``categories`` (followed names joined by ``|``).
Items that end up in no sequence are absent from a split's vocabulary (rare at sensible sizes).

Measured (seed 0, test split, full ranking, seen items masked): at 600 users x 300 items all 156
cold test targets are held-out items, and the training-free TF-IDF cosine
(``recdistill.baselines.text_tfidf_metrics``) reaches cold NDCG@10 0.138 against 0.016 for a random
ranking and 0.000 for MostPopular; at 6,000 users x 2,000 items (1,504 cold test targets) 0.014
against 0.0023 random and 0.000 MostPopular (250 items per category dilute a word count).

``write_planted_text_csv`` writes the events (with the title on every row, as the single-table
CSV reader expects) so that ``load_split(events_path, column_map=column_map)`` gives the same
split, fingerprint and ``item_text`` as ``build_sequential_split(planted_text_interactions(...))``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from recdistill.data.schema import Interactions

__all__ = [
    "CATEGORY_WORDS",
    "FILLER_WORDS",
    "category_of_title",
    "planted_text_interactions",
    "write_planted_text_csv",
]

CATEGORY_WORDS: dict[str, tuple[str, ...]] = {
    "space": ("galaxy", "rocket", "orbit", "planet", "comet", "astronaut", "nebula", "starship"),
    "cooking": ("recipe", "kitchen", "baking", "spice", "pasta", "chef", "oven", "dessert"),
    "sea": ("ocean", "sailor", "harbor", "reef", "tide", "whale", "anchor", "lighthouse"),
    "music": ("guitar", "melody", "piano", "concert", "rhythm", "violin", "chorus", "drummer"),
    "garden": ("flower", "garden", "seed", "orchard", "blossom", "meadow", "tulip", "greenhouse"),
    "crime": ("detective", "murder", "alibi", "suspect", "heist", "clue", "verdict", "gangster"),
    "sports": ("football", "stadium", "coach", "marathon", "tennis", "champion", "goal", "league"),
    "castle": ("knight", "dragon", "castle", "sword", "wizard", "kingdom", "quest", "throne"),
}
FILLER_WORDS: tuple[str, ...] = ("the", "of", "a", "and", "new", "last", "great", "little", "story",
                                 "return", "day", "night", "edition", "volume", "collection", "guide")
CSV_NAME = "planted_text.csv"
ITEMS_CSV_NAME = "planted_text_items.csv"
CSV_COLUMN_MAP = {"user": "user_id", "item": "item_id", "timestamp": "timestamp", "item_text": "item_title"}
_TOKEN = re.compile(r"[a-z0-9]+")


def category_of_title(title: str, num_categories: int = len(CATEGORY_WORDS)) -> dict[str, list[str]]:
    """The category words found in ``title``, grouped by category (only categories with a hit)."""
    tokens = _TOKEN.findall(str(title).lower())
    out: dict[str, list[str]] = {}
    for name, words in list(CATEGORY_WORDS.items())[:num_categories]:
        hits = [t for t in tokens if t in words]
        if hits:
            out[name] = hits
    return out


def _zipf(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    return weights[rng.permutation(n)]


def _sample_without_replacement(rng: np.random.Generator, weights: np.ndarray, k: int) -> np.ndarray:
    """``k`` distinct indices drawn proportionally to ``weights`` (Gumbel top-k), in random order."""
    positive = np.flatnonzero(weights > 0)
    k = min(k, len(positive))
    keys = np.log(weights[positive]) + rng.gumbel(size=len(positive))
    chosen = positive[np.argpartition(-keys, k - 1)[:k]] if k else positive[:0]
    return rng.permutation(chosen)


def planted_text_interactions(
    num_users: int,
    num_items: int,
    *,
    num_categories: int = 8,
    cold_share: float = 0.2,
    seed: int = 0,
    words_per_category: int = 8,
    rare_share: float = 0.5,
    cold_target_prob: float = 0.5,
    two_category_share: float = 0.25,
    noise: float = 0.1,
    mean_length: float = 12,
    min_length: int = 5,
    zipf_exponent: float = 1.0,
    name: str = "planted_text",
) -> Interactions:
    """``num_users`` users following 1-2 of ``num_categories`` categories over ``num_items`` titled items.

    See the module docstring for the planted structure. ``cold_share`` is the share of each
    category's items held out (rare in training, frequent as valid/test targets); ``rare_share``
    of the held-out items get 1-3 training interactions, the rest none; ``cold_target_prob`` is
    the chance that a valid or test target is a held-out item. Returns rows user-major in
    chronological order (strictly increasing timestamps per user), like ``synthetic_interactions``.
    """
    if not 1 <= num_categories <= len(CATEGORY_WORDS):
        raise ValueError(f"num_categories must be in 1..{len(CATEGORY_WORDS)}, got {num_categories}")
    if not 2 <= words_per_category <= 8:
        raise ValueError(f"words_per_category must be in 2..8, got {words_per_category}")
    if num_users < 1 or num_items < 2 * num_categories:
        raise ValueError("planted_text_interactions needs num_users >= 1 and num_items >= 2 * num_categories")
    for label, value in (("cold_share", cold_share), ("rare_share", rare_share), ("noise", noise),
                         ("cold_target_prob", cold_target_prob), ("two_category_share", two_category_share)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{label} must be in [0, 1], got {value}")
    if cold_share >= 1.0:
        raise ValueError("cold_share must be < 1: every category needs warm items for the training events")
    if min_length < 3:
        raise ValueError(f"min_length must be >= 3 (train, valid and test events), got {min_length}")
    rng = np.random.default_rng(seed)
    names = list(CATEGORY_WORDS)[:num_categories]
    vocab = [CATEGORY_WORDS[c][:words_per_category] for c in names]

    # items: category, title, held-out flag and training budget
    category = rng.permutation(np.arange(num_items) % num_categories)
    tokens = rng.choice(16**6, size=num_items, replace=False)
    titles = []
    for i in range(num_items):
        words = list(rng.choice(vocab[category[i]], size=int(rng.integers(2, 5)), replace=False))
        words += list(rng.choice(FILLER_WORDS, size=int(rng.integers(1, 3)), replace=False))
        words = [words[j] for j in rng.permutation(len(words))]
        titles.append(f"{' '.join(words).title()} #{int(tokens[i]):06x}")
    held_out = np.zeros(num_items, dtype=bool)
    budget = np.full(num_items, -1, dtype=np.int64)
    members = [np.flatnonzero(category == c) for c in range(num_categories)]
    for c, idx in enumerate(members):
        n_held = int(round(cold_share * len(idx)))
        if cold_share > 0 and len(idx) >= 2:
            n_held = max(n_held, 1)
        n_held = min(n_held, len(idx) - 1)
        chosen = rng.permutation(idx)[:n_held]
        held_out[chosen] = True
        rare = rng.random(n_held) < rare_share
        budget[chosen] = np.where(rare, rng.integers(1, 4, size=n_held), 0)

    # warm popularity: Zipf within each category; global = the per-category laws side by side
    popularity = np.zeros(num_items)
    for idx in members:
        warm = idx[~held_out[idx]]
        popularity[warm] = _zipf(rng, len(warm), zipf_exponent)
        popularity[warm] /= popularity[warm].sum()
    global_pop = popularity / popularity.sum()
    held_by_cat = [idx[held_out[idx]] for idx in members]
    cat_pop = [np.where(category == c, popularity, 0.0) for c in range(num_categories)]

    # users and their sequences
    two = rng.random(num_users) < two_category_share
    follows = [rng.choice(num_categories, size=2 if t else 1, replace=False) for t in two]
    lengths = min_length + rng.poisson(max(mean_length - min_length, 0.0), num_users)
    sequences: list[list[int]] = []
    for u in range(num_users):
        cats = follows[u]
        weights = np.zeros(num_items)
        for c in cats:
            weights += (1.0 - noise) / len(cats) * cat_pop[c]
        weights += noise * global_pop
        seq = [int(i) for i in _sample_without_replacement(rng, weights, int(lengths[u]) - 2)]
        for _ in range(2):  # valid then test target
            c = int(cats[rng.integers(len(cats))])
            pool = held_by_cat[c] if (rng.random() < cold_target_prob and len(held_by_cat[c])) else None
            if pool is not None:
                pool = np.setdiff1d(pool, seq)
            if pool is not None and len(pool):
                seq.append(int(pool[rng.integers(len(pool))]))
            else:
                w = cat_pop[c].copy()
                w[seq] = 0.0
                if not w.any():  # the category is exhausted for this user: any unseen warm item
                    w = global_pop.copy()
                    w[seq] = 0.0
                seq.append(int(_sample_without_replacement(rng, w, 1)[0]))
        sequences.append(seq)

    # planted training budgets of the rare held-out items: distinct users of the category
    followers = [np.flatnonzero([c in f for f in follows]) for c in range(num_categories)]
    real_budget = budget.copy()
    for item in np.flatnonzero(budget > 0):
        candidates = [u for u in followers[category[item]] if item not in sequences[u]]
        chosen = rng.permutation(np.asarray(candidates, dtype=np.int64))[: budget[item]]
        for u in chosen:
            seq = sequences[u]
            seq.insert(int(rng.integers(0, len(seq) - 1)), int(item))  # before the valid target
        real_budget[item] = len(chosen)  # fewer followers than the budget: what was placed

    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    items0 = np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences])
    users0 = np.repeat(np.arange(num_users), lengths)
    gaps = rng.integers(1, 3600, size=items0.shape[0], dtype=np.int64)
    starts = np.repeat(rng.integers(0, 10**8, size=num_users) + 9 * 10**8, lengths)
    first = np.cumsum(lengths) - lengths
    csum = np.cumsum(gaps)
    timestamps = starts + csum - np.repeat(csum[first], lengths)
    inter = pd.DataFrame({"user_id": users0 + 1, "item_id": items0 + 1, "timestamp": timestamps})
    items = pd.DataFrame({
        "item_id": np.arange(1, num_items + 1),
        "title": titles,
        "year": np.full(num_items, np.nan),
        "category": np.array(names, dtype=object)[category],
        "held_out": held_out,
        "train_budget": real_budget,
        "warm_popularity": popularity,
    })
    users = pd.DataFrame({
        "user_id": np.arange(1, num_users + 1),
        "categories": ["|".join(names[c] for c in sorted(f)) for f in follows],
    })
    source = (f"planted_text(seed={seed}, num_categories={num_categories}, cold_share={cold_share}, "
              f"rare_share={rare_share}, cold_target_prob={cold_target_prob})")
    return Interactions(name, inter, items, users, source)


def write_planted_text_csv(
    directory: str | Path,
    num_users: int = 1000,
    num_items: int = 400,
    **kwargs,
) -> tuple[Path, dict[str, str]]:
    """Write ``planted_text_interactions(num_users, num_items, **kwargs)`` as CSV under ``directory``.

    ``planted_text.csv`` holds one event per row (``user_id``, ``item_id``, ``timestamp`` and the
    item's title in ``item_title``); ``planted_text_items.csv`` the planted truth per item
    (``item_id``, ``title``, ``category``, ``held_out``, ``train_budget``). Returns the events
    path and the column map, so ``load_split(path, column_map=column_map)`` reads it back (the
    split's ``item_text`` are the titles). ``name`` is fixed by the file name (``planted_text``).
    """
    if "name" in kwargs:
        raise ValueError("write_planted_text_csv names the dataset after its file ('planted_text')")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = planted_text_interactions(num_users, num_items, name=CSV_NAME.split(".")[0], **kwargs)
    titles = data.items.set_index("item_id")["title"]
    events = data.interactions.assign(item_title=titles.reindex(data.interactions["item_id"]).to_numpy())
    path = directory / CSV_NAME
    events.to_csv(path, index=False)
    data.items.drop(columns=["year"]).to_csv(directory / ITEMS_CSV_NAME, index=False)
    return path, dict(CSV_COLUMN_MAP)
