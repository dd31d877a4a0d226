"""``recdistill bench faults``: SIGKILL fault loops, byte-flip corruption and bad-input counts.

Protocol, on a tiny synthetic dataset with a tiny random-init Llama (a few minutes on 2 cores):

1. Kills. For each of ``student fit``, ``teacher fit`` and ``teacher emit`` one uninterrupted
   reference run is timed (when its output folder first changes = end of start-up, when its final
   artefacts first appear = saving). Then, in fresh folders, the command is started as a
   subprocess and SIGKILLed (the whole process group) after a seeded random delay drawn from one
   of the three windows (start-up, training/emission, saving), and restarted (``--resume`` for fit;
   emission resumes by itself) until it completes, for at least ``kills_per_command`` kills. Each
   kill's phase is read from the folder at the instant of the kill: ``start-up`` (nothing written
   yet by this attempt), ``work`` (training/emission files changed) or ``saving`` (final
   artefacts being written). Every completed run is compared with the reference: student weights
   and teacher adapter tensors (bitwise, else within ``atol``), ``metrics.json`` / ``fit.json``
   numbers, the cache's shard and item-table sha256s.
2. Corruption. One byte (seeded position, seeded non-zero XOR mask) is flipped in a cache shard,
   in the student's and the teacher's resume checkpoint (``last.ckpt``), in the student's
   ``model.safetensors`` and in its ``student.json``, each loaded through the normal path
   (``TeacherSignals(verify=True)``, ``recdistill student|teacher fit --resume``, ``load_student``).
   A corruption is *detected* when loading fails with a message naming the file; a flip that
   leaves the loaded content identical (e.g. a zip timestamp, JSON whitespace) is *harmless*.
3. Bad inputs: the expected-failure table of ``tests/test_cli_errors.py`` (when the tests are
   present), each case counted as rejected when ``recdistill`` exits with status 2 and one line
   naming the field, file or fix.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import logging
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from recdistill.atomic import CorruptFileError, verify_zip_file, write_json, write_text

COMMANDS = ("student fit", "teacher fit", "teacher emit")
CORRUPTIONS = ("cache shard", "student last.ckpt", "teacher last.ckpt", "student model.safetensors",
               "student.json")
README_MARKERS = ("<!-- bench:faults:start -->", "<!-- bench:faults:end -->")
ATOL = 1e-6  # weights / metrics tolerance when not bitwise equal
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


# --------------------------------------------------------------------------- comparison


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _compare_tensor_files(reference: Path, candidate: Path, diffs: list[str]) -> bool:
    """Append differences beyond ``ATOL`` to ``diffs``; returns whether the files are bitwise equal."""
    if not candidate.is_file():
        diffs.append(f"{candidate.name} missing")
        return False
    ref, got = _load_tensors(reference), _load_tensors(candidate)
    if ref.keys() != got.keys():
        diffs.append(f"{candidate.name}: tensor names differ")
        return False
    bitwise = True
    for key in ref:
        if ref[key].shape != got[key].shape or ref[key].dtype != got[key].dtype:
            diffs.append(f"{candidate.name}:{key} shape/dtype differ")
            bitwise = False
            continue
        if not torch.equal(ref[key], got[key]):
            bitwise = False
            gap = (ref[key].double() - got[key].double()).abs().max().item()
            if gap > ATOL:
                diffs.append(f"{candidate.name}:{key} differs by {gap:.3g}")
    return bitwise


def _compare_numbers(reference: Any, candidate: Any, where: str, diffs: list[str]) -> None:
    if isinstance(reference, dict) and isinstance(candidate, dict):
        for key in sorted(set(reference) | set(candidate)):
            _compare_numbers(reference.get(key), candidate.get(key), f"{where}.{key}", diffs)
    elif isinstance(reference, list) and isinstance(candidate, list) and len(reference) == len(candidate):
        for index, (a, b) in enumerate(zip(reference, candidate)):
            _compare_numbers(a, b, f"{where}[{index}]", diffs)
    elif isinstance(reference, (int, float)) and isinstance(candidate, (int, float)):
        if abs(float(reference) - float(candidate)) > ATOL:
            diffs.append(f"{where}: {candidate} != {reference}")
    elif reference != candidate:
        diffs.append(f"{where}: {candidate!r:.60} != {reference!r:.60}")


_TIMING_KEYS = ("train_seconds", "seconds_per_epoch", "fit_seconds", "threads", "checkpoint")


def _numbers(path: Path) -> dict[str, Any]:
    payload = json.loads(path.read_text()) if path.is_file() else {}
    return {k: v for k, v in payload.items() if k not in _TIMING_KEYS}


def compare_artefacts(command: str, reference: Path, candidate: Path) -> dict[str, Any]:
    """``{"equal": within tolerance, "bitwise": every tensor file identical, "diffs": [...]}``."""
    diffs: list[str] = []
    if command == "student fit":
        bitwise = _compare_tensor_files(reference / "student" / "model.safetensors",
                                        candidate / "student" / "model.safetensors", diffs)
        _compare_numbers(_numbers(reference / "metrics.json"), _numbers(candidate / "metrics.json"), "metrics",
                         diffs)
    elif command == "teacher fit":
        bitwise = True
        for name in sorted(p.name for p in (reference / "adapter").glob("*.safetensors")):
            bitwise &= _compare_tensor_files(reference / "adapter" / name, candidate / "adapter" / name, diffs)
        _compare_numbers(_numbers(reference / "fit.json"), _numbers(candidate / "fit.json"), "fit", diffs)
    else:
        ref, got = (_cache_digests(d / "signals") for d in (reference, candidate))
        if ref != got:
            names = sorted(n for n in set(ref) | set(got) if ref.get(n) != got.get(n))
            diffs.append(f"cache files differ: {names[:5]}")
        bitwise = ref == got
    return {"equal": not diffs, "bitwise": bitwise and not diffs, "diffs": diffs[:10]}


def _cache_digests(signals: Path) -> dict[str, str]:
    """sha256 of every shard and of the item table, read from the files (and the manifest's own
    record, which must agree), plus whether the manifest says complete."""
    manifest = json.loads((signals / "manifest.json").read_text()) if (signals / "manifest.json").is_file() else {}
    out = {"complete": str(manifest.get("complete"))}
    for path in sorted(signals.glob("*.safetensors")):
        out[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    for entry in (manifest.get("splits") or {}).values():
        for name, rec in (entry.get("shards") or {}).items():
            out[f"manifest:{name}"] = rec.get("sha256")
    return out


# --------------------------------------------------------------------------- the kill loop


def kill_loop(command: str, setup: dict[str, Path], work: Path, reference: Path, timing: dict[str, Any],
              kills: int, rng: random.Random, prepare: Callable[[Path], None] | None = None,
              max_attempts: int | None = None) -> dict[str, Any]:
    """Kill and restart ``command`` in fresh folders until ``kills`` kills are done; compare each
    completed run with ``reference``."""
    max_attempts = max_attempts or 8 * kills + 8
    records: list[dict[str, Any]] = []
    rounds: list[dict[str, Any]] = []
    done = attempts = 0
    while done < kills and attempts < max_attempts:
        folder = work / f"round{len(rounds)}"
        shutil.rmtree(folder, ignore_errors=True)
        if prepare is not None:
            prepare(folder)
        killed_here: list[dict[str, Any]] = []
        outcome: dict[str, Any] = {}
        while attempts < max_attempts:
            attempts += 1
            aim, delay = draw_delay(rng, timing) if done < kills else ("none", float("inf"))
            result = attempt(command, setup, folder, delay, final=timing.get("final_state"))
            if result["killed"]:
                done += 1
                killed_here.append({**result, "aimed_at": aim})
                continue
            outcome = result
            break
        if not outcome:
            rounds.append({"kills": len(killed_here), "completed": False, "error": "attempt limit reached"})
            records.extend(killed_here)
            break
        entry: dict[str, Any] = {"kills": len(killed_here), "completed": outcome["returncode"] == 0}
        if outcome["returncode"] != 0:
            entry["error"] = outcome["error"]
        else:
            entry.update(compare_artefacts(command, reference, folder))
            if entry["equal"]:
                shutil.rmtree(folder, ignore_errors=True)  # keep only what failed, for inspection
        for record in killed_here:
            record["survived"] = bool(entry.get("equal"))
        records.extend(killed_here)
        rounds.append(entry)
    phases: dict[str, int] = {}
    for record in records:
        phases[record["phase"]] = phases.get(record["phase"], 0) + 1
    return {
        "kills": len(records),
        "kills_in_work": sum(r["phase"] != "start-up" for r in records),
        "kills_by_phase": dict(sorted(phases.items())),
        "kills_survived": sum(bool(r.get("survived")) for r in records),
        "runs_completed": sum(bool(r.get("completed")) for r in rounds),
        "runs_equal": sum(bool(r.get("equal")) for r in rounds),
        "runs_bitwise": sum(bool(r.get("bitwise")) for r in rounds),
        "failed": [r for r in rounds if not r.get("equal")],
        "attempts": attempts,
        "kill_records": records,
    }


# --------------------------------------------------------------------------- corruption


def flip_byte(path: Path, rng: random.Random, skip: int = 0) -> dict[str, int]:
    """XOR one byte at a seeded position (at or after ``skip``) with a seeded non-zero mask, in place."""
    data = bytearray(path.read_bytes())
    position = rng.randrange(min(skip, len(data) - 1), len(data))
    mask = rng.randrange(1, 256)
    data[position] ^= mask
    path.write_bytes(bytes(data))
    return {"position": position, "mask": mask, "size": len(data)}


@contextlib.contextmanager
def _quiet(err: io.StringIO | None = None) -> Any:
    """Capture stdout/stderr (into ``err``), mute logging (Lightning's info lines) and warnings for the block."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with contextlib.redirect_stderr(err or io.StringIO()), contextlib.redirect_stdout(io.StringIO()), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _cli_in_process(argv: list[str]) -> tuple[int, str]:
    """``recdistill`` run in this process, quietly; returns (status, stderr)."""
    from recdistill.cli import main

    err = io.StringIO()
    with _quiet(err):
        try:
            status = main(argv)
        except Exception as exc:  # noqa: BLE001 - an unexpected failure is a result here, not a crash
            return 1, f"{type(exc).__name__}: {exc}"
    return status, err.getvalue()


def _outcome(error: str | None, name: str, unchanged: bool) -> str:
    if error is not None:
        return "detected" if name in error else "failed unnamed"
    return "harmless" if unchanged else "undetected"


def _same_checkpoint(a: Path, b: Path) -> bool:
    """Whether two Lightning checkpoints load to identical content."""
    try:
        first, second = (torch.load(p, map_location="cpu", weights_only=True) for p in (a, b))
    except Exception:  # noqa: BLE001 - an unreadable file is certainly changed
        return False
    return _deep_equal(first, second)


def _deep_equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_deep_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_deep_equal(x, y) for x, y in zip(a, b))
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - e.g. numpy arrays
        return repr(a) == repr(b)


