"""Fault benchmark corruption: byte flips loaded the normal way, and the bad-input rejection cases."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import random
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from recdistill.atomic import CorruptFileError, verify_zip_file

CORRUPTIONS = ("cache shard", "student last.ckpt", "teacher last.ckpt", "student model.safetensors",
               "student.json")


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
