"""Shared fixtures: tiny seeded synthetic data so the suite stays fast on 2 CPU cores."""

from __future__ import annotations


import pytest
import torch

# Tiny models run fastest single-threaded, and 2 threads oversubscribe a shared 2-core machine.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_interactions():
    from recdistill.data import synthetic_interactions

    return synthetic_interactions(num_users=120, num_items=40, mean_length=14, seed=3, pattern_strength=0.9)


@pytest.fixture(scope="session")
def tiny_split(tiny_interactions):
    from recdistill.data import build_sequential_split

    return build_sequential_split(tiny_interactions)
