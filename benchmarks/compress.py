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
   whole SmolLM2 over a prompt of history titles; untrained LoRA, which costs the same).

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
from recdistill.benchmarks.compress_pq import (
    best_pq,
    merge_pq,
    pq_run,
    pq_seeds_target,
    render_pq_seeds,
    seed_summary,
)
from recdistill.benchmarks.students import update_readme
from recdistill.pipeline import run_stage
from recdistill.recipes import recipe_path

SEQUENTIAL = ("sasrec", "gru4rec", "caser", "bert4rec")
CTR = ("deepfm", "dcnv2", "din")
README_MARKERS = ("<!-- bench:compress:start -->", "<!-- bench:compress:end -->")
BATCH_SIZES = (1, 32, 256)
THREADS = (1, 2)
SEQ_LEN = 50
#: compress.json variant -> label of the profiled ONNX file
ONNX_FILES = {"onnx_fp32": "onnx/fp32.onnx", "onnx_int8_dynamic": "onnx/int8_dynamic.onnx",
              "onnx_int8_item_table_per_row": "onnx/onnx_int8_item_table_per_row.onnx",
              "onnx_int8_item_table_per_tensor": "onnx/onnx_int8_item_table_per_tensor.onnx",
              "onnx_pruned_int8": "onnx/pruned_int8.onnx"}


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
        steps["onnx"]["item_table"] = []
        steps.pop("pq")
    return config


def run_compress_benchmark(output_dir: str | Path = "benchmarks/results", students: list[str] | None = None,
                           seed: int = 0, teachers: bool = True, readme: str | Path | None = None,
                           min_seconds: float = 1.0, parent_max_epochs: int | None = None,
                           pq_only: bool = False, pq_students: tuple[str, ...] = ("sasrec",),
                           pq_seeds: list[int] | None = None) -> dict[str, Any]:
    """Run the benchmark for ``students``; rows of other students already in ``compress.json``
    (an earlier invocation) are kept, so the table can be built over several runs.
    ``parent_max_epochs``: train parents for at most that many epochs (a separate run folder;
    recorded in the row). ``pq_students``: students that also get the PQ stage (post-hoc PQ and
    RecJPQ joint training, ``pq_config``). ``pq_only``: run only the PQ stage of ``students``
    (their rows, compress runs and timings are taken from the existing ``compress.json``);
    ``pq_seeds``: with ``pq_only``, also run the PQ stage on the plain parents of these seeds (the
    PQ target is then judged on the median over seeds)."""
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
                               "machine": {"processor": platform.processor() or platform.machine(),
                                           "cpus": _cpu_count()}}
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
            del hybrid
        else:
            out["hybrid_teacher"] = {"skipped": f"no trained teacher in {hybrid_dir} (run `recdistill bench distill`)"}
        prompt = TextPromptTeacher(num_items=dm.num_items, item_text=list(dm.split.item_text),
                                   base_model="smollm2-135m", num_layers=30, item_table="trainable").eval()
        out["text_prompt_teacher"] = profile_latency(prompt, [ids], label="text-prompt teacher", threads=1,
                                                     warmup=2, min_iters=text_prompt_iters, min_seconds=0.0)
        out["text_prompt_teacher"]["note"] = "30 SmolLM2 layers over a prompt of the last 20 titles; untrained LoRA"
    base = out["sasrec_pytorch"]["latency_ms"]["p50"]
    for key in ("hybrid_teacher", "text_prompt_teacher"):
        if "latency_ms" in out[key]:
            out[key]["ratio_to_sasrec_p50"] = out[key]["latency_ms"]["p50"] / base
    return out


def _run(profile: dict[str, Any], artefact: str, batch: int, threads: int) -> dict[str, Any] | None:
    for r in profile["runs"]:
        if r["artefact"] == artefact and r["batch_size"] == batch and r["threads"] == threads:
            return r
    return None


