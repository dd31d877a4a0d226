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
