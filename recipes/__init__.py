"""Packaged YAML recipes; ``recipe_path("ml100k_sasrec")`` finds one by name."""

from __future__ import annotations

from pathlib import Path

RECIPES_DIR = Path(__file__).resolve().parent


def available_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def recipe_path(name_or_path: str) -> Path:
    """Resolve a recipe given as a file path or as a packaged recipe name (with or without .yaml)."""
    candidate = Path(name_or_path)
    if candidate.is_file():
        return candidate
    packaged = RECIPES_DIR / (candidate.name if candidate.suffix == ".yaml" else f"{candidate.name}.yaml")
    if packaged.is_file():
        return packaged
    raise FileNotFoundError(
        f"recipe {name_or_path!r} is neither a file nor a packaged recipe; "
        f"packaged recipes: {', '.join(available_recipes())}"
    )
