"""``recdistill bench compress``: what each student costs to serve, and what compression keeps.

For every student on MovieLens-100K (default: all seven), one seed:

1. the plain student is trained from its default recipe (``ml100k_<name>``; SASRec reuses the
   teacher benchmark's ``sasrec_windows`` run, the same recipe);
2. ``recdistill compress`` runs on it (``recipes/compress_sasrec.yaml``'s steps and gate, with the
   student's own data section; steps a student cannot take are skipped with the reason), so every
   variant carries its test quality (NDCG@10 or AUC), top-10 overlap, file size and parameters;
3. every servable artefact is profiled in one process, back to back (``profile_models``):
   PyTorch eager (fp32), ONNX Runtime fp32, ONNX int8 (embedding tables included where the student
   has an item table), pruned + recovered ONNX int8; batch 1 / 32 / 256, sequence 50, 1 and 2
   intra-op threads, p50/p90/p99 after warm-up with a minimum of iterations and seconds;
4. teacher-to-student latency per user (batch 1, 1 thread, same inputs): the hybrid teacher of the
   distillation benchmark (2 LLM layers over cached item vectors) and the text-prompt teacher (the
   whole SmolLM2 over a prompt of history titles; untrained LoRA, which costs the same), in PyTorch
   and on ONNX Runtime beside SASRec's fp32 ONNX file (the text-prompt teacher's LLM exported by
   optimum, LoRA merged); and the hybrid teacher beside SASRec on batches of 32 and 256 users.

Targets of the compression issue are checked in ``targets`` (met or missed, with the numbers).
Training and compression are reused when their inputs are unchanged (``run_stage``); the profile
always runs again, so ``recdistill bench compress`` on a quiet machine refreshes only the timings.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from recdistill.atomic import sha256_file, write_json, write_text
from recdistill.benchmarks.compress_pq import merge_pq, pq_run, seed_summary
from recdistill.benchmarks.compress_report import (  # noqa: F401  (re-exported: the report of this benchmark)
    ONNX_FILES,
    SEQ_LEN,
    best_int8,
    check_targets,
    render_markdown,
)
from recdistill.benchmarks.students import update_readme
from recdistill.pipeline import run_stage
from recdistill.recipes import recipe_path

SEQUENTIAL = ("sasrec", "gru4rec", "caser", "bert4rec")
CTR = ("deepfm", "dcnv2", "din")
README_MARKERS = ("<!-- bench:compress:start -->", "<!-- bench:compress:end -->")
BATCH_SIZES = (1, 32, 256)
TEACHER_BATCH_SIZES = (32, 256)  # the teachers' batched rows (PyTorch)
THREADS = (1, 2)


def compress_config(name: str) -> dict[str, Any]:
    """The compress recipe with the student's own data section; steps it cannot take removed."""
    import yaml

    from recdistill.student.fit import read_recipe

    config = yaml.safe_load(recipe_path("compress_sasrec").read_text())
    recipe = read_recipe(recipe_path(f"ml100k_{name}"))
    keep = {k: config["data"][k] for k in ("eval_split", "calibration_split", "calibration_batches",
                                            "max_eval_batches")}
    config["data"] = {**recipe["data"], **keep}
    steps = config["steps"]
    steps.pop("pq_joint", None)  # its own stage (``pq_config``): retrains students, reused separately
    if name in CTR:
        steps.pop("recover")  # recovery fine-tuning is implemented for sequential students only
        steps.pop("pq")  # the int8 item-table schemes apply to every field table (compress/int8_onnx.py)
    return config


