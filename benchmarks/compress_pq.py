"""The PQ stage of ``recdistill bench compress``: post-hoc PQ and RecJPQ joint training of the item
table (``recipes/compress_sasrec_pq.yaml``'s ``pq`` and ``pq_joint`` steps) in their own run folder
(``runs/pq-<student>-seed<seed>``), so they can be re-run (``--pq-only``) without the other steps;
their variants replace the student's PQ rows, and the PQ target judges the best validated one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recdistill.atomic import sha256_file
from recdistill.pipeline import run_stage
from recdistill.recipes import recipe_path


def pq_config(name: str) -> dict[str, Any]:
    """The PQ-only compress config (post-hoc ``pq`` and RecJPQ ``pq_joint`` steps) for its own stage."""
    import yaml

    from recdistill.benchmarks.compress import compress_config

    full = yaml.safe_load(recipe_path("compress_sasrec_pq").read_text())
    config = compress_config(name)
    config["steps"] = {k: full["steps"][k] for k in ("pq", "pq_joint") if k in full["steps"]}
    return config


def pq_run(output_dir: Path, name: str, seed: int, student_dir: Path) -> dict[str, Any]:
    """The PQ stage (``runs/pq-<name>-seed<seed>``), reused when its config and parent are unchanged."""
    from recdistill.compress.pipeline import run_compress

    config = pq_config(name)
    for step in config["steps"].values():
        step["seed"] = seed
    run_dir = output_dir / "runs" / f"pq-{name}-seed{seed}"
    inputs = {"config": config, "student_sha256": sha256_file(student_dir / "model.safetensors")}
    summary = run_stage(run_dir.name, run_dir, inputs, lambda d: run_compress(student_dir, config, d))
    return {**summary, "run_dir": str(run_dir)}


def merge_pq(entry: dict[str, Any], pq: dict[str, Any]) -> None:
    """Replace the student's PQ variants by those of the PQ stage (same parent, same gate)."""
    names = {v["name"] for v in pq["variants"] if v["name"].startswith("pq_")}
    compress = entry["compress"]
    compress["variants"] = [v for v in compress["variants"] if v["name"] not in names and
                            not v["name"].startswith("pq_joint_")] + \
        [dict(v, stage=pq["run_dir"]) for v in pq["variants"] if v["name"] in names]
    if "pq_joint_choice" in pq:
        compress["pq_joint_choice"] = pq["pq_joint_choice"]
    compress["pq_run_dir"] = pq["run_dir"]


def best_pq(entry: dict[str, Any], min_ratio: float = 8.0) -> dict[str, Any] | None:
    """The PQ variant (post-hoc ``pq_item_table`` or RecJPQ ``pq_joint_*``) with the best validation
    NDCG@10 among those whose item table is at least ``min_ratio`` x smaller (else among all)."""
    pqs = [v for v in entry["compress"]["variants"] if v["name"] == "pq_item_table" or v["name"].startswith("pq_joint_")]
    small = [v for v in pqs if ((v.get("pq") or {}).get("item_table_ratio") or 0) >= min_ratio] or pqs
    if not small:
        return None
    return max(small, key=lambda v: v.get("valid_ndcg10") if v.get("valid_ndcg10") is not None else float("-inf"))


def seed_summary(pq: dict[str, Any]) -> dict[str, Any]:
    """One seed's PQ stage in brief: the parent's test NDCG@10, every PQ variant (item table times
    smaller, valid / test NDCG@10, ratio to the parent) and the variant chosen on validation (>= 8x)."""
    variants = [{"name": v["name"], "item_table_ratio": (v.get("pq") or {}).get("item_table_ratio"),
                 "valid_ndcg10": v.get("valid_ndcg10"), "ndcg10": v.get("ndcg10"),
                 "ndcg10_ratio": v.get("ndcg10_ratio"), "top10_overlap": v.get("top10_overlap")}
                for v in pq["variants"] if v["name"] == "pq_item_table" or v["name"].startswith("pq_joint_")]
    chosen = best_pq({"compress": {"variants": pq["variants"]}})
    return {"run_dir": pq["run_dir"], "parent_ndcg10": (pq.get("parent") or {}).get("ndcg@10"),
            "variants": variants, "chosen": None if chosen is None else chosen["name"]}


def pq_seeds_target(seeds: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The PQ target over seeds: the median, over seeds, of the test NDCG@10 ratio of each seed's
    validation-chosen variant (>= 8x smaller item table), with every seed's value."""
    import statistics

    per_seed = {}
    for seed, summary in seeds.items():
        chosen = next((v for v in summary["variants"] if v["name"] == summary["chosen"]), None)
        if chosen is not None and chosen.get("ndcg10_ratio") is not None:
            per_seed[seed] = (chosen["name"], chosen["ndcg10_ratio"], chosen.get("item_table_ratio"))
    if not per_seed:
        return None
    median = statistics.median(r for _, r, _ in per_seed.values())
    return {"median_ndcg10_ratio": median, "per_seed": per_seed,
            "min_item_table_ratio": min((t for _, _, t in per_seed.values() if t is not None), default=None)}


def render_pq_seeds(seeds: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown lines: every PQ variant's test NDCG@10 ratio to its parent per seed, and its median."""
    from recdistill.benchmarks.formatting import median_range

    if not seeds:
        return []
    order = sorted(seeds, key=int)
    names = list(dict.fromkeys(v["name"] for s in order for v in seeds[s]["variants"]))
    lines = ["", f"SASRec item-table PQ over seeds {', '.join(order)} (each seed: its own plain parent, "
             f"`sasrec_windows-seed<s>`; test NDCG@10 of the variant / its parent's; in bold the variant "
             "chosen on validation NDCG@10 among those >= 8x smaller):", "",
             "| variant | item table x smaller | " + " | ".join(f"seed {s} valid / test / ratio" for s in order)
             + " | median ratio (min–max) |", "|---|---:|" + "---:|" * len(order) + "---:|"]
    for name in names:
        cells, ratios, times = [], [], None
        for s in order:
            v = next((x for x in seeds[s]["variants"] if x["name"] == name), None)
            if v is None:
                cells.append("-")
                continue
            times = v.get("item_table_ratio") or times
            ratios.append(v["ndcg10_ratio"])
            cell = f"{v['valid_ndcg10']:.4f} / {v['ndcg10']:.4f} / {v['ndcg10_ratio']:.3f}"
            cells.append(f"**{cell}**" if seeds[s]["chosen"] == name else cell)
        lines.append(f"| {name} | {'-' if times is None else f'{times:.1f}'} | " + " | ".join(cells) +
                     f" | {median_range(ratios, 3)} |")
    parents = ", ".join(f"seed {s} {seeds[s]['parent_ndcg10']:.4f}" for s in order if seeds[s]['parent_ndcg10'])
    lines += ["", f"fp32 parents' test NDCG@10: {parents}."]
    return lines
