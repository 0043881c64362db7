"""Reusable evaluation: the forecasting protocol, its metrics and its peer methods.

- :mod:`~vpatient.evaluate.protocol`: folds, landmark splits, standardisation and the
  :class:`Forecaster` interface every method implements;
- :mod:`~vpatient.evaluate.metrics`: MAE, coverage, Harrell's C, IPCW Brier score;
- :mod:`~vpatient.evaluate.baselines`: mean-only, LOCF, linear mixed model, landmark
  Cox, last value as risk;
- :mod:`~vpatient.evaluate.methods`: methods by name;
- :mod:`~vpatient.evaluate.oracle`, :mod:`~vpatient.evaluate.fold_models`,
  :mod:`~vpatient.evaluate.imaging`: the synthetic truth as a method, cached fold models,
  imaging-embedding scores.

The benchmarks that run on these (``vpatient benchmark ...``) live in :mod:`vpatient.benchmarks`.
"""

from __future__ import annotations

from vpatient.evaluate.baselines import LOCF, LandmarkCox, LastValueRisk, LinearMixedModel, MeanOnly, fit_mixed_model
from vpatient.evaluate.methods import METHODS, PEERS
from vpatient.evaluate.protocol import Fold, Forecaster, Standardiser, forecast_folds, landmark_split

__all__ = [
    "LOCF",
    "METHODS",
    "PEERS",
    "Fold",
    "Forecaster",
    "LandmarkCox",
    "LastValueRisk",
    "LinearMixedModel",
    "MeanOnly",
    "Standardiser",
    "fit_mixed_model",
    "forecast_folds",
    "landmark_split",
]