def run_compress_benchmark(output_dir: str | Path = "benchmarks/results", students: list[str] | None = None,
                           seed: int = 0, teachers: bool = True, readme: str | Path | None = None,
                           min_seconds: float = 1.0, parent_max_epochs: int | None = None,
                           pq_only: bool = False, pq_students: tuple[str, ...] = ("sasrec",),
                           pq_seeds: list[int] | None = None, quality_seeds: list[int] | None = None
                           ) -> dict[str, Any]:
    """Run the benchmark for ``students``; rows of other students already in ``compress.json``
    (an earlier invocation) are kept, so the table can be built over several runs.
    ``parent_max_epochs``: train parents for at most that many epochs (a separate run folder;
    recorded in the row). ``pq_students``: students that also get the PQ stage (post-hoc PQ and
    RecJPQ joint training, ``pq_config``). ``pq_only``: run only the PQ stage of ``students``
    (their rows, compress runs and timings are taken from the existing ``compress.json``);
    ``pq_seeds``: with ``pq_only``, also run the PQ stage on the plain parents of these seeds (the
    PQ target is then judged on the median over seeds); ``quality_seeds``: run only the compress
    stage (no timings) of ``students`` on the plain parents of these seeds; their quality and size
    targets are then judged on the median over seeds (the first seed's rows stay the table's)."""
    output_dir = Path(output_dir)
    names = students or [*SEQUENTIAL, *CTR]
    unknown = [n for n in names if n not in SEQUENTIAL + CTR]
    if unknown:
        raise ValueError(f"unknown student(s) {unknown}; known: {[*SEQUENTIAL, *CTR]}")
    started = time.time()
    previous = output_dir / "compress.json"
    earlier = json.loads(previous.read_text()) if previous.exists() else {}
    kept, earlier_teachers = earlier.get("students", {}), earlier.get("teachers")
    payload: dict[str, Any] = {"seed": seed, "students": {k: v for k, v in kept.items() if k not in names},
                               "torch": torch.__version__, "pq_seeds": earlier.get("pq_seeds", {}),
                               "quality_seeds": earlier.get("quality_seeds", {}),
                               "machine": {"processor": platform.processor() or platform.machine(),
                                           "cpus": _cpu_count()}}
    if quality_seeds:
        return _quality_only(output_dir, names, earlier, payload, quality_seeds, readme, started)
    if pq_only:
        return _pq_only(output_dir, names, earlier, payload, seed, readme, started, pq_seeds or [seed])
    for name in names:
        student_dir = _parent_run(output_dir, name, seed, parent_max_epochs)
        summary = _compress_run(output_dir, name, seed, student_dir, parent_max_epochs)
        payload["students"][name] = {"student_dir": str(student_dir), "compress": _strip(summary),
                                     "parent_max_epochs": parent_max_epochs,
                                     "parent_test": json.loads((student_dir.parent / "metrics.json").read_text())
                                     .get("test")}
        if name in pq_students and parent_max_epochs is None:
            merge_pq(payload["students"][name], pq_run(output_dir, name, seed, student_dir))
    for name in names:  # timings last and back to back, once every artefact exists
        entry = payload["students"][name]
        entry["profile"] = profile_student(Path(entry["student_dir"]), Path(entry["compress"]["run_dir"]),
                                           min_seconds=min_seconds)
        write_json(output_dir / "compress.json", payload)
    if teachers and "sasrec" in payload["students"]:
        payload["teachers"] = teacher_latency(output_dir, Path(payload["students"]["sasrec"]["student_dir"]), seed,
                                              min_seconds=min_seconds)
    elif earlier_teachers:
        payload["teachers"] = earlier_teachers  # --no-teachers keeps the rows of an earlier run
    return _finish(output_dir, payload, readme, started)


def _finish(output_dir: Path, payload: dict[str, Any], readme: str | Path | None, started: float) -> dict[str, Any]:
    payload["targets"] = check_targets(payload)
    payload["wall_seconds"] = round(time.time() - started, 1)
    write_json(output_dir / "compress.json", payload)
    markdown = render_markdown(payload)
    write_text(output_dir / "compress.md", markdown)
    if readme is not None:
        update_readme(readme, markdown, markers=README_MARKERS)
    return payload


