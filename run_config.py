"""Run recipes: reading and checking them, and resolving each stage's recipe (``set`` / ``unset``)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from recdistill.errors import ConfigError
from recdistill.recipes import recipe_path

SECTIONS = ("student", "teacher", "distill", "compress", "export", "profile")
TOP_KEYS = {"name", "dataset", "assets", "seeds", "threads", "report", *SECTIONS}
PROFILE_DEFAULTS = {"batch_sizes": [1, 256], "threads": [1], "warmup": 5, "min_iters": 20, "min_seconds": 0.5}


def load_run_recipe(recipe: str | Path) -> dict[str, Any]:
    """Read and check a run recipe (a file or a packaged recipe name)."""
    path = recipe_path(str(recipe))
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a run recipe is a mapping with keys {sorted(TOP_KEYS)}")
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown run recipe key(s) {sorted(unknown)}; known: {sorted(TOP_KEYS)}")
    for section in ("student", "teacher", "distill", "compress"):
        if not isinstance(raw.get(section), dict) or "recipe" not in raw[section]:
            raise ConfigError(f"{path}: section {section!r} needs a `recipe:` (a stage recipe name or file)")
    seeds = raw.get("seeds", [0])
    if not seeds or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"{path}: seeds must be a non-empty list of integers, got {seeds!r}")
    resolved = copy.deepcopy(raw)
    resolved.setdefault("name", path.stem)
    resolved["seeds"] = list(seeds)
    resolved.setdefault("assets", [])
    resolved.setdefault("threads", None)
    resolved["export"] = dict(resolved.get("export") or {})
    resolved["profile"] = {**PROFILE_DEFAULTS, **(resolved.get("profile") or {})}
    base = path.parent
    for section in ("student", "teacher", "distill", "compress"):  # stage recipes relative to the run recipe
        name = str(resolved[section]["recipe"])
        local = base / name
        resolved[section]["recipe"] = str(local) if local.is_file() else name
    return resolved


def set_dotted(config: dict[str, Any], key: str, value: Any) -> None:
    node = config
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = copy.deepcopy(value)


def unset_dotted(config: dict[str, Any], key: str) -> None:
    node: Any = config
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(parts[-1], None)


def stage_recipe(section: dict[str, Any], *, dataset: str | None = None, seed: int | None = None) -> dict[str, Any]:
    """The stage recipe of a run-recipe section: the named recipe with ``set``/``unset`` applied."""
    config = yaml.safe_load(recipe_path(str(section["recipe"])).read_text()) or {}
    for key in section.get("unset") or []:
        unset_dotted(config, str(key))
    for key, value in (section.get("set") or {}).items():
        set_dotted(config, str(key), value)
    if dataset is not None:
        set_dotted(config, "data.dataset", dataset)
    if seed is not None:
        config["seed_everything"] = int(seed)
    return config
