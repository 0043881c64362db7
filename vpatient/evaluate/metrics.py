"""Scores of the forecasting benchmark: MAE, interval coverage, Harrell's C, IPCW Brier score.

Plain functions of arrays, so each can be checked on a case small enough to compute by hand.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from lifelines.utils import concordance_index

__all__ = ["KaplanMeier", "coverage", "harrell_c", "ipcw_brier", "kaplan_meier", "mae"]

log = logging.getLogger(__name__)

#: Censoring-survival floor for IPCW weights, so that a horizon near the end of follow-up cannot divide by zero.
_MIN_CENSORING_SURVIVAL = 1e-3


def mae(observed: np.ndarray, predicted: np.ndarray) -> float:
    """Mean absolute error over the cells (NaN when there are none)."""
    observed, predicted = np.asarray(observed, dtype=float), np.asarray(predicted, dtype=float)
    return float(np.mean(np.abs(observed - predicted))) if observed.size else float("nan")


def coverage(observed: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """Share of observed values inside their interval [lower, upper] (bounds included)."""
    observed = np.asarray(observed, dtype=float)
    if not observed.size:
        return float("nan")
    return float(np.mean((observed >= np.asarray(lower, dtype=float)) & (observed <= np.asarray(upper, dtype=float))))


def harrell_c(time: np.ndarray, event: np.ndarray, risk: np.ndarray, horizon: float | None = None) -> float:
    """Harrell's C-index of a risk score (higher risk, earlier event).

    With ``horizon`` the outcome is administratively censored there: an event after the
    horizon counts as censored at the horizon, so only who-dies-first within the window
    is ranked. Computed by ``lifelines.utils.concordance_index(T, -risk, E)`` (ties in
    risk count one half).
    """
    time, event, risk = np.asarray(time, dtype=float), np.asarray(event, dtype=int), np.asarray(risk, dtype=float)
    if horizon is not None:
        event = event * (time <= horizon)
        time = np.minimum(time, horizon)
    return float(concordance_index(time, -risk, event))


@dataclass(frozen=True)
class KaplanMeier:
    """A Kaplan-Meier survival curve: S(t) right-continuous steps at ``times``."""

    times: np.ndarray  # (k,) distinct times with at least one event, increasing
    survival: np.ndarray  # (k,) S just after each of those times

    def __call__(self, t: np.ndarray | float, left: bool = False) -> np.ndarray:
        """S(t), or its left limit S(t-) when ``left`` (the survival just before t)."""
        t = np.asarray(t, dtype=float)
        idx = np.searchsorted(self.times, t, side="left" if left else "right")
        return np.concatenate([[1.0], self.survival])[idx]


def kaplan_meier(time: np.ndarray, event: np.ndarray) -> KaplanMeier:
    """Kaplan-Meier estimate of P(T > t) from times and event indicators (1 event, 0 censored)."""
    time, event = np.asarray(time, dtype=float), np.asarray(event, dtype=int)
    event_times = np.unique(time[event == 1])
    at_risk = np.array([(time >= t).sum() for t in event_times], dtype=float)
    deaths = np.array([((time == t) & (event == 1)).sum() for t in event_times], dtype=float)
    return KaplanMeier(event_times, np.cumprod(1.0 - deaths / at_risk))


def ipcw_brier(time: np.ndarray, event: np.ndarray, risk: np.ndarray, horizon: float, censoring: KaplanMeier) -> float:
    """Brier score at ``horizon`` of predicted event probabilities, inverse-probability-of-censoring weighted.

    Graf et al. (1999): with p_i the predicted probability of the event by the horizon,
    and G the censoring survival function,

        BS = 1/n * sum_i [ 1{T_i <= h, event} * (1 - p_i)^2 / G(T_i-)  +  1{T_i > h} * p_i^2 / G(h) ],

    subjects censored before h contribute 0 and are represented through the weights.
    ``censoring`` is G, estimated by the caller (the benchmark: reverse Kaplan-Meier on
    the training fold's subjects in follow-up at the landmark).
    """
    time, event, risk = np.asarray(time, dtype=float), np.asarray(event, dtype=int), np.asarray(risk, dtype=float)
    g_event = censoring(time, left=True)
    g_horizon = float(censoring(horizon))
    if g_horizon < _MIN_CENSORING_SURVIVAL or (g_event[(time <= horizon) & (event == 1)] < _MIN_CENSORING_SURVIVAL).any():
        log.warning("censoring survival below %g before horizon %g: IPCW weights clipped", _MIN_CENSORING_SURVIVAL, horizon)
    g_event = np.maximum(g_event, _MIN_CENSORING_SURVIVAL)
    g_horizon = max(g_horizon, _MIN_CENSORING_SURVIVAL)
    died = (time <= horizon) & (event == 1)
    alive = time > horizon
    terms = np.where(died, (1.0 - risk) ** 2 / g_event, 0.0) + np.where(alive, risk**2 / g_horizon, 0.0)
    return float(terms.mean())
