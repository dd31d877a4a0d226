"""The planted text set's Bayes bounds in the teacher benchmark: oracle rows and the cold/warm frontier.

:func:`planted_bounds` scores the generator's Bayes oracle (:mod:`recdistill.data.planted_oracle`)
on a seed's regenerated data; :func:`render_bounds` writes the per-seed table of what any ranker
can reach (the warm NDCG@10 the frontier keeps at the TF-IDF's and at the teacher's cold NDCG@10).
"""

from __future__ import annotations

from typing import Any

from recdistill.benchmarks.teacher_planted import NUM_ITEMS, NUM_USERS, _test

__all__ = ["planted_bounds", "render_bounds"]


def planted_bounds(seed: int, fingerprint: str | None = None) -> dict[str, Any]:
    """The Bayes oracle of seed ``seed``'s planted data (:mod:`recdistill.data.planted_oracle`): its
    overall-optimal and warm-only rankings as models, and the test cold/warm frontier.

    ``fingerprint`` (the teacher eval's ``dataset_fingerprint``) guards against a generator that
    changed since the runs were made: the oracle would then describe other data."""
    from recdistill.data.planted_oracle import oracle_frontier, oracle_metrics, planted_target_probabilities
    from recdistill.data.planted_text import planted_text_interactions
    from recdistill.data.sequential import build_sequential_split

    data = planted_text_interactions(NUM_USERS, NUM_ITEMS, seed=seed)
    split = build_sequential_split(data)
    if fingerprint is not None and split.fingerprint != fingerprint:
        raise ValueError(f"the planted data of seed {seed} no longer matches the one the runs used (fingerprint "
                         f"{split.fingerprint[:12]} vs {fingerprint[:12]}): re-run the benchmark's seed")
    models: dict[str, dict[str, Any]] = {"bayes_oracle": {}, "bayes_oracle_warm": {}}
    frontier: list[dict[str, float]] = []
    for which in ("valid", "test"):
        probabilities, targets = planted_target_probabilities(data, split, which)
        for key, weights in (("bayes_oracle", (1.0, 1.0, 1.0)), ("bayes_oracle_warm", (0.0, 0.0, 1.0))):
            m = oracle_metrics(probabilities, targets, split, which, weights)
            models[key][which] = {"overall": m["ndcg@10"], "hr@10": m["hr@10"],
                                  "counts": {s: v["num_examples"] for s, v in m["slices"].items()},
                                  **{s: v["ndcg@10"] for s, v in m["slices"].items() if "ndcg@10" in v}}
        if which == "test":
            frontier = oracle_frontier(probabilities, targets, split, which)
    return {"models": models, "frontier": frontier}


def render_bounds(runs: list[dict[str, Any]]) -> list[str]:
    """Per seed: how far any ranker can go on warm targets while it ranks cold ones (the Bayes frontier)."""
    from recdistill.data.planted_oracle import best_warm_at_cold

    have = [r for r in runs if r.get("oracle_frontier") and "teacher" in r["models"]]
    if not have:
        return []
    lines = ["", "What any ranker can reach (test NDCG@10, per seed). The Bayes frontier ranks by the generator's "
             "probabilities with cold items weighted by λ (rare by 0): no ranker has more warm NDCG at a given "
             "cold NDCG, in expectation (`recdistill.data.planted_oracle`).", "",
             "| seed | SASRec warm | Bayes warm-only | frontier warm at cold ≥ TF-IDF's | teacher cold / warm "
             "| frontier warm at the teacher's cold |", "|---:|---|---|---|---|---|"]
    for r in have:
        frontier, tfidf, teacher = r["oracle_frontier"], _test(r, "text_tfidf", "cold"), r["models"]["teacher"]["test"]
        at_tfidf = None if tfidf is None else best_warm_at_cold(frontier, tfidf)
        at_teacher = best_warm_at_cold(frontier, teacher["cold"])
        sasrec = _test(r, "sasrec", "warm")
        lines.append(f"| {r['seed']} | {_fmt(sasrec)} | {_fmt(_test(r, 'bayes_oracle_warm', 'warm'))} | "
                     f"{_fmt(at_tfidf)} | {teacher['cold']:.3f} / {teacher['warm']:.3f} | {_fmt(at_teacher)} |")
    return lines


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
