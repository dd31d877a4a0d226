"""Stage bookkeeping: a re-run skips a finished stage and rebuilds it when its inputs change."""

from __future__ import annotations

from recdistill.pipeline import run_stage


def test_stage_runs_once_per_distinct_inputs(tmp_path):
    calls = []

    def work(directory):
        calls.append(directory)
        (directory / "out.txt").write_text(str(len(calls)))
        return {"value": len(calls)}

    directory = tmp_path / "stage"
    directory.mkdir()
    assert run_stage("s", directory, {"recipe": "a"}, work) == {"value": 1}
    assert run_stage("s", directory, {"recipe": "a"}, work) == {"value": 1}  # reused, not re-run
    assert len(calls) == 1
    assert run_stage("s", directory, {"recipe": "b"}, work) == {"value": 2}  # changed input rebuilds
    assert len(calls) == 2 and (directory / "out.txt").read_text() == "2"


def test_failed_stage_is_not_marked_done(tmp_path):
    def broken(directory):
        raise RuntimeError("boom")

    directory = tmp_path / "stage"
    directory.mkdir()
    try:
        run_stage("s", directory, {"recipe": "a"}, broken)
    except RuntimeError:
        pass
    assert not (directory / "stage.json").exists()
    assert run_stage("s", directory, {"recipe": "a"}, lambda d: {"ok": True}) == {"ok": True}
