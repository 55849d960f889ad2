"""The one objective: the task-weighted mean of the task scores, each signed so that higher is better.

``hf-recycle score`` prints it as ``mean``; the search maximizes it (``objective: mean``);
the card and results report it. Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def oriented_mean(items: Iterable[tuple[float, float, bool]]) -> float:
    """Σ wᵢ·±vᵢ / Σ wᵢ over ``(value, weight, higher_is_better)``, lower-is-better values negated.

    Raises:
        ValueError: No items, or weights that do not sum to a positive number.
    """
    rows = list(items)
    if not rows:
        raise ValueError("the mean of no task scores is undefined")
    total = math.fsum(w for _, w, _ in rows)
    if total <= 0:
        raise ValueError("the task weights must sum to a positive number")
    return math.fsum(w * (v if higher else -v) for v, w, higher in rows) / total
