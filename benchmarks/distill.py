"""``recdistill bench distill``: vanilla vs distilled students on MovieLens-100K, JSON + Markdown.

Protocol: the teacher recipe (hybrid SmolLM2 + SASRec, ``ml100k_teacher_smollm2``) is fitted and
emitted once per teacher seed (default: seed 0) on top of the SASRec run of the same seed; every
variant is trained on the first seed, and the variant with the best validation NDCG@10 (never test)
is then trained on every seed. The vanilla row is the
strongest plain student of the same size and data (``ml100k_sasrec_windows``: every window of
every history), which is also the teacher's collaborative part. A control teacher with randomly
initialised LLM layers (no language-model knowledge) is distilled with the best combination, so
the table shows what the LLM itself adds. Rows report the median over seeds and the min–max
spread, test NDCG@10 / HR@10 overall and on cold (0 training interactions), rare (1–10) and warm
targets, and seconds per epoch. Selection is on validation only.
"""

from __future__ import annotations

import json
import platform
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
DISTILL_RECIPE = "ml100k_sasrec_dllm2rec"
VANILLA = "ml100k_sasrec_windows"
README_MARKERS = ("<!-- bench:distill:start -->", "<!-- bench:distill:end -->")
CONTROL_SUFFIX = ", control teacher (random-init LLM layers)"  # a variant distilled from the control teacher


def _terms(*terms: dict[str, Any]) -> str:
    return "--model.terms=" + json.dumps(list(terms))


# variant name -> overrides of the distillation recipe
VARIANTS: dict[str, list[str]] = {
    "RD (top-10)": [_terms({"name": "rd", "weight": 1.0, "top_k": 10, "params": {"student_output": "softmax"}}), "--model.embedding_fusion=null"],
    "DLLM2Rec ranking (top-10)": ["--model.embedding_fusion=null"],
    "DLLM2Rec ranking + embedding": [],
    "soft-label KL (full catalogue, tau 2)": [
        _terms({"name": "soft_kl", "weight": 1.0, "params": {"temperature": 2.0, "source": "full"}}),
        "--model.embedding_fusion=null"],
    "hidden-state (cosine)": [
        _terms({"name": "hidden_state", "weight": 0.1, "params": {"metric": "cosine"}}),
        "--model.embedding_fusion=null"],
    "contrastive (InfoNCE)": [
        _terms({"name": "contrastive", "weight": 0.01}), "--model.embedding_fusion=null"],
    "item table from teacher (PCA)": [
        "--model.terms=[]", "--model.embedding_fusion=null", "--model.item_embedding_init=pca"],
    "teacher pseudo-interactions (top-3 unseen, w 0.1)": [
        _terms({"name": "augment", "weight": 0.1, "top_k": 10, "params": {"m": 3}}), "--model.embedding_fusion=null"],
    "DLLM2Rec ranking + embedding + hidden-state": [
        _terms({"name": "dllm2rec", "weight": 0.8, "top_k": 10,
                "params": {"gamma": [0.3, 0.5, 0.1], "distance": "cosine", "student_output": "softmax"}},
               {"name": "hidden_state", "weight": 0.1, "params": {"metric": "cosine"}})],
}


def run_distill_benchmark(output_dir: str | Path = "benchmarks/results", seeds: list[int] | None = None,
                          teacher_seeds: list[int] | None = None, variants: list[str] | None = None,
                          control: bool = True, overrides: list[str] | None = None,
                          readme: str | Path | None = None) -> dict[str, Any]:
    from recdistill.benchmarks.teacher import _collaborative_run

    output_dir = Path(output_dir)
    seeds = seeds or [0]
    teacher_seeds = teacher_seeds or [0]
    names = variants or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown distillation variant(s) {unknown}; known: {list(VARIANTS)}")
    started = time.time()
    runs: list[dict[str, Any]] = []
    teachers = {seed: _teacher_run(output_dir, seed, []) for seed in teacher_seeds}
    for seed in seeds:  # the vanilla baseline is the teacher's own collaborative run
        vanilla = _collaborative_run(output_dir, seed)
        runs.append({**json.loads((vanilla / "metrics.json").read_text()), "variant": "vanilla", "seed": seed})

    def distil(name: str, seed: int, teacher: dict[str, Any], extra: list[str]) -> dict[str, Any]:
        metrics = _distil_run(output_dir, name, seed, teacher, [*extra, *(overrides or [])])
        runs.append({**metrics, "variant": name, "seed": seed})
        write_json(output_dir / "distill.json", _payload(runs, seeds, teachers, started, best))
        return metrics

    # 1. every variant on the first seed; 2. the best on validation (never test) on every seed
    teacher = teachers[teacher_seeds[0]]
    best: str | None = None
    screen = {name: distil(name, seeds[0], teacher, VARIANTS[name]) for name in names}
    best = max(screen, key=lambda name: screen[name]["valid"]["ndcg@10"])
    for seed in seeds[1:]:
        distil(best, seed, teacher, VARIANTS[best])
    if control:  # last: the most expensive part that is not a distilled student
        teachers["control"] = _teacher_run(output_dir, teacher_seeds[0], ["--model.random_init_layers=true"])
        for seed in seeds:
            distil(f"{best}{CONTROL_SUFFIX}", seed, teachers["control"], VARIANTS[best])
    payload = _payload(runs, seeds, teachers, started, best)
    write_json(output_dir / "distill.json", payload)
    markdown = render_markdown(payload)
    write_text(output_dir / "distill.md", markdown)
    if readme is not None:
        update_readme(readme, markdown, markers=README_MARKERS)
    return payload


