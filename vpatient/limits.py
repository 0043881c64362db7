"""Limits on the work one call may ask for, in one place.

A typo (``--horizon 1000``, ``--n-samples 10000000``, a cohort of ``1e10``) should fail at
once with a message naming the option, the limit and how to raise it, not run for hours or
exhaust memory. Every limit has a default generous for real use and an environment variable
that overrides it (``VPATIENT_MAX_SAMPLES=500000 vpatient forecast ...``). The checks are
cheap and run before any modelling.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from vpatient.errors import OptionError

__all__ = [
    "COHORT_PATIENTS",
    "GRID_POINTS",
    "HORIZON_FOLLOWUPS",
    "PLAN_EXPOSURES",
    "SAMPLES",
    "Limit",
    "LimitError",
    "check_at_most",
    "check_time_span",
    "number",
]


class LimitError(OptionError):
    """A request over one of the limits of :mod:`vpatient.limits` (raise the limit if it was meant)."""


@dataclass(frozen=True)
class Limit:
    """One limit: what it bounds (in words, plural), its default, and the environment variable that overrides it."""

    what: str
    default: float
    env: str

    @property
    def value(self) -> float:
        """The limit in force: the environment variable's value when set, else the default."""
        text = os.environ.get(self.env)
        if text is None:
            return self.default
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not value > 0:
            raise OptionError(f"{self.env} = {text!r}: must be a number > 0 (the most {self.what} allowed)")
        return value

    def raise_hint(self) -> str:
        return f"set {self.env} (now {number(self.value)}) to raise the limit"


#: How far a forecast or simulation may run: its end, as a multiple of the training data's median follow-up.
HORIZON_FOLLOWUPS = Limit("multiples of the training data's median follow-up", 25, "VPATIENT_MAX_HORIZON_FOLLOWUPS")
#: Time points of one patient's output grid (memory grows with them, times the samples).
GRID_POINTS = Limit("time points in one patient's forecast grid", 50_000, "VPATIENT_MAX_GRID_POINTS")
#: Posterior sample paths per patient.
SAMPLES = Limit("posterior samples per patient", 100_000, "VPATIENT_MAX_SAMPLES")
#: Virtual patients of one cohort or trial.
COHORT_PATIENTS = Limit("virtual patients in one cohort or trial", 10_000_000, "VPATIENT_MAX_PATIENTS")
#: Exposures of one treatment plan.
PLAN_EXPOSURES = Limit("exposures in one treatment plan", 10_000, "VPATIENT_MAX_PLAN_EXPOSURES")


def check_at_most(limit: Limit, option: str, value: float) -> None:
    """Refuse ``value`` of ``option`` (as the user typed its name) when it is over ``limit``."""
    if value > limit.value:
        raise LimitError(
            f"{option} = {number(value)}: over the limit of {number(limit.value)} {limit.what}; {limit.raise_hint()}"
        )


def check_time_span(option: str, value: float, end: float, followup: float, unit: str) -> None:
    """Refuse a forecast or simulation that would run to time ``end``, past the horizon limit.

    ``option`` (with its ``value``) is what set the end; ``followup`` is the training data's
    median follow-up in ``unit``, the scale a horizon is judged against.
    """
    allowed = HORIZON_FOLLOWUPS.value * followup
    if end > allowed:
        raise LimitError(
            f"{option} = {number(value)} {unit}: the forecast would run to t = {number(end)} {unit}, past the limit of "
            f"{allowed:.4g} {unit} ({HORIZON_FOLLOWUPS.value:g} times the training data's median follow-up of "
            f"{followup:.3g} {unit}); {HORIZON_FOLLOWUPS.raise_hint()}"
        )


def number(value: float) -> str:
    """``value`` as a person reads it: with thousands separators and at most four decimals (huge ones in e-notation)."""
    if not (math.isfinite(value) and abs(value) < 1e15):
        return f"{value:.6g}"
    if value == int(value):
        return f"{int(value):,}"
    return f"{value:,.4f}".rstrip("0")
