"""Number formatting shared by the benchmark tables."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def median_range(values: Sequence[float], digits: int = 4) -> str:
    """``"median (min–max)"`` of ``values`` (just the value for one, ``"-"`` for none)."""
    if not values:
        return "-"
    median = statistics.median(values)
    if len(values) == 1:
        return f"{median:.{digits}f}"
    return f"{median:.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"
