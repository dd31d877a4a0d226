"""The README's commands exist: the two set-up targets, and every `recdistill` command line."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from recdistill.cli import build_parser

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()


def _bash_lines() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    return [line.split("#")[0].strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_two_setup_commands_are_make_targets_and_ci_runs_the_test_one():
    lines = _bash_lines()
    assert "make quickstart" in lines and "make test" in lines
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^quickstart:", makefile, flags=re.M) and re.search(r"^test:", makefile, flags=re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_every_readme_cli_line_parses():
    commands = [line for line in _bash_lines() if line.startswith("recdistill ")]
    assert len(commands) >= 6
    parser = build_parser()
    for line in commands:
        words = shlex.split(line)[1:]
        words = [w.split("|")[0] for w in words if not (w.startswith("[") or w.endswith("]"))]
        args, _ = parser.parse_known_args(words)
        assert callable(args.handler), line


def test_readme_recipes_exist():
    from recdistill.recipes import available_recipes

    for name in set(re.findall(r"`((?:ml100k|quickstart)_[a-z0-9_]+)`", README)):
        assert name in available_recipes(), name


def test_bench_table_update_replaces_only_the_marked_block(tmp_path):
    from recdistill.benchmarks.students import README_END, README_START, update_readme

    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_START}\nold table\n{README_END}\noutro\n")
    update_readme(readme, "| new |\n")
    assert readme.read_text() == f"intro\n{README_START}\n| new |\n{README_END}\noutro\n"
    assert README_START in README and README_END in README  # the real README has the block
