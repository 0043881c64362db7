"""Evaluation: the forecasting benchmark protocol, its metrics and its peer methods.

- :mod:`~vpatient.evaluate.protocol`: folds, landmark splits, standardisation and the
  :class:`Forecaster` interface every method implements;
- :mod:`~vpatient.evaluate.metrics`: MAE, coverage, Harrell's C, IPCW Brier score;
- :mod:`~vpatient.evaluate.baselines`: mean-only, LOCF, linear mixed model, landmark
  Cox, last value as risk;
- :mod:`~vpatient.evaluate.forecast_benchmark`: the run, its result type and writers;
- :mod:`~vpatient.evaluate.registry`: methods by name; :mod:`~vpatient.evaluate.cli`:
  ``vpatient benchmark forecast``.
"""

from __future__ import annotations

from vpatient.evaluate.baselines import LOCF, LandmarkCox, LastValueRisk, LinearMixedModel, MeanOnly, fit_mixed_model
from vpatient.evaluate.forecast_benchmark import (
    PREDICTION_COLUMNS,
    ForecastBenchmarkResult,
    run_forecast_benchmark,
    write_forecast_results,
)
from vpatient.evaluate.protocol import Fold, Forecaster, Standardiser, forecast_folds, landmark_split
from vpatient.evaluate.registry import METHODS, PEERS

__all__ = [
    "LOCF",
    "METHODS",
    "PEERS",
    "PREDICTION_COLUMNS",
    "Fold",
    "ForecastBenchmarkResult",
    "Forecaster",
    "LandmarkCox",
    "LastValueRisk",
    "LinearMixedModel",
    "MeanOnly",
    "Standardiser",
    "fit_mixed_model",
    "forecast_folds",
    "landmark_split",
    "run_forecast_benchmark",
    "write_forecast_results",
]