def _pq_only(output_dir: Path, names: list[str], earlier: dict[str, Any], payload: dict[str, Any], seed: int,
             readme: str | Path | None, started: float, seeds: list[int]) -> dict[str, Any]:
    """The PQ stage of ``names`` merged into their existing rows (``seed``) and run on the plain
    parents of the other ``seeds``; everything else kept as it was."""
    kept = earlier.get("students", {})
    missing = [n for n in names if n not in kept]
    if missing:
        raise ValueError(f"--pq-only needs an earlier full run of {missing} in {output_dir}/compress.json")
    payload.update({k: v for k, v in earlier.items() if k in ("teachers", "torch", "machine")})
    for name in names:
        entry = payload["students"][name] = kept[name]
        own = pq_run(output_dir, name, seed, Path(entry["student_dir"]))
        merge_pq(entry, own)
        per_seed = payload["pq_seeds"].setdefault(name, {})
        per_seed[str(seed)] = seed_summary(own)
        for other in (s for s in seeds if s != seed):
            parent = _parent_run(output_dir, name, other)
            per_seed[str(other)] = seed_summary(pq_run(output_dir, name, other, parent))
            write_json(output_dir / "compress.json", payload)  # a seed at a time: nothing lost if killed
    return _finish(output_dir, payload, readme, started)


def _quality_only(output_dir: Path, names: list[str], earlier: dict[str, Any], payload: dict[str, Any],
                  seeds: list[int], readme: str | Path | None, started: float) -> dict[str, Any]:
    """The compress stage of ``names`` on the plain parent of every seed (reused when unchanged; no
    profiling); each seed's quality and size measures go to ``quality_seeds``."""
    from recdistill.benchmarks.compress_report import best_int8, quality_measures

    kept = earlier.get("students", {})
    missing = [n for n in names if n not in kept]
    if missing:
        raise ValueError(f"--quality-seeds needs an earlier full run of {missing} in {output_dir}/compress.json")
    payload.update({k: v for k, v in earlier.items() if k in ("teachers", "torch", "machine", "seed")})
    for name in names:
        payload["students"][name] = kept[name]
        per_seed = payload["quality_seeds"].setdefault(name, {})
        for seed in seeds:
            summary = _compress_run(output_dir, name, seed, _parent_run(output_dir, name, seed))
            per_seed[str(seed)] = {"run_dir": summary["run_dir"], "parent_ndcg10": summary["parent"].get("ndcg@10"),
                                   "parent_auc": summary["parent"].get("auc"),
                                   "int8_variant": best_int8({"compress": summary}),
                                   "measures": [list(m) for m in quality_measures(summary)]}
            write_json(output_dir / "compress.json", payload)  # a seed at a time: nothing lost if killed
    return _finish(output_dir, payload, readme, started)


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _parent_run(output_dir: Path, name: str, seed: int, max_epochs: int | None = None) -> Path:
    """The plain student's run folder (trained from ``ml100k_<name>``, reused when unchanged)."""
    from recdistill.benchmarks.teacher import _collaborative_run
    from recdistill.student.fit import fit_student

    if name == "sasrec" and max_epochs is None:  # ml100k_sasrec trains the teacher benchmark's SASRec
        return _collaborative_run(output_dir, seed) / "student"
    cap = [] if max_epochs is None else [f"--trainer.max_epochs={max_epochs}"]
    run_dir = output_dir / "runs" / f"{name}{'' if max_epochs is None else f'-epochs{max_epochs}'}-seed{seed}"
    args = [f"--seed_everything={seed}", *cap]
    inputs = {"recipe": recipe_path(f"ml100k_{name}").read_text(), "args": args}
    run_stage(run_dir.name, run_dir, inputs, lambda d: fit_student(f"ml100k_{name}", d, args))
    return run_dir / "student"


def _compress_run(output_dir: Path, name: str, seed: int, student_dir: Path,
                  max_epochs: int | None = None) -> dict[str, Any]:
    from recdistill.compress.pipeline import run_compress

    config = compress_config(name)
    tag = "" if max_epochs is None else f"-epochs{max_epochs}"  # the parent's own run folder tag
    run_dir = output_dir / "runs" / f"compress-{name}{tag}-seed{seed}"
    inputs = {"config": config, "student_sha256": sha256_file(student_dir / "model.safetensors")}
    summary = run_stage(run_dir.name, run_dir, inputs, lambda d: run_compress(student_dir, config, d))
    return {**summary, "run_dir": str(run_dir)}


