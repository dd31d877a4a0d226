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
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from recdistill.atomic import sha256_file, write_json, write_text
from recdistill.errors import ConfigError
from recdistill.pipeline import STAGE_FILE, inputs_hash, run_stage
from recdistill.recipes import recipe_path

SECTIONS = ("student", "teacher", "distill", "compress", "export", "profile")
TOP_KEYS = {"name", "dataset", "assets", "seeds", "threads", "report", *SECTIONS}
PROFILE_DEFAULTS = {"batch_sizes": [1, 256], "threads": [1], "warmup": 5, "min_iters": 20, "min_seconds": 0.5}


# ----------------------------------------------------------------------------- recipe handling
def load_run_recipe(recipe: str | Path) -> dict[str, Any]:
    """Read and check a run recipe (a file or a packaged recipe name)."""
    path = recipe_path(str(recipe))
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a run recipe is a mapping with keys {sorted(TOP_KEYS)}")
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown run recipe key(s) {sorted(unknown)}; known: {sorted(TOP_KEYS)}")
    for section in ("student", "teacher", "distill", "compress"):
        if not isinstance(raw.get(section), dict) or "recipe" not in raw[section]:
            raise ConfigError(f"{path}: section {section!r} needs a `recipe:` (a stage recipe name or file)")
    seeds = raw.get("seeds", [0])
    if not seeds or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"{path}: seeds must be a non-empty list of integers, got {seeds!r}")
    resolved = copy.deepcopy(raw)
    resolved.setdefault("name", path.stem)
    resolved["seeds"] = list(seeds)
    resolved.setdefault("assets", [])
    resolved.setdefault("threads", None)
    resolved["export"] = dict(resolved.get("export") or {})
    resolved["profile"] = {**PROFILE_DEFAULTS, **(resolved.get("profile") or {})}
    base = path.parent
    for section in ("student", "teacher", "distill", "compress"):  # stage recipes relative to the run recipe
        name = str(resolved[section]["recipe"])
        local = base / name
        resolved[section]["recipe"] = str(local) if local.is_file() else name
    return resolved


def set_dotted(config: dict[str, Any], key: str, value: Any) -> None:
    node = config
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = copy.deepcopy(value)


def unset_dotted(config: dict[str, Any], key: str) -> None:
    node: Any = config
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(parts[-1], None)


def stage_recipe(section: dict[str, Any], *, dataset: str | None = None, seed: int | None = None) -> dict[str, Any]:
    """The stage recipe of a run-recipe section: the named recipe with ``set``/``unset`` applied."""
    config = yaml.safe_load(recipe_path(str(section["recipe"])).read_text()) or {}
    for key in section.get("unset") or []:
        unset_dotted(config, str(key))
    for key, value in (section.get("set") or {}).items():
        set_dotted(config, str(key), value)
    if dataset is not None:
        set_dotted(config, "data.dataset", dataset)
    if seed is not None:
        config["seed_everything"] = int(seed)
    return config


