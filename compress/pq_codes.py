"""Item code assignment BEFORE training, for jointly trained PQ item tables (RecJPQ:
Petrov & Macdonald, "RecJPQ: Training Large-Catalogue Sequential Recommenders", WSDM 2024).

RecJPQ's ``svd`` strategy: take the binary user-item matrix ``R`` (users x items, 1 where the
user interacted with the item in the training data), its truncated SVD ``R ~ U S V^T`` with one
component per subspace, and for subspace ``m`` discretise the items' coordinates ``V[:, m]`` into
``K`` equal-frequency (quantile) bins: ``code[i, m] = floor(rank_m(i) * K / N)``, where
``rank_m`` orders the items by ``V[i, m]`` (min-max scaled; ties, e.g. items without training
interactions, broken by a seeded tiny noise, as the paper's code does). Items with similar
interaction columns get similar SVD coordinates, hence share sub-ids; codes stay fixed while the
codebooks train with the model.

- ``interaction_matrix(sequences, num_items)``: dense ``float32 [num_users, num_items + 1]``
  (column 0 = padding, always empty).
- ``svd_codes(matrix, M, K, seed)``: ``Long[num_items + 1, M]`` (row 0, the padding row, gets code 0).
- ``random_codes(num_items, M, K, seed)``: the uniform baseline of the paper.
- ``assign_codes(strategy, ...)``: by name (``svd`` | ``random``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

CODE_STRATEGIES = ("svd", "random")


def interaction_matrix(sequences: Sequence[np.ndarray], num_items: int) -> torch.Tensor:
    """Binary users x ``num_items + 1`` matrix of the training interactions (item indices 1..N)."""
    matrix = torch.zeros(len(sequences), num_items + 1)
    for user, seq in enumerate(sequences):
        items = torch.as_tensor(np.asarray(seq, dtype=np.int64))
        if len(items):
            matrix[user, items] = 1.0
    matrix[:, 0] = 0.0
    return matrix


def _item_factors(matrix: torch.Tensor, rank: int, seed: int) -> torch.Tensor:
    """Right singular vectors ``V [items, rank]`` of the (dense) interaction matrix, sign-fixed."""
    rank = min(rank, *matrix.shape)
    if matrix.numel() <= 25_000_000:
        _, _, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
        v = vh[:rank].T
    else:  # randomized truncated SVD (Halko et al.), seeded
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            _, _, v = torch.svd_lowrank(matrix.double(), q=rank + 10, niter=4)
        v = v[:, :rank]
    sign = torch.sign(v[v.abs().argmax(dim=0), torch.arange(v.shape[1])])  # deterministic sign
    return (v * sign).float()


def _quantile_bins(values: torch.Tensor, num_bins: int, generator: torch.Generator) -> torch.Tensor:
    """Equal-frequency bins of ``values``: ``floor(rank * K / n)``; ties broken by seeded noise."""
    n = values.shape[0]
    span = (values.max() - values.min()).clamp(min=1e-12)
    scaled = (values - values.min()) / span + 1e-5 * torch.randn(n, generator=generator, dtype=torch.float64).float()
    rank = torch.empty(n, dtype=torch.long)
    rank[scaled.argsort(stable=True)] = torch.arange(n)
    return rank * num_bins // n


def svd_codes(matrix: torch.Tensor, num_subspaces: int, num_centroids: int, *, seed: int = 0) -> torch.Tensor:
    """RecJPQ ``svd`` codes ``Long[num_items + 1, M]`` from a users x (items + 1) interaction matrix.

    Subspace ``m`` uses SVD component ``m mod rank`` (rank <= min(users, items)); when there are
    more subspaces than components the extra ones re-bin a component with a different tie noise.
    """
    if num_subspaces < 1 or num_centroids < 1:
        raise ValueError("num_subspaces and num_centroids must be >= 1")
    items = matrix[:, 1:]
    v = _item_factors(items, num_subspaces, seed)
    g = torch.Generator().manual_seed(seed)
    codes = torch.zeros(matrix.shape[1], num_subspaces, dtype=torch.long)
    for m in range(num_subspaces):
        codes[1:, m] = _quantile_bins(v[:, m % v.shape[1]], num_centroids, g)
    return codes


def random_codes(num_items: int, num_subspaces: int, num_centroids: int, *, seed: int = 0) -> torch.Tensor:
    """Uniform random codes ``Long[num_items + 1, M]`` (row 0 = padding = 0)."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, num_centroids, (num_items + 1, num_subspaces), generator=g)
    codes[0] = 0
    return codes


def assign_codes(strategy: str, sequences: Sequence[np.ndarray], num_items: int, num_subspaces: int,
                 num_centroids: int, *, seed: int = 0) -> torch.Tensor:
    """Codes by strategy name (``svd`` on the training ``sequences``, or ``random``)."""
    if strategy == "svd":
        return svd_codes(interaction_matrix(sequences, num_items), num_subspaces, num_centroids, seed=seed)
    if strategy == "random":
        return random_codes(num_items, num_subspaces, num_centroids, seed=seed)
    raise ValueError(f"unknown code strategy {strategy!r}; known: {list(CODE_STRATEGIES)}")


def shared_subids(codes: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Number of subspaces in which items ``a[j]`` and ``b[j]`` have the same sub-id."""
    return (codes[a] == codes[b]).sum(dim=-1)
