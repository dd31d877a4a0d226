"""``recdistill bench teacher``: the LLM teacher recipe over seeds, its ablations and its budget.

For each seed: train the collaborative model the recipe builds on (``ml100k_sasrec_windows``,
the same runs as ``recdistill bench students`` so they are shared), fit the teacher on top of it,
evaluate it (valid/test, long tail, untuned LLM, latency). Ablations (seed 0 only) switch one
ingredient off. Writes ``teacher.json`` + ``teacher.md`` and, with ``readme``, the README table
between ``<!-- bench:teacher:start -->`` and ``<!-- bench:teacher:end -->``. Runs whose recipe and
arguments are unchanged are reused, so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from recdistill.atomic import sha256_file, write_json, write_text
from recdistill.benchmarks.formatting import median_range
from recdistill.benchmarks.students import update_readme
from recdistill.pipeline import run_stage
from recdistill.recipes import recipe_path

TEACHER_RECIPE = "ml100k_teacher_smollm2"
COLLABORATIVE = "sasrec_windows"
ABLATIONS: dict[str, list[str]] = {
    "LLM reads item text only (no collaborative item embeddings)": ["--model.collaborative_embeddings=null"],
    "LLM layers randomly initialised": ["--model.random_init_layers=true"],
    "joint fusion (LLM trained on the CF model's residual)": ["--model.collaborative_fusion=joint"],
}
README_MARKERS = ("<!-- bench:teacher:start -->", "<!-- bench:teacher:end -->")


def run_teacher_benchmark(output_dir: str | Path = "benchmarks/results", seeds: list[int] | None = None,
                          recipe: str = TEACHER_RECIPE, ablations: bool = True,
                          overrides: list[str] | None = None, readme: str | Path | None = None,
                          dataset: str = "ml100k", ablation_seeds: list[int] | None = None,
                          ablation_names: list[str] | None = None) -> dict[str, Any]:
    """Run the teacher benchmark; ``dataset="planted"`` runs :mod:`recdistill.benchmarks.teacher_planted`.
    Ablations run on ``ablation_seeds`` (default: the first seed); ``ablation_names`` picks some of
    :data:`ABLATIONS` (default: all)."""
    if dataset == "planted":
        from recdistill.benchmarks.teacher_planted import run_planted_teacher_benchmark

        return run_planted_teacher_benchmark(output_dir, seeds=seeds, overrides=overrides, readme=readme)
    if dataset != "ml100k":
        raise ValueError(f"unknown teacher benchmark dataset {dataset!r}; use ml100k or planted")
    output_dir = Path(output_dir)
    seeds = seeds if seeds else [0]
    started = time.time()
    runs: list[dict[str, Any]] = []
    plan = [("teacher", seed, []) for seed in seeds]
    if ablations:
        unknown = sorted(set(ablation_names or []) - set(ABLATIONS))
        if unknown:
            raise ValueError(f"unknown teacher ablation(s) {unknown}; known: {sorted(ABLATIONS)}")
        chosen = {n: a for n, a in ABLATIONS.items() if ablation_names is None or n in ablation_names}
        plan += [(name, seed, args) for name, args in chosen.items() for seed in (ablation_seeds or seeds[:1])]
    for variant, seed, extra in plan:
        collab = _collaborative_run(output_dir, seed)
        slug = "teacher" if variant == "teacher" else "ablation-" + _slug(extra[0])
        run_dir = output_dir / "runs" / f"{slug}-seed{seed}"
        args = [f"--seed_everything={seed}", f"--model.collaborative_model={collab / 'student'}",
                f"--model.collaborative_embeddings={collab / 'student'}", *(overrides or []), *extra]
        inputs = {"recipe": recipe_path(recipe).read_text(), "args": args,
                  # keyed on the collaborative weights, not the run name: a retrained SASRec refits
                  "collaborative": sha256_file(collab / "student" / "model.safetensors")}
        result = run_stage(f"{slug}-seed{seed}", run_dir, inputs,
                           lambda d, args=args: _fit_and_evaluate(recipe, d, args))
        runs.append({"variant": variant, "seed": seed, **result})
        write_json(output_dir / "teacher.json", _payload(runs, seeds, started, output_dir))
    payload = _payload(runs, seeds, started, output_dir)
    write_json(output_dir / "teacher.json", payload)
    markdown = render_markdown(payload)
    write_text(output_dir / "teacher.md", markdown)
    if readme is not None:
        update_readme(readme, markdown, markers=README_MARKERS)
    return payload


def _slug(arg: str) -> str:
    key = arg.lstrip("-").split("=")[0].split(".")[-1]
    return key.replace("_", "-")


def _collaborative_run(output_dir: Path, seed: int) -> Path:
    """The SASRec run the teacher builds on; identical to the student benchmark's run."""
    from recdistill.student.fit import fit_student

    name = COLLABORATIVE
    run_dir = output_dir / "runs" / f"{name}-seed{seed}"
    args = [f"--seed_everything={seed}"]
    inputs = {"recipe": recipe_path(f"ml100k_{name}").read_text(), "args": args}
    run_stage(f"{name}-seed{seed}", run_dir, inputs, lambda d: fit_student(f"ml100k_{name}", d, args))
    return run_dir


