"""A two-expert mixture over item slices: the teacher's content scores for items seen fewer than
``c0`` times, its fused (collaborative) scores for the rest, calibrated against each other per user.

A logit mixture puts a cold item's text score and a warm item's collaborative score on one scale
only by accident. The planted text set's Bayes oracle (:mod:`recdistill.data.planted_oracle`) shows
what that costs: the teacher ranked cold items among themselves as well as the oracle did and warm
items as well as its SASRec, yet lost 0.04-0.05 warm NDCG@10 at equal cold NDCG@10, all in how the
two lists were interleaved. The oracle interleaves by probability, which is what this mixture does
(a mixture of experts over a partition of the catalogue, cf. the cold/warm split of DropoutNet,
Volkovs et al. NeurIPS 2017, and mixture-of-softmaxes calibration):

    C = {i : count_i < c0},  W = {i : count_i >= c0}  (training interactions, item 0 excluded)
    log p(i | u) = log pi       + l_i / tau - logsumexp_{j in C} l_j / tau     for i in C
    log p(i | u) = log (1 - pi) + l_i       - logsumexp_{j in W} l_j           for i in W

``l`` = the teacher's fused logits, ``pi`` = the share of next items that are cold-ish, ``tau`` = the
content scores' temperature. ``(c0, tau, pi)`` are chosen after fitting, on validation NDCG@10 of
the best epoch (:func:`choose_slice_mixture`, called by ``fit_teacher``); the mixture is kept only
if it beats the plain fused logits there. The normalisers run over every item of a slice (seen
ones too), so the scores depend on the user's state alone, and the signal cache rebuilds them as
one dot product: the item rows of ``C`` scaled by ``1 / tau``, plus two columns per side (user:
the two offsets; item: the slice indicators).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["DEFAULT_GRID", "apply_slice_mixture", "check_grid", "choose_slice_mixture", "content_slice",
           "mixture_offsets"]

DEFAULT_GRID: dict[str, list[float]] = {
    "max_counts": [1, 4, 11],
    "taus": [1.0, 2.0, 3.0, 5.0],
    "pis": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
}


def check_grid(grid: Any) -> dict[str, list[float]]:
    """``grid`` (``True`` or ``{}``: :data:`DEFAULT_GRID`; a dict may set any of ``max_counts``,
    ``taus``, ``pis``) as lists; one-line errors that name the field."""
    if grid is True or grid == {}:
        return {k: list(v) for k, v in DEFAULT_GRID.items()}
    if not isinstance(grid, dict):
        raise ValueError(f"slice_mixture must be true or a mapping of max_counts / taus / pis, got {grid!r}")
    unknown = sorted(set(grid) - set(DEFAULT_GRID))
    if unknown:
        raise ValueError(f"slice_mixture has unknown key(s) {unknown}; known: {sorted(DEFAULT_GRID)}")
    out = {k: [float(x) for x in grid.get(k, DEFAULT_GRID[k])] for k in DEFAULT_GRID}
    if not out["max_counts"] or any(c < 1 or c != int(c) for c in out["max_counts"]):
        raise ValueError(f"slice_mixture.max_counts must be integers >= 1, got {out['max_counts']}")
    if not out["taus"] or any(not t > 0 for t in out["taus"]):
        raise ValueError(f"slice_mixture.taus must be > 0, got {out['taus']}")
    if not out["pis"] or any(not 0 < p < 1 for p in out["pis"]):
        raise ValueError(f"slice_mixture.pis must be in (0, 1), got {out['pis']}")
    return out


def content_slice(item_train_count: Tensor, max_count: float) -> Tensor:
    """``Bool[N + 1]``: the items scored by the content expert (count < ``max_count``; never item 0)."""
    content = item_train_count < max_count
    content[0] = False
    return content


def mixture_offsets(logits: Tensor, content: Tensor, tau: float, pi: float) -> tuple[Tensor, Tensor]:
    """``(log pi - lse_C(l / tau), log(1 - pi) - lse_W(l))`` per row of ``logits [..., N + 1]``."""
    items = torch.zeros_like(content)
    items[1:] = True
    warm = items & ~content
    neg = torch.tensor(-math.inf, dtype=logits.dtype, device=logits.device)
    lse_c = torch.where(content, logits / tau, neg).logsumexp(-1)
    lse_w = torch.where(warm, logits, neg).logsumexp(-1)
    return math.log(pi) - lse_c, math.log(1.0 - pi) - lse_w


def apply_slice_mixture(logits: Tensor, content: Tensor, tau: float, pi: float) -> Tensor:
    """The mixture's log-probabilities ``[..., N + 1]`` from fused ``logits``; column 0 = ``-inf``."""
    content = content.to(logits.device)
    off_c, off_w = mixture_offsets(logits, content, tau, pi)
    out = torch.where(content, logits / tau + off_c.unsqueeze(-1), logits + off_w.unsqueeze(-1))
    out = out.clone()
    out[..., 0] = -math.inf
    return out


@torch.no_grad()
def choose_slice_mixture(teacher: Any, loader: Any, *, mask_seen: bool = True) -> dict[str, Any]:
    """Score every ``(c0, tau, pi)`` of the teacher's ``slice_mixture`` grid on ``loader`` (validation)
    from one pass of the fused logits; keep the best in the teacher's buffers when it beats the plain
    fused logits on NDCG@10, else switch the mixture off. Returns the record for ``fit.json``."""
    from recdistill.metrics import RankingAccumulator

    grid = check_grid(teacher.hparams["slice_mixture"])
    was_training = teacher.training
    teacher.eval()
    teacher.mixture_pi.fill_(math.nan)  # off: score the plain fused logits
    counts = teacher.item_train_count
    slices = {c0: content_slice(counts, c0) for c0 in grid["max_counts"]}
    slices = {c0: s for c0, s in slices.items() if bool(s.any()) and bool((~s[1:]).any())}  # both experts have items
    keys = [(c0, tau, pi) for c0 in slices for tau in grid["taus"] for pi in grid["pis"]]
    accumulators = {key: RankingAccumulator(ks=[10]) for key in [None, *keys]}
    device = teacher.device
    for batch in loader:
        history = batch.get("history")
        history = None if history is None else history.to(device)
        target = batch["target"].to(device)
        logits = teacher(batch["input_ids"].to(device))
        accumulators[None].update(logits, target, history, mask_seen=mask_seen)
        for c0, content in slices.items():
            content = content.to(device)
            for tau in grid["taus"]:
                for pi in grid["pis"]:
                    mixed = apply_slice_mixture(logits, content, tau, pi)
                    accumulators[(c0, tau, pi)].update(mixed, target, history, mask_seen=mask_seen)
    scores = {key: float(acc.compute()["ndcg@10"]) for key, acc in accumulators.items()}
    base = scores.pop(None)
    # ties: the larger c0 / tau / pi come last, so max keeps the first (smallest) of equals
    best = max(keys, key=lambda k: (scores[k], -k[0], -k[1], -k[2])) if keys else None
    chosen = best is not None and scores[best] > base
    if chosen:
        teacher.mixture_max_count.fill_(best[0])
        teacher.mixture_tau.fill_(best[1])
        teacher.mixture_pi.fill_(best[2])
    teacher.train(was_training)
    return {"valid_ndcg@10_without": base, "chosen": ({"max_count": best[0], "tau": best[1], "pi": best[2],
                                                        "valid_ndcg@10": scores[best]} if chosen else None),
            "grid": [{"max_count": k[0], "tau": k[1], "pi": k[2], "valid_ndcg@10": scores[k]} for k in keys]}
