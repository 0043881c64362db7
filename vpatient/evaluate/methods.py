"""Methods the forecasting benchmark can run, by name.

Each entry builds a fresh, unfitted :class:`~vpatient.evaluate.protocol.Forecaster`
(one per fold). A new method joins every benchmark with one line here, e.g.
``METHODS["vpatient-small"] = lambda: VirtualPatientForecaster(n_samples=50)``. By default
the benchmark runs every registered method that applies to the data
(:func:`~vpatient.evaluate.protocol.not_applicable`) and lists the others with the reason.
"""

from __future__ import annotations

from collections.abc import Callable

from vpatient.evaluate.baselines import LOCF, LandmarkCox, LastValueRisk, LinearMixedModel, MeanOnly
from vpatient.evaluate.protocol import Forecaster
from vpatient.evaluate.ridge import RidgeForecaster

__all__ = ["METHODS", "PEERS", "WORLD_MODEL", "default_methods"]

#: Name of the world model among the methods.
WORLD_MODEL = "vpatient"

#: Name -> factory of an unfitted method.
METHODS: dict[str, Callable[[], Forecaster]] = {
    "mean-only": MeanOnly,
    "locf": LOCF,
    "lmm": LinearMixedModel,
    "landmark-cox": LandmarkCox,
    "last-bilirubin": lambda: LastValueRisk("bilirubin"),
    "ridge": RidgeForecaster,
    "vpatient": lambda: _virtual_patient(),
}


def _virtual_patient() -> Forecaster:
    # Imported on use: it brings in torch, which the peers and the CLI's start-up do not need.
    from vpatient.evaluate.forecaster import VirtualPatientForecaster

    return VirtualPatientForecaster()


#: The peers of the committed forecast results, in their order (the default is :func:`default_methods`).
PEERS: tuple[str, ...] = ("mean-only", "locf", "lmm", "landmark-cox", "last-bilirubin")


def default_methods() -> list[str]:
    """Every registered method, the world model first: what the benchmark runs unless told otherwise."""
    return [WORLD_MODEL, *(name for name in METHODS if name != WORLD_MODEL)]
