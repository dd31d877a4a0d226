"""Reports: the Pareto front on a hand example, noise marks, numbers equal to their files, plots written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recdistill.report import build_report, compare_runs, pareto_front, stage_changes

PNG = b"\x89PNG\r\n\x1a\n"


def test_pareto_front_hand_example():
    # (latency ms, quality)
    points = [
        (1.0, 0.10),   # 0: fastest -> on the front
        (2.0, 0.12),   # 1: slower but better -> front
        (2.0, 0.11),   # 2: same latency as 1, worse -> dominated
        (3.0, 0.12),   # 3: slower, same quality as 1 -> dominated
        (5.0, 0.20),   # 4: best quality -> front
        (4.0, 0.09),   # 5: dominated by 0
        (1.0, 0.10),   # 6: a tie with 0: neither dominates the other -> both on the front
    ]
    assert pareto_front(points) == [0, 6, 1, 4]
    assert pareto_front([(1.0, 0.5)]) == [0]
    assert pareto_front([]) == []


def _row(key, ndcg, std=None):
    return {"key": key, "metrics": {"ndcg@10": ndcg}, "std": {"ndcg@10": std} if std is not None else {}}


def test_stage_changes_mark_differences_within_noise():
    one_seed = [_row("teacher", 0.110), _row("vanilla", 0.105), _row("distilled", 0.125), _row("pruned", 0.123),
                _row("quantized", 0.100)]
    changes = {(c["from"], c["to"]): c for c in stage_changes(one_seed, "ndcg@10")}
    assert changes[("teacher", "vanilla")]["within_noise"]  # |-0.005| < 0.01 with one seed
    assert not changes[("vanilla", "distilled")]["within_noise"]
    assert changes[("distilled", "pruned")]["within_noise"]
    assert changes[("distilled", "quantized")]["delta"] == pytest.approx(-0.025)  # against the distilled parent
    assert not changes[("distilled", "quantized")]["within_noise"]
    seeds = [_row("vanilla", 0.105, 0.004), _row("distilled", 0.110, 0.002)]
    (change,) = stage_changes(seeds, "ndcg@10")
    assert change["noise_band"] == 0.004 and not change["within_noise"]  # 0.005 > the larger std
    seeds[0]["std"]["ndcg@10"] = 0.006
    assert stage_changes(seeds, "ndcg@10")[0]["within_noise"]


def _write(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


def _fake_run(root: Path) -> Path:
    """A run folder made of hand-written JSON files (the layout `recdistill run` writes)."""
    run = root / "fake"
    _write(run / "run.json", {"recipe": {"name": "fake"}, "seeds": [0, 1, 2],
                              "dataset": {"source": "movielens-100k", "fingerprint": "abc123"}})
    _write(run / "teacher" / "metrics.json", {
        "test": {"ndcg@10": 0.111, "hr@10": 0.2, "rare/ndcg@10": 0.05, "warm/ndcg@10": 0.12},
        "num_parameters": 9_000_000, "latency": {"p50_ms": 6.0, "p99_ms": 12.0, "sequences_per_second": 600,
                                                 "threads": 2, "throughput_batch_size": 64},
        "fusion": {"alpha": 0.4, "llm_only": {"test": {"ndcg@10": 0.07, "hr@10": 0.15}},
                   "collaborative_only": {"test": {"ndcg@10": 0.106, "hr@10": 0.19}}}})
    for seed, (v, d) in enumerate([(0.100, 0.110), (0.104, 0.112), (0.102, 0.114)]):
        _write(run / "students" / "vanilla" / f"seed{seed}" / "metrics.json",
               {"test": {"ndcg@10": v, "hr@10": 2 * v, "cold/ndcg@10": 0.0}, "num_parameters": 161_472})
        _write(run / "students" / "distilled" / f"seed{seed}" / "metrics.json",
               {"test": {"ndcg@10": d, "hr@10": 2 * d}, "num_parameters": 161_472,
                "distill": {"terms": [{"name": "dllm2rec", "weight": 0.8}]}})
    _write(run / "compressed" / "compress.json", {"variants": [
        {"name": "pruned", "ndcg10": 0.09, "params": 50_000, "passed": False, "reasons": ["NDCG@10 ..."],
         "top10_overlap": 0.7},
        {"name": "pruned_recovered", "ndcg10": 0.108, "params": 50_000, "passed": True, "top10_overlap": 0.92},
        {"name": "onnx_int8_dynamic", "ndcg10": 0.1115, "params": None, "passed": True, "top10_overlap": 0.97},
        {"name": "onnx_pruned_int8", "ndcg10": 0.107, "params": None, "passed": True, "top10_overlap": 0.9}]})

    def runs(p50, p99, tput):
        return [{"batch_size": 1, "threads": 1, "runtime": "onnxruntime",
                 "latency_ms": {"p50": p50, "p99": p99}, "throughput_per_s": 1 / p50},
                {"batch_size": 256, "threads": 1, "runtime": "onnxruntime",
                 "latency_ms": {"p50": 10 * p50, "p99": 10 * p99}, "throughput_per_s": tput}]

    models = {}
    for key, file, size, lat in (("vanilla", "export/vanilla.onnx", 700_000, (0.30, 0.41, 9000)),
                                 ("distilled", "export/distilled.onnx", 700_000, (0.31, 0.40, 9100)),
                                 ("pruned", "compressed/onnx/pruned_fp32.onnx", 250_000, (0.20, 0.25, 15000)),
                                 ("quantized", "compressed/onnx/int8_dynamic.onnx", 300_000, (0.35, 0.50, 8000)),
                                 ("pruned+quantized", "compressed/onnx/pruned_int8.onnx", 120_000, (0.22, 0.30, 14000))):
        models[key] = {"file": file, "bytes": size, "runs": runs(*lat)}
    _write(run / "profile" / "profile.json", {"protocol": "ONNX Runtime, 1 thread", "models": models})
    _write(run / "export" / "distilled.provenance.json", {"status": "passed", "parity": {"max_abs_diff": 1e-6}})
    return run


def test_compare_numbers_equal_their_files(tmp_path):
    run = _fake_run(tmp_path)
    path = compare_runs([run], tmp_path / "report")
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    rows = {r["key"]: r for r in report["rows"]}
    assert list(rows) == ["teacher", "teacher-llm", "teacher-cf", "vanilla", "distilled", "pruned", "quantized",
                          "pruned+quantized"]
    assert rows["teacher"]["metrics"]["ndcg@10"] == 0.111 and rows["teacher"]["p99_ms"] == 12.0
    assert rows["teacher"]["threads"] == 2 and rows["teacher"]["params"] == 9_000_000
    assert rows["teacher-llm"]["metrics"]["ndcg@10"] == 0.07 and rows["teacher-cf"]["metrics"]["hr@10"] == 0.19
    assert rows["vanilla"]["metrics"]["ndcg@10"] == pytest.approx(0.102)
    assert rows["vanilla"]["std"]["ndcg@10"] == pytest.approx(0.002) and rows["vanilla"]["seeds"] == 3
    assert rows["vanilla"]["metrics"]["cold/ndcg@10"] == 0.0
    assert rows["distilled"]["metrics"]["ndcg@10"] == pytest.approx(0.112)
    assert rows["pruned"]["metrics"]["ndcg@10"] == 0.108 and rows["pruned"]["params"] == 50_000  # the recovered one
    assert rows["quantized"]["params"] == 161_472 and rows["pruned+quantized"]["params"] == 50_000
    assert rows["quantized"]["p99_ms"] == 0.50 and rows["quantized"]["throughput"] == 8000
    assert rows["quantized"]["throughput_batch"] == 256 and rows["pruned"]["file_bytes"] == 250_000
    # Pareto front on (p99, NDCG@10): pruned (fastest), pruned+int8 (0.30 ms, 0.107 < 0.108: dominated),
    # distilled (0.40 ms, 0.112); quantized (0.50, 0.1115) is dominated by distilled; teacher is slower and worse
    assert report["pareto_front"] == ["pruned", "distilled"]
    changes = {(c["from"], c["to"]): c for c in report["stage_changes"]["fake"]}
    assert changes[("vanilla", "distilled")]["delta"] == pytest.approx(0.010)
    assert not changes[("vanilla", "distilled")]["within_noise"]  # 0.010 > the seeds' std (0.002)
    assert changes[("distilled", "quantized")]["within_noise"]
    assert changes[("teacher", "vanilla")]["within_noise"] is False  # -0.009 > std 0.002
    markdown = path.read_text()
    assert "| distilled | student distilled from the teacher's signals (dllm2recx0.8) | 0.1120 ± 0.0020 |" in markdown
    assert "## Protocol" in markdown and "seeds [0, 1, 2]" in markdown and "full ranking" in markdown
    assert "| fake | distilled | passed |" in markdown
    for name in ("quality_vs_latency.png", "size.png", "stages.png"):
        assert (tmp_path / "report" / name).read_bytes()[:8] == PNG


def test_report_has_every_row_and_the_plot(tmp_path):
    teacher = {"valid": {"ndcg@10": 0.08}, "test": {"ndcg@10": 0.07, "hr@10": 0.13, "mrr@10": 0.05},
               "num_parameters": 9_000_000, "latency": {"p50_ms": 6.0, "p99_ms": 12.0, "sequences_per_second": 600}}
    student = {"valid": {"ndcg@10": 0.11}, "test": {"ndcg@10": 0.1064, "hr@10": 0.19, "mrr@10": 0.08},
               "num_parameters": 161_472}
    path = build_report([{"name": "teacher", "role": "teacher", "metrics": teacher},
                         {"name": "SASRec", "role": "student", "metrics": student, "latency": {"p50_ms": 0.5}}],
                        tmp_path, title="t", notes=["protocol note"])
    markdown = path.read_text()
    assert "| SASRec | student | 0.1100 | 0.1900 | 0.1064 |" in markdown and "protocol note" in markdown
    rows = json.loads((tmp_path / "report.json").read_text())["rows"]
    assert [r["p50_ms"] for r in rows] == [6.0, 0.5] and rows[0]["num_parameters"] == 9_000_000
    assert (tmp_path / "quality_vs_latency.png").read_bytes()[:8] == PNG


def test_report_averages_only_the_seeds_of_the_run(tmp_path):
    """A run folder re-run with fewer seeds keeps the old ``seed<S>`` folders; the report must not average them in."""
    run = _fake_run(tmp_path)
    info = json.loads((run / "run.json").read_text())
    _write(run / "run.json", {**info, "seeds": [1]})  # the same folder, re-run with seeds [1]
    compare_runs([run], tmp_path / "report")
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    rows = {r["key"]: r for r in report["rows"]}
    assert rows["vanilla"]["seeds"] == 1 and rows["vanilla"]["metrics"]["ndcg@10"] == 0.104
    assert rows["distilled"]["seeds"] == 1 and rows["distilled"]["metrics"]["ndcg@10"] == 0.112
    assert rows["vanilla"]["std"] == {} and rows["vanilla"]["sources"]["metrics"] == [
        "students/vanilla/seed1/metrics.json#test"]
    changes = {(c["from"], c["to"]): c for c in report["stage_changes"]["fake"]}
    assert changes[("vanilla", "distilled")]["delta"] == pytest.approx(0.008)
