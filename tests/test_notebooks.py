"""Every notebook in notebooks/ runs top to bottom without error, is committed with its outputs,
and the walkthrough notebook's outputs say what they should."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))
NEEDS_REAL_ASSETS = {"01_train_and_evaluate_student.ipynb"}  # MovieLens-100K from the offline cache
WALKTHROUGH = "02_distill_compress_export.ipynb"  # tiny synthetic configuration: runs anywhere


def _execute(path: Path, cwd: Path) -> nbformat.NotebookNode:
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    errors = [o for cell in notebook.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, [f"{e['ename']}: {e['evalue']}" for e in errors]
    return notebook


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ is empty"
    assert WALKTHROUGH in [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_committed_with_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code and all(c.get("execution_count") for c in code), "execute the notebook and save it with outputs"
    assert sum(bool(c.get("outputs")) for c in code) >= len(code) // 2
    assert not any(o.get("output_type") == "error" for c in code for o in c.get("outputs", []))


@pytest.mark.real_assets
@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.name in NEEDS_REAL_ASSETS],
                         ids=[p.name for p in NOTEBOOKS if p.name in NEEDS_REAL_ASSETS])
def test_notebook_executes(path, tmp_path):
    _execute(path, tmp_path)


def test_walkthrough_notebook_executes_and_its_outputs_hold(tmp_path, monkeypatch):
    monkeypatch.setenv("RECDISTILL_CACHE", str(tmp_path / "cache"))
    notebook = _execute(Path(__file__).parents[1] / "notebooks" / WALKTHROUGH, tmp_path)
    (cell,) = [c for c in notebook.cells if "checks" in c.get("metadata", {}).get("tags", [])]
    checks = json.loads("".join(o["text"] for o in cell["outputs"] if o.get("output_type") == "stream").strip())
    assert 0.0 <= checks["distilled_ndcg10"] <= 1.0 and 0.0 <= checks["teacher_ndcg10"] <= 1.0
    assert checks["parity"] == "passed"
    assert {"pruned", "onnx_int8_dynamic", "onnx_pruned_int8"} <= set(checks["variants"])
    assert "teacher-fit" in checks["stages_skipped_on_rerun"] and "compress" in checks["stages_skipped_on_rerun"]
    assert checks["pareto_front"]
    images = [o for c in notebook.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 3  # the report's plots
    assert (tmp_path / "walkthrough" / "run" / "report" / "report.md").is_file()
