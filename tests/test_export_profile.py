"""Latency profiler (fake clock: no timed assertions) and the export/profile command handlers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from recdistill.export.cli import add_export_commands
from recdistill.export.metadata import provenance_path
from recdistill.export.profile import latency_stats, profile_latency
from recdistill.export.profile_suite import numpy_inputs, render_markdown
from recdistill.export.runtime import make_session
from recdistill.student import build_student
from recdistill.student.io import save_student

N = 12


class FakeClock:
    """Each timed call reads the clock twice; call ``i`` lasts ``durations[i % len]`` seconds."""

    def __init__(self, durations: list[float]) -> None:
        self.durations, self.now, self.reads = durations, 100.0, 0

    def __call__(self) -> float:
        if self.reads % 2:  # end of call (self.reads // 2)
            self.now += self.durations[(self.reads // 2) % len(self.durations)]
        self.reads += 1
        return self.now


def test_latency_stats_equal_a_hand_computation() -> None:
    stats = latency_stats([0.001, 0.002, 0.003, 0.004, 0.010])  # ms: 1 2 3 4 10
    # linear interpolation at rank q/100 * (n - 1) = 2, 3.6, 3.8, 3.96:
    # p50 -> 3, p90 -> 4 + 0.6 * 6, p95 -> 4 + 0.8 * 6, p99 -> 4 + 0.96 * 6
    assert stats["p50"] == pytest.approx(3.0)
    assert stats["p90"] == pytest.approx(7.6)
    assert stats["p95"] == pytest.approx(8.8)
    assert stats["p99"] == pytest.approx(9.76)
    assert stats["mean"] == pytest.approx(4.0)
    assert stats["std"] == pytest.approx(np.sqrt((9 + 4 + 1 + 0 + 36) / 5))
    assert (stats["min"], stats["max"]) == pytest.approx((1.0, 10.0))


def test_profile_latency_on_a_fake_clock() -> None:
    calls: list[int] = []
    clock = FakeClock([0.001, 0.002, 0.003, 0.004, 0.010])
    record = profile_latency(lambda x: calls.append(len(x)), [np.zeros((7, 3))], threads=1, warmup=4, min_iters=5,
                             min_seconds=0.0, clock=clock)
    assert len(calls) == 4 + 5 and record["iterations"] == 5 and clock.reads == 10
    assert record["latency_ms"] == pytest.approx(latency_stats([0.001, 0.002, 0.003, 0.004, 0.010]))
    assert record["latency_ms"]["p90"] == pytest.approx(7.6)
    assert record["batch_size"] == 7 and record["threads"] == 1 and record["warmup"] == 4
    assert record["timed_seconds"] == pytest.approx(0.020)
    assert record["throughput_per_s"] == pytest.approx(7 * 5 / 0.020)
    lat = record["latency_ms"]
    assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]


def test_min_seconds_extends_the_run() -> None:
    clock = FakeClock([0.25])
    record = profile_latency(lambda x: None, {"x": np.zeros((1, 1))}, warmup=0, min_iters=2, min_seconds=1.0,
                             clock=clock)
    assert record["iterations"] == 4  # 4 calls x 0.25 s reach 1 s
    assert record["latency_ms"]["p50"] == pytest.approx(250.0)


def test_profile_torch_restores_threads_and_ort_session_threads(tmp_path: Path) -> None:
    from recdistill.export.onnx_export import export_onnx

    torch.manual_seed(0)
    model = build_student("gru4rec", num_items=N, hidden_size=8).eval()
    ids = torch.randint(1, N + 1, (2, 5))
    before = torch.get_num_threads()
    record = profile_latency(model, (ids,), threads=2, warmup=1, min_iters=3, min_seconds=0.0)
    assert torch.get_num_threads() == before
    assert record["runtime"] == "torch" and record["threads"] == 2 and record["iterations"] == 3
    path = export_onnx(model, tmp_path / "g.onnx", parity_shapes=[(1, 3)]).path
    session = make_session(path, threads=2)
    record = profile_latency(session, {"input_ids": ids.numpy()}, warmup=1, min_iters=3, min_seconds=0.0, threads=None)
    assert record["runtime"] == "onnxruntime" and record["threads"] == 2
    with pytest.raises(ValueError, match="intra-op threads"):
        profile_latency(session, {"input_ids": ids.numpy()}, threads=1, min_iters=1, min_seconds=0.0)
    record = profile_latency(path, {"input_ids": ids.numpy()}, threads=1, warmup=0, min_iters=2, min_seconds=0.0)
    assert record["runtime"] == "onnxruntime" and record["threads"] == 1


def test_numpy_inputs_follow_the_metadata() -> None:
    seq = numpy_inputs({"kind": "sequential", "num_items": N}, 4, 9)
    assert seq["input_ids"].shape == (4, 9) and seq["input_ids"].min() >= 1 and seq["input_ids"].max() <= N
    ctr = numpy_inputs({"kind": "ctr", "num_items": N, "init_args": {"field_dims": [3, 5], "dense_dim": 2}}, 6, 4)
    assert ctr["sparse"].shape == (6, 2) and (ctr["sparse"].max(axis=0) < [3, 5]).all()
    assert ctr["dense"].shape == (6, 2) and ctr["dense"].dtype == np.float32 and ctr["history"].shape == (6, 4)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="recdistill")
    add_export_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


@pytest.fixture()
def student_dir(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return save_student(build_student("caser", num_items=N, hidden_size=8, window=3, num_horizontal=2,
                                      num_vertical=1), tmp_path / "caser")


def test_export_command(student_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out" / "caser.onnx"
    args = parse(["export", "--student", str(student_dir), "--output", str(out), "--serving", "--k", "4",
                  "--opset", "18", "--max-len", "8"])
    assert args.handler(args, []) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and "caser" in line and "parity passed" in line
    provenance = json.loads(provenance_path(out).read_text())
    assert provenance["opset"] == 18 and provenance["k"] == 4 and provenance["graph"] == "serving"
    assert {(s["batch"], s["length"]) for s in provenance["parity"]["shapes"]} == {
        (b, n) for b in (1, 3, 17) for n in (1, 5, 8)}
    bad = parse(["export", "--student", str(student_dir), "--output", str(tmp_path / "bad.onnx"), "--atol", "-1"])
    assert bad.handler(bad, []) == 1
    assert "parity failed for student 'caser'" in capsys.readouterr().err


def test_profile_command_writes_json_and_markdown(student_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "profile" / "caser.json"
    args = parse(["profile", "--student", str(student_dir), "--batch-sizes", "1", "4", "--threads", "1",
                  "--seq-len", "6", "--warmup", "1", "--min-iters", "3", "--min-seconds", "0", "--output", str(output)])
    assert args.handler(args, []) == 0
    report = json.loads(output.read_text())
    labels = {(r["label"], r["batch_size"]) for r in report["runs"]}
    assert labels == {(lab, b) for lab in ("pytorch-eager", "onnxruntime-fp32") for b in (1, 4)}
    for run in report["runs"]:
        lat = run["latency_ms"]
        assert lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"]
        assert run["iterations"] >= 3 and run["seq_len"] == 6 and run["threads"] == 1
    assert len(report["speedup_p50"]) == 2 and report["models"]["torch"]["parameters"] > 0
    markdown = output.with_suffix(".md").read_text()
    assert markdown == render_markdown(report) and "| onnxruntime-fp32 | 4 | 1 |" in markdown
    onnx_only = parse(["profile", "--onnx", report["models"]["onnx"]["path"], "--batch-sizes", "2",
                       "--min-iters", "2", "--min-seconds", "0", "--warmup", "0", "--output", str(output)])
    assert not Path(report["models"]["onnx"]["path"]).exists()  # the profile's temporary export is cleaned up
    exported = tmp_path / "c.onnx"
    parse_export = parse(["export", "--student", str(student_dir), "--output", str(exported)])
    assert parse_export.handler(parse_export, []) == 0
    onnx_only.onnx = str(exported)
    assert onnx_only.handler(onnx_only, []) == 0
    report = json.loads(output.read_text())
    assert [r["label"] for r in report["runs"]] == ["onnxruntime-fp32"] and report["speedup_p50"] == []
    neither = parse(["profile", "--output", str(output)])
    assert neither.handler(neither, []) == 2


def test_profile_interleaved_alternates_blocks_until_both_are_done() -> None:
    from recdistill.export.profile import profile_interleaved

    order: list[str] = []
    records = profile_interleaved([("a", lambda x: order.append("a"), [np.zeros((2, 3))]),
                                   ("b", lambda x: order.append("b"), [np.zeros((1, 3))])],
                                  threads=1, warmup=1, min_iters=6, min_seconds=0.0, block=3)
    assert order[:2] == ["a", "b"]  # warm-up, then blocks of 3: a a a b b b a a a b b b
    assert order[2:] == ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3
    assert [r["label"] for r in records] == ["a", "b"] and [r["iterations"] for r in records] == [6, 6]
    assert [r["batch_size"] for r in records] == [2, 1]
    with pytest.raises(ValueError):
        profile_interleaved([("a", lambda: None, [])], block=0)


def test_an_unpinned_session_is_not_reported_as_pinned(tmp_path: Path) -> None:
    import onnxruntime as ort

    from recdistill.export.onnx_export import export_onnx

    torch.manual_seed(0)
    model = build_student("sasrec", num_items=10, hidden_size=8, num_layers=1, num_heads=2, max_len=4).eval()
    path = export_onnx(model, tmp_path / "m.onnx", parity_shapes=[(2, 3)]).path
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # intra_op_num_threads = 0
    assert session.get_session_options().intra_op_num_threads == 0
    feed = {"input_ids": np.ones((1, 4), dtype=np.int64)}
    with pytest.raises(ValueError, match="unpinned"):  # was: timed on every core, recorded as 1 thread
        profile_latency(session, feed, threads=1, warmup=0, min_iters=1, min_seconds=0.0)
    assert profile_latency(make_session(path, threads=1), feed, threads=1, warmup=0, min_iters=1,
                           min_seconds=0.0)["threads"] == 1