def _distil_run(output_dir: Path, name: str, seed: int, teacher: dict[str, Any], extra: list[str]) -> dict[str, Any]:
    """Train (or reuse, when recipe, arguments and teacher are unchanged) one distilled student."""
    from recdistill.distill.fit import fit_distilled

    args = [f"--seed_everything={seed}", f"--model.signals={teacher['signals']}", *extra]
    slug = _slug(name)
    run_dir = output_dir / "runs" / f"distill-{slug}-seed{seed}"
    inputs = {"recipe": recipe_path(DISTILL_RECIPE).read_text(), "args": args, "teacher": teacher["digest"]}
    return run_stage(f"distill-{slug}-seed{seed}", run_dir, inputs, lambda d: fit_distilled(DISTILL_RECIPE, d, args))


def screen_variant(name: str, seed: int = 0, output_dir: str | Path = "benchmarks/results",
                   readme: str | Path | None = None) -> dict[str, Any]:
    """Add one variant's run to an existing ``distill.json`` without rerunning the others: the
    teacher of seed 0 is read from its recorded stage (never refitted; missing -> error), the run is
    trained (or reused), replaces any earlier run of the same variant and seed, and ``distill.md``
    (and the README block, if given) is re-rendered. ``best_on_validation`` is left as it was.
    ``name`` may end in :data:`CONTROL_SUFFIX`: the variant distilled from the recorded control
    teacher (random-init LLM layers) instead, as ``run_distill_benchmark`` names those rows."""
    output_dir = Path(output_dir)
    base, control = (name.removesuffix(CONTROL_SUFFIX), True) if name.endswith(CONTROL_SUFFIX) else (name, False)
    if base not in VARIANTS:
        raise ValueError(f"unknown distillation variant {name!r}; known: {list(VARIANTS)} "
                         f"(each may end in {CONTROL_SUFFIX!r})")
    stage = output_dir / "runs" / f"distill-teacher{'-control' if control else ''}-seed0" / "stage.json"
    if not stage.is_file():
        raise FileNotFoundError(f"{stage} is missing: run `recdistill bench distill` first (it fits the "
                                f"{'control ' if control else ''}teacher)")
    teacher = json.loads(stage.read_text())["outputs"]
    metrics = _distil_run(output_dir, name, seed, teacher, VARIANTS[base])
    payload = json.loads((output_dir / "distill.json").read_text())  # read after the run: others may have added theirs
    payload["runs"] = [r for r in payload["runs"] if (r.get("variant"), r.get("seed")) != (name, seed)]
    payload["runs"].append({**metrics, "variant": name, "seed": seed})
    write_json(output_dir / "distill.json", payload)
    markdown = render_markdown(payload)
    write_text(output_dir / "distill.md", markdown)
    if readme is not None:
        update_readme(readme, markdown, markers=README_MARKERS)
    return metrics