def _fit_and_evaluate(recipe: str, directory: Path, args: list[str]) -> dict[str, Any]:
    from recdistill.teacher.cli import run_teacher_command

    start = time.perf_counter()
    run_teacher_command("fit", recipe, directory, args)
    fit_wall = time.perf_counter() - start
    start = time.perf_counter()
    run_teacher_command("eval", recipe, directory, args)
    eval_wall = time.perf_counter() - start
    fit = json.loads((directory / "fit.json").read_text())
    metrics = json.loads((directory / "metrics.json").read_text())
    return {
        "valid": metrics["valid"], "test": metrics["test"], "long_tail": metrics["long_tail"],
        "untuned_llm": metrics.get("untuned_llm"), "latency": metrics.get("latency"),
        "trainable_parameters": metrics["trainable_parameters"], "num_parameters": metrics["num_parameters"],
        "fusion": metrics.get("fusion"),
        "best_epoch": fit["best_epoch"], "epochs_run": fit["epochs_run"],
        "valid_curve": [h.get("valid/ndcg@10") for h in fit["history"]],
        "fit_seconds": round(fit_wall, 1), "eval_seconds": round(eval_wall, 1),
        "threads": torch.get_num_threads(), "args": args,
    }


def _students_reference(output_dir: Path) -> dict[str, Any]:
    path = output_dir / "students.json"
    if not path.is_file():
        return {}
    payload = json.loads(path.read_text())
    out: dict[str, Any] = {"most_popular": payload.get("most_popular")}
    for name in ("sasrec", COLLABORATIVE):  # by the recipe that trained the runs (older payloads: the student's)
        runs = [r for r in payload["runs"] if r.get("recipe", f"ml100k_{r['student']}") == f"ml100k_{name}"]
        if runs:
            out[name] = {"seeds": [r["seed"] for r in runs], "valid_ndcg@10": [r["valid"]["ndcg@10"] for r in runs],
                         "test_ndcg@10": [r["test"]["ndcg@10"] for r in runs],
                         "test_hr@10": [r["test"]["hr@10"] for r in runs]}
    return out


def _payload(runs: list[dict[str, Any]], seeds: list[int], started: float, output_dir: Path) -> dict[str, Any]:
    return {
        "benchmark": "teacher",
        "dataset": "movielens-100k",
        "recipe": TEACHER_RECIPE,
        "protocol": "leave-one-out by time, full ranking, earlier items masked, best epoch selected on validation",
        "seeds": seeds,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__,
        "wall_seconds": round(time.time() - started, 1),
        "students": _students_reference(output_dir),
        "runs": runs,
    }


def _spread(values: list[float]) -> str:
    return median_range(values, 4)


SLICES = ("cold", "rare", "warm")


def _has_slices(metrics: dict[str, Any]) -> bool:
    return all(f"{name}/ndcg@10" in metrics for name in SLICES)


def _view(run: dict[str, Any], part: str | None) -> dict[str, Any]:
    """``{"valid", "test", "tail"}`` of a run, or of one part of a fused teacher (``llm_only`` ...)."""
    if part is None:
        return {"valid": run["valid"], "test": run["test"], "tail": run.get("long_tail", {}).get("test", {})}
    p = run["fusion"][part]
    return {"valid": p["valid"], "test": p["test"], "tail": p.get("long_tail_test", {})}


def _slice_counts(runs: list[dict[str, Any]]) -> dict[str, int]:
    """Test targets per slice (the split is the same for every seed on ML-100K): from the first run with slices."""
    for run in runs:
        if _has_slices(run["test"]):
            return {name: int(run["test"].get(f"{name}/count", 0)) for name in SLICES}
    return {}


