"""The one definition of each quantity that more than one module reports (docs/conventions.md).

- `acceptance_rate`: per-token acceptance a = accepted drafts / drafts tried. A step tries drafts
  until the first rejection, so a row-step that accepted i of k drafts tried min(i + 1, k). This is
  the `a` of (1 - a^(k+1)) / (1 - a) (Leviathan et al. 2023); the planner, the plan file, the
  engine's stats and the benchmarks all report this one.
- `tokens_per_step`: mean tokens a row-step yields, accepted drafts plus the bonus (or correction)
  token: 1 + accepted / row-steps. Not to be confused with the rate: at a = 0.5 and k = 4 a step
  yields 1.94 tokens while accepted / (k * row-steps), the share of draft slots that were kept, is 0.234.
- `error_percent`: (measured - predicted) / predicted * 100, everywhere a prediction meets a
  measurement: positive when the prediction was too low.

A histogram is a sequence whose i-th entry counts (or weighs) the row-steps that accepted exactly i
drafts, i = 0 .. k; its length fixes k.
"""

from __future__ import annotations

import math
from typing import Sequence

from .errors import SpecMemoError


def _checked(histogram: Sequence[float]) -> tuple[float, int]:
    total = float(sum(histogram))
    if total <= 0 or len(histogram) < 2:
        raise SpecMemoError("acceptance histogram is empty", "measure at least one speculative step with k >= 1")
    return total, len(histogram) - 1


def acceptance_rate(histogram: Sequence[float]) -> float:
    """Per-token acceptance a: accepted drafts / drafts tried (a step stops at the first rejection)."""
    total, k = _checked(histogram)
    accepted = sum(i * c for i, c in enumerate(histogram))
    tried = sum(min(i + 1, k) * c for i, c in enumerate(histogram))
    return accepted / tried


def tokens_per_step(histogram: Sequence[float]) -> float:
    """Mean tokens per row-step: 1 (the bonus or correction token) + mean accepted drafts."""
    total, _ = _checked(histogram)
    return 1.0 + sum(i * c for i, c in enumerate(histogram)) / total


def error_percent(measured: float | None, predicted: float | None) -> float | None:
    """(measured - predicted) / predicted in percent; None when either is missing or predicted is 0."""
    if measured is None or predicted is None or not predicted:
        return None
    if isinstance(measured, float) and math.isnan(measured):
        return None
    return (measured - predicted) / predicted * 100.0
