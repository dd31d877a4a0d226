"""``recdistill run RECIPE --output-dir DIR``: one run recipe end to end into one run folder.

A *run recipe* (``recipes/quickstart.yaml``, ``recipes/ml100k_full.yaml``) names the stage recipes
and what to change in them::

    name: quickstart
    dataset: movielens-100k        # data.dataset of every stage (a name or a file path)
    assets: [movielens-100k, smollm2-135m]   # fetched (sha256-checked) before anything runs
    seeds: [0]                     # vanilla and distilled students, one run per seed
    threads: null                  # torch.set_num_threads for the whole run (null: leave as is)
    student:  {recipe: quickstart_sasrec, set: {trainer.max_epochs: 40}}
    teacher:  {recipe: quickstart_teacher, hybrid: true, set: {}}
    distill:  {recipe: ml100k_sasrec_dllm2rec, set: {...}, unset: [...]}
    compress: {recipe: compress_sasrec, set: {steps.recover.epochs: 3}, unset: [steps.pq]}
    export:   {serving: false}
    profile:  {batch_sizes: [1, 256], threads: [1], warmup: 5, min_iters: 20, min_seconds: 0.5}

``set`` takes dotted keys (``trainer.max_epochs``) and replaces the value there; ``unset`` removes
keys. The runner fills in what links the stages: ``data.dataset``, ``seed_everything``, the hybrid
teacher's ``model.collaborative_model``/``collaborative_embeddings`` (the first seed's vanilla
student), the distilled student's ``model.signals`` (this run's cache). Each stage's resolved recipe
is written next to its output (``recipe.yaml``).

Stages and folders (each has ``stage.json``, the format of ``pipeline.py``)::

    DIR/run.json                       # resolved recipe, versions, seeds, threads, dataset fingerprint,
                                       # teacher identity, the last run's per-stage status and seconds
    DIR/data/data.json                 # data: dataset summary + fingerprint
    DIR/students/vanilla/seed<S>/      # vanilla student (student fit)
    DIR/teacher/{adapter,signals,eval} # teacher fit, emit, eval (teacher/metrics.json)
    DIR/students/distilled/seed<S>/    # distilled student (distill fit)
    DIR/compressed/                    # compress (compress.json, pruned*/, onnx/)
    DIR/export/{vanilla,distilled}.onnx  # ONNX + provenance (parity gate)
    DIR/profile/profile.json           # ONNX Runtime latency of every servable artefact
    DIR/report/                        # report.md, report.json, plots (``recdistill compare``)

A stage is skipped when its inputs hash (its resolved recipe section + the digests of the
artefacts it reads) equals the one recorded in its ``stage.json``; a changed setting therefore
re-runs that stage and, through the changed artefact digest, only the stages downstream of it.
A run that stopped half way (an error, Ctrl-C) resumes at the first stage without a finished
``stage.json``. The report is rebuilt on every run (it reads only JSON files).

This module runs the stages in order (:class:`Runner`, :func:`run_recipe`); the recipe handling is in
:mod:`recdistill.run_config`, each stage's work in :mod:`recdistill.run_stages` and the tiny test
configuration in :mod:`recdistill.run_tiny`.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from recdistill.atomic import write_json, write_text
from recdistill.pipeline import STAGE_FILE, inputs_hash, run_stage
from recdistill.recipes import recipe_path
from recdistill.run_config import (  # noqa: F401  (re-exported: the recipe handling)
    PROFILE_DEFAULTS, SECTIONS, TOP_KEYS, load_run_recipe, set_dotted, stage_recipe, unset_dotted,
)
from recdistill.run_stages import (  # noqa: F401  (looked up here at call time, so a test can replace one stage)
    compress_stage as _compress_stage,
    data_stage as _data_stage,
    export_stage as _export_stage,
    profile_stage as _profile_stage,
    relative_path,
    servable_artefacts,
    student_stage as _student_stage,
    teacher_emit as _teacher_emit,
    teacher_eval as _teacher_eval,
    teacher_fit as _teacher_fit,
    teacher_identity as _teacher_identity,
)
from recdistill.run_tiny import write_tiny_run  # noqa: F401  (re-exported)


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("recdistill", "torch", "lightning", "transformers", "peft", "onnx", "onnxruntime"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


# ----------------------------------------------------------------------------- the runner
class Runner:
    """Runs stages with ``pipeline.run_stage`` bookkeeping, timing each and printing one line."""

    def __init__(self, out: Path, log: Callable[[str], None] = print) -> None:
        self.out = out
        self.log = log
        self.stages: list[dict[str, Any]] = []
        self.after: Callable[[], None] = lambda: None  # called after every finished stage (run.json)

    def stage(self, name: str, directory: Path, inputs: dict[str, Any],
              work: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        marker = directory / STAGE_FILE
        if marker.exists():
            record = json.loads(marker.read_text())
            if record.get("inputs_hash") == inputs_hash(inputs):
                self.stages.append({"stage": name, "status": "skipped", "seconds": 0.0})
                self.log(f"[{name}] skipped: inputs unchanged ({relative_path(directory, self.out)})")
                return record["outputs"]
        start = time.perf_counter()

        def wrapped(d: Path) -> dict[str, Any]:
            d.mkdir(parents=True, exist_ok=True)
            return work(d)

        try:
            outputs = run_stage(name, directory, inputs, wrapped)
        except BaseException:
            seconds = time.perf_counter() - start
            self.stages.append({"stage": name, "status": "failed", "seconds": round(seconds, 2)})
            self.log(f"[{name}] FAILED after {seconds:.1f} s (a re-run resumes here)")
            raise
        seconds = time.perf_counter() - start
        self.stages.append({"stage": name, "status": "ran", "seconds": round(seconds, 2)})
        self.log(f"[{name}] ran in {seconds:.1f} s")
        self.after()
        return outputs


def run_recipe(recipe: str | Path, output_dir: str | Path, *, log: Callable[[str], None] = print) -> Path:
    """Run every stage of ``recipe`` into ``output_dir``; returns the report's Markdown path."""
    import torch

    config = load_run_recipe(recipe)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if config["threads"]:
        torch.set_num_threads(int(config["threads"]))
    runner = Runner(out, log)
    started = time.time()
    info: dict[str, Any] = {
        "recipe": config, "recipe_file": str(recipe_path(str(recipe)).resolve()),
        "versions": _versions(), "seeds": config["seeds"],
        "threads": {"torch": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                    "cpu_count": os.cpu_count(), "profile": config["profile"]["threads"]},
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine()},
        "command": " ".join(sys.argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "stages": runner.stages,
    }
    write_text(out / "recipe.yaml", yaml.safe_dump(config, sort_keys=False))

    def save_info(status: str) -> None:
        info["status"] = status
        info["wall_seconds"] = round(time.time() - started, 1)
        write_json(out / "run.json", info)

    save_info("running")
    runner.after = lambda: save_info("running")
    try:
        _run_stages(config, out, runner, info)
        save_info("running")  # the report reads run.json (dataset, seeds, teacher identity)
        start = time.perf_counter()
        from recdistill.report import compare_runs

        compare_runs([out], out / "report", **(config.get("report") or {}))
        seconds = time.perf_counter() - start
        runner.stages.append({"stage": "report", "status": "ran", "seconds": round(seconds, 2)})
        runner.log(f"[report] ran in {seconds:.1f} s")
    except BaseException:
        save_info("failed")
        raise
    save_info("finished")
    ran = sum(s["seconds"] for s in runner.stages if s["status"] == "ran")
    log(f"run {config['name']}: {sum(s['status'] == 'ran' for s in runner.stages)} stage(s) ran, "
        f"{sum(s['status'] == 'skipped' for s in runner.stages)} skipped, {ran:.0f} s of work, "
        f"{info['wall_seconds']:.0f} s wall; report: {out / 'report' / 'report.md'}")
    return out / "report" / "report.md"