def _row(label: str, runs: list[dict[str, Any]], part: str | None = None, long_tail: bool = True) -> str:
    """One table row; ``part`` = ``llm_only`` / ``collaborative_only`` reads that part of a fused teacher.

    Slice cells (cold / rare / warm test NDCG@10) are ``-`` for runs evaluated before slices existed;
    ``long_tail`` adds the older cold+rare (<= 10 interactions) column."""
    rows = [_view(r, part) for r in runs]
    sliced = [r["test"] for r in rows if _has_slices(r["test"])]
    slices = [_spread([m[f"{name}/ndcg@10"] for m in sliced]) for name in SLICES]
    tail = [_spread([r["tail"].get("ndcg@10", 0.0) for r in rows])] if long_tail else []
    # a joint-fusion teacher has a fusion record (its content-only part) but no alpha
    alphas = [r["fusion"]["alpha"] for r in runs if "alpha" in (r.get("fusion") or {})] if part is None else []
    alpha = ", ".join(f"{a:.1f}" for a in alphas) if alphas else "-"
    minutes = (f"{statistics.median(r['fit_seconds'] for r in runs) / 60:.1f}"
               if part is None and all("fit_seconds" in r for r in runs) else "-")
    cells = [_spread([r["valid"]["ndcg@10"] for r in rows]), _spread([r["test"]["ndcg@10"] for r in rows]),
             _spread([r["test"]["hr@10"] for r in rows]), *slices, *tail, alpha, minutes]
    return f"| {label} | " + " | ".join(cells) + " |"


def render_markdown(payload: dict[str, Any]) -> str:
    seeds = payload["seeds"]
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for run in payload["runs"]:
        by_variant.setdefault(run["variant"], []).append(run)
    teacher = by_variant.get("teacher", [])
    n_tail = teacher[0]["long_tail"]["test"]["num_examples"] if teacher else 0
    threads = teacher[0]["threads"] if teacher else "-"
    counts = _slice_counts(teacher)
    # the older cold+rare column stays while any run predates the cold / rare / warm slices
    long_tail = any(not _has_slices(r["test"]) for r in payload["runs"])
    slice_head = [f"{name} test NDCG@10" + (f" (n={counts[name]})" if counts else "") for name in SLICES]
    head = ["model", "valid NDCG@10", "test NDCG@10", "test HR@10", *slice_head,
            *([f"long tail (cold+rare, n={n_tail}) test NDCG@10"] if long_tail else []), "alpha", "fit min"]
    note = (f" Long tail = the {n_tail} test targets with <= 10 training interactions (cold + rare); runs "
            f"evaluated before the cold / rare / warm slices existed show `-` there." if long_tail else "")
    lines = [
        f"Teacher `{payload['recipe']}` on MovieLens-100K ({payload['protocol']}); median (min–max) over "
        f"seeds {seeds}, ablations on seed {seeds[0]}; torch {payload['torch']}, CPU, {threads} thread(s). "
        f"Slices by the test target's training interactions: cold 0, rare 1–10, warm > 10.{note} alpha = the "
        f"LLM's weight in the logit mixture, chosen on validation. fit min = wall minutes of `recdistill teacher "
        f"fit`. Reproduce: `make bench-teacher` (after `make bench`).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    blank = " | ".join(["-"] * (len(head) - 4))
    students = payload.get("students") or {}
    for name, label in (("sasrec", "SASRec, student recipe (last window)"),
                        (COLLABORATIVE, "SASRec, all windows = the teacher's CF part")):
        ref = students.get(name)
        if ref:
            lines.append(f"| {label} | {_spread(ref['valid_ndcg@10'])} | {_spread(ref['test_ndcg@10'])} | "
                         f"{_spread(ref['test_hr@10'])} | {blank} |")
    if teacher:
        if "llm_only" in (teacher[0].get("fusion") or {}):
            lines.append(_row("the teacher's CF part (SASRec, all windows) as evaluated beside it", teacher,
                              "collaborative_only", long_tail))
            lines.append(_row("SmolLM2 + LoRA teacher alone (the LLM part)", teacher, "llm_only", long_tail))
        lines.append(_row("**hybrid teacher: LLM + CF logit mixture**", teacher, long_tail=long_tail))
        untuned = [r["untuned_llm"]["test"]["ndcg@10"] for r in teacher if r.get("untuned_llm")]
        if untuned:
            lines.append(f"| untuned SmolLM2 (item-text cosine to the last 5 items) | - | {_spread(untuned)} | - | "
                         f"{blank} |")
    for variant, runs in by_variant.items():
        if variant == "teacher":
            continue
        lines.append(_row(f"ablation: {variant}", runs, long_tail=long_tail))
        if "llm_only" in (runs[0].get("fusion") or {}):  # an ensemble: its LLM part alone too
            lines.append(_row(f"ablation: {variant}, LLM part", runs, "llm_only", long_tail))
    return "\n".join(lines) + "\n"
