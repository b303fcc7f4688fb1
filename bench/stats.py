"""Percentiles for the benchmark reports, one definition for every script."""
from __future__ import annotations

import math


def pct(values: list[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile: the smallest value with at least ``q`` % of the values at or
    below it (p99 of 100 values is the 99th, p50 of 50 the 25th); NaN when there are none."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered), max(1, math.ceil(q / 100 * len(ordered)))) - 1]