def corruption_trial(kind: str, setup: dict[str, Path], references: dict[str, Path], work: Path,
                     rng: random.Random) -> dict[str, Any]:
    """Flip one byte in a copy of the reference artefact of ``kind`` and load it the normal way."""
    from recdistill.student.io import load_student

    shutil.rmtree(work, ignore_errors=True)
    if kind == "cache shard":
        from recdistill.teacher.cache_reader import TeacherSignals

        signals = work / "signals"
        shutil.copytree(references["teacher emit"] / "signals", signals)
        target = rng.choice(sorted(signals.glob("*-0*.safetensors")))
        flip = flip_byte(target, rng)
        unchanged = False  # any byte of a shard is content (header or data)
        try:
            TeacherSignals(signals, verify=True)
            error = None
        except Exception as exc:  # noqa: BLE001
            error = str(exc)
    elif kind in ("student last.ckpt", "teacher last.ckpt"):
        command = "student fit" if kind.startswith("student") else "teacher fit"
        shutil.copytree(references[command], work)
        target = work / "checkpoints" / "last.ckpt"
        original = work / "original.ckpt"
        shutil.copy2(target, original)
        flip = flip_byte(target, rng)
        unchanged = _same_checkpoint(original, target)
        original.unlink()
        try:  # what the CRC-32 check would say (recdistill.atomic.verify_zip_file)
            verify_zip_file(target)
            crc = "passes"
        except CorruptFileError:
            crc = "fails"
        if unchanged:
            error = None  # the same content: a resume would be identical, no need to run it
        else:
            config = setup["student" if command == "student fit" else "teacher"]
            status, err = _cli_in_process([*command.split(), "--config", str(config), "--output-dir", str(work),
                                           "--resume"])
            error = err if status != 0 else None
    else:
        student = work / "student"
        shutil.copytree(references["student fit"] / "student", student)
        target = student / ("student.json" if kind == "student.json" else "model.safetensors")
        before = load_student(student).state_dict()
        spec = json.loads(target.read_text()) if kind == "student.json" else None
        flip = flip_byte(target, rng)
        try:
            unchanged = kind == "student.json" and json.loads(target.read_text()) == spec
        except (UnicodeDecodeError, json.JSONDecodeError):
            unchanged = False
        try:
            after = load_student(student).state_dict()
            error = None
            unchanged = unchanged or (kind != "student.json" and _deep_equal(before, after))
        except Exception as exc:  # noqa: BLE001
            error = str(exc)
    outcome = _outcome(error, target.name, unchanged)
    extra = {"crc_check": crc} if kind.endswith("last.ckpt") else {}
    return {"kind": kind, "file": target.name, **flip, "outcome": outcome, **extra,
            "message": (error or "").strip().splitlines()[-1][:240] if error else None}


