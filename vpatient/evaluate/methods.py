"""Methods the forecasting benchmark can run, by name.

Each entry builds a fresh, unfitted :class:`~vpatient.evaluate.protocol.Forecaster`
(one per fold). A new method joins every benchmark with one line here, e.g.
``METHODS["vpatient-small"] = lambda: VirtualPatientForecaster(n_samples=50)``.
"""

from __future__ import annotations

from collections.abc import Callable

from vpatient.evaluate.baselines import LOCF, LandmarkCox, LastValueRisk, LinearMixedModel, MeanOnly
from vpatient.evaluate.protocol import Forecaster
from vpatient.evaluate.ridge import RidgeForecaster

__all__ = ["METHODS", "PEERS"]

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


#: The peer methods a benchmark runs by default.
PEERS: tuple[str, ...] = ("mean-only", "locf", "lmm", "landmark-cox", "last-bilirubin")