def _override_model(model: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """The recipe's model section with a variant's ``--model.key=value`` overrides applied."""
    import yaml

    out = dict(model)
    for item in overrides:
        key, _, value = item.partition("=")
        out[key.removeprefix("--model.")] = yaml.safe_load(value)
    return out


def _teacher_run(output_dir: Path, seed: int, extra: list[str]) -> dict[str, Any]:
    """Fit, evaluate and emit the teacher recipe for ``seed`` (reused when its inputs are unchanged)."""
    from recdistill.benchmarks.teacher import _collaborative_run, _fit_and_evaluate
    from recdistill.teacher.cli import run_teacher_command

    collab = _collaborative_run(output_dir, seed)
    tag = "-control" if extra else ""
    run_dir = output_dir / "runs" / f"distill-teacher{tag}-seed{seed}"
    args = [f"--seed_everything={seed}", f"--model.collaborative_model={collab / 'student'}",
            f"--model.collaborative_embeddings={collab / 'student'}", *extra]
    inputs = {"recipe": recipe_path(TEACHER_RECIPE).read_text(), "args": args,
                  # keyed on the collaborative weights, not the run name: a retrained SASRec refits
                  "collaborative": sha256_file(collab / "student" / "model.safetensors")}

    def work(directory: Path) -> dict[str, Any]:
        result = _fit_and_evaluate(TEACHER_RECIPE, directory, args)
        run_teacher_command("emit", str(recipe_path(TEACHER_RECIPE)), str(directory), args)
        manifest = json.loads((directory / "signals" / "manifest.json").read_text())
        return {**result, "signals": str(directory / "signals"), "digest": manifest.get("teacher")}

    return run_stage(f"distill-teacher{tag}-seed{seed}", run_dir, inputs, work)


def _slug(name: str) -> str:
    keep = "".join(c if c.isalnum() else "-" for c in name.lower())
    return "-".join(part for part in keep.split("-") if part)[:60]


def _payload(runs: list[dict[str, Any]], seeds: list[int], teachers: dict[Any, dict[str, Any]],
             started: float, best: str | None) -> dict[str, Any]:
    return {
        "best_on_validation": best,
        "benchmark": "distill",
        "dataset": "movielens-100k",
        "protocol": __doc__.split("\n\n", 1)[1].strip(),
        "seeds": seeds,
        "teachers": {str(k): {key: v.get(key) for key in ("test", "valid", "signals")} for k, v in teachers.items()},
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__,
        "wall_seconds": round(time.time() - started, 1),
        "runs": runs,
    }


def _values(runs: list[dict[str, Any]], *path: str) -> list[float]:
    out = []
    for run in runs:
        value: Any = run
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, (int, float)):
            out.append(float(value))
    return out


def _cell(runs: list[dict[str, Any]], *path: str, digits: int = 4) -> str:
    return median_range(_values(runs, *path), digits)


def render_markdown(payload: dict[str, Any]) -> str:
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for run in payload["runs"]:
        by_variant.setdefault(run["variant"], []).append(run)
    lines = [
        f"Distilled SASRec on MovieLens-100K (leave-one-out by time, full ranking, earlier items masked, "
        f"selected on validation); median (min–max) over the seeds run, torch {payload['torch']}, CPU; one "
        f"teacher (seed 0); every variant screened on seed 0, the validation-best "
        f"({payload.get('best_on_validation')}) on seeds {payload['seeds']}, others on the seeds counted in the "
        "row (`recdistill bench distill --add --variants NAME --seeds ...`). s/epoch is wall time per epoch with "
        "validation, on a shared machine (see the back-to-back epoch cost below). Reproduce: `make bench-distill`. "
        "With 943 test users a difference under about 0.01 NDCG@10 is noise.",
        "",
        "| model | seeds | valid NDCG@10 | test NDCG@10 | test HR@10 | cold NDCG@10 (n) | rare NDCG@10 (n) "
        "| warm NDCG@10 (n) | s/epoch | threads |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, teacher in payload["teachers"].items():
        test = teacher.get("test") or {}
        if test:
            name = "teacher (control: random-init LLM layers)" if key == "control" else f"teacher (seed {key})"
            valid = teacher.get("valid") or {}
            lines.append(f"| {name} | 1 | {valid.get('ndcg@10', float('nan')):.4f} "
                         f"| {test.get('ndcg@10', float('nan')):.4f} | {test.get('hr@10', float('nan')):.4f} "
                         f"| {_slice(test, 'cold')} | {_slice(test, 'rare')} | {_slice(test, 'warm')} | - | - |")
    for name, runs in by_variant.items():
        lines.append(
            f"| {name} | {len(runs)} | {_cell(runs, 'valid', 'ndcg@10')} | {_cell(runs, 'test', 'ndcg@10')} "
            f"| {_cell(runs, 'test', 'hr@10')} | "
            f"{_cell(runs, 'test', 'cold/ndcg@10')} ({_count(runs, 'cold')}) | "
            f"{_cell(runs, 'test', 'rare/ndcg@10')} ({_count(runs, 'rare')}) | "
            f"{_cell(runs, 'test', 'warm/ndcg@10')} ({_count(runs, 'warm')}) | "
            f"{_cell(runs, 'seconds_per_epoch', digits=2)} | {_cell(runs, 'threads', digits=0)} |")
    return "\n".join(lines) + "\n"


def _slice(metrics: dict[str, Any], name: str) -> str:
    value, count = metrics.get(f"{name}/ndcg@10"), metrics.get(f"{name}/count")
    return "-" if value is None else f"{value:.4f} ({int(count) if count is not None else '?'})"


def _count(runs: list[dict[str, Any]], name: str) -> str:
    values = _values(runs, "test", f"{name}/count")
    return str(int(values[0])) if values else "?"


__all__ = ["run_distill_benchmark", "screen_variant", "render_markdown", "VARIANTS"]