def _strip(summary: dict[str, Any]) -> dict[str, Any]:
    """compress.json without the config echo (kept in the run folder)."""
    return {k: v for k, v in summary.items() if k != "config"}


def profile_student(student_dir: Path, compress_dir: Path, *, min_seconds: float = 1.0) -> dict[str, Any]:
    """PyTorch eager + every ONNX file of the compress run, same inputs, one process."""
    from recdistill.export.profile_suite import profile_models

    timer = {"batch_sizes": BATCH_SIZES, "threads": THREADS, "seq_len": SEQ_LEN, "min_seconds": min_seconds}
    fp32 = compress_dir / ONNX_FILES["onnx_fp32"]
    report = profile_models(student_dir, fp32, **timer)
    rows = [dict(r, artefact="pytorch_fp32" if r["label"] == "pytorch-eager" else "onnx_fp32",
                 bytes=_torch_bytes(student_dir) if r["label"] == "pytorch-eager" else fp32.stat().st_size)
            for r in report["runs"]]
    for variant, rel in ONNX_FILES.items():
        path = compress_dir / rel
        if variant == "onnx_fp32" or not path.exists():
            continue
        extra = profile_models(None, path, **timer)
        rows += [dict(r, artefact=variant, bytes=path.stat().st_size) for r in extra["runs"]]
    return {"seq_len": report["seq_len"], "runs": rows, "speedup_p50": report["speedup_p50"]}


def _torch_bytes(student_dir: Path) -> int:
    return (student_dir / "model.safetensors").stat().st_size


def teacher_latency(output_dir: Path, sasrec_dir: Path, seed: int, *, min_seconds: float = 1.0,
                    text_prompt_iters: int = 10) -> dict[str, Any]:
    """Per-user latency (batch 1, sequence 50, 1 thread) of the teachers next to the PyTorch SASRec."""
    from recdistill.data import SequentialDataModule
    from recdistill.export.profile import profile_latency
    from recdistill.student.io import load_student
    from recdistill.teacher.hllm import load_teacher
    from recdistill.teacher.text_prompt import TextPromptTeacher

    torch.manual_seed(seed)
    dm = SequentialDataModule(dataset="movielens-100k", max_len=SEQ_LEN)
    ids = torch.randint(1, dm.num_items + 1, (1, SEQ_LEN))
    timer = {"threads": 1, "min_seconds": min_seconds}
    out: dict[str, Any] = {"batch_size": 1, "seq_len": SEQ_LEN, "threads": 1}
    with torch.inference_mode():
        student = load_student(sasrec_dir).eval()
        out["sasrec_pytorch"] = profile_latency(student, [ids], label="sasrec pytorch-eager", **timer)
        hybrid_dir = output_dir / "runs" / f"distill-teacher-seed{seed}"
        if (hybrid_dir / "teacher.json").exists() or (hybrid_dir / "adapter" / "teacher.json").exists():
            folder = hybrid_dir / "adapter" if (hybrid_dir / "adapter" / "teacher.json").exists() else hybrid_dir
            hybrid = load_teacher(folder).eval()
            out["hybrid_teacher"] = profile_latency(hybrid, [ids], label="hybrid teacher", **timer)
            out["hybrid_teacher"]["source"] = str(folder)
            out["batched"] = _batched(student, hybrid, dm.num_items, seed, min_seconds)
            del hybrid
        else:
            out["hybrid_teacher"] = {"skipped": f"no trained teacher in {hybrid_dir} (run `recdistill bench distill`)"}
        prompt = TextPromptTeacher(num_items=dm.num_items, item_text=list(dm.split.item_text),
                                   base_model="smollm2-135m", num_layers=30, item_table="trainable").eval()
        out["text_prompt_teacher"] = profile_latency(prompt, [ids], label="text-prompt teacher", threads=1,
                                                     warmup=2, min_iters=text_prompt_iters, min_seconds=0.0)
        out["text_prompt_teacher"]["note"] = "30 SmolLM2 layers over a prompt of the last 20 titles; untrained LoRA"
        out.update(_same_runtime(output_dir, prompt, ids, seed, timer, text_prompt_iters))
    base = out["sasrec_pytorch"]["latency_ms"]["p50"]
    for key in ("hybrid_teacher", "text_prompt_teacher", "sasrec_onnx", "text_prompt_teacher_onnx"):
        if "latency_ms" in out.get(key, {}):
            out[key]["ratio_to_sasrec_p50"] = out[key]["latency_ms"]["p50"] / base
    if "latency_ms" in out.get("sasrec_onnx", {}) and "latency_ms" in out.get("text_prompt_teacher_onnx", {}):
        out["text_prompt_teacher_onnx"]["ratio_to_sasrec_onnx_p50"] = \
            out["text_prompt_teacher_onnx"]["latency_ms"]["p50"] / out["sasrec_onnx"]["latency_ms"]["p50"]
    return out


