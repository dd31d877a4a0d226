"""Fault benchmark kills: tiny set-up, command lines, folder phases, reference timing and SIGKILLed attempts."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

COMMANDS = ("student fit", "teacher fit", "teacher emit")
WINDOW_WEIGHTS = (0.2, 0.5, 0.3)  # odds of aiming a kill at start-up, training/emission, saving
# files whose writing marks a fit's saving phase (relative to its output folder); emission is
# saving once every shard of the reference cache exists (the manifest merge, then exit)
FINAL_MARKERS = {"student fit": ("student", "metrics.json"), "teacher fit": ("adapter", "fit.json")}


# --------------------------------------------------------------------------- set-up


def prepare_setup(root: Path, *, num_users: int = 120, num_items: int = 30, student_epochs: int = 25,
                  teacher_epochs: int = 5) -> dict[str, Path]:
    """Write the tiny dataset, a tiny Llama and the student / teacher recipes under ``root``."""
    import yaml

    from recdistill.data import load_split, synthetic_interactions
    from recdistill.recipes import recipe_path
    from recdistill.teacher.testing import make_tiny_llama

    root.mkdir(parents=True, exist_ok=True)
    csv = root / "events.csv"
    synthetic_interactions(num_users, num_items, mean_length=12, seed=3, pattern_strength=0.8).interactions[
        ["user_id", "item_id", "timestamp"]].to_csv(csv, index=False)
    student = yaml.safe_load(recipe_path("ml100k_sasrec").read_text())
    student["data"].update(dataset=str(csv), max_len=8, batch_size=16, eval_batch_size=64)
    student["model"]["student"]["init_args"].update(hidden_size=16, num_layers=1, num_heads=1, max_len=8,
                                                    dropout=0.2)
    student["trainer"].update(max_epochs=student_epochs, accelerator="cpu", devices=1, enable_progress_bar=False,
                              enable_model_summary=False, log_every_n_steps=1)
    student["early_stopping_patience"] = 100
    (root / "student.yaml").write_text(yaml.safe_dump(student))
    tiny = make_tiny_llama(root / "tiny-llama", texts=load_split(str(csv)).item_text, num_layers=2)
    teacher = {"seed_everything": 0,
               "data": {"dataset": str(csv), "max_len": 6, "batch_size": 16, "eval_batch_size": 32},
               "model": {"base_model": str(tiny), "num_layers": 1, "dropout": 0.2, "lr": 0.005, "progress": False,
                         "embedding_cache_dir": str(root / "embedding-cache")},
               "trainer": {"max_epochs": teacher_epochs, "accelerator": "cpu", "devices": 1,
                           "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0},
               "emit": {"k": 5, "shard_size": 32, "batch_size": 16, "accelerator": "cpu"}}
    (root / "teacher.yaml").write_text(yaml.safe_dump(teacher))
    return {"root": root, "csv": csv, "student": root / "student.yaml", "teacher": root / "teacher.yaml"}


def command_argv(command: str, setup: dict[str, Path], output_dir: Path) -> list[str]:
    """The ``recdistill`` subprocess line of ``command`` writing into ``output_dir`` (fit resumes)."""
    base = [sys.executable, "-m", "recdistill.cli"]
    if command == "student fit":
        return [*base, "student", "fit", "--config", str(setup["student"]), "--output-dir", str(output_dir),
                "--resume"]
    if command == "teacher fit":
        return [*base, "teacher", "fit", "--config", str(setup["teacher"]), "--output-dir", str(output_dir),
                "--resume"]
    if command == "teacher emit":
        return [*base, "teacher", "emit", "--config", str(setup["teacher"]), "--output-dir", str(output_dir)]
    raise ValueError(f"unknown command {command!r}; known: {COMMANDS}")


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
                PYTHONWARNINGS="ignore")


def _state(folder: Path) -> dict[str, tuple[int, int]]:
    """``relative path -> (size, mtime_ns)`` of every file under ``folder`` (empty if absent)."""
    out: dict[str, tuple[int, int]] = {}
    if not folder.exists():
        return out
    for path in folder.rglob("*"):
        try:
            if path.is_file():
                stat = path.stat()
                out[str(path.relative_to(folder))] = (stat.st_size, stat.st_mtime_ns)
        except FileNotFoundError:  # a temp file renamed away meanwhile
            continue
    return out


def _shards(state: dict[str, tuple[int, int]]) -> set[str]:
    return {p for p in state if p.startswith("signals/") and p.endswith(".safetensors") and "-0" in p}


def classify_phase(command: str, before: dict[str, tuple[int, int]], now: dict[str, tuple[int, int]],
                   final: dict[str, tuple[int, int]] | None = None) -> str:
    """``start-up`` (nothing written by this attempt yet), ``saving`` (a fit's final artefacts being
    written; for emission: every shard of ``final``, the reference's last state, exists) or ``work``."""
    changed = [p for p, s in now.items() if before.get(p) != s] + [p for p in before if p not in now]
    if not changed:
        return "start-up"
    if command == "teacher emit":
        return "saving" if final is not None and _shards(final) <= _shards(now) else "work"
    finals = FINAL_MARKERS[command]
    return "saving" if any(p == m or p.startswith(m + "/") for p in changed for m in finals) else "work"


# --------------------------------------------------------------------------- runs


def _start(argv: list[str], log: Path) -> subprocess.Popen:
    handle = open(log, "ab")
    try:
        return subprocess.Popen(argv, stdout=handle, stderr=handle, env=_env(), start_new_session=True)
    finally:
        handle.close()


def _kill(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # the whole group: no worker or child survives
    process.wait()


def run_reference(command: str, setup: dict[str, Path], output_dir: Path, timeout: float = 900) -> dict[str, Any]:
    """Run ``command`` uninterrupted, polling its folder; returns the seconds to its first write
    (end of start-up), to its first final artefact (saving) and to exit."""
    log = output_dir.parent / f"{output_dir.name}.log"
    before = _state(output_dir)
    started = time.perf_counter()
    process = _start(command_argv(command, setup, output_dir), log)
    samples: list[tuple[float, dict[str, tuple[int, int]]]] = []
    try:
        while process.poll() is None:
            elapsed = time.perf_counter() - started
            samples.append((elapsed, _state(output_dir)))
            if elapsed > timeout:
                _kill(process)
                raise RuntimeError(f"{command} reference run took over {timeout} s (log: {log})")
            time.sleep(0.02)
    except BaseException:
        _kill(process)
        raise
    total = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{command} reference run failed with status {process.returncode}: "
                           f"{_tail(log)} (log: {log})")
    final = _state(output_dir)
    phases = [(t, classify_phase(command, before, state, final)) for t, state in samples]
    first_write = next((t for t, phase in phases if phase != "start-up"), total)
    first_final = max(next((t for t, phase in phases if phase == "saving"), total), first_write)
    return {"seconds": round(total, 2), "start_up_seconds": round(first_write, 2),
            "saving_from_seconds": round(first_final, 2), "final_state": final}


def _tail(log: Path, lines: int = 3) -> str:
    text = log.read_text(errors="replace") if log.is_file() else ""
    return " | ".join(text.strip().splitlines()[-lines:])


def draw_delay(rng: random.Random, timing: dict[str, Any]) -> tuple[str, float]:
    """A kill delay from one of the reference's three windows (start-up, work, saving), chosen with
    ``WINDOW_WEIGHTS``; a resumed run has less work left, so its kills drift towards saving."""
    start, save, total = timing["start_up_seconds"], timing["saving_from_seconds"], timing["seconds"]
    windows = {"start-up": (0.0, start), "work": (start, save), "saving": (save, total)}
    aim = rng.choices(list(windows), weights=WINDOW_WEIGHTS)[0]
    low, high = windows[aim]
    return aim, rng.uniform(low, max(high, low + 0.05))


def attempt(command: str, setup: dict[str, Path], output_dir: Path, delay: float,
            final: dict[str, tuple[int, int]] | None = None, timeout: float = 900) -> dict[str, Any]:
    """Start ``command`` and SIGKILL it after ``delay`` seconds unless it exits first."""
    log = output_dir.parent / f"{output_dir.name}.log"
    before = _state(output_dir)
    started = time.perf_counter()
    process = _start(command_argv(command, setup, output_dir), log)
    try:
        process.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGSTOP)  # freeze the folder, then read it and kill
        phase = classify_phase(command, before, _state(output_dir), final)
        _kill(process)
        return {"killed": True, "delay": round(delay, 3), "phase": phase}
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(process)
        raise
    return {"killed": False, "returncode": process.returncode, "seconds": round(time.perf_counter() - started, 2),
            "error": _tail(log) if process.returncode else None}
