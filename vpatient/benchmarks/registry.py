"""Every benchmark's result class, by the benchmark's name (the ``benchmark`` field of its JSON).

``vpatient schemas export`` documents these classes; :func:`load_result` reads any
committed result back into its class.
"""

from __future__ import annotations

import json
from pathlib import Path

from vpatient.benchmarks.base import BenchmarkResult
from vpatient.benchmarks.cohort_fidelity import CohortFidelityBenchmarkResult
from vpatient.benchmarks.counterfactual import CounterfactualBenchmarkResult
from vpatient.benchmarks.dashboard_speed import DashboardSpeedResult
from vpatient.benchmarks.effect_calibration import EffectCalibrationResult
from vpatient.benchmarks.fhir_read import FhirReadResult
from vpatient.benchmarks.forecast import ForecastBenchmarkResult
from vpatient.benchmarks.kill_safety import KillSafetyResult
from vpatient.benchmarks.meds_eval import MedsEvalResult
from vpatient.benchmarks.next_test_selection import TestSelectionBenchmarkResult
from vpatient.benchmarks.pbc_trial import PbcTrialBenchmarkResult
from vpatient.benchmarks.scale import ScaleResult
from vpatient.benchmarks.simulate_speed import SimulateSpeedResult
from vpatient.benchmarks.training import TrainingBenchmarkResult
from vpatient.benchmarks.trial_adjustment import TrialAdjustmentResult

__all__ = ["BENCHMARKS", "load_result"]

#: Benchmark name (``vpatient benchmark NAME``) -> its result class, in the order the schemas are exported.
BENCHMARKS: dict[str, type[BenchmarkResult]] = {
    "forecast": ForecastBenchmarkResult,
    "training": TrainingBenchmarkResult,
    "counterfactual": CounterfactualBenchmarkResult,
    "pbc-trial": PbcTrialBenchmarkResult,
    "cohort-fidelity": CohortFidelityBenchmarkResult,
    "simulate-speed": SimulateSpeedResult,
    "test-selection": TestSelectionBenchmarkResult,
    "trial-adjustment": TrialAdjustmentResult,
    "effect-calibration": EffectCalibrationResult,
    "kill-safety": KillSafetyResult,
    "dashboard-speed": DashboardSpeedResult,
    "meds-eval": MedsEvalResult,
    "fhir-read": FhirReadResult,
    "scale": ScaleResult,
}


def load_result(path: str | Path) -> BenchmarkResult:
    """A result JSON read into the class its ``benchmark`` field names."""
    text = Path(path).read_text(encoding="utf-8")
    name = json.loads(text).get("benchmark")
    if name not in BENCHMARKS:
        raise ValueError(f"{path}: benchmark {name!r} is none of {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name].model_validate_json(text)
