"""The teacher-vs-student report writes Markdown, JSON and a plot from metrics files."""

from __future__ import annotations

import json

from recdistill.report import build_report


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
    assert (tmp_path / "quality_vs_latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
