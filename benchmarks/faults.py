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

import os
import platform
import random
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch

from recdistill.atomic import write_json, write_text
from recdistill.benchmarks.faults_compare import ATOL, compare_artefacts
from recdistill.benchmarks.faults_corruption import CORRUPTIONS, bad_input_cases, corruption_trial, flip_byte
from recdistill.benchmarks.faults_kills import (  # noqa: F401 - re-exported
    COMMANDS, FINAL_MARKERS, WINDOW_WEIGHTS, attempt, classify_phase, command_argv, draw_delay, prepare_setup,
    run_reference)

README_MARKERS = ("<!-- bench:faults:start -->", "<!-- bench:faults:end -->")


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