# --------------------------------------------------------------------------- bad inputs


class _TmpFactory:
    """The piece of pytest's ``tmp_path_factory`` the CLI-error fixture uses."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def mktemp(self, name: str) -> Path:
        path = self.root / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path


def bad_input_cases(work: Path, tests_file: Path | None = None) -> dict[str, Any]:
    """Run the expected-failure table of ``tests/test_cli_errors.py``; count the clean rejections."""
    tests_file = tests_file or Path(__file__).resolve().parents[1] / "tests" / "test_cli_errors.py"
    if not tests_file.is_file():
        return {"cases": 0, "rejected": 0, "failed": [], "note": f"{tests_file} not found (installed package)"}
    spec = importlib.util.spec_from_file_location("recdistill_cli_error_cases", tests_file)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError as exc:  # the test dependencies (pytest) are not installed
        return {"cases": 0, "rejected": 0, "failed": [], "note": f"cannot import {tests_file}: {exc}"}
    fixture = getattr(module.env, "_get_wrapped_function", lambda: getattr(module.env, "__wrapped__", module.env))()
    with _quiet():
        root = Path(fixture(_TmpFactory(work)))
    failed: list[dict[str, str]] = []
    for name, argv, _output, expected in module.CASES:
        status, err = _cli_in_process([a.replace("{root}", str(root)) for a in argv])
        lines = [line for line in err.splitlines() if line.startswith("recdistill: error:")]
        want = expected.replace("{root}", str(root))
        if not (status == 2 and len(lines) == 1 and want in lines[0] and "Traceback" not in err):
            failed.append({"case": name, "status": str(status), "stderr": err.strip()[-200:]})
    return {"cases": len(module.CASES), "rejected": len(module.CASES) - len(failed), "failed": failed}


# --------------------------------------------------------------------------- the benchmark


def run_fault_benchmark(output_dir: str | Path = "benchmarks/results", kills_per_command: int = 10, seed: int = 0,
                        flips_per_kind: int = 3, commands: tuple[str, ...] = COMMANDS, bad_inputs: bool = True,
                        work_dir: str | Path | None = None, readme: str | Path | None = None,
                        keep_work: bool = False) -> dict[str, Any]:
    """Run the fault benchmark (see the module docstring); writes ``faults.json`` and ``faults.md``
    into ``output_dir`` and returns the payload."""
    output_dir = Path(output_dir)
    # absolute: the bad-input table's recipes name files under it, and a relative path with several
    # parts would be taken for a hub id by the teacher's base-model resolution
    work = (Path(work_dir) if work_dir is not None else output_dir / "runs" / "faults").resolve()
    shutil.rmtree(work, ignore_errors=True)
    started = time.time()
    setup = prepare_setup(work / "setup")
    references: dict[str, Path] = {}
    timings: dict[str, dict[str, Any]] = {}
    results: dict[str, dict[str, Any]] = {}
    needed = set(commands) | ({"student fit", "teacher fit", "teacher emit"} if flips_per_kind else set())
    # the emit reference reads a fitted teacher: the teacher-fit reference folder
    if "student fit" in needed:
        references["student fit"] = work / "reference" / "student"
        references["student fit"].parent.mkdir(parents=True, exist_ok=True)
        timings["student fit"] = run_reference("student fit", setup, references["student fit"])
    if needed & {"teacher fit", "teacher emit"}:
        references["teacher fit"] = work / "reference" / "teacher"
        references["teacher fit"].parent.mkdir(parents=True, exist_ok=True)
        timings["teacher fit"] = run_reference("teacher fit", setup, references["teacher fit"])
    if "teacher emit" in needed:
        references["teacher emit"] = work / "reference" / "emit"
        _copy_fitted_teacher(references["teacher fit"], references["teacher emit"])
        timings["teacher emit"] = run_reference("teacher emit", setup, references["teacher emit"])

    for command in commands:
        rng = random.Random(f"{seed}:{command}")
        prepare = (lambda folder: _copy_fitted_teacher(references["teacher fit"], folder)) \
            if command == "teacher emit" else None
        folder = work / command.replace(" ", "-")
        folder.mkdir(parents=True, exist_ok=True)
        results[command] = {"reference": {k: v for k, v in timings[command].items() if k != "final_state"},
                            **kill_loop(command, setup, folder, references[command], timings[command],
                                        kills_per_command, rng, prepare=prepare)}

    corruption: dict[str, Any] = {}
    if flips_per_kind:
        for kind in CORRUPTIONS:
            rng = random.Random(f"{seed}:flip:{kind}")
            trials = [corruption_trial(kind, setup, references, work / "corrupt" / f"{kind}-{i}".replace(" ", "-"),
                                       rng) for i in range(flips_per_kind)]
            counts = {o: sum(t["outcome"] == o for t in trials)
                      for o in ("detected", "harmless", "undetected", "failed unnamed")}
            corruption[kind] = {"trials": len(trials), **counts, "details": trials}
    rejected = bad_input_cases(work / "bad-inputs") if bad_inputs else None
    payload = _payload(results, corruption, rejected, seed, kills_per_command, flips_per_kind, started)
    write_json(output_dir / "faults.json", payload)
    markdown = render_markdown(payload)
    write_text(output_dir / "faults.md", markdown)
    if readme is not None:
        from recdistill.benchmarks.students import update_readme

        update_readme(readme, markdown, markers=README_MARKERS)
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return payload


def _copy_fitted_teacher(source: Path, folder: Path) -> None:
    """A fresh run folder holding ``source``'s fitted teacher (adapter + fit records), no signals."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name in ("adapter", "config.yaml", "fit.json"):
        if (source / name).is_dir():
            shutil.copytree(source / name, folder / name)
        elif (source / name).is_file():
            shutil.copy2(source / name, folder / name)


