"""Cold items through distillation: a SASRec distilled from the planted benchmark's hybrid teacher.

The planted-text teacher benchmark (:mod:`recdistill.benchmarks.teacher_planted`) fits, per seed, a
plain SASRec and the hybrid LLM teacher. This module adds, per seed ``s``, two stages next to them
(``<runs_dir>/planted-{emit,distill}-seed<s>``):

1. ``planted-emit-seed<s>``: ``recdistill teacher emit`` of the fitted teacher
   (``planted-teacher-seed<s>``) into ``planted-emit-seed<s>/signals``, keyed on the teacher recipe,
   the emit arguments, the data sha256 and the sha256 of the teacher's trained files (LoRA adapter,
   head with the SASRec part and the fusion, ``teacher.json``). An interrupted emission resumes from
   its finished shards; a cache left by other inputs is rebuilt (``--emit.overwrite=true``).
2. ``planted-distill-seed<s>``: ``recdistill distill fit --config planted_text_sasrec_distill`` with
   those signals, keyed on the recipe, the arguments, the data sha256 and the sha256 of the signals
   manifest (which holds every shard's sha256 and the teacher's identity). An interrupted fit of the
   same inputs continues from its ``last.ckpt`` (``--resume``).

:func:`planted_args` builds the data and teacher arguments exactly as the teacher benchmark does, so
both benchmarks reuse each other's stages. :func:`judge_distill_targets` states, per seed, whether
the distilled SASRec keeps at least half the teacher's cold-slice NDCG@10 and whether the plain
SASRec is indeed blind to cold items.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from recdistill.atomic import sha256_file, write_json
from recdistill.benchmarks.teacher_planted import (
    NUM_ITEMS,
    NUM_USERS,
    TEACHER_RECIPE,
    _cli,
    slice_summary,
)
from recdistill.pipeline import inputs_hash, run_stage
from recdistill.recipes import recipe_path

DISTILL_RECIPE = "planted_text_sasrec_distill"
COLD_SHARE = 0.5  # the distilled SASRec must keep >= this share of the teacher's cold NDCG@10
SASREC_COLD_MAX = 0.01  # an ID-only SASRec must score (about) nothing on cold targets
TEACHER_FILES = ("adapter_model.safetensors", "head.safetensors", "teacher.json")  # what `teacher fit` trains
PENDING_FILE = "pending.json"  # inputs hash of the run in progress in a stage folder (for resuming)


def planted_args(runs_dir: Path, seed: int, overrides: list[str] | None = None) -> tuple[list[str], list[str], str]:
    """``(data_args, teacher_args, data_sha)`` of seed ``seed``, as the teacher benchmark builds them.

    Writes the planted data (same seed, same bytes) into ``runs_dir/planted-data-seed<seed>``;
    ``teacher_args`` name the plain SASRec of ``runs_dir/planted-sasrec-seed<seed>`` as the
    teacher's collaborative model, then ``overrides``."""
    from recdistill.data.planted_text import write_planted_text_csv

    runs_dir = Path(runs_dir)
    data_path, column_map = write_planted_text_csv(runs_dir / f"planted-data-seed{seed}", NUM_USERS, NUM_ITEMS,
                                                   seed=seed)
    data_sha = sha256_file(data_path)
    data_args = [f"--seed_everything={seed}", f"--data.dataset={data_path}",
                 f"--data.column_map={json.dumps(column_map)}"]
    student = runs_dir / f"planted-sasrec-seed{seed}" / "student"
    teacher_args = [*data_args, f"--model.collaborative_model={student}", *(overrides or [])]
    return data_args, teacher_args, data_sha


def teacher_digest(teacher_dir: Path) -> dict[str, str]:
    """sha256 of each trained file of a fitted teacher (``teacher_dir/adapter``); missing -> error."""
    adapter = Path(teacher_dir) / "adapter"
    missing = [name for name in TEACHER_FILES if not (adapter / name).is_file()]
    if missing:
        raise FileNotFoundError(f"no fitted teacher in {adapter} (missing {', '.join(missing)}): run "
                                f"`recdistill bench teacher --dataset planted` for this seed first")
    return {name: sha256_file(adapter / name) for name in TEACHER_FILES}