def _batched(student: Any, teacher: Any, num_items: int, seed: int, min_seconds: float) -> list[dict[str, Any]]:
    """SASRec and the hybrid teacher in PyTorch on the same batches of users (sequence 50, 1 thread): the
    cost per batch and per user when a teacher scores users in bulk (the way it emits its cache)."""
    from recdistill.export.profile import profile_latency

    rows = []
    generator = torch.Generator().manual_seed(seed)
    for size in TEACHER_BATCH_SIZES:
        batch = torch.randint(1, num_items + 1, (size, SEQ_LEN), generator=generator)
        timer = {"threads": 1, "min_seconds": min_seconds, "warmup": 1, "min_iters": 3}
        sasrec = profile_latency(student, [batch], label=f"sasrec pytorch-eager, batch {size}", **timer)
        teacher_row = profile_latency(teacher, [batch], label=f"hybrid teacher, batch {size}", **timer)
        rows.append({"batch_size": size, "sasrec_p50_ms": sasrec["latency_ms"]["p50"],
                     "hybrid_teacher_p50_ms": teacher_row["latency_ms"]["p50"],
                     "ratio_p50": teacher_row["latency_ms"]["p50"] / sasrec["latency_ms"]["p50"]})
    return rows


def _same_runtime(output_dir: Path, prompt: Any, ids: torch.Tensor, seed: int, timer: dict[str, Any],
                  iters: int) -> dict[str, Any]:
    """SASRec's fp32 ONNX file and the text-prompt teacher with its LLM exported by optimum (LoRA
    merged) on ONNX Runtime, same inputs and threads: teacher and student on one runtime. The hybrid
    teacher's LLM reads item vectors (inputs_embeds), which optimum's exporter does not take."""
    from recdistill.export.profile import profile_latency
    from recdistill.export.runtime import make_session
    from recdistill.export.teacher_onnx import ITEM_INPUTS_NOT_EXPORTED, export_teacher_llm, onnx_teacher

    out: dict[str, Any] = {}
    fp32 = output_dir / "runs" / f"compress-sasrec-seed{seed}" / ONNX_FILES["onnx_fp32"]
    if fp32.is_file():
        session = make_session(fp32, threads=1)
        out["sasrec_onnx"] = profile_latency(session, {"input_ids": ids.numpy()}, label="sasrec onnxruntime", **timer)
    folder = output_dir / "runs" / "teacher-onnx" / "text_prompt_llm"
    twin = onnx_teacher(prompt, export_teacher_llm(prompt, folder), threads=1)
    want, got = prompt(ids), twin(ids)
    finite = torch.isfinite(want)
    row = profile_latency(twin, [ids], label="text-prompt teacher, LLM on onnxruntime", threads=1, warmup=2,
                          min_iters=iters, min_seconds=0.0)
    row["parity_max_abs_diff"] = float((got[finite] - want[finite]).abs().max())
    row["parity_top10_equal"] = bool(torch.equal(got.topk(10).indices, want.topk(10).indices))
    row["note"] = "optimum ONNX export (feature-extraction), LoRA merged; prompts and scoring head in PyTorch"
    out["text_prompt_teacher_onnx"] = row
    out["hybrid_teacher_onnx"] = {"skipped": ITEM_INPUTS_NOT_EXPORTED}
    return out
