"""``recdistill bench kar``: CTR students with and without the teacher's knowledge, JSON + Markdown.

Protocol: every CTR student (DeepFM, DIN, DCN-v2) is trained from its plain recipe
(``ml100k_<model>``, ``recdistill student fit``), from its KAR recipe (``ml100k_<model>_kar``,
``recdistill distill fit``: the CTR-consistent teacher's item vectors, precomputed from the signal
cache of ``ml100k_teacher_ctr``, read as frozen features through a gated-expert adapter; Xi et al.,
"Towards Open-World Recommendation with Knowledge Augmentation from Large Language Models", RecSys
2024) and from its distillation recipe (``ml100k_<model>_distill``: soft labels = the teacher's
calibrated score of the row's item, plus contrastive alignment, read from the same cache) on every
seed. Each run is selected on validation AUC and tested once. Rows report the median over seeds
and the min–max spread of valid/test AUC, GAUC and LogLoss, and the per-seed deltas (variant −
plain, same seed). Target: the variant beats plain on test AUC (higher) and test LogLoss (lower).
"""

from __future__ import annotations

import hashlib
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from recdistill.atomic import write_json, write_text
from recdistill.benchmarks.students import update_readme
from recdistill.pipeline import run_stage
from recdistill.recipes import recipe_path

MODELS = ("deepfm", "din", "dcnv2")
VARIANTS = ("plain", "kar", "distill")
VARIANT_LABELS = {"plain": "", "kar": " + KAR item vectors", "distill": " distilled (soft labels + contrastive)"}
LABELS = {"deepfm": "DeepFM", "din": "DIN", "dcnv2": "DCN-v2"}
DEFAULT_SIGNALS = "runs/ml100k/teacher_ctr/signals"
README_MARKERS = ("<!-- bench:kar:start -->", "<!-- bench:kar:end -->")
METRICS = (("valid", "auc"), ("test", "auc"), ("test", "gauc"), ("valid", "logloss"), ("test", "logloss"))
KEPT = ("valid", "test", "best_epoch", "epochs", "seconds_per_epoch", "threads", "num_parameters")


def recipes(model: str) -> dict[str, str]:
    return {"plain": f"ml100k_{model}", "kar": f"ml100k_{model}_kar", "distill": f"ml100k_{model}_distill"}


def recipe_digest(recipe: str) -> str:
    return hashlib.sha256(recipe_path(recipe).read_text().encode()).hexdigest()


def reusable(entry: Mapping[str, Any], recipe: str, seed: int, digest: str) -> bool:
    """Whether a recorded run carries enough provenance to stand for ``recipe`` on ``seed``: the
    recipe name, the sha256 of the recipe text it ran (equal to today's), the seed, no extra
    arguments, and valid/test AUC and LogLoss (test GAUC too)."""
    try:
        return (entry.get("recipe") == recipe and entry.get("recipe_sha256") == digest
                and int(entry.get("seed")) == seed and not entry.get("extra_args")
                and all(isinstance(entry[s][m], (int, float)) for s, m in METRICS))
    except (KeyError, TypeError, ValueError):
        return False


def recorded_runs(path: str | Path | None) -> list[dict[str, Any]]:
    """Runs of an earlier payload (``kar.json`` or a hand-written file of the same shape): a list
    under ``runs``; anything else (e.g. the hand-run ``kar_ctr.json``, keyed by row label without
    recipe digests) yields nothing and those runs are redone."""
    if path is None or not Path(path).is_file():
        return []
    runs = json.loads(Path(path).read_text()).get("runs")
    return [r for r in runs if isinstance(r, dict)] if isinstance(runs, list) else []


