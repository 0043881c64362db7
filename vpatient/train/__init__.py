"""Fitting the world model's networks: settings, the training loop, and where its patients come from.

- :mod:`vpatient.train.settings`: what training is told (TrainSettings, settings files, threads) and reports (TrainingHistory);
- :mod:`vpatient.train.loop`: the loop itself (random cut-offs, early stopping, reproducible from a seed);
- :mod:`vpatient.train.data`: the patients, one global mini-batch at a time, for one process or several.
"""

from vpatient.train.data import InMemoryData, Rank, Step, TrainingData, split_positions
from vpatient.train.loop import (
    fit_latent_ode,
    forecast_cutoffs,
    random_cutoffs,
    train_network,
    training_step_loss,
    validation_loss,
)
from vpatient.train.settings import (
    SETTING_RANGES,
    SettingsFile,
    SettingsFileBase,
    TrainingHistory,
    TrainSettings,
    build_settings,
    default_threads,
    layered_settings,
    torch_threads,
)

__all__ = [
    "SETTING_RANGES",
    "InMemoryData",
    "Rank",
    "SettingsFile",
    "SettingsFileBase",
    "Step",
    "TrainSettings",
    "TrainingData",
    "TrainingHistory",
    "build_settings",
    "default_threads",
    "fit_latent_ode",
    "forecast_cutoffs",
    "layered_settings",
    "random_cutoffs",
    "split_positions",
    "torch_threads",
    "train_network",
    "training_step_loss",
    "validation_loss",
]
