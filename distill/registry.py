"""Name -> class registry for distillation losses.

Usage::

    from recdistill.distill.registry import register_loss, build_loss

    @register_loss("my_loss")
    class MyLoss(nn.Module): ...

    loss = build_loss("my_loss", temperature=2.0)
"""

from __future__ import annotations

from typing import Callable, Dict, Type

__all__ = ["DISTILL_LOSSES", "register_loss", "build_loss"]

DISTILL_LOSSES: Dict[str, type] = {}


def register_loss(name: str) -> Callable[[Type], Type]:
    """Class decorator registering a loss class under ``name``.

    Raises ValueError if ``name`` is already taken by a different class.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"loss name must be a non-empty string, got {name!r}")

    def deco(cls: Type) -> Type:
        existing = DISTILL_LOSSES.get(name)
        if existing is not None and existing is not cls:
            # Allow re-registration of the "same" class on module reload.
            same = (getattr(existing, "__module__", None), getattr(existing, "__qualname__", None)) == (
                getattr(cls, "__module__", None),
                getattr(cls, "__qualname__", None),
            )
            if not same:
                raise ValueError(
                    f"distillation loss name {name!r} already registered to "
                    f"{existing.__module__}.{existing.__qualname__}"
                )
        DISTILL_LOSSES[name] = cls
        return cls

    return deco


def build_loss(name: str, **kwargs):
    """Instantiate the loss registered as ``name`` with ``kwargs``.

    Raises ValueError listing the known names if ``name`` is unknown.
    """
    # Import the package so that all built-in losses are registered.
    try:  # pragma: no cover - import side effect only
        import recdistill.distill  # noqa: F401
    except ImportError:
        pass
    if name not in DISTILL_LOSSES:
        known = ", ".join(sorted(DISTILL_LOSSES)) or "(none registered)"
        raise ValueError(f"unknown distillation loss {name!r}; known losses: {known}")
    return DISTILL_LOSSES[name](**kwargs)

from recdistill.distill import augment as _augment  # noqa: E402,F401  registers "augment" (teacher pseudo-interactions)
