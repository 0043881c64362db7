"""The synthetic generator's ground truth, scored as if it were a method: the noise floor.

On synthetic data the best any forecaster can do is to predict the noiseless truth: its
error against the noisy observations is the irreducible noise. The issue's target for
the world model ("within 1.2 x the noise floor") is measured against this method, run on
the same folds and cells as everything else.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from vpatient import transforms
from vpatient.data.synthetic import SyntheticTruth
from vpatient.schemas import DatasetConfig, PatientRecord

__all__ = ["SyntheticOracle"]

_Z90 = 1.6448536269514722  # standard normal 95% quantile


class SyntheticOracle:
    """Predicts the truth's noiseless values (and true risks); needs no training."""

    name = "truth"
    forecasts = True
    predicts_risk = True
    risk_is_probability = True

    def __init__(self, truth: SyntheticTruth):
        self.truth = truth
        self.config: DatasetConfig | None = None

    def fit(self, train: list[PatientRecord], config: DatasetConfig, seed: int) -> SyntheticOracle:
        self.config = config
        return self

    def forecast(self, histories: list[PatientRecord], queries: pd.DataFrame) -> pd.DataFrame:
        assert self.config is not None, "fit first"
        rows = []
        noise = self.truth.noise_sd
        for sid, group in queries.groupby("subject_id", sort=False):
            times = np.unique(group["time"].to_numpy(dtype=float))
            means = self.truth.observables_many([sid], [self.truth.factual_exposures(sid)], times).set_index("time")
            for row in group.itertuples(index=False):
                natural = float(means.loc[row.time, row.variable])
                mean = float(transforms.forward(natural, self.config.variable(row.variable).transform))
                half = _Z90 * noise[row.variable]
                rows.append((sid, row.time, row.variable, mean, mean - half, mean + half))
        answers = pd.DataFrame(rows, columns=["subject_id", "time", "variable", "mean", "q05", "q95"])
        return queries.merge(answers, on=["subject_id", "time", "variable"], how="left")

    def forecast_imaging(self, histories: list[PatientRecord], queries: pd.DataFrame) -> np.ndarray:
        """The noiseless embedding of every queried study."""
        out = []
        for q in queries.itertuples(index=False):
            means = self.truth.observables_many(
                [q.subject_id], [self.truth.factual_exposures(q.subject_id)], np.asarray([q.time])
            )
            out.append(means[[c for c in means.columns if c.startswith(f"{q.modality}_")]].to_numpy()[0])
        return np.asarray(out)

    def risk(self, histories: list[PatientRecord], landmark: float, windows: list[float], event: str) -> pd.DataFrame:
        ids = [h.subject_id for h in histories]
        exposures = [self.truth.factual_exposures(s) for s in ids]
        times = np.asarray([landmark, *(landmark + w for w in windows)])
        hazard = self.truth.cumulative_hazard_many(ids, exposures, times, event)  # (n, 1 + W)
        risk = 1.0 - np.exp(-(hazard[:, 1:] - hazard[:, :1]))
        rows = [(sid, float(w), float(risk[i, j])) for i, sid in enumerate(ids) for j, w in enumerate(windows)]
        return pd.DataFrame(rows, columns=["subject_id", "window", "risk"])
