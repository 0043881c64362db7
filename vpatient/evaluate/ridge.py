"""A ridge-regression peer: each lab at a later time from the recent values and the treatments in between.

For a query (subject, time t, variable v) seen up to the landmark s, the design is

- the last value of v and the one before, and their ages at t (``t - t_1``, ``t - t_2``);
  their slope, and the slope carried to t (``slope * (t - t_1)``); the trend over the
  ``carry_over`` window before t_1, and the trend carried to t; the last value times
  ``t - t_1`` (growth that slows with size);
- the last value of every other continuous variable (training mean when never seen);
- the time ahead ``t - s``;
- per treatment, the dose integrated over (t_1, t] (what acted since the last value),
  the dose at t_1 and the dose integrated over the ``carry_over`` time units before t_1
  (what may still act). ``carry_over`` defaults to five median visit gaps.

The target is the change ``y(t) - y_1``, fitted by ``Ridge(alpha)`` on a standardised design,
one model per variable. Training rows come from every training subject cut at up to
``anchors`` of its visits (the protocol's landmark and randomly chosen others, seeded),
each with all its later observations as targets. The interval is the training residuals'
5% and 95% quantiles.

Two sets of models differ only in the doses they learn from. :meth:`RidgeForecaster.forecast_under`
takes each subject's full exposures (a plan's, for what-ifs) and uses models fitted on the
doses the training subjects were given. :meth:`RidgeForecaster.forecast` (the forecast
benchmark, where nothing after s is known) uses models fitted on the doses known at the
anchor, exposures open there continuing, so that its features mean the same in training
and in use. Nothing is specific to a dataset or a time unit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import pandas as pd
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from vpatient import transforms
from vpatient.data.timeline import median_visit_gap, truncate_record
from vpatient.evaluate.baselines import MeanOnly
from vpatient.evaluate.protocol import MIN_VISITS, ProtocolError, landmark_split
from vpatient.plans import dose_at
from vpatient.schemas import DatasetConfig, PatientRecord, TreatmentExposure, VariableKind

__all__ = ["RidgeForecaster"]


class RidgeForecaster:
    """Ridge regression of each variable's change since its last value (module docstring)."""

    name = "ridge"
    forecasts: ClassVar[bool] = True
    predicts_risk: ClassVar[bool] = False
    risk_is_probability: ClassVar[bool] = False

    def __init__(self, alpha: float = 1.0, anchors: int = 8, carry_over: float | None = None) -> None:
        self.alpha = alpha
        self.anchors = anchors
        self.carry_over = carry_over

    # -- fitting ---------------------------------------------------------------

    def fit(self, train: list[PatientRecord], config: DatasetConfig, seed: int) -> RidgeForecaster:
        self.config_ = config
        self.variables_ = config.names(VariableKind.CONTINUOUS)
        self.treatments_ = config.names(VariableKind.TREATMENT)
        self.fallback_ = MeanOnly().fit(train, config, seed)
        # carry-over window: five typical visit gaps unless given
        self.window_ = self.carry_over if self.carry_over is not None else 5.0 * median_visit_gap(train)
        rng = np.random.default_rng(seed)
        frames = []
        for record in train:
            visits = record.visit_times()
            if len(visits) < MIN_VISITS:
                continue
            landmark = landmark_split(record)[0].end_of_followup
            others = [t for t in visits[:-1] if t != landmark]
            picked = rng.choice(len(others), size=min(len(others), self.anchors - 1), replace=False) if others else []
            for s in [landmark, *(others[i] for i in sorted(picked))]:
                later = [o for o in record.observations if o.time > s and o.variable in self.variables_]
                if later:
                    queries = pd.DataFrame([(record.subject_id, o.time, o.variable) for o in later], columns=_QUERY)
                    history = truncate_record(record, s)
                    design = self._design(history, queries)
                    design["target"] = [self._forward(o.variable, o.value) for o in later]
                    frames.append((design, record.treatments, history.treatments))
        if not frames:
            raise ProtocolError("ridge: no training subject with a later observation to learn from")
        # planned: the doses given (to forecast under a plan); known: the doses known at s, open ones continuing
        # (to forecast without one, as the histories of the forecast benchmark are seen)
        self.models_ = self._fit_models(pd.concat([self._with_doses(d, given) for d, given, _ in frames], ignore_index=True))
        self.known_models_ = self._fit_models(
            pd.concat([self._with_doses(d, known) for d, _, known in frames], ignore_index=True)
        )
        return self

    def _fit_models(self, rows: pd.DataFrame) -> dict[str, tuple[object, tuple[float, float]]]:
        """Per variable: the ridge of the change since the last value, and its residuals' 5% and 95% quantiles."""
        rows = rows.dropna(subset=["last"])
        models = {}
        for v in self.variables_:
            part = rows[rows["variable"] == v]
            if len(part) < 2:
                continue  # never seen twice: the fallback answers
            x, change = part[self._columns()].to_numpy(float), (part["target"] - part["last"]).to_numpy(float)
            model = make_pipeline(StandardScaler(), Ridge(alpha=self.alpha)).fit(x, change)
            residual = change - model.predict(x)
            models[v] = (model, (float(np.quantile(residual, 0.05)), float(np.quantile(residual, 0.95))))
        return models

    # -- forecasting -----------------------------------------------------------

    def forecast(self, histories: list[PatientRecord], queries: pd.DataFrame) -> pd.DataFrame:
        """Forecast from what the histories know of the treatment (exposures open at the landmark continue)."""
        return self._forecast(histories, queries, [h.treatments for h in histories], planned=False)

    def forecast_under(
        self, histories: Sequence[PatientRecord], queries: pd.DataFrame, exposures: Sequence[Sequence[TreatmentExposure]]
    ) -> pd.DataFrame:
        """Forecast the queried cells with each subject's treatment given by ``exposures`` (full lists, one per history)."""
        return self._forecast(histories, queries, exposures, planned=True)

    def _forecast(
        self,
        histories: Sequence[PatientRecord],
        queries: pd.DataFrame,
        exposures: Sequence[Sequence[TreatmentExposure]],
        planned: bool,
    ) -> pd.DataFrame:
        if not hasattr(self, "models_"):
            raise RuntimeError("RidgeForecaster is not fitted: call fit() first")
        base = self.fallback_.forecast(list(histories), queries)
        by_id = {h.subject_id: (h, e) for h, e in zip(histories, exposures, strict=True)}
        frames = []
        for sid, group in queries.reset_index(drop=True).groupby("subject_id", sort=False):
            history, given = by_id[sid]
            frames.append(self._with_doses(self._design(history, group), given).set_index(group.index))
        design = pd.concat(frames).sort_index()
        for v, (model, (low, high)) in (self.models_ if planned else self.known_models_).items():
            rows = (design["variable"] == v).to_numpy() & design["last"].notna().to_numpy()
            if rows.any():
                mean = design.loc[rows, "last"].to_numpy(float) + model.predict(design.loc[rows, self._columns()].to_numpy(float))
                base.loc[rows, "mean"], base.loc[rows, "q05"], base.loc[rows, "q95"] = mean, mean + low, mean + high
        return base

    def risk(self, histories: list[PatientRecord], landmark: float, windows: list[float], event: str) -> pd.DataFrame | None:
        return None

    # -- the design ------------------------------------------------------------

    def _columns(self) -> list[str]:
        treat = [f"{k}_{t}" for t in self.treatments_ for k in ("dose_since_last", "dose_at_last", "dose_before_last")]
        others = [f"other_{v}" for v in self.variables_]
        recent = ["last", "age_last", "previous", "age_previous", "slope", "slope_ahead", "trend", "trend_ahead"]
        return [*recent, "ahead", "last_ahead", *others, *treat]

    def _forward(self, variable: str, value: float) -> float:
        return float(transforms.forward(value, self.config_.variable(variable).transform))

    def _design(self, history: PatientRecord, queries: pd.DataFrame) -> pd.DataFrame:
        """One row of features but the doses per query of one subject seen as ``history`` (``last`` NaN: never seen).

        ``t_last`` and ``time`` are kept for :meth:`_with_doses`."""
        series: dict[str, list[tuple[float, float]]] = {v: [] for v in self.variables_}
        for o in sorted(history.observations, key=lambda o: o.time):
            if o.variable in series:
                series[o.variable].append((o.time, self._forward(o.variable, o.value)))
        means = self.fallback_.mean_
        rows = []
        s = history.end_of_followup
        for t, v in zip(queries["time"].to_numpy(float), queries["variable"], strict=True):
            seen = series.get(v, [])
            row = {"variable": v, "time": t, "ahead": t - s}
            row |= {f"other_{w}": series[w][-1][1] if series[w] else means.get(w, 0.0) for w in self.variables_}
            if not seen:
                rows.append(row | {"last": np.nan})
                continue
            t1, y1 = seen[-1]
            t2, y2 = seen[-2] if len(seen) > 1 else seen[-1]
            slope = (y1 - y2) / (t1 - t2) if t1 > t2 else 0.0
            row |= {"last": y1, "t_last": t1, "age_last": t - t1, "previous": y2, "age_previous": t - t2, "slope": slope}
            row["slope_ahead"] = slope * (t - t1)
            # the trend over the carry-over window: far less noisy than the last two values' slope
            t0, y0 = next(((u, y) for u, y in seen if u >= t1 - self.window_), seen[0])
            trend = (y1 - y0) / (t1 - t0) if t1 > t0 else 0.0
            row["trend"], row["trend_ahead"] = trend, trend * (t - t1)
            row["last_ahead"] = y1 * (t - t1)  # growth that slows with size
            rows.append(row)
        frame = pd.DataFrame(rows)
        for column in ["t_last", *self._columns()]:
            if column not in frame:
                frame[column] = np.nan
        return frame

    def _with_doses(self, design: pd.DataFrame, exposures: Sequence[TreatmentExposure]) -> pd.DataFrame:
        """``design`` with each treatment's dose features under ``exposures`` (NaN where ``last`` is)."""
        out = design.copy()
        t1, t = out["t_last"].to_numpy(float), out["time"].to_numpy(float)
        for name in self.treatments_:
            at_last = _cumulative_dose(exposures, name, t1)
            out[f"dose_since_last_{name}"] = _cumulative_dose(exposures, name, t) - at_last
            out[f"dose_at_last_{name}"] = np.where(np.isnan(t1), np.nan, dose_at(exposures, name, t1))
            out[f"dose_before_last_{name}"] = at_last - _cumulative_dose(exposures, name, np.maximum(t1 - self.window_, 0.0))
        return out


_QUERY = ["subject_id", "time", "variable"]


def _cumulative_dose(exposures: Sequence[TreatmentExposure], treatment: str, times: np.ndarray) -> np.ndarray:
    """Dose of ``treatment`` integrated from 0 to each time (exposures of one treatment do not overlap); NaN stays NaN."""
    total = np.zeros_like(times)
    for e in exposures:
        if e.treatment == treatment:
            length = np.inf if e.stop is None else e.stop - e.start
            total = total + e.dose * np.clip(times - e.start, 0.0, length)
    return total
