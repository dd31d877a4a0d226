"""``recdistill quickstart``: ``recdistill run recipes/quickstart.yaml`` under its historical name.

The quickstart run recipe (``recipes/quickstart.yaml``) goes, on MovieLens-100K + SmolLM2, through
data → vanilla SASRec → hybrid teacher fit / emit / eval → distilled SASRec → prune + recover +
int8 → ONNX export (parity gate) → latency profile → report, into one run folder; finished stages
are skipped on a re-run (see ``run.py``).
"""

from __future__ import annotations

from pathlib import Path

from recdistill.errors import ConfigError

RUN_RECIPE = "quickstart"


def run_quickstart(output_dir: str | Path = "runs/quickstart", overrides: list[str] | None = None) -> Path:
    """Run ``recipes/quickstart.yaml`` into ``output_dir``; returns the report's Markdown path."""
    from recdistill.run import run_recipe

    if overrides:
        raise ConfigError(f"quickstart takes no recipe overrides ({' '.join(overrides)}); copy "
                          "recipes/quickstart.yaml, change its `set:` entries and run `recdistill run YOUR.yaml "
                          "--output-dir DIR`")
    return run_recipe(RUN_RECIPE, output_dir)