def run_planted_distill(runs_dir: Path, seed: int, data_args: list[str], teacher_args: list[str],
                        data_sha: str) -> dict[str, Any]:
    """Emit seed ``seed``'s teacher signals, then distil the SASRec from them (each stage reused when
    its inputs are unchanged). Returns ``{"distilled": {"valid", "test"}, "best_epoch", "seconds",
    "threads", ...}`` with the valid/test splits as :func:`slice_summary` gives them."""
    runs_dir = Path(runs_dir)
    teacher_dir = runs_dir / f"planted-teacher-seed{seed}"
    emit_dir = runs_dir / f"planted-emit-seed{seed}"
    signals = emit_dir / "signals"
    emit_args = ["--config", TEACHER_RECIPE, "--output-dir", str(teacher_dir), *teacher_args,
                 f"--emit.output_dir={signals}"]
    emit_inputs = {"recipe": recipe_path(TEACHER_RECIPE).read_text(), "args": emit_args, "data": data_sha,
                   "teacher": teacher_digest(teacher_dir)}

    def emit(directory: Path) -> dict[str, Any]:
        # a cache (possibly partial) left by the same inputs resumes; one left by other inputs is rebuilt
        stale = not _pending(directory, emit_inputs) and (signals / "manifest.json").is_file()
        start = time.perf_counter()
        _cli("teacher", "emit", *emit_args, *(["--emit.overwrite=true"] if stale else []))
        manifest = json.loads((signals / "manifest.json").read_text())
        if not manifest.get("complete"):
            raise RuntimeError(f"teacher emission into {signals} ended with an incomplete cache")
        return {"signals": str(signals), "manifest_sha256": sha256_file(signals / "manifest.json"),
                "teacher": manifest.get("teacher"), "seconds": round(time.perf_counter() - start, 1)}

    emitted = run_stage(f"planted-emit-seed{seed}", emit_dir, emit_inputs, emit)

    distill_dir = runs_dir / f"planted-distill-seed{seed}"
    distill_args = [*data_args, f"--model.signals={signals}"]
    distill_inputs = {"recipe": recipe_path(DISTILL_RECIPE).read_text(), "args": distill_args, "data": data_sha,
                      "signals": sha256_file(signals / "manifest.json")}

    def distil(directory: Path) -> dict[str, Any]:
        resume = _pending(directory, distill_inputs) and (directory / "checkpoints" / "last.ckpt").is_file()
        start = time.perf_counter()
        _cli("distill", "fit", "--config", DISTILL_RECIPE, "--output-dir", str(directory), *distill_args,
             *(["--resume"] if resume else []))
        metrics = json.loads((directory / "metrics.json").read_text())
        return {"distilled": {"valid": slice_summary(metrics["valid"]), "test": slice_summary(metrics["test"])},
                "best_epoch": metrics.get("best_epoch"), "epochs": metrics.get("epochs"),
                "seconds": round(time.perf_counter() - start, 1), "train_seconds": metrics.get("train_seconds"),
                "threads": metrics.get("threads"), "resumed": resume}

    distilled = run_stage(f"planted-distill-seed{seed}", distill_dir, distill_inputs, distil)
    return {**distilled, "signals": emitted.get("signals"), "emit_seconds": emitted.get("seconds")}


def _pending(directory: Path, inputs: dict[str, Any]) -> bool:
    """Whether ``directory`` holds the leftovers of an unfinished run of these same ``inputs``;
    records ``inputs`` as the run now in progress either way."""
    digest = inputs_hash(inputs)
    marker = directory / PENDING_FILE
    same = marker.is_file() and json.loads(marker.read_text()).get("inputs_hash") == digest
    write_json(marker, {"inputs_hash": digest})
    return same


def _test(run: dict[str, Any], model: str, key: str) -> float | None:
    value = run.get("models", {}).get(model, {}).get("test", {}).get(key)
    return None if value is None else float(value)


def judge_distill_targets(runs: list[dict[str, Any]], cold_share: float = COLD_SHARE,
                          sasrec_cold_max: float = SASREC_COLD_MAX) -> list[dict[str, Any]]:
    """The cold-through-distillation targets on the test split, seed by seed (rows as
    :func:`~recdistill.benchmarks.teacher_planted.judge_targets` gives them; ``met`` only when every
    seed meets it). Each seed's ``difference`` is the slack: >= 0 exactly when the seed meets it
    (distilled cold - share x teacher cold; bound - plain SASRec cold)."""
    out = []
    per_seed = []
    for run in runs:
        mine, teacher = _test(run, "distilled", "cold"), _test(run, "teacher", "cold")
        if mine is None or teacher is None:
            continue
        slack = mine - cold_share * teacher
        per_seed.append({"seed": run["seed"], "distilled": mine, "reference": teacher, "difference": slack,
                         "met": slack >= 0})
    out.append({"target": f"distilled SASRec cold >= {cold_share:g} x teacher cold", "slice": "cold",
                "reference": "teacher", "factor": cold_share, "margin": 0.0, "per_seed": per_seed,
                "met": bool(per_seed) and all(s["met"] for s in per_seed)})
    per_seed = []
    for run in runs:
        sasrec = _test(run, "sasrec", "cold")
        if sasrec is None:
            continue
        slack = sasrec_cold_max - sasrec
        per_seed.append({"seed": run["seed"], "sasrec": sasrec, "reference": sasrec_cold_max, "difference": slack,
                         "met": slack >= 0})
    out.append({"target": f"plain SASRec cold <= {sasrec_cold_max:g}", "slice": "cold", "reference": "bound",
                "bound": sasrec_cold_max, "margin": 0.0, "per_seed": per_seed,
                "met": bool(per_seed) and all(s["met"] for s in per_seed)})
    return out


__all__ = ["DISTILL_RECIPE", "judge_distill_targets", "planted_args", "run_planted_distill", "teacher_digest"]