def _payload(results: dict[str, dict[str, Any]], corruption: dict[str, Any], bad: dict[str, Any] | None, seed: int,
             kills: int, flips: int, started: float) -> dict[str, Any]:
    corrupt_total = sum(v["trials"] - v["harmless"] for v in corruption.values())
    totals = {
        "kills": sum(r["kills"] for r in results.values()),
        "kills_in_work": sum(r["kills_in_work"] for r in results.values()),
        "kills_survived": sum(r["kills_survived"] for r in results.values()),
        "resumed_runs": sum(r["runs_completed"] for r in results.values()),
        "resumed_runs_equal": sum(r["runs_equal"] for r in results.values()),
        "corruptions": corrupt_total,
        "corruptions_detected": sum(v["detected"] for v in corruption.values()),
        "corruptions_harmless": sum(v["harmless"] for v in corruption.values()),
        "bad_inputs": bad["cases"] if bad else 0,
        "bad_inputs_rejected": bad["rejected"] if bad else 0,
    }
    return {
        "benchmark": "faults",
        "protocol": __doc__.split("\n\n", 1)[1].strip(),
        "seed": seed, "kills_per_command": kills, "flips_per_kind": flips, "atol": ATOL,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": os.cpu_count(), "torch": torch.__version__,
        "wall_seconds": round(time.time() - started, 1),
        "totals": totals, "commands": results, "corruption": corruption, "bad_inputs": bad,
    }


