"""Per-batch teacher signals: chunked top-K over the catalogue and the score-factor check."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


@torch.no_grad()
def chunked_topk(score_fn, num_items: int, k: int, *, history: Tensor | None, target: Tensor | None,
                 exclude_target: bool = True, mask_history: bool = True, chunk_size: int = 4096
                 ) -> tuple[Tensor, Tensor]:
    """Top-``k`` over items ``1..num_items`` from ``score_fn(start, stop) -> [M, stop - start]``.

    Column 0 is never returned. History items are masked when ``mask_history`` (the target keeps
    its score unless ``exclude_target``). A running top-k is merged chunk by chunk.
    """
    if not 1 <= k <= num_items:
        raise ValueError(f"k must be in 1..num_items={num_items}, got {k}")
    best_s: Tensor | None = None
    best_i: Tensor | None = None
    for start in range(0, num_items + 1, chunk_size):
        stop = min(start + chunk_size, num_items + 1)
        s = score_fn(start, stop).float()
        m, c = s.shape
        s = torch.cat([s, s.new_zeros(m, 1)], 1)  # dummy column absorbs out-of-chunk scatters

        def local(idx: Tensor) -> Tensor:
            li = idx - start
            ok = (idx > 0) & (li >= 0) & (li < c)
            return torch.where(ok, li, torch.full_like(li, c))

        tgt_local = local(target.view(-1, 1)) if target is not None else None
        if mask_history and history is not None and history.numel():
            keep = s.gather(1, tgt_local) if (tgt_local is not None and not exclude_target) else None
            s.scatter_(1, local(history), -math.inf)
            if keep is not None:
                s.scatter_(1, tgt_local, keep)
        if exclude_target and tgt_local is not None:
            s.scatter_(1, tgt_local, -math.inf)
        s = s[:, :c]
        if start == 0:
            s[:, 0] = -math.inf
        ids = torch.arange(start, stop, device=s.device).expand(m, c)
        if best_s is not None:
            s = torch.cat([best_s, s], 1)
            ids = torch.cat([best_i, ids], 1)
        kk = min(k, s.shape[1])
        best_s, pick = torch.topk(s, kk, dim=1)
        best_i = ids.gather(1, pick)
    assert best_s is not None and best_i is not None
    return best_i, best_s


@torch.no_grad()
def predict_signals(module, batch: dict[str, Tensor], *, k: int = 50, layers: Sequence[int] = (),
                    exclude_target: bool = True, mask_history: bool = True, chunk_size: int = 4096,
                    num_items: int | None = None) -> dict[str, Tensor]:
    """Signals for the rows of one emission batch (called from the teacher's ``predict_step``).

    ``layers`` index the LLM's hidden states: 0 = the rescaled inputs, i = output of block i,
    the last index = after the final norm (= ``hidden``).
    """
    enc = module.encode(batch["input_ids"], output_hidden_states=bool(layers))
    rb, ro = batch["row_batch"], batch["row_offset"]
    if enc["user"].shape[1] == 1:  # last-position-only teachers (one row per window, stride 1)
        ro = torch.zeros_like(ro)
    user = enc["user"][rb, ro]
    out = {
        "example_id": batch["example_id"].cpu(),
        "row": batch["row"].cpu(),
        "shard": batch["shard"].cpu(),
        "target": batch["target"].to(torch.int32).cpu(),
        "hidden": enc["hidden"][rb, ro].to(torch.float16).cpu(),
        "user": user.to(torch.float16).cpu(),
    }
    if layers:
        states = enc["hidden_states"]
        out["layers"] = torch.stack([states[i][rb, ro] for i in layers], 1).to(torch.float16).cpu()
    n = int(num_items or module.num_items)
    score_user = module.score_factors(user).float()
    _check_score_factors(module, user, score_user, min(chunk_size, n + 1))
    out["score_user"] = score_user.cpu()
    ids, scores = chunked_topk(
        lambda a, b: module.score_items(user, a, b), n, k, history=batch["history"], target=batch["target"],
        exclude_target=exclude_target, mask_history=mask_history, chunk_size=chunk_size,
    )
    out["topk_items"] = ids.to(torch.int32).cpu()
    out["topk_scores"] = scores.float().cpu()
    return out


def _check_score_factors(module, user: Tensor, score_user: Tensor, stop: int) -> None:
    """The stored factors must rebuild the teacher's own logits (items ``1..stop-1``)."""
    want = module.score_items(user, 0, stop)[:, 1:].float()
    got = score_user @ module.score_item_factors(0, stop)[1:].float().t()
    err = float((got - want).abs().max()) if want.numel() else 0.0
    dtype = user.dtype
    if torch.is_autocast_enabled(user.device.type):  # mixed precision: both sides rounded differently
        dtype = torch.get_autocast_dtype(user.device.type)
    rel = max(1e-3, 64 * torch.finfo(dtype).eps) if dtype.is_floating_point else 1e-3
    tol = rel * (1.0 + float(want.abs().max())) if want.numel() else 0.0
    if not err <= tol:
        raise RuntimeError(f"{type(module).__name__}.score_factors / score_item_factors do not rebuild its "
                           f"score_items (max abs error {err:.3g} > {tol:.3g}); the cache would mis-state its scores")
