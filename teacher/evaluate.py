"""Evaluate a teacher exactly like a student: full ranking, seen items masked, same metric keys.

``metrics.json`` = ``{"valid": {...}, "test": {...}, "long_tail": {"threshold", "valid": {...},
"test": {...}}, "fusion": {...}, "baselines": {...}, "num_parameters", "trainable_parameters",
"latency": {"p50_ms", "p99_ms", "sequences_per_second", "threads", ...}, "protocol": "...",
"untuned_llm": {...}}``.

``valid`` / ``test`` hold the overall metrics (``ndcg@10`` ...) and the same metrics on the
slices of the targets by their training count, with the students' keys
(:func:`recdistill.metrics.sliced_ranking_metrics`): ``cold/ndcg@10``, ``cold/count`` (0
interactions), ``rare/...`` (1-10), ``warm/...`` (> 10). ``fusion`` holds each part of the
teacher alone, in the same keys: ``content_only`` (text vectors alone: no residual, no
collaborative part, no bias) and, for a hybrid teacher, ``llm_only`` / ``collaborative_only``
(``alpha`` = 1 / 0) with the chosen ``alpha``, and ``grid``: every ``(alpha, c_cf)`` of the
validation search on every split and slice (:func:`evaluate_fusion_grid`); with the cold gate, ``collaborative_only`` still
scores an item without training interactions by the LLM (the gate replaces its CF logit). ``baselines`` holds the training-free rankers in the same keys, so a
table can put them beside the teacher: ``most_popular``, ``text_tfidf`` (TF-IDF cosine over the
item texts, :mod:`recdistill.baselines`) and ``untuned_llm`` (cosine of the untuned LLM's
item-text embeddings; also kept at the top level). Long-tail metrics (kept for older readers)
are over the examples whose target item has at most ``long_tail_threshold`` training interactions.
The teacher, its parts and the fusion grid are all scored from one LLM pass per split
(:func:`_evaluate_parts`): each part is a rescoring of the same encoded users.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recdistill.metrics import RankingAccumulator, ranking_metrics_from_ranks, sliced_ranking_metrics
from recdistill.teacher.cache_format import atomic_write_json


@torch.no_grad()
def _rank_split(module, loader, ks: Sequence[int], mask_seen: bool) -> RankingAccumulator:
    acc = RankingAccumulator(ks=ks)
    device = next(module.parameters()).device
    for batch in loader:
        scores = module(batch["input_ids"].to(device))
        acc.update(scores, batch["target"].to(device), batch["history"].to(device), mask_seen=mask_seen)
    return acc


@torch.no_grad()
def measure_latency(module, loader, *, num_users: int = 200, warmup: int = 5, min_seconds: float = 1.0,
                    max_batches: int = 8) -> dict[str, Any]:
    """Per-user latency (batch of 1, p50/p99 over ``num_users`` users after ``warmup``) and the
    batched throughput in sequences per second over up to ``max_batches`` loader batches."""
    device = next(module.parameters()).device
    rows: list[torch.Tensor] = []
    for batch in loader:
        rows.extend(batch["input_ids"].split(1))
        if len(rows) >= num_users + warmup:
            break
    if not rows:
        raise ValueError("no sequences to time")
    times: list[float] = []
    for i, x in enumerate(rows[: warmup + num_users]):
        x = x.to(device)
        start = time.perf_counter()
        module(x)
        elapsed = time.perf_counter() - start
        if i >= warmup:
            times.append(elapsed)
    if not times:  # fewer users than warm-up iterations: time them again
        for x in rows:
            start = time.perf_counter()
            module(x.to(device))
            times.append(time.perf_counter() - start)
    seqs, total, n_batches = 0, 0.0, 0
    while n_batches == 0 or total < min_seconds:
        for batch in loader:
            x = batch["input_ids"].to(device)
            start = time.perf_counter()
            module(x)
            total += time.perf_counter() - start
            seqs += x.shape[0]
            n_batches += 1
            if n_batches >= max_batches:
                break
        if n_batches >= max_batches:
            break
    ms = np.asarray(times) * 1000.0
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "num_timed": int(len(ms)),
        "sequences_per_second": float(seqs / total) if total > 0 else float("nan"),
        "throughput_batch_size": int(getattr(loader, "batch_size", 0) or 0),
        "threads": int(torch.get_num_threads()),
        "device": str(device),
    }


@torch.no_grad()
def evaluate_untuned_llm(item_text_embeddings: torch.Tensor, datamodule: Any, *, splits: Sequence[str] = ("valid", "test"),
                         ks: Sequence[int] = (5, 10, 20), last_n: int = 5, mask_seen: bool = True) -> dict[str, Any]:
    """Zero-shot baseline with the untuned LLM: score = cosine(mean of the last ``last_n`` history
    items' text embeddings, item text embedding). ``item_text_embeddings`` is ``[N + 1, d]`` (row 0
    = padding) or ``[N, d]``."""
    emb = item_text_embeddings.float().cpu()
    if emb.shape[0] == datamodule.split.num_items:
        emb = torch.cat([torch.zeros(1, emb.shape[1]), emb], 0)
    items = torch.nn.functional.normalize(emb, dim=-1)
    out: dict[str, Any] = {"method": f"cosine(mean text embedding of the last {last_n} items, item text embedding)"}
    counts = torch.from_numpy(datamodule.split.item_train_counts())
    for which in splits:
        acc = RankingAccumulator(ks=ks)
        for batch in datamodule.dataloader(which):
            recent = batch["input_ids"][:, -last_n:]
            user = (emb[recent] * (recent > 0).unsqueeze(-1)).sum(1)
            scores = torch.nn.functional.normalize(user, dim=-1) @ items.t()
            acc.update(scores, batch["target"], batch["history"], mask_seen=mask_seen)
        out[which] = _sliced(acc, counts, ks)
    return out


def _long_tail(acc: RankingAccumulator, counts: torch.Tensor, threshold: int, ks: Sequence[int]) -> dict[str, Any]:
    """``{"num_examples", metrics...}`` over the examples whose target has <= ``threshold`` training
    interactions (no metrics when there is none)."""
    tail = counts[acc.targets()] <= threshold
    entry: dict[str, Any] = {"num_examples": int(tail.sum())}
    if bool(tail.any()):
        entry.update(ranking_metrics_from_ranks(acc.ranks()[tail], ks))
    return entry


def _sliced(acc: RankingAccumulator, counts: torch.Tensor, ks: Sequence[int]) -> dict[str, float]:
    """Overall + cold/rare/warm metrics (with counts) of an accumulator, the students' keys."""
    return sliced_ranking_metrics(acc.ranks(), acc.targets(), counts, ks)


