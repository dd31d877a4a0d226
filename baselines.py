"""Non-learned reference rankers, evaluated with exactly the students' protocol."""

from __future__ import annotations

import torch

from recdistill.metrics import RankingAccumulator


def popularity_scores(train_sequences: list, num_items: int) -> torch.Tensor:
    """Training-interaction count per item, ``[num_items + 1]`` (column 0 = padding)."""
    counts = torch.zeros(num_items + 1)
    for seq in train_sequences:
        counts.index_add_(0, torch.as_tensor(seq, dtype=torch.long), torch.ones(len(seq)))
    return counts


def most_popular_metrics(datamodule, split: str = "test", mask_seen: bool = True,
                         ks: tuple[int, ...] = (5, 10, 20)) -> dict[str, float]:
    """Rank every item by training popularity for every user of ``split``."""
    data = datamodule.split
    scores = popularity_scores([data.sequences[u][:-2] for u in range(data.num_users)], data.num_items)
    accumulator = RankingAccumulator(ks=ks)
    for batch in datamodule.dataloader(split):
        batch_scores = scores.expand(batch["target"].shape[0], -1)
        accumulator.update(batch_scores, batch["target"], batch["history"], mask_seen=mask_seen)
    return accumulator.compute()