def _variant(entry: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((v for v in entry["compress"]["variants"] if v["name"] == name), None)


def best_int8(entry: dict[str, Any]) -> str:
    """The int8 ONNX artefact that covers the item table where there is one (the issue's "int8,
    embedding tables included"): the compress run's item-table choice, else dynamic int8."""
    choice = entry["compress"].get("item_table_choice")
    if isinstance(choice, dict):
        choice = choice.get("chosen")
    return choice if choice else "onnx_int8_dynamic"


def check_targets(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The compression issue's targets, each with its numbers and met / missed."""
    targets: list[dict[str, Any]] = []

    def add(what: str, value: float | None, limit: str, met: bool | None) -> None:
        targets.append({"target": what, "value": value, "limit": limit, "met": met})

    sas = payload["students"].get("sasrec")
    if sas and "profile" in sas:
        onnx1 = _run(sas["profile"], "onnx_fp32", 1, 1)
        torch1 = _run(sas["profile"], "pytorch_fp32", 1, 1)
        add("SASRec ONNX fp32 p50, batch 1, 1 thread (ms)", onnx1["latency_ms"]["p50"], "<= 0.2",
            onnx1["latency_ms"]["p50"] <= 0.2)
        add("SASRec ONNX fp32 p99, batch 1, 1 thread (ms)", onnx1["latency_ms"]["p99"], "<= 1.0",
            onnx1["latency_ms"]["p99"] <= 1.0)
        speedup = torch1["latency_ms"]["p50"] / onnx1["latency_ms"]["p50"]
        add("SASRec ONNX Runtime over PyTorch eager, batch 1, 1 thread (x)", speedup, ">= 3", speedup >= 3)
        int8 = _variant(sas, best_int8(sas))
        if int8:
            add(f"SASRec {int8['name']} file / fp32 file", int8["size_ratio"], "<= 0.3", int8["size_ratio"] <= 0.3)
            add(f"SASRec {int8['name']} NDCG@10 / fp32", int8["ndcg10_ratio"], ">= 0.98", int8["ndcg10_ratio"] >= 0.98)
            add(f"SASRec {int8['name']} top-10 overlap", int8["top10_overlap"], ">= 0.9", int8["top10_overlap"] >= 0.9)
        rec = _variant(sas, "pruned_recovered")
        if rec:
            add("SASRec pruned + recovered parameters / unpruned", rec["params"] / rec["parent_params"], "<= 0.5",
                rec["params"] / rec["parent_params"] <= 0.5)
            add("SASRec pruned + recovered NDCG@10 / unpruned", rec["ndcg10_ratio"], ">= 0.97",
                rec["ndcg10_ratio"] >= 0.97)
        pint8 = _variant(sas, "onnx_pruned_int8")
        fp32 = _variant(sas, "onnx_fp32")
        if pint8 and fp32:
            size = pint8["size_bytes"] / fp32["size_bytes"]
            add("SASRec pruned + int8 file / fp32 file", size, "<= 0.25", size <= 0.25)
            quality = pint8["ndcg10"] / fp32["parent_ndcg10"]
            add("SASRec pruned + int8 NDCG@10 / unpruned fp32", quality, ">= 0.97", quality >= 0.97)
        pq = best_pq(sas)
        over_seeds = pq_seeds_target((payload.get("pq_seeds") or {}).get("sasrec") or {})
        if over_seeds and len(over_seeds["per_seed"]) > 1:
            per_seed = "; ".join(f"seed {s}: {n[len('pq_'):]} {r:.3f}" for s, (n, r, _) in
                                 sorted(over_seeds["per_seed"].items()))
            add(f"SASRec PQ item table, validation-chosen per seed: times smaller (least; {per_seed})",
                over_seeds["min_item_table_ratio"], ">= 8",
                None if over_seeds["min_item_table_ratio"] is None else over_seeds["min_item_table_ratio"] >= 8)
            add("SASRec PQ item table, validation-chosen per seed: NDCG@10 / fp32 (median over seeds)",
                over_seeds["median_ndcg10_ratio"], ">= 0.98", over_seeds["median_ndcg10_ratio"] >= 0.98)
        elif pq:
            ratio = (pq.get("pq") or {}).get("item_table_ratio")
            add(f"SASRec PQ item table ({pq['name']}): times smaller", ratio, ">= 8",
                None if ratio is None else ratio >= 8)
            add(f"SASRec PQ item table ({pq['name']}) NDCG@10 / fp32", pq["ndcg10_ratio"], ">= 0.98",
                pq["ndcg10_ratio"] >= 0.98)
    teachers = payload.get("teachers") or {}
    for key, limit in (("hybrid_teacher", None), ("text_prompt_teacher", 1000.0)):
        ratio = (teachers.get(key) or {}).get("ratio_to_sasrec_p50")
        if ratio is not None:
            add(f"{key.replace('_', ' ')} / PyTorch SASRec per-user p50 (x)", ratio,
                f">= {limit:g}" if limit else "reported", ratio >= limit if limit else None)
    return targets


def _ms(run: dict[str, Any] | None, key: str = "p50") -> str:
    return "-" if run is None else f"{run['latency_ms'][key]:.3f}"


def _quality(entry: dict[str, Any], artefact: str) -> str:
    parent = entry["compress"]["parent"]
    if artefact == "pytorch_fp32":
        value = parent.get("ndcg@10", parent.get("auc"))
        return "-" if value is None else f"{value:.4f}"
    v = _variant(entry, artefact)
    if v is None:
        return "-"
    value = v.get("ndcg10", v.get("auc"))
    return f"{value:.4f}"


def _verdict(entry: dict[str, Any], artefact: str) -> str:
    v = _variant(entry, artefact)
    if v is None:
        return ""
    return "pass" if v["passed"] else "FAIL: " + "; ".join(v.get("reasons", []))


def render_markdown(payload: dict[str, Any]) -> str:
    lines = [
        f"Serving cost and compression on MovieLens-100K (seed {payload['seed']}, torch {payload['torch']}, "
        f"{payload['machine']['cpus']} CPU cores, shared machine). Latency: p50 / p99 ms per call, sequence "
        f"{SEQ_LEN}, after warm-up; quality on the test split (NDCG@10 for sequential students, AUC for CTR). "
        "Reproduce: `recdistill bench compress --update-readme README.md`.",
        "",
        "| student | artefact | size KiB | quality | gate | b1 p50 (1 thr) | b1 p99 (1 thr) | b32 p50 (1 thr) "
        "| b256 p50 (1 thr) | b256 p50 (2 thr) |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for name, entry in payload["students"].items():
        profile = entry.get("profile")
        if not profile:
            continue
        artefacts = ["pytorch_fp32", "onnx_fp32", best_int8(entry), "onnx_pruned_int8"]
        for artefact in dict.fromkeys(artefacts):
            b1 = _run(profile, artefact, 1, 1)
            if b1 is None:
                continue
            lines.append(
                f"| {name} | {artefact} | {b1['bytes'] / 1024:.0f} | {_quality(entry, artefact)} | "
                f"{_verdict(entry, artefact)} | {_ms(b1)} | {_ms(b1, 'p99')} | {_ms(_run(profile, artefact, 32, 1))} | "
                f"{_ms(_run(profile, artefact, 256, 1))} | {_ms(_run(profile, artefact, 256, 2))} |")
    capped = {n: e["parent_max_epochs"] for n, e in payload["students"].items() if e.get("parent_max_epochs")}
    if capped:
        lines += ["", "Parents trained for fewer epochs than their recipe (this machine's budget): " +
                  ", ".join(f"{n} (at most {m} epochs)" for n, m in capped.items()) + "."]
    lines += ["", "Other gated variants (PyTorch runtime unless named):", "",
              "| student | variant | params | size ratio | quality | ratio to parent | top-10 overlap | gate |",
              "|---|---|---:|---:|---:|---:|---:|---|"]
    for name, entry in payload["students"].items():
        for v in entry["compress"]["variants"]:
            if v["name"] in ONNX_FILES and v["name"] != "onnx_fp32":
                continue
            quality = v.get("ndcg10", v.get("auc"))
            ratio = v.get("ndcg10_ratio") if "ndcg10" in v else v.get("auc_delta")
            params = f"{v['params']:,}" if v.get("params") else "-"
            lines.append(
                f"| {name} | {v['name']} | {params} | {_fmt(v.get('size_ratio'))} | {_fmt(quality, 4)} | "
                f"{_fmt(ratio)}{' (AUC delta)' if 'auc' in v else ''} | {_fmt(v.get('top10_overlap'))} | "
                f"{'pass' if v['passed'] else 'FAIL'} |")
        for step, why in (entry["compress"].get("notes") or {}).items():
            lines.append(f"| {name} | {step} | - | - | - | - | - | {why} |")
    teachers = payload.get("teachers")
    if teachers:
        lines += ["", f"Teacher vs student per user (batch 1, sequence {teachers['seq_len']}, 1 thread, one process):",
                  "", "| model | p50 ms | p99 ms | x SASRec (p50) |", "|---|---:|---:|---:|"]
        for key, label in (("sasrec_pytorch", "SASRec, PyTorch eager"), ("hybrid_teacher", "hybrid teacher (2 LLM layers)"),
                           ("text_prompt_teacher", "text-prompt teacher (30 LLM layers)")):
            t = teachers.get(key) or {}
            if "latency_ms" in t:
                lines.append(f"| {label} | {t['latency_ms']['p50']:.2f} | {t['latency_ms']['p99']:.2f} | "
                             f"{t.get('ratio_to_sasrec_p50', 1.0):,.0f} |")
            elif "skipped" in t:
                lines.append(f"| {label} | - | - | {t['skipped']} |")
    lines += render_pq_seeds((payload.get("pq_seeds") or {}).get("sasrec") or {})
    lines += ["", "| target | value | limit | met |", "|---|---:|---|---|"]
    for t in payload.get("targets", []):
        met = "n/a" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {t['target']} | {_fmt(t['value'], 3)} | {t['limit']} | {met} |")
    return "\n".join(lines) + "\n"


def _fmt(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"

