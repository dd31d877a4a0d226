"""``recdistill distill fit``: train a student with distillation terms from a recipe.

The recipe is a student recipe whose ``model`` section adds ``signals`` (the teacher-signal cache)
and ``terms``; model selection, testing and the saved artefacts are those of ``student fit``
(``metrics.json`` in the student schema, ``config.yaml``, ``student/``), plus a ``distill`` entry
in ``metrics.json`` naming the terms, the cache and its teacher, and the seconds per epoch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from recdistill.atomic import write_json


def fit_distilled(config: str | Path, output_dir: str | Path, overrides: list[str] | None = None,
                  resume: bool = False) -> dict[str, Any]:
    """Train, select on validation, test once, save a plain student. Returns ``metrics.json``."""
    from recdistill.distill.ctr_module import DistilledCTRRecommender
    from recdistill.distill.module import DistilledSequentialRecommender
    from recdistill.recipes import recipe_path
    from recdistill.student.fit import fit_student, read_recipe, student_task

    output_dir = Path(output_dir)
    task = student_task(read_recipe(recipe_path(str(config))))
    model_class = DistilledCTRRecommender if task == "ctr" else DistilledSequentialRecommender
    metrics = fit_student(config, output_dir, overrides, resume=resume, model_class=model_class)
    resolved = _resolved_model_section(output_dir / "config.yaml")
    signals = Path(resolved["signals"])
    manifest = json.loads((signals / "manifest.json").read_text())
    metrics["distill"] = {
        "terms": resolved.get("terms") or [],
        **{key: resolved[key] for key in ("item_embedding_init", "embedding_fusion", "knowledge_features")
           if key in resolved},
        "signals": str(signals.resolve()),
        "teacher": manifest.get("teacher"),
        "signals_dataset": manifest.get("dataset"),
    }
    write_json(output_dir / "metrics.json", metrics)
    return metrics


def _resolved_model_section(config_yaml: Path) -> dict[str, Any]:
    import yaml

    return (yaml.safe_load(config_yaml.read_text()) or {}).get("model") or {}


__all__ = ["fit_distilled"]
