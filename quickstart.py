"""``recdistill quickstart``: the quickstart recipe end to end on MovieLens-100K + SmolLM2.

Stages (each skipped on a re-run when its inputs did not change, see ``pipeline.py``):
fetch assets → dataset summary → plain SASRec student → LoRA teacher fit → teacher signal
emission → teacher evaluation → teacher-vs-student report (Markdown + JSON + plot).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from recdistill.atomic import write_json
from recdistill.pipeline import run_stage
from recdistill.recipes import recipe_path

STUDENT_RECIPE = "quickstart_sasrec"
TEACHER_RECIPE = "quickstart_teacher"


def _recipe_text(name: str) -> str:
    return recipe_path(name).read_text()


def run_quickstart(output_dir: str | Path = "runs/quickstart", overrides: list[str] | None = None) -> Path:
    from recdistill.assets import fetch
    from recdistill.data import SequentialDataModule, data_info

    out = Path(output_dir)
    overrides = list(overrides or [])
    for asset in ("movielens-100k", "smollm2-135m"):
        fetch(asset)
    info = data_info("movielens-100k")
    write_json(out / "data.json", info)
    upstream = {"dataset_fingerprint": info["fingerprint"]}

    student_dir = out / "students" / "sasrec"
    student = run_stage("student", student_dir,
                        {**upstream, "recipe": _recipe_text(STUDENT_RECIPE), "overrides": overrides},
                        lambda d: _fit_student(d, overrides))

    # the hybrid teacher builds on the student just trained (its item embeddings and its logits)
    teacher_dir = out / "teacher"
    collaborative = str(student_dir / "student")
    teacher_args = [f"--model.collaborative_model={collaborative}",
                    f"--model.collaborative_embeddings={collaborative}"]
    teacher_inputs = {**upstream, "recipe": _recipe_text(TEACHER_RECIPE), "args": teacher_args,
                      "student": student}
    run_stage("teacher-fit", teacher_dir / "adapter", teacher_inputs,
              lambda d: _teacher("fit", teacher_dir, teacher_args))
    run_stage("teacher-emit", teacher_dir / "signals", {**teacher_inputs, "after": "fit"},
              lambda d: _teacher("emit", teacher_dir, teacher_args))
    teacher = run_stage("teacher-eval", teacher_dir / "eval", {**teacher_inputs, "after": "emit"},
                        lambda d: _teacher_eval(teacher_dir, teacher_args))

    datamodule = SequentialDataModule(dataset="movielens-100k")
    student_latency = _student_latency(student_dir / "student", datamodule)
    from recdistill.baselines import most_popular_metrics
    from recdistill.report import build_report

    popular = {"valid": most_popular_metrics(datamodule, "valid"), "test": most_popular_metrics(datamodule, "test"),
               "num_parameters": 0}
    path = build_report(
        [
            {"name": "teacher (SmolLM2 + LoRA, fused with the SASRec)", "role": "teacher", "metrics": teacher},
            {"name": "SASRec", "role": "student (plain)", "metrics": student, "latency": student_latency},
            {"name": "MostPopular", "role": "baseline", "metrics": popular},
        ],
        out / "report",
        title="recdistill quickstart: teacher vs student on MovieLens-100K",
        notes=[
            "leave-one-out by time, full ranking over 1,682 items, earlier items masked, selected on validation",
            f"quickstart budgets (reduced epochs and layers; see recipes/{STUDENT_RECIPE}.yaml and "
            f"recipes/{TEACHER_RECIPE}.yaml), one seed: not a benchmark",
            "latency: PyTorch eager on CPU, batch of 1 per user, after warm-up",
        ],
    )
    print(f"report: {path}")
    return path


def _fit_student(directory: Path, overrides: list[str]) -> dict[str, Any]:
    from recdistill.student.fit import fit_student

    return fit_student(STUDENT_RECIPE, directory, overrides)


def _teacher(action: str, teacher_dir: Path, args: list[str]) -> dict[str, Any]:
    from recdistill.teacher.cli import run_teacher_command

    run_teacher_command(action, TEACHER_RECIPE, teacher_dir, args)
    return {"action": action, "directory": str(teacher_dir)}


def _teacher_eval(teacher_dir: Path, args: list[str]) -> dict[str, Any]:
    _teacher("eval", teacher_dir, args)
    return json.loads((teacher_dir / "metrics.json").read_text())


def _student_latency(directory: Path, datamodule) -> dict[str, Any]:
    import torch

    from recdistill.student.io import load_student
    from recdistill.teacher.evaluate import measure_latency

    student = load_student(directory)
    with torch.inference_mode():
        return measure_latency(student, datamodule.dataloader("test"))