def run_kar_benchmark(output_dir: str | Path = "benchmarks/results", seeds: list[int] | None = None,
                      models: list[str] | None = None, signals: str | Path = DEFAULT_SIGNALS,
                      overrides: list[str] | None = None, readme: str | Path | None = None,
                      recorded: str | Path | None = None, variants: list[str] | None = None) -> dict[str, Any]:
    """Train (or reuse) the plain, KAR and distilled runs of every model and seed; write ``kar.json``/``kar.md``.

    ``variants`` (default: all of :data:`VARIANTS`) picks the teacher variants to train; plain is
    always trained, it is what each is compared with. Runs of ``kar.json`` that are not retrained
    (other models or variants) are kept."""
    from recdistill.distill.fit import fit_distilled
    from recdistill.student.fit import fit_student

    output_dir = Path(output_dir)
    seeds = seeds or [0, 1, 2]
    models = list(models or MODELS)
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ValueError(f"unknown CTR model(s) {unknown}; known: {list(MODELS)}")
    chosen = ["plain", *[v for v in (variants or VARIANTS) if v != "plain"]]
    if any(v not in VARIANTS for v in chosen):
        raise ValueError(f"unknown kar variant(s) {[v for v in chosen if v not in VARIANTS]}; known: {list(VARIANTS)}")
    signals = Path(signals).resolve()
    if not (signals / "manifest.json").is_file():
        raise FileNotFoundError(f"no teacher-signal cache at {signals}: fit and emit ml100k_teacher_ctr "
                                "(recdistill teacher fit/emit --config ml100k_teacher_ctr) or pass --signals")
    teacher = json.loads((signals / "manifest.json").read_text()).get("teacher")
    earlier = recorded_runs(recorded if recorded is not None else output_dir / "kar.json")
    extra = list(overrides or [])
    started = time.time()
    runs: list[dict[str, Any]] = [r for r in earlier if r.get("model") not in models
                                  or r.get("variant") not in chosen]
    for model in models:
        for variant in chosen:
            recipe = recipes(model)[variant]
            digest = recipe_digest(recipe)
            fit: Callable[..., dict[str, Any]] = fit_student if variant == "plain" else fit_distilled
            for seed in seeds:
                old = [r for r in earlier if r.get("variant") == variant and reusable(r, recipe, seed, digest)
                       and (variant == "plain" or r.get("teacher") == teacher)]
                if old and not extra:
                    runs.append(old[0])
                    continue
                args = [f"--seed_everything={seed}", *([f"--model.signals={signals}"] if variant != "plain" else []),
                        *extra]
                # plain runs share the students benchmark's folders (same recipe + args: reused there too)
                name = f"{model}-seed{seed}" if variant == "plain" and not extra else f"kar-{recipe}-seed{seed}"
                inputs: dict[str, Any] = {"recipe": recipe_path(recipe).read_text(), "args": args}
                if variant != "plain":
                    inputs["teacher"] = teacher
                metrics = run_stage(name, output_dir / "runs" / name, inputs,
                                    lambda d, r=recipe, a=args, f=fit: f(r, d, a))
                runs.append({"model": model, "variant": variant, "recipe": recipe, "recipe_sha256": digest,
                             "seed": seed, "extra_args": extra, "teacher": teacher if variant != "plain" else None,
                             **{k: metrics.get(k) for k in KEPT}})
                write_json(output_dir / "kar.json", _payload(runs, seeds, models, signals, started))
    payload = _payload(runs, seeds, models, signals, started)
    write_json(output_dir / "kar.json", payload)
    markdown = render_markdown(payload)
    write_text(output_dir / "kar.md", markdown)
    if readme is not None:
        update_readme(readme, markdown, markers=README_MARKERS)
    return payload


def _payload(runs: list[dict[str, Any]], seeds: list[int], models: list[str], signals: Path,
             started: float) -> dict[str, Any]:
    return {
        "benchmark": "kar", "dataset": "movielens-100k", "protocol": __doc__.split("\n\n", 1)[1].strip(),
        "seeds": seeds, "models": models, "signals": str(signals),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "torch": torch.__version__,
        "wall_seconds": round(time.time() - started, 1), "runs": runs, "summary": summarise(runs),
    }


def _get(run: Mapping[str, Any], split: str, metric: str) -> float | None:
    value = (run.get(split) or {}).get(metric)
    return float(value) if isinstance(value, (int, float)) else None


