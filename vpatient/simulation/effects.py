"""Treatment effects from paired sample paths: differences with intervals, and RMST.

Both plans of a pair are rolled out from the same posterior draws (common random
numbers), so the per-draw difference is the effect for that draw and its spread is
the uncertainty about the effect itself, not noise between two independent runs.
"""

from __future__ import annotations

import numpy as np

__all__ = ["INTERVAL", "interval", "restricted_mean", "summarise_differences"]

#: Probability mass of the reported effect intervals (5% to 95% of the draws).
INTERVAL = 0.90


def interval(draws: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and the central ``INTERVAL`` range of draws along ``axis``."""
    lo, hi = np.quantile(draws, [(1 - INTERVAL) / 2, (1 + INTERVAL) / 2], axis=axis)
    return draws.mean(axis=axis), lo, hi


def restricted_mean(times: np.ndarray, survival: np.ndarray, start: float, horizon: float) -> np.ndarray:
    """Restricted mean survival time over [start, start + horizon]: the trapezoid integral of S.

    ``times`` (T,) ascending and covering the window; ``survival`` (..., T). In the data's
    time unit: event-free time within the window.
    """
    end = start + horizon
    inside = (times >= start - 1e-9) & (times <= end + 1e-9)
    t = times[inside]
    if len(t) < 2 or t[0] > start + 1e-6 or t[-1] < end - 1e-6:
        raise ValueError(f"the time grid does not cover [{start}, {end}] for the restricted mean")
    return np.trapezoid(survival[..., inside], t, axis=-1)


def summarise_differences(draws_b: np.ndarray, draws_a: np.ndarray) -> dict[str, float]:
    """Mean, 5% and 95% of the paired differences b - a over draws (1-d arrays)."""
    mean, lo, hi = interval(np.asarray(draws_b) - np.asarray(draws_a))
    return {"difference": float(mean), "lower": float(lo), "upper": float(hi)}