@torch.no_grad()
def evaluate_baselines(datamodule: Any, *, splits: Sequence[str] = ("valid", "test"), ks: Sequence[int] = (5, 10, 20),
                       mask_seen: bool = True, last_n: int = 5) -> dict[str, Any]:
    """MostPopular and the TF-IDF text cosine (``recdistill.baselines``) in the sliced keys."""
    from recdistill.baselines import text_tfidf_scores, tfidf_item_matrix

    split = datamodule.split
    counts = torch.from_numpy(split.item_train_counts())
    pop = counts.float()
    out: dict[str, Any] = {
        "most_popular": {"method": "training count"},
        "text_tfidf": {"method": f"cosine(TF-IDF of the item text, mean TF-IDF of the last {last_n} items)"},
    }
    matrix = tfidf_item_matrix(split.item_text)[0] if getattr(split, "item_text", None) else None
    for which in splits:
        accs = {"most_popular": RankingAccumulator(ks=ks), "text_tfidf": RankingAccumulator(ks=ks)}
        for batch in datamodule.dataloader(which):
            b = batch["target"].shape[0]
            accs["most_popular"].update(pop.expand(b, -1), batch["target"], batch["history"], mask_seen=mask_seen)
            if matrix is not None:
                scores = text_tfidf_scores(matrix, batch["history"], last_n)
                accs["text_tfidf"].update(scores, batch["target"], batch["history"], mask_seen=mask_seen)
        for name, acc in accs.items():
            if acc.num_examples:
                out[name][which] = _sliced(acc, counts, ks)
    if matrix is None:
        del out["text_tfidf"]
    return out