def _spread(values: list[float]) -> dict[str, float] | None:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)} if values else None


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per model: median/min/max of each metric per variant; per teacher variant the per-seed deltas
    (variant − plain) and the target ``beats plain on test AUC and test LogLoss`` (medians; also
    whether on every seed)."""
    out: dict[str, Any] = {}
    for model in dict.fromkeys(r["model"] for r in runs):
        by = {v: {r["seed"]: r for r in runs if r["model"] == model and r["variant"] == v} for v in VARIANTS}
        by = {v: seeds for v, seeds in by.items() if seeds or v == "plain"}
        stats = {v: {f"{s}/{m}": _spread([x for x in (_get(r, s, m) for r in by[v].values()) if x is not None])
                     for s, m in METRICS} for v in by}
        entry: dict[str, Any] = {"stats": stats, "seeds": {}, "deltas": {}, "target": {}}
        for variant in (v for v in by if v != "plain"):
            paired = sorted(set(by["plain"]) & set(by[variant]))
            deltas = {}
            for m in ("auc", "gauc", "logloss"):
                pairs = [(_get(by[variant][s], "test", m), _get(by["plain"][s], "test", m)) for s in paired]
                deltas[f"test/{m}"] = [round(k - p, 6) for k, p in pairs if k is not None and p is not None]
            target = None
            mine, plain = stats[variant], stats["plain"]
            if plain["test/auc"] and mine["test/auc"] and plain["test/logloss"] and mine["test/logloss"]:
                target = {
                    "met": mine["test/auc"]["median"] > plain["test/auc"]["median"]
                    and mine["test/logloss"]["median"] < plain["test/logloss"]["median"],
                    "every_seed": bool(paired) and all(d > 0 for d in deltas["test/auc"])
                    and all(d < 0 for d in deltas["test/logloss"]),
                }
            entry["seeds"][variant], entry["deltas"][variant], entry["target"][variant] = paired, deltas, target
        out[model] = entry
    return out


def _cell(spread: dict[str, float] | None) -> str:
    if not spread:
        return "-"
    if spread["min"] == spread["max"]:
        return f"{spread['median']:.4f}"
    return f"{spread['median']:.4f} ({spread['min']:.4f}–{spread['max']:.4f})"


def _deltas(values: list[float]) -> str:
    return ", ".join(f"{v:+.4f}" for v in values) if values else "-"


def render_markdown(payload: dict[str, Any]) -> str:
    lines = [
        f"CTR students with and without the teacher on MovieLens-100K (label = rating >= 4, per-user "
        f"time split); seeds {payload['seeds']}, median (min–max), each run selected on validation AUC, torch "
        f"{payload['torch']}, CPU; teacher cache `{'/'.join(Path(payload['signals']).parts[-3:])}` of "
        "`ml100k_teacher_ctr`. "
        "Δ = variant − plain per seed. Target: the variant beats plain on test AUC and LogLoss. "
        "Reproduce: `make bench-kar`.",
        "",
        "| model | recipe | valid AUC | test AUC | test GAUC | valid LogLoss | test LogLoss |",
        "|---|---|---|---|---|---|---|",
    ]
    summary = payload.get("summary") or summarise(payload["runs"])
    for model, entry in summary.items():
        for variant, stats in entry["stats"].items():
            name = f"{LABELS.get(model, model)}{VARIANT_LABELS[variant]}"
            lines.append(f"| {name} | `{recipes(model)[variant]}` | "
                         + " | ".join(_cell(stats[f"{s}/{m}"]) for s, m in METRICS) + " |")
    lines += ["", "| model | variant | seeds | Δ test AUC | Δ test GAUC | Δ test LogLoss | target met (medians) "
              "| on every seed |",
              "|---|---|---|---|---|---|---|---|"]
    for model, entry in summary.items():
        for variant, target in entry["target"].items():
            target = target or {}
            met = "-" if not target else ("yes" if target["met"] else "no")
            every = "-" if not target else ("yes" if target["every_seed"] else "no")
            d = entry["deltas"][variant]
            lines.append(f"| {LABELS.get(model, model)} | {variant} | {entry['seeds'][variant]} | "
                         f"{_deltas(d['test/auc'])} | {_deltas(d['test/gauc'])} | {_deltas(d['test/logloss'])} | "
                         f"{met} | {every} |")
    return "\n".join(lines) + "\n"


__all__ = ["run_kar_benchmark", "render_markdown", "summarise", "reusable", "recorded_runs", "MODELS", "VARIANTS"]
