"""The work of each run stage (data, students, teacher, compress, export, profile) and its output digests."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from recdistill.atomic import sha256_file, write_json, write_text
from recdistill.pipeline import STAGE_FILE
from recdistill.run_config import set_dotted


def digest_files(*paths: Path) -> str:
    """sha256 over the names and contents of ``paths`` (folders recursively, stage markers left out)."""
    digest = hashlib.sha256()
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if file.name == STAGE_FILE:
                continue
            digest.update(file.name.encode())
            digest.update(sha256_file(file).encode())
    return digest.hexdigest()


def relative_path(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` when it is inside it, else as given."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def data_stage(directory: Path, source: str) -> dict[str, Any]:
    from recdistill.data import data_info

    summary = data_info(source)
    write_json(directory / "data.json", summary)
    return {"fingerprint": summary["fingerprint"], "num_users": summary.get("num_users"),
            "num_items": summary.get("num_items")}


def clear_checkpoints(directory: Path) -> None:
    shutil.rmtree(directory / "checkpoints", ignore_errors=True)  # a rebuilt stage never picks up stale ones


def student_stage(directory: Path, recipe: dict[str, Any], *, distill: bool,
                  signals: Path | None = None) -> dict[str, Any]:
    recipe = copy.deepcopy(recipe)
    if distill:
        set_dotted(recipe, "model.signals", str(signals))
    path = directory / "recipe.yaml"
    write_text(path, yaml.safe_dump(recipe, sort_keys=False))
    clear_checkpoints(directory)
    if distill:
        from recdistill.distill.fit import fit_distilled

        metrics = fit_distilled(path, directory)
    else:
        from recdistill.student.fit import fit_student

        metrics = fit_student(path, directory)
    return {"digest": digest_files(directory / "student"), "test": metrics.get("test", {}),
            "train_seconds": metrics.get("train_seconds")}


def teacher_fit(teacher_dir: Path, recipe_file: Path) -> dict[str, Any]:
    from recdistill.teacher.cli import run_teacher_command

    clear_checkpoints(teacher_dir)
    run_teacher_command("fit", recipe_file, teacher_dir)
    weights = sorted((teacher_dir / "adapter").glob("*.safetensors")) + [teacher_dir / "adapter" / "teacher.json"]
    return {"digest": digest_files(*weights)}


def teacher_emit(teacher_dir: Path, recipe_file: Path) -> dict[str, Any]:
    from recdistill.teacher.cache_format import CacheMismatchError
    from recdistill.teacher.cli import run_teacher_command

    try:
        run_teacher_command("emit", recipe_file, teacher_dir)
    except CacheMismatchError:  # a cache of an earlier teacher or setting: this stage's inputs changed
        run_teacher_command("emit", recipe_file, teacher_dir, ["--emit.overwrite", "true"])
    return {"digest": digest_files(teacher_dir / "signals" / "manifest.json")}


def teacher_eval(teacher_dir: Path, recipe_file: Path) -> dict[str, Any]:
    from recdistill.teacher.cli import run_teacher_command

    run_teacher_command("eval", recipe_file, teacher_dir)
    metrics = json.loads((teacher_dir / "metrics.json").read_text())
    return {"test": metrics.get("test", {})}


def teacher_identity(teacher_dir: Path, fit: dict[str, Any], emit: dict[str, Any]) -> dict[str, Any]:
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


def compress_stage(directory: Path, student_dir: Path, recipe: dict[str, Any]) -> dict[str, Any]:
    from recdistill.compress.pipeline import run_compress

    write_text(directory / "recipe.yaml", yaml.safe_dump(recipe, sort_keys=False))
    summary = run_compress(student_dir, recipe, directory)
    return {"digest": digest_files(directory / "compress.json"), "passed": summary.get("passed", {})}


def export_stage(directory: Path, students: dict[str, Path], cfg: dict[str, Any], source: str,
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
    return {"digest": digest_files(*(directory / f"{n}.onnx" for n in students)), "models": results}


# compressed ONNX files by report row, and the compress.json variant whose run wrote the file
COMPRESSED_ARTEFACTS = {"pruned": ("pruned_fp32.onnx", "onnx_pruned_int8"),
                        "quantized": ("int8_dynamic.onnx", "onnx_int8_dynamic"),
                        "pruned+quantized": ("pruned_int8.onnx", "onnx_pruned_int8")}


def servable_artefacts(run_dir: Path) -> dict[str, Path]:
    """The ONNX files the report profiles, by report row: exported students + compressed variants.

    A compressed file counts only when the last compress run (``compressed/compress.json``) made it: the
    stage writes into the same folder on every run, so a file of a step since turned off is stale."""
    candidates = {
        "vanilla": run_dir / "export" / "vanilla.onnx",
        "distilled": run_dir / "export" / "distilled.onnx",
    }
    summary = run_dir / "compressed" / "compress.json"
    made = set()
    if summary.is_file():
        made = {r.get("name") for r in json.loads(summary.read_text()).get("variants", []) if isinstance(r, dict)}
    for name, (file, variant) in COMPRESSED_ARTEFACTS.items():
        if variant in made:
            candidates[name] = run_dir / "compressed" / "onnx" / file
    return {name: path for name, path in candidates.items() if path.is_file()}


def profile_stage(directory: Path, run_dir: Path, cfg: dict[str, Any]) -> dict[str, Any]:
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
        models[name] = {"file": relative_path(path, run_dir), "bytes": path.stat().st_size, "runtime": "onnxruntime",
                        "runs": runs}
    load = [round(max(a, b), 2) for a, b in zip(load_before, os.getloadavg())]
    write_json(directory / "profile.json", {
        "protocol": (f"ONNX Runtime on CPU, intra-op threads {cfg['threads']}, inputs of the model's max_len "
                     f"(full histories), {cfg['warmup']} warm-up calls, then at least {cfg['min_iters']} calls "
                     f"and {cfg['min_seconds']} s per setting; percentiles of single calls; machine load average "
                     f"(1 min) {load[0]} on {os.cpu_count()} CPUs while timing"),
        "config": cfg, "models": models, "load_average": load, "cpu_count": os.cpu_count()})
    return {"digest": digest_files(directory / "profile.json")}