@torch.no_grad()
def evaluate_fusion_grid(module: Any, datamodule: Any, *, splits: Sequence[str] = ("valid", "test"),
                         ks: Sequence[int] = (10,), mask_seen: bool = True) -> list[dict[str, Any]]:
    """An ensemble teacher at every ``(alpha, c_cf)`` of its validation search (``fusion_grid``), on
    every split and slice: what each fusion trades between cold, rare and warm targets. One
    sequence pass per split; the fusions are rescored from the two parts' logits."""
    parts = _evaluate_parts(module, datamodule, splits=splits, ks=ks, mask_seen=mask_seen, grid=True,
                            parts=False)
    return parts["grid"]


def _part_logits(module: Any, user: torch.Tensor, parts: bool, grid: bool):
    """``(name, logits)`` of every part scored from one encoded ``user`` (the chosen fusion first):
    ``teacher`` (what ``module(x)`` returns), and with ``parts`` ``llm_only`` / ``collaborative_only``
    (an ensemble at alpha = 1 / 0 with its chosen gate) and ``content_only`` (text vectors alone);
    with ``grid`` each ``(alpha, c_cf)`` of the ensemble's validation search."""
    from recdistill.teacher.collaborative import mix_logits

    if parts:
        yield "teacher", module.score_items(user)
        if getattr(module, "mixture_active", lambda: False)():
            yield "without_slice_mixture", module.score_items(user, mixture=False)
    ensemble = getattr(module, "fusion_alpha", None) is not None
    if ensemble and (parts or grid):
        teacher = module.score_items(user, fuse=False)
        raw_cf = module.collab_model.score(user[..., module.item_dim:])
        if parts:
            gated = module._gate_collaborative(teacher, raw_cf)
            yield "llm_only", mix_logits(teacher, gated, 1.0)
            yield "collaborative_only", mix_logits(teacher, gated, 0.0)
        if grid:
            for key, logits in module.fused_grid(teacher, raw_cf):
                yield key, logits
    if parts and getattr(module, "has_content_part", lambda: False)():
        yield "content_only", module.score_content(user)


@torch.no_grad()
def _evaluate_parts(module: Any, datamodule: Any, *, splits: Sequence[str], ks: Sequence[int], mask_seen: bool,
                    long_tail_threshold: int = 10, parts: bool = True, grid: bool = True) -> dict[str, Any]:
    """Every part of :func:`_part_logits` on ``splits`` from ONE sequence pass per split (the LLM runs
    once per batch, every part is rescored from its output): ``{name: {split: sliced metrics,
    "long_tail_<split>": metrics}}`` and ``"grid"``: the rows of :func:`evaluate_fusion_grid`."""
    counts = torch.from_numpy(datamodule.split.item_train_counts())
    device = next(module.parameters()).device
    accs: dict[Any, dict[str, RankingAccumulator]] = {}
    for which in splits:
        for batch in datamodule.dataloader(which):
            user = module.encode(batch["input_ids"].to(device))["user"][:, -1]
            target, history = batch["target"].to(device), batch["history"].to(device)
            for name, logits in _part_logits(module, user, parts, grid):
                acc = accs.setdefault(name, {}).setdefault(which, RankingAccumulator(ks=ks))
                acc.update(logits, target, history, mask_seen=mask_seen)
    out: dict[str, Any] = {"grid": []}
    for name, by_split in accs.items():
        entry: dict[str, Any] = {}
        for which, acc in by_split.items():
            entry[which] = _sliced(acc, counts, ks)
            entry[f"long_tail_{which}"] = _long_tail(acc, counts, long_tail_threshold, ks)
        if isinstance(name, tuple):
            out["grid"].append({"alpha": name[0], "collaborative_gate_count": name[1],
                                **{w: entry[w] for w in splits}})
        else:
            out[name] = entry
    return out


