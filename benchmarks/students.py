"""``recdistill bench students``: train every student on MovieLens-100K, write JSON + Markdown.

Reproduce the README table with ``make bench`` (seeds 0 1 2). Each row is a median over seeds;
the JSON keeps every run. Runs whose recipe and arguments are unchanged are reused, so an
interrupted benchmark continues where it stopped. Protocol: leave-one-out by time, full ranking, earlier items masked,
model selected on validation NDCG@10 (AUC for CTR).
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from recdistill.atomic import write_json, write_text
from recdistill.pipeline import run_stage
from recdistill.recipes import recipe_path

SEQUENTIAL = ["sasrec", "gru4rec", "caser", "bert4rec"]
#: a student whose recipe trains with the same settings as another recipe's (comments aside) reuses
#: that recipe's runs: ``ml100k_sasrec`` trains on every window like ``ml100k_sasrec_windows``, the
#: teacher's collaborative part, whose runs the teacher and compression benchmarks share
SAME_RUNS = {"sasrec": "sasrec_windows"}
CTR = ["deepfm", "dcnv2", "din"]
#: rows of the CTR table that are not students (``recdistill.ctr_baselines``), payload key -> label
CTR_BASELINES = {"gbdt": "GBDT + train-only target stats", "logistic": "one-hot logistic regression"}


def run_student_benchmark(output_dir: str | Path, students: list[str] | None = None,
                          seeds: list[int] | None = None, overrides: list[str] | None = None,
                          readme: str | Path | None = None) -> dict[str, Any]:
    from recdistill.baselines import most_popular_metrics
    from recdistill.data import SequentialDataModule
    from recdistill.student.fit import fit_student

    output_dir = Path(output_dir)
    seeds = seeds or [0]
    names = students or SEQUENTIAL + CTR
    runs: list[dict[str, Any]] = []
    started = time.time()
    for name in names:
        recipe = run_recipe(name)
        for seed in seeds:
            run_dir = output_dir / "runs" / f"{recipe}-seed{seed}"
            args = [f"--seed_everything={seed}", *(overrides or [])]
            inputs = {"recipe": recipe_path(f"ml100k_{recipe}").read_text(), "args": args}
            metrics = run_stage(f"{recipe}-seed{seed}", run_dir, inputs,
                                lambda d, recipe=recipe, args=args: fit_student(f"ml100k_{recipe}", d, args))
            runs.append({**metrics, "student": name, "recipe": f"ml100k_{recipe}", "architecture": metrics.get("student"),
                         "seed": seed})
            write_json(output_dir / "students.json", _payload(runs, seeds, started))
    datamodule = SequentialDataModule(dataset="movielens-100k")
    popular = {split: most_popular_metrics(datamodule, split) for split in ("valid", "test")}
    ctr_baselines = run_ctr_baselines() if any(name in CTR for name in names) else None
    payload = _payload(runs, seeds, started, popular, ctr_baselines)
    write_json(output_dir / "students.json", payload)
    markdown = render_markdown(payload)
    write_text(output_dir / "students.md", markdown)
    if readme is not None:
        update_readme(readme, markdown)
    return payload


def same_settings(first: str, second: str) -> bool:
    """Whether two recipes (names without ``ml100k_``) hold the same settings once parsed (comments aside)."""
    import yaml

    return yaml.safe_load(recipe_path(f"ml100k_{first}").read_text()) == \
        yaml.safe_load(recipe_path(f"ml100k_{second}").read_text())


def run_recipe(name: str) -> str:
    """The recipe whose runs stand for student ``name``: its own, or :data:`SAME_RUNS`'s when the two
    recipes hold the same settings."""
    other = SAME_RUNS.get(name)
    return other if other is not None and same_settings(name, other) else name


def run_ctr_baselines(dataset: str = "movielens-100k") -> dict[str, dict[str, Any]]:
    """The practitioner's CTR baselines on the students' CTR split (once per benchmark, seed-free
    apart from the GBDT's fixed folds): ``{"gbdt": {...}, "logistic": {...}}``, each with
    ``valid``/``test`` metrics, the hyper-parameters selected on validation and its fit seconds."""
    from recdistill.ctr_baselines import gbdt_baseline, logistic_baseline
    from recdistill.data import CTRDataModule

    datamodule = CTRDataModule(dataset=dataset)
    out: dict[str, dict[str, Any]] = {}
    for name, baseline in (("gbdt", gbdt_baseline), ("logistic", logistic_baseline)):
        began = time.time()
        out[name] = {**baseline(datamodule), "fit_seconds": round(time.time() - began, 1)}
    return out


README_START = "<!-- bench:students:start -->"
README_END = "<!-- bench:students:end -->"


def update_readme(readme: str | Path, markdown: str, markers: tuple[str, str] = (README_START, README_END)) -> None:
    """Replace the table between the bench ``markers`` of ``readme`` with ``markdown``."""
    start, end = markers
    path = Path(readme)
    text = path.read_text()
    if start not in text or end not in text:
        raise ValueError(f"{path} has no {start} ... {end} block to update")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    write_text(path, f"{head}{start}\n{markdown}{end}{tail}")


def _payload(runs: list[dict[str, Any]], seeds: list[int], started: float,
             popular: dict[str, dict[str, float]] | None = None,
             ctr_baselines: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "benchmark": "students",
        "dataset": "movielens-100k",
        "protocol": "leave-one-out by time, full ranking, earlier items masked, selected on validation",
        "seeds": seeds,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__,
        "wall_seconds": round(time.time() - started, 1),
        "most_popular": popular,
        "ctr_baselines": ctr_baselines,
        "runs": runs,
    }


def _median(runs: list[dict[str, Any]], *path: str) -> float:
    values = []
    for run in runs:
        value: Any = run
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            values.append(float(value))
    return statistics.median(values) if values else float("nan")


def _shared_recipes(runs: list[dict[str, Any]]) -> dict[str, str]:
    """``{student: recipe}`` for the rows trained from another recipe with the same settings."""
    return {r["student"]: r["recipe"] for r in runs
            if r.get("recipe") not in (None, f"ml100k_{r['student']}")}


def render_markdown(payload: dict[str, Any]) -> str:
    seeds = payload["seeds"]
    lines = [
        f"Students on MovieLens-100K ({payload['protocol']}); median over seeds {seeds}, torch "
        f"{payload['torch']}, CPU. s/epoch is wall time per epoch including validation, with the "
        f"torch thread count of each run. Reproduce: `make bench`."
        + "".join(f" The {name} row's runs are `{recipe}`'s (the same settings as `ml100k_{name}`)."
                  for name, recipe in _shared_recipes(payload["runs"]).items()),
        "",
        "| model | valid NDCG@10 | test HR@10 | test NDCG@10 | test MRR@10 | params | s/epoch | threads | epochs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    popular = payload.get("most_popular")
    if popular:
        lines.append(f"| MostPopular | {popular['valid']['ndcg@10']:.4f} | {popular['test']['hr@10']:.4f} | "
                     f"{popular['test']['ndcg@10']:.4f} | {popular['test']['mrr@10']:.4f} | 0 | - | - | - |")
    by_name: dict[str, list[dict[str, Any]]] = {}
    for run in payload["runs"]:
        by_name.setdefault(run["student"], []).append(run)
    ctr_rows = []
    for name, runs in by_name.items():
        if runs[0].get("task") == "ctr":
            ctr_rows.append((name, runs))
            continue
        lines.append(
            f"| {name} | {_median(runs, 'valid', 'ndcg@10'):.4f} | {_median(runs, 'test', 'hr@10'):.4f} | "
            f"{_median(runs, 'test', 'ndcg@10'):.4f} | {_median(runs, 'test', 'mrr@10'):.4f} | "
            f"{int(_median(runs, 'num_parameters')):,} | {_median(runs, 'seconds_per_epoch'):.2f} | "
            f"{int(_median(runs, 'threads'))} | {int(_median(runs, 'epochs'))} |"
        )
    baselines = payload.get("ctr_baselines")
    if ctr_rows or baselines:
        if baselines:
            lines += ["", "CTR split: per-user time split, last 10%/10% of each user's events valid/test. The first two "
                      "rows are a practitioner's baselines on the same rows (`recdistill.ctr_baselines`, fitted once, "
                      "hyper-parameters selected on validation LogLoss); students are selected on validation AUC."]
        lines += ["", "| CTR model | valid AUC | test AUC | test GAUC | test LogLoss | params | s/epoch | threads | epochs |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for key, label in CTR_BASELINES.items():
            base = (baselines or {}).get(key)
            if base:
                lines.append(f"| {label} | {base['valid']['auc']:.4f} | {base['test']['auc']:.4f} | "
                             f"{base['test']['gauc']:.4f} | {base['test']['logloss']:.4f} | - | - | - | - |")
        for name, runs in ctr_rows:
            lines.append(
                f"| {name} | {_median(runs, 'valid', 'auc'):.4f} | {_median(runs, 'test', 'auc'):.4f} | "
                f"{_median(runs, 'test', 'gauc'):.4f} | {_median(runs, 'test', 'logloss'):.4f} | "
                f"{int(_median(runs, 'num_parameters')):,} | {_median(runs, 'seconds_per_epoch'):.2f} | "
                f"{int(_median(runs, 'threads'))} | {int(_median(runs, 'epochs'))} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    print(json.dumps(run_student_benchmark(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results"), indent=2))
