"""What-if for one patient: the same posterior draws rolled out under each treatment plan.

``whatif(model, record, plans)`` infers the patient's state from what is known at the
decision time (the last visit by default) once, rolls the same draws out under every
plan with the same observation noise (common random numbers), and returns per-plan
forecasts and the effect of each plan against the first (the reference): differences
in each lab at chosen horizons and in survival and restricted mean survival time (RMST).

Lab effects compare the decoder mean (the lab's typical value without measurement
noise) on the natural scale: an effect on a patient's bilirubin, not on one noisy draw.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from vpatient import limits, transforms
from vpatient.data.timeline import truncate_record
from vpatient.errors import VPatientError
from vpatient.schemas import PatientRecord, TreatmentPlan, parse_record
from vpatient.simulation.effects import INTERVAL, restricted_mean, summarise_differences
from vpatient.virtual_patient import Forecast, VirtualPatientModel

__all__ = ["DEFAULT_EFFECT_HORIZONS", "WhatIfResult", "whatif"]

#: Effect horizons in years (converted to the data's time unit), those within the what-if's horizon.
DEFAULT_EFFECT_HORIZONS = (1.0, 2.0, 5.0)


@dataclass
class WhatIfResult:
    """Forecasts of one patient under several plans, and the plans' effects against the first."""

    subject_id: str
    at: float  # decision time: what was known then, and when the plans take over
    horizon: float
    effect_horizons: tuple[float, ...]
    seed: int
    n_samples: int
    plans: list[TreatmentPlan]
    forecasts: dict[str, Forecast]  # by plan name, in the order given

    @property
    def reference(self) -> str:
        return self.plans[0].name

    def trajectories(self, since: float | None = None, variables: Sequence[str] | None = None) -> pd.DataFrame:
        """Per plan, variable and time: predictive median (the point forecast) and 5/25/75/95% quantiles (natural units).

        ``since`` keeps the times from it on (e.g. ``result.at``: the plans only) and ``variables``
        those variables (default: all), computing nothing for the rest (:meth:`Forecast.summary`).
        """
        frames = [f.summary(since=since, variables=variables).assign(plan=name) for name, f in self.forecasts.items()]
        return pd.concat(frames, ignore_index=True)

    def survival(self) -> pd.DataFrame:
        """Per plan, event kind and time: probability of being free of the event, with 90% interval."""
        frames = [f.survival_summary().assign(plan=name) for name, f in self.forecasts.items()]
        return pd.concat(frames, ignore_index=True)

    def effects(self, pairs: str = "reference") -> pd.DataFrame:
        """Plan effects: one row per (plan, reference, quantity, horizon).

        ``pairs="reference"`` compares every plan with the first; ``"all"`` every pair of
        plans (the later one against the earlier). Quantities: every continuous variable
        (difference of its typical value, natural units), ``survival:<event>`` (difference
        in the probability of being free of the event at the horizon) and ``rmst:<event>``
        (difference in event-free time within the horizon, in the data's time unit). ``lower`` / ``upper`` bound
        the central 90% of the posterior draws.
        """
        if pairs not in ("reference", "all"):
            raise VPatientError(f"pairs = {pairs!r}: choose 'reference' or 'all'")
        names = [p.name for p in self.plans]
        chosen = [(names[0], b) for b in names[1:]]
        if pairs == "all":
            chosen = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
        rows = [row for a, b in chosen for row in self._pair_rows(a, b)]
        return pd.DataFrame(
            rows,
            columns=["subject_id", "plan", "reference", "quantity", "kind", "horizon", "unit", "difference", "lower", "upper"],
        )

    def _pair_rows(self, reference: str, plan: str) -> list[dict]:
        ref, other = self.forecasts[reference], self.forecasts[plan]
        grid = ref.times
        rows = []
        for h in self.effect_horizons:
            i = _grid_index(grid, self.at + h)
            for j, name in enumerate(ref.layout.continuous):
                spec = ref.config.variable(name)
                a = transforms.inverse(ref.paths.expected[0, :, i, j], spec.transform)
                b = transforms.inverse(other.paths.expected[0, :, i, j], spec.transform)
                rows.append(self._row(plan, reference, name, "lab", h, b, a, spec.unit))
            for k, event in enumerate(ref.layout.events):
                a, b = ref.paths.survival[0, :, i, k], other.paths.survival[0, :, i, k]
                rows.append(self._row(plan, reference, f"survival:{event}", "probability", h, b, a, None))
                a_rmst = restricted_mean(grid, ref.paths.survival[0, :, :, k], self.at, h)
                b_rmst = restricted_mean(grid, other.paths.survival[0, :, :, k], self.at, h)
                rows.append(self._row(plan, reference, f"rmst:{event}", "time", h, b_rmst, a_rmst, ref.config.time_unit.value))
        return rows

    def _row(
        self, plan: str, reference: str, quantity: str, kind: str, horizon: float, b: np.ndarray, a: np.ndarray, unit: str | None
    ) -> dict:
        return {
            "subject_id": self.subject_id,
            "plan": plan,
            "reference": reference,
            "quantity": quantity,
            "kind": kind,
            "horizon": horizon,
            "unit": unit or "",
            **summarise_differences(b, a),
        }

    def to_dict(self) -> dict:
        """JSON-ready: settings, effects, trajectories and survival (for `vpatient whatif --json`)."""
        return {
            "subject_id": self.subject_id,
            "at": self.at,
            "horizon": self.horizon,
            "seed": self.seed,
            "n_samples": self.n_samples,
            "interval": INTERVAL,
            "plans": [p.model_dump(mode="json") for p in self.plans],
            "effects": self.effects(pairs="all").to_dict(orient="records"),
            "trajectories": self.trajectories().to_dict(orient="records"),
            "survival": self.survival().to_dict(orient="records"),
        }