def evaluate_teacher(
    module_or_dir: Any,
    datamodule: Any,
    output_dir: str | Path | None = None,
    *,
    splits: Sequence[str] = ("valid", "test"),
    ks: Sequence[int] = (5, 10, 20),
    mask_seen: bool = True,
    long_tail_threshold: int = 10,
    latency: bool = True,
    latency_users: int = 200,
) -> dict[str, Any]:
    """Metrics of a teacher (module or checkpoint folder) on ``splits``; writes
    ``output_dir/metrics.json`` when ``output_dir`` is given. Returns the metrics dict."""
    from recdistill.teacher.hllm import load_teacher

    module = load_teacher(module_or_dir) if isinstance(module_or_dir, (str, Path)) else module_or_dir
    module.eval()
    split = datamodule.split
    counts = torch.from_numpy(split.item_train_counts())
    result: dict[str, Any] = {}
    long_tail: dict[str, Any] = {"threshold": int(long_tail_threshold),
                                 "definition": "target item has <= threshold training interactions"}
    one_pass = hasattr(module, "encode") and hasattr(module, "score_items")
    if one_pass:  # the teacher and each of its parts from one LLM pass per split
        parts = _evaluate_parts(module, datamodule, splits=splits, ks=ks, mask_seen=mask_seen,
                                long_tail_threshold=long_tail_threshold,
                                grid=getattr(module, "fusion_alpha", None) is not None)
        scored = {which: (parts["teacher"][which], parts["teacher"][f"long_tail_{which}"]) for which in splits}
    else:
        parts, scored = {"grid": []}, {}
        for which in splits:
            acc = _rank_split(module, datamodule.dataloader(which), ks, mask_seen)
            scored[which] = (_sliced(acc, counts, ks), _long_tail(acc, counts, long_tail_threshold, ks))
    for which in splits:
        result[which], long_tail[which] = scored[which]
    result["long_tail"] = long_tail
    fusion: dict[str, Any] = {}
    alpha = getattr(module, "fusion_alpha", None)
    if alpha is not None:  # an ensemble teacher: each part alone, for the record
        fusion.update({"alpha": float(alpha),
                       "definition": "alpha * LLM teacher logits + (1 - alpha) * collaborative logits"})
        if hasattr(module, "collab_gate_count"):  # chosen on validation with alpha
            fusion["collaborative_gate_count"] = float(module.collab_gate_count)
        fusion["llm_only"] = parts["llm_only"]
        fusion["collaborative_only"] = parts["collaborative_only"]
        fusion["grid"] = parts["grid"]
    if hasattr(module, "mixture_pi"):  # the slice mixture chosen after fitting (NaN pi: not kept)
        active = bool(module.mixture_active())
        fusion["slice_mixture"] = {
            "active": active,
            "definition": "log pi + l/tau - lse_C(l/tau) for items with < max_count training interactions, "
                          "log(1 - pi) + l - lse_W(l) for the rest; l = the fused logits",
            **({"max_count": float(module.mixture_max_count), "tau": float(module.mixture_tau),
                "pi": float(module.mixture_pi)} if active else {}),
            **({"without": {which: parts["without_slice_mixture"][which] for which in splits}}
               if "without_slice_mixture" in parts else {})}
    if "content_only" in parts:  # the text vectors alone (the cold-item path)
        fusion["content_only"] = {
            "definition": "scale * cosine(user, text vector): no residual, collaborative part or bias",
            **{which: parts["content_only"][which] for which in splits}}
    if fusion:
        result["fusion"] = fusion
    text_emb = getattr(module, "item_text_emb", None)  # frozen LLM item embeddings (fusion / frozen tables)
    baselines = evaluate_baselines(datamodule, splits=splits, ks=ks, mask_seen=mask_seen)
    if text_emb is not None:
        result["untuned_llm"] = evaluate_untuned_llm(text_emb, datamodule, splits=splits, ks=ks, mask_seen=mask_seen)
        baselines["untuned_llm"] = result["untuned_llm"]
    result["baselines"] = baselines
    result["num_parameters"] = int(sum(p.numel() for p in module.parameters()))
    result["trainable_parameters"] = int(sum(p.numel() for p in module.parameters() if p.requires_grad))
    result["protocol"] = "full ranking, leave-one-out, " + ("seen items masked" if mask_seen else "seen items not masked")
    if latency:
        result["latency"] = measure_latency(module, datamodule.dataloader("test"), num_users=latency_users)
    result["dataset_fingerprint"] = split.fingerprint
    ref = getattr(module, "base_ref", None)
    if ref is not None:
        result["base_model"] = ref.to_dict()
    if output_dir is not None:
        atomic_write_json(Path(output_dir) / "metrics.json", result)
    return result
