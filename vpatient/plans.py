"""Treatment exposures as a piecewise-constant control u(t), and what-if plans.

A what-if keeps what was recorded before the time it starts and replaces what follows
with the plan. These helpers are the one place that rule is written; the simulator,
the synthetic generator's ground truth and the batching code all call them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vpatient.schemas import TreatmentExposure, TreatmentPlan

__all__ = ["control_breakpoints", "dose_at", "exposures_under_plan"]


def exposures_under_plan(recorded: Sequence[TreatmentExposure], plan: TreatmentPlan, from_time: float) -> list[TreatmentExposure]:
    """Exposures to simulate: the recorded ones cut at ``from_time``, then the plan's.

    Plan exposures that start before ``from_time`` are cut to start there, because the
    past cannot be changed.
    """
    kept: list[TreatmentExposure] = []
    for exp in recorded:
        if exp.start >= from_time:
            continue
        stop = from_time if exp.stop is None else min(exp.stop, from_time)
        kept.append(exp.model_copy(update={"stop": stop}))
    for exp in plan.exposures:
        if exp.stop is not None and exp.stop <= from_time:
            continue
        kept.append(exp.model_copy(update={"start": max(exp.start, from_time)}))
    return sorted(kept, key=lambda e: (e.start, e.treatment))


def dose_at(exposures: Sequence[TreatmentExposure], treatment: str, times: np.ndarray | float) -> np.ndarray:
    """Dose of ``treatment`` at each time: the exposure active on [start, stop), else 0."""
    t = np.asarray(times, dtype=float)
    dose = np.zeros_like(t)
    for exp in exposures:
        if exp.treatment != treatment:
            continue
        stop = np.inf if exp.stop is None else exp.stop
        dose = np.where((t >= exp.start) & (t < stop), exp.dose, dose)
    return dose


def control_breakpoints(exposures: Sequence[TreatmentExposure], t0: float, t1: float) -> list[float]:
    """Sorted times in (t0, t1) where some dose changes: where an ODE solver must restart."""
    points = {exp.start for exp in exposures} | {exp.stop for exp in exposures if exp.stop is not None}
    return sorted(p for p in points if t0 < p < t1)
