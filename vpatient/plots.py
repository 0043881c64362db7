"""Figures of cohorts. Each function takes ``ax=None`` and returns the axes it drew on."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless by default: figures go to files, never to a window

import matplotlib.pyplot as plt
import numpy as np
from lifelines import KaplanMeierFitter

from vpatient.data.cohort import Cohort, arm_of

__all__ = ["plot_km_by_arm", "survival_table"]


def survival_table(cohort: Cohort, event: str = "death") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per subject: time to ``event`` or censoring, whether it happened, and the arm.

    Other event kinds (competing risks such as transplant) censor at their time.
    """
    if event not in cohort.config.event_kinds:
        raise ValueError(f"unknown event {event!r}; the config has {', '.join(cohort.config.event_kinds)}")
    durations, observed, arms = [], [], []
    for r in cohort.records:
        times = [e.time for e in r.events if e.kind == event]
        others = [e.time for e in r.events if e.kind != event]
        if times:
            durations.append(min(times))
            observed.append(True)
        else:
            durations.append(min([r.end_of_followup, *others]))
            observed.append(False)
        arms.append(arm_of(r))
    return np.asarray(durations), np.asarray(observed), arms


def plot_km_by_arm(cohort: Cohort, event: str = "death", ax: plt.Axes | None = None) -> plt.Axes:
    """Kaplan-Meier curves of ``event`` per baseline treatment arm, with 95% bands."""
    durations, observed, arms = survival_table(cohort, event)
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.5))
    arm_array = np.asarray(arms)
    for arm in sorted(set(arms)):
        mask = arm_array == arm
        fitter = KaplanMeierFitter(label=f"{arm} (n={mask.sum()}, {observed[mask].sum()} {event}s)")
        fitter.fit(durations[mask], observed[mask])
        fitter.plot_survival_function(ax=ax, ci_show=True)
    unit = cohort.config.time_unit.value
    ax.set_xlabel(f"{unit} since index")
    ax.set_ylabel(f"probability free of {event}")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{cohort.name}: Kaplan-Meier estimate of {event} by arm")
    ax.grid(alpha=0.3)
    return ax