def _digest_files(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if file.name == STAGE_FILE:
                continue
            digest.update(file.name.encode())
            digest.update(sha256_file(file).encode())
    return digest.hexdigest()


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
                self.log(f"[{name}] skipped: inputs unchanged ({_rel(directory, self.out)})")
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


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


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


# ----------------------------------------------------------------------------- stage work
def _data_stage(directory: Path, source: str) -> dict[str, Any]:
    from recdistill.data import data_info

    summary = data_info(source)
    write_json(directory / "data.json", summary)
    return {"fingerprint": summary["fingerprint"], "num_users": summary.get("num_users"),
            "num_items": summary.get("num_items")}


def _clear_checkpoints(directory: Path) -> None:
    shutil.rmtree(directory / "checkpoints", ignore_errors=True)  # a rebuilt stage never picks up stale ones


def _student_stage(directory: Path, recipe: dict[str, Any], *, distill: bool,
                   signals: Path | None = None) -> dict[str, Any]:
    recipe = copy.deepcopy(recipe)
    if distill:
        set_dotted(recipe, "model.signals", str(signals))
    path = directory / "recipe.yaml"
    write_text(path, yaml.safe_dump(recipe, sort_keys=False))
    _clear_checkpoints(directory)
    if distill:
        from recdistill.distill.fit import fit_distilled

        metrics = fit_distilled(path, directory)
    else:
        from recdistill.student.fit import fit_student

        metrics = fit_student(path, directory)
    return {"digest": _digest_files(directory / "student"), "test": metrics.get("test", {}),
            "train_seconds": metrics.get("train_seconds")}


def _teacher_fit(teacher_dir: Path, recipe_file: Path) -> dict[str, Any]:
    from recdistill.teacher.cli import run_teacher_command

    _clear_checkpoints(teacher_dir)
    run_teacher_command("fit", recipe_file, teacher_dir)
    weights = sorted((teacher_dir / "adapter").glob("*.safetensors")) + [teacher_dir / "adapter" / "teacher.json"]
    return {"digest": _digest_files(*weights)}


def _teacher_emit(teacher_dir: Path, recipe_file: Path) -> dict[str, Any]:
    from recdistill.teacher.cache_format import CacheMismatchError
    from recdistill.teacher.cli import run_teacher_command

    try:
        run_teacher_command("emit", recipe_file, teacher_dir)
    except CacheMismatchError:  # a cache of an earlier teacher or setting: this stage's inputs changed
        run_teacher_command("emit", recipe_file, teacher_dir, ["--emit.overwrite", "true"])
    return {"digest": _digest_files(teacher_dir / "signals" / "manifest.json")}


def _teacher_eval(teacher_dir: Path, recipe_file: Path) -> dict[str, Any]:
    from recdistill.teacher.cli import run_teacher_command

    run_teacher_command("eval", recipe_file, teacher_dir)
    metrics = json.loads((teacher_dir / "metrics.json").read_text())
    return {"test": metrics.get("test", {})}


def _teacher_identity(teacher_dir: Path, fit: dict[str, Any], emit: dict[str, Any]) -> dict[str, Any]:
    identity: dict[str, Any] = {"adapter_digest": fit["digest"], "signals_digest": emit["digest"]}
    meta = teacher_dir / "adapter" / "teacher.json"
    if meta.is_file():
        spec = json.loads(meta.read_text())
        init = spec.get("init_args") or {}
        identity["class"] = spec.get("class")
        identity.update({k: init.get(k) for k in ("base_model", "num_layers", "lora_r", "item_table",
                                                    "collaborative_fusion") if k in init})
    manifest = teacher_dir / "signals" / "manifest.json"
    if manifest.is_file():
        identity["signals_teacher"] = json.loads(manifest.read_text()).get("teacher")
    metrics = teacher_dir / "metrics.json"
    if metrics.is_file():
        identity["base_model_ref"] = json.loads(metrics.read_text()).get("base_model")
    return identity


def _compress_stage(directory: Path, student_dir: Path, recipe: dict[str, Any]) -> dict[str, Any]:
    from recdistill.compress.pipeline import run_compress

    write_text(directory / "recipe.yaml", yaml.safe_dump(recipe, sort_keys=False))
    summary = run_compress(student_dir, recipe, directory)
    return {"digest": _digest_files(directory / "compress.json"), "passed": summary.get("passed", {})}


def _export_stage(directory: Path, students: dict[str, Path], cfg: dict[str, Any], source: str,
                  fingerprint: str) -> dict[str, Any]:
    from recdistill.data import load_split
    from recdistill.export import export_onnx

    item_ids = [x.item() if hasattr(x, "item") else x for x in load_split(source).item_ids]
    results = {}
    for name, folder in students.items():
        result = export_onnx(folder, directory / f"{name}.onnx", serving=bool(cfg.get("serving", False)),
                             k=int(cfg.get("k", 10)), item_ids=item_ids, data_fingerprint=fingerprint)
        results[name] = {"file": f"{name}.onnx", "parity": result.provenance.get("status"),
                         "bytes": result.provenance["file"]["bytes"]}
    return {"digest": _digest_files(*(directory / f"{n}.onnx" for n in students)), "models": results}


def servable_artefacts(run_dir: Path) -> dict[str, Path]:
    """The ONNX files the report profiles, by report row: exported students + compressed variants."""
    candidates = {
        "vanilla": run_dir / "export" / "vanilla.onnx",
        "distilled": run_dir / "export" / "distilled.onnx",
        "pruned": run_dir / "compressed" / "onnx" / "pruned_fp32.onnx",
        "quantized": run_dir / "compressed" / "onnx" / "int8_dynamic.onnx",
        "pruned+quantized": run_dir / "compressed" / "onnx" / "pruned_int8.onnx",
    }
    return {name: path for name, path in candidates.items() if path.is_file()}


def _profile_stage(directory: Path, run_dir: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    from recdistill.export.metadata import read_onnx_metadata
    from recdistill.export.profile import profile_latency
    from recdistill.export.profile_suite import numpy_inputs
    from recdistill.export.runtime import make_session

    models: dict[str, Any] = {}
    load_before = os.getloadavg()
    for name, path in servable_artefacts(run_dir).items():
        meta = read_onnx_metadata(path)
        length = int(meta.get("max_len") or 50)
        runs = []
        for threads in cfg["threads"]:
            session = make_session(path, threads=int(threads))
            names = [i.name for i in session.get_inputs()]
            for batch in cfg["batch_sizes"]:
                feed = numpy_inputs(meta, int(batch), length)
                record = profile_latency(session, {k: feed[k] for k in names}, threads=int(threads), label=name,
                                         warmup=int(cfg["warmup"]), min_iters=int(cfg["min_iters"]),
                                         min_seconds=float(cfg["min_seconds"]))
                record["seq_len"] = length
                runs.append(record)
        models[name] = {"file": _rel(path, run_dir), "bytes": path.stat().st_size, "runtime": "onnxruntime",
                        "runs": runs}
    load = [round(max(a, b), 2) for a, b in zip(load_before, os.getloadavg())]
    write_json(directory / "profile.json", {
        "protocol": (f"ONNX Runtime on CPU, intra-op threads {cfg['threads']}, inputs of the model's max_len "
                     f"(full histories), {cfg['warmup']} warm-up calls, then at least {cfg['min_iters']} calls "
                     f"and {cfg['min_seconds']} s per setting; percentiles of single calls; machine load average "
                     f"(1 min) {load[0]} on {os.cpu_count()} CPUs while timing"),
        "config": cfg, "models": models, "load_average": load, "cpu_count": os.cpu_count()})
    return {"digest": _digest_files(directory / "profile.json")}


# ----------------------------------------------------------------------------- a tiny configuration
def write_tiny_run(folder: str | Path, *, num_users: int = 60, num_items: int = 30, seeds: Sequence[int] = (0,),
                   seed: int = 3) -> Path:
    """A seconds-long run recipe for tests and the walkthrough notebook: synthetic interactions
    written as a CSV file, a random-init tiny Llama as the LLM (``teacher.testing.make_tiny_llama``),
    a hybrid teacher on a 16-wide SASRec, DLLM2Rec distillation, prune + recover + ONNX int8,
    export and a short profile. Writes the stage recipes and ``run.yaml`` into ``folder``; returns
    the run recipe's path. Numbers from it mean nothing beyond "the pipeline works"."""
    from recdistill.data import load_split, synthetic_interactions
    from recdistill.teacher.testing import make_tiny_llama

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    csv = folder / "events.csv"
    synthetic_interactions(num_users, num_items, mean_length=12, seed=seed, pattern_strength=0.9) \
        .interactions[["user_id", "item_id", "timestamp"]].to_csv(csv, index=False)
    llama = make_tiny_llama(folder / "tiny-llama", texts=load_split(str(csv)).item_text, num_layers=2)
    quiet = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False, "enable_model_summary": False,
             "log_every_n_steps": 1}
    student = {
        "seed_everything": 0,
        "data": {"dataset": str(csv), "max_len": 8, "batch_size": 32, "eval_batch_size": 64},
        "model": {"student": {"class_path": "recdistill.student.SASRec",
                              "init_args": {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "dropout": 0.1,
                                            "max_len": 8}},
                  "lr": 0.005, "weight_decay": 0.0, "mask_seen": True},
        "trainer": {"max_epochs": 3, **quiet, "enable_progress_bar": True,  # a silent bar (refresh 0)
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.TQDMProgressBar",
                                   "init_args": {"refresh_rate": 0}}]},
        "early_stopping_patience": 3,
    }
    teacher = {
        "seed_everything": 0,
        "data": {"dataset": str(csv), "max_len": 8, "batch_size": 16, "eval_batch_size": 64},
        "model": {"base_model": str(llama), "num_layers": 2, "lr": 0.005, "item_table": "frozen", "item_bias": True,
                  "progress": False},
        "trainer": {"max_epochs": 1, **quiet},
        "emit": {"k": 10, "layers": [1], "shard_size": 1000, "train_every": 2},
        "eval": {"latency_users": 5},
    }
    distill = {**student, "model": {**student["model"], "signals": "(set by the runner)",
                                    "terms": [{"name": "dllm2rec", "weight": 0.8, "top_k": 5,
                                               "params": {"beta": 1.0, "gamma": [0.3, 0.5, 0.1],
                                                          "distance": "cosine", "student_output": "softmax"}}],
                                    "embedding_fusion": {"w_ed": 0.25}}}
    compress = {
        "data": {"dataset": str(csv), "max_len": 8, "batch_size": 32, "eval_batch_size": 64,
                 "eval_split": "test", "calibration_split": "valid", "calibration_batches": 2},
        "gate": {"min_top10_overlap": 0.5, "max_ndcg_drop": 0.5},
        "latency": {"batch_size": 1, "runs": 5, "threads": 1},
        "steps": {"prune": {"ratio": 0.5}, "recover": {"epochs": 1},
                  "onnx": {"dynamic_int8": True, "static_int8": False, "fp16": False, "item_table": [],
                           "pruned_int8": True}},
    }
    for name, recipe in (("student", student), ("teacher", teacher), ("distill", distill), ("compress", compress)):
        write_text(folder / f"{name}.yaml", yaml.safe_dump(recipe, sort_keys=False))
    run = {
        "name": "tiny", "dataset": str(csv), "assets": [], "seeds": list(seeds), "threads": None,
        "student": {"recipe": "student.yaml"}, "teacher": {"recipe": "teacher.yaml", "hybrid": True},
        "distill": {"recipe": "distill.yaml"}, "compress": {"recipe": "compress.yaml"},
        "export": {"serving": False},
        "profile": {"batch_sizes": [1, 16], "threads": [1], "warmup": 1, "min_iters": 3, "min_seconds": 0.0},
    }
    path = folder / "run.yaml"
    write_text(path, yaml.safe_dump(run, sort_keys=False))
    return path


__all__ = ["run_recipe", "load_run_recipe", "stage_recipe", "servable_artefacts", "write_tiny_run", "Runner"]
