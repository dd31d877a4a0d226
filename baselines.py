"""Non-learned reference rankers, evaluated with exactly the students' protocol."""

from __future__ import annotations

import torch

from recdistill.metrics import RankingAccumulator


def most_popular_metrics(datamodule, split: str = "test", mask_seen: bool = True,
                         ks: tuple[int, ...] = (5, 10, 20)) -> dict[str, float]:
    """Rank every item by training popularity for every user of ``split``."""
    scores = torch.from_numpy(datamodule.split.item_train_counts()).float()  # column 0 = padding
    accumulator = RankingAccumulator(ks=ks)
    for batch in datamodule.dataloader(split):
        batch_scores = scores.expand(batch["target"].shape[0], -1)
        accumulator.update(batch_scores, batch["target"], batch["history"], mask_seen=mask_seen)
    return accumulator.compute()