def whatif(
    model: VirtualPatientModel,
    record: PatientRecord,
    plans: Sequence[TreatmentPlan],
    horizon: float | None = None,
    n_samples: int = 200,
    seed: int = 0,
    at: float | None = None,
    effect_horizons: Sequence[float] | None = None,
    step: float | None = None,
) -> WhatIfResult:
    """Roll one patient out under each plan from ``at`` (default: the last visit).

    The first plan is the reference every other plan is compared with. Plans are
    validated against the model's config (known treatments, allowed doses). Times are in
    the data's unit; ``horizon`` defaults to the model's :attr:`~VirtualPatientModel.default_horizon`,
    ``step`` (of the output grid) to its :attr:`~VirtualPatientModel.grid_step`.
    """
    plans = list(plans)
    if not plans:
        raise VPatientError("no plans given: a what-if needs at least one treatment plan (two to compare)")
    names = [p.name for p in plans]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise VPatientError(f"plan names must be unique, but {', '.join(map(repr, duplicated))} appears more than once")
    for plan in plans:  # before validating them: a plan of a million exposures is refused at once
        limits.check_at_most(limits.PLAN_EXPOSURES, f"the exposures of plan {plan.name!r}", len(plan.exposures))
    _check_plans(model, plans)
    if at is None:
        at = max(record.visit_times(), default=0.0)
    if not math.isfinite(at) or at < 0:
        raise VPatientError(f"subject {record.subject_id}: at = {at!r}: the decision time must be >= 0")
    horizon = model.default_horizon if horizon is None else horizon
    step = model.grid_step if step is None else step
    if not (math.isfinite(horizon) and horizon > 0):
        raise VPatientError(f"horizon = {horizon!r}: must be > 0 {model.time_unit}")
    model.check_work(at, horizon, "at", "horizon", step)
    in_unit = [model.config.time_unit.from_years(h) for h in DEFAULT_EFFECT_HORIZONS]
    defaults = [h for h in in_unit if h <= horizon + 1e-9]
    chosen = tuple(float(h) for h in (effect_horizons or defaults or [horizon]))
    too_far = [h for h in chosen if not 0 < h <= horizon + 1e-9]
    if too_far:
        raise VPatientError(f"effect horizons {too_far} lie outside (0, horizon={horizon}]")
    record = parse_record(record.model_dump(mode="json"), model.config)  # e.g. a record of another dataset
    history = truncate_record(record, at)
    grid = np.unique(
        np.concatenate(
            [np.arange(0.0, at, step), at + np.arange(0.0, horizon + 1e-9, step), [at + horizon], [at + h for h in chosen]]
        )
    )
    paths = model.simulate_plans([history], [grid], plans, n_samples=n_samples, seed=seed)
    forecasts = {
        p.name: Forecast(record.subject_id, float(at), model.config, model.layout, path)
        for p, path in zip(plans, paths, strict=True)
    }
    return WhatIfResult(record.subject_id, float(at), float(horizon), chosen, seed, n_samples, plans, forecasts)


def _check_plans(model: VirtualPatientModel, plans: Sequence[TreatmentPlan]) -> None:
    """Validate plans against the model's config (a plan built in Python skipped that)."""
    for plan in plans:
        plan.check(model.config)


def _grid_index(grid: np.ndarray, t: float) -> int:
    i = int(np.argmin(np.abs(grid - t)))
    if abs(grid[i] - t) > 1e-6:
        raise ValueError(f"time {t} is not on the simulation grid")
    return i