def _run_stages(config: dict[str, Any], out: Path, runner: Runner, info: dict[str, Any]) -> None:
    dataset = config.get("dataset")
    seeds = config["seeds"]
    if config["assets"]:
        from recdistill.assets import fetch

        for asset in config["assets"]:
            fetch(asset)

    # data ----------------------------------------------------------------------------------
    data_source = dataset or stage_recipe(config["student"]).get("data", {}).get("dataset")
    source_stat = None
    if data_source and Path(str(data_source)).exists():
        st = Path(str(data_source)).stat()
        source_stat = {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    data = runner.stage("data", out / "data", {"dataset": str(data_source), "file": source_stat},
                        lambda d: _data_stage(d, str(data_source)))
    info["dataset"] = {"source": str(data_source), "fingerprint": data["fingerprint"]}
    upstream = {"dataset_fingerprint": data["fingerprint"]}

    # vanilla students ----------------------------------------------------------------------
    vanilla: dict[int, dict[str, Any]] = {}
    for seed in seeds:
        recipe = stage_recipe(config["student"], dataset=dataset, seed=seed)
        vanilla[seed] = runner.stage(f"vanilla/seed{seed}", out / "students" / "vanilla" / f"seed{seed}",
                                     {**upstream, "recipe": recipe},
                                     lambda d, r=recipe: _student_stage(d, r, distill=False))

    # teacher -------------------------------------------------------------------------------
    teacher_cfg = config["teacher"]
    teacher_recipe = stage_recipe(teacher_cfg, dataset=dataset)
    teacher_dir = out / "teacher"
    teacher_inputs: dict[str, Any] = {**upstream, "recipe": teacher_recipe}
    injected = copy.deepcopy(teacher_recipe)
    if teacher_cfg.get("hybrid", False):
        collaborative = out / "students" / "vanilla" / f"seed{seeds[0]}" / "student"
        set_dotted(injected, "model.collaborative_model", str(collaborative))
        set_dotted(injected, "model.collaborative_embeddings", str(collaborative))
        teacher_inputs["collaborative_student"] = vanilla[seeds[0]]["digest"]
    else:
        for key in ("model.collaborative_model", "model.collaborative_embeddings"):
            unset_dotted(injected, key)
    teacher_file = teacher_dir / "recipe.yaml"

    def write_teacher_recipe() -> Path:
        write_text(teacher_file, yaml.safe_dump(injected, sort_keys=False))
        return teacher_file

    fit = runner.stage("teacher-fit", teacher_dir / "adapter", teacher_inputs,
                       lambda d: _teacher_fit(teacher_dir, write_teacher_recipe()))
    emit = runner.stage("teacher-emit", teacher_dir / "signals", {**teacher_inputs, "fit": fit["digest"]},
                        lambda d: _teacher_emit(teacher_dir, write_teacher_recipe()))
    runner.stage("teacher-eval", teacher_dir / "eval", {**teacher_inputs, "fit": fit["digest"]},
                 lambda d: _teacher_eval(teacher_dir, write_teacher_recipe()))
    info["teacher"] = _teacher_identity(teacher_dir, fit, emit)

    # distilled students --------------------------------------------------------------------
    distilled: dict[int, dict[str, Any]] = {}
    for seed in seeds:
        recipe = stage_recipe(config["distill"], dataset=dataset, seed=seed)
        distilled[seed] = runner.stage(
            f"distilled/seed{seed}", out / "students" / "distilled" / f"seed{seed}",
            {**upstream, "recipe": recipe, "signals": emit["digest"]},
            lambda d, r=recipe: _student_stage(d, r, distill=True, signals=teacher_dir / "signals"))

    # compress ------------------------------------------------------------------------------
    first = seeds[0]
    compress_recipe = stage_recipe(config["compress"], dataset=dataset)
    distilled_dir = out / "students" / "distilled" / f"seed{first}"
    compressed = runner.stage("compress", out / "compressed",
                              {"recipe": compress_recipe, "student": distilled[first]["digest"]},
                              lambda d: _compress_stage(d, distilled_dir / "student", compress_recipe))

    # export --------------------------------------------------------------------------------
    export_cfg = config["export"]
    students = {"vanilla": out / "students" / "vanilla" / f"seed{first}" / "student",
                "distilled": distilled_dir / "student"}
    exported = runner.stage("export", out / "export",
                            {**upstream, "config": export_cfg, "vanilla": vanilla[first]["digest"],
                             "distilled": distilled[first]["digest"]},
                            lambda d: _export_stage(d, students, export_cfg, str(data_source),
                                                    data["fingerprint"]))

    # profile -------------------------------------------------------------------------------
    profile_cfg = config["profile"]
    runner.stage("profile", out / "profile",
                 {"config": profile_cfg, "export": exported["digest"], "compress": compressed["digest"]},
                 lambda d: _profile_stage(d, out, profile_cfg))

    # the report (always rebuilt: it only reads JSON) follows in run_recipe


__all__ = ["run_recipe", "load_run_recipe", "stage_recipe", "servable_artefacts", "write_tiny_run", "Runner"]
