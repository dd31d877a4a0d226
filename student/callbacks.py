"""Moved: :class:`RNGStateCheckpoint` lives in :mod:`recdistill.training` (shared by student and teacher
training, owned by neither); this name is kept for existing imports."""

from __future__ import annotations

from recdistill.training import RNGStateCheckpoint

__all__ = ["RNGStateCheckpoint"]