def render_markdown(payload: dict[str, Any]) -> str:
    """The README's reliability block from a ``faults.json`` payload."""
    t = payload["totals"]
    lines = [
        f"Fault benchmark (`recdistill bench faults --kills {payload['kills_per_command']} --seed {payload['seed']}`, "
        f"tiny synthetic data and a tiny random-init Llama, torch {payload['torch']}, CPU, "
        f"{payload['wall_seconds'] / 60:.1f} minutes): **{t['kills_survived']} of {t['kills']} SIGKILLs survived** "
        f"({t['kills_in_work']} landed after start-up), **{t['corruptions_detected']} of {t['corruptions']} "
        f"byte flips detected** with a message naming the file ({t['corruptions_harmless']} more left the content "
        f"unchanged), **{t['bad_inputs_rejected']} of {t['bad_inputs']} bad inputs rejected** with one line "
        f"(exit status 2). Equal = weights and metrics within {payload.get('atol', ATOL):g} of the uninterrupted "
        "run and the same cache sha256s; bitwise = every tensor file identical. Reproduce: "
        "`recdistill bench faults --update-readme README.md`.",
        "",
        "| command | kills | start-up / work / saving | resumed runs equal to the uninterrupted one | bitwise |",
        "|---|---|---|---|---|",
    ]
    for command, r in payload["commands"].items():
        p = r["kills_by_phase"]
        lines.append(f"| `{command}` | {r['kills']} | {p.get('start-up', 0)} / {p.get('work', 0)} / "
                     f"{p.get('saving', 0)} | {r['runs_equal']} of {r['runs_completed']} | {r['runs_bitwise']} |")
    if payload["corruption"]:
        lines += ["", "| byte flipped in | trials | detected (file named) | harmless (same content) | undetected |",
                  "|---|---|---|---|---|"]
        for kind, c in payload["corruption"].items():
            lines.append(f"| {kind} | {c['trials']} | {c['detected']} | {c['harmless']} | "
                         f"{c['undetected'] + c['failed unnamed']} |")
        missed = [t for c in payload["corruption"].values() for t in c["details"]
                  if t["outcome"] == "undetected" and "crc_check" in t]
        if missed:
            caught = sum(t["crc_check"] == "fails" for t in missed)
            lines += ["", f"{caught} of the {len(missed)} undetected checkpoint flips fail "
                          "`recdistill.atomic.verify_zip_file` (the checkpoint's CRC-32s), which the resume path "
                          "does not call yet; `torch.load` itself does not check them."]
    return "\n".join(lines) + "\n"


__all__ = ["run_fault_benchmark", "render_markdown", "kill_loop", "corruption_trial", "flip_byte",
           "compare_artefacts", "classify_phase", "bad_input_cases", "prepare_setup", "COMMANDS", "CORRUPTIONS"]
