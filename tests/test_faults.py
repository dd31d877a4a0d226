"""The fault benchmark's bookkeeping (issue 11): phases, kill loop counts, comparisons, Markdown."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import recdistill.benchmarks.faults as faults


def test_phase_is_read_from_what_the_attempt_wrote():
    before = {"config.yaml": (10, 1)}
    assert faults.classify_phase("student fit", before, dict(before)) == "start-up"
    assert faults.classify_phase("student fit", before, {**before, "checkpoints/last.ckpt": (5, 2)}) == "work"
    assert faults.classify_phase("student fit", before, {**before, "student/model.safetensors": (5, 2)}) == "saving"
    final = {"signals/train-00000.safetensors": (1, 1), "signals/test-00000.safetensors": (1, 1)}
    partial = {"signals/train-00000.safetensors": (1, 1)}
    assert faults.classify_phase("teacher emit", {}, partial, final) == "work"
    assert faults.classify_phase("teacher emit", {}, {**final, "signals/manifest.json": (3, 3)}, final) == "saving"


def test_delays_cover_the_three_windows_and_are_seeded():
    timing = {"start_up_seconds": 2.0, "saving_from_seconds": 5.0, "seconds": 6.0}
    draws = [faults.draw_delay(random.Random(3), timing) for _ in range(2)]
    assert draws[0] == draws[1]
    rng = random.Random(0)
    seen = {aim: [] for aim in ("start-up", "work", "saving")}
    for _ in range(60):
        aim, delay = faults.draw_delay(rng, timing)
        seen[aim].append(delay)
    assert all(seen.values())
    assert max(seen["start-up"]) <= 2.0 and 2.0 <= min(seen["work"]) <= max(seen["work"]) <= 5.0
    assert min(seen["saving"]) >= 5.0


def test_flip_byte_changes_exactly_one_byte_reproducibly(tmp_path):
    original = bytes(range(256)) * 4
    for name in ("a", "b"):
        (tmp_path / name).write_bytes(original)
    flips = [faults.flip_byte(tmp_path / name, random.Random(7)) for name in ("a", "b")]
    assert flips[0] == flips[1]
    changed = [i for i, (x, y) in enumerate(zip(original, (tmp_path / "a").read_bytes())) if x != y]
    assert changed == [flips[0]["position"]]


def _student_run(folder: Path, weight: float, ndcg: float) -> Path:
    (folder / "student").mkdir(parents=True)
    save_file({"w": torch.full((3,), weight)}, str(folder / "student" / "model.safetensors"))
    (folder / "metrics.json").write_text(json.dumps({"test": {"ndcg@10": ndcg}, "best_epoch": 2,
                                                     "train_seconds": weight * 100}))
    return folder


def test_compare_artefacts_reports_weights_and_metrics(tmp_path):
    ref = _student_run(tmp_path / "ref", 1.0, 0.5)
    same = _student_run(tmp_path / "same", 1.0, 0.5)
    assert faults.compare_artefacts("student fit", ref, same) == {"equal": True, "bitwise": True, "diffs": []}
    close = _student_run(tmp_path / "close", 1.0 + 1e-7, 0.5)  # within ATOL, not bitwise; timings ignored
    assert faults.compare_artefacts("student fit", ref, close) == {"equal": True, "bitwise": False, "diffs": []}
    far = _student_run(tmp_path / "far", 1.1, 0.4)
    result = faults.compare_artefacts("student fit", ref, far)
    assert not result["equal"] and len(result["diffs"]) == 2, result


def test_kill_loop_counts_kills_phases_and_survivors(tmp_path, monkeypatch):
    """Scripted attempts: round 0 is killed twice then completes equal, round 1 is killed once
    (in start-up) and completes different from the reference."""
    script = iter([{"killed": True, "phase": "work", "delay": 1.0},
                   {"killed": True, "phase": "saving", "delay": 2.0},
                   {"killed": False, "returncode": 0},
                   {"killed": True, "phase": "start-up", "delay": 0.1},
                   {"killed": False, "returncode": 0}])
    verdicts = iter([{"equal": True, "bitwise": True, "diffs": []},
                     {"equal": False, "bitwise": False, "diffs": ["metrics.test.ndcg@10: 0.4 != 0.5"]}])
    delays: list[float] = []

    def fake_attempt(command, setup, folder, delay, final=None):
        folder.mkdir(parents=True, exist_ok=True)
        delays.append(delay)
        return next(script)

    monkeypatch.setattr(faults, "attempt", fake_attempt)
    monkeypatch.setattr(faults, "compare_artefacts", lambda command, ref, folder: next(verdicts))
    timing = {"start_up_seconds": 1.0, "saving_from_seconds": 2.0, "seconds": 3.0}
    result = faults.kill_loop("student fit", {}, tmp_path, tmp_path / "ref", timing, kills=3, rng=random.Random(0))
    assert result["kills"] == 3 and result["attempts"] == 5
    assert result["kills_by_phase"] == {"saving": 1, "start-up": 1, "work": 1}
    assert result["kills_in_work"] == 2 and result["kills_survived"] == 2
    assert result["runs_completed"] == 2 and result["runs_equal"] == 1 and result["runs_bitwise"] == 1
    assert result["failed"][0]["diffs"] == ["metrics.test.ndcg@10: 0.4 != 0.5"]
    assert delays[-1] == float("inf")  # enough kills: the last round runs to completion
    assert not (tmp_path / "round0").exists() and (tmp_path / "round1").exists()  # failures are kept


def test_markdown_states_the_counts():
    payload = {"kills_per_command": 10, "seed": 0, "torch": "2.x", "wall_seconds": 240.0,
               "totals": {"kills_survived": 30, "kills": 30, "kills_in_work": 21, "corruptions_detected": 14,
                          "corruptions": 15, "corruptions_harmless": 0, "bad_inputs_rejected": 35,
                          "bad_inputs": 35},
               "commands": {"student fit": {"kills": 10, "kills_by_phase": {"work": 7, "start-up": 3},
                                            "runs_equal": 4, "runs_completed": 4, "runs_bitwise": 4}},
               "corruption": {"student last.ckpt": {"trials": 3, "detected": 2, "harmless": 0, "undetected": 1,
                                                    "failed unnamed": 0,
                                                    "details": [{"outcome": "detected", "crc_check": "fails"}] * 2
                                                    + [{"outcome": "undetected", "crc_check": "fails"}]}}}
    text = faults.render_markdown(payload)
    assert "30 of 30 SIGKILLs survived" in text and "14 of 15" in text and "35 of 35 bad inputs" in text
    assert "| `student fit` | 10 | 3 / 7 / 0 | 4 of 4 | 4 |" in text
    assert "| student last.ckpt | 3 | 2 | 0 | 1 |" in text
    assert "1 of the 1 undetected checkpoint flips fail `recdistill.atomic.verify_zip_file`" in text


@pytest.mark.slow
def test_fault_benchmark_end_to_end(tmp_path):
    """One kill per command on the tiny setting, one flip per kind, the bad-input table skipped."""
    payload = faults.run_fault_benchmark(tmp_path / "out", kills_per_command=1, flips_per_kind=1, bad_inputs=False,
                                         work_dir=tmp_path / "work")
    assert (tmp_path / "out" / "faults.json").is_file() and (tmp_path / "out" / "faults.md").is_file()
    for command in faults.COMMANDS:
        result = payload["commands"][command]
        assert result["kills"] >= 1 and result["runs_completed"] >= 1
        assert result["runs_equal"] == result["runs_completed"], result["failed"]
    for kind in ("cache shard", "student model.safetensors"):
        assert payload["corruption"][kind]["detected"] == 1, payload["corruption"][kind]
    assert not (tmp_path / "work").exists()
