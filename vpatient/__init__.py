"""vpatient: a virtual-patient disease-progression simulator.

Load longitudinal patient records (MEDS tables, the embedded PBC trial, or the
synthetic generator with known ground truth), validate them against a dataset config,
and, in later modules, learn a latent neural-ODE world model of disease to forecast,
simulate what-ifs and cohorts, and choose the next diagnostic test.
"""

from __future__ import annotations

__version__ = "0.1.0"

from vpatient.data.cohort import Cohort
from vpatient.data.meds import iter_meds, read_meds, write_meds
from vpatient.data.summary import CohortSummary, summarize
from vpatient.data.synthetic import SyntheticCohort, SyntheticParams, SyntheticTruth
from vpatient.datasets import list_datasets, load_dataset, load_pbc2, synthetic_cohort
from vpatient.errors import (
    ConfigError,
    DataFormatError,
    DatasetNotFoundError,
    OutputExistsError,
    Problem,
    RecordValidationError,
    VPatientError,
)
from vpatient.schemas import (
    DatasetConfig,
    DiagnosticTest,
    Event,
    HistoryEntry,
    ImagingStudy,
    Observation,
    PatientRecord,
    TreatmentExposure,
    TreatmentPlan,
    VariableKind,
    VariableSpec,
    parse_plan,
    parse_record,
    parse_records,
)

__all__ = [
    "CheckpointError",
    "Cohort",
    "CohortSummary",
    "ConfigError",
    "DataFormatError",
    "DatasetConfig",
    "DatasetNotFoundError",
    "DiagnosticTest",
    "Event",
    "Forecast",
    "HistoryEntry",
    "ImagingStudy",
    "ModelSettings",
    "Observation",
    "OutputExistsError",
    "PatientRecord",
    "Problem",
    "RecordValidationError",
    "Simulator",
    "SyntheticCohort",
    "SyntheticParams",
    "SyntheticTruth",
    "TrainSettings",
    "TreatmentExposure",
    "TreatmentPlan",
    "VPatientError",
    "VariableKind",
    "VariableSpec",
    "VirtualPatientModel",
    "__version__",
    "iter_meds",
    "list_datasets",
    "load_dataset",
    "load_pbc2",
    "parse_plan",
    "parse_record",
    "parse_records",
    "read_meds",
    "summarize",
    "synthetic_cohort",
    "write_meds",
]

# Names backed by torch load on first use, so that `vpatient --version` and the data tools
# start without importing it.
_LAZY = {
    "CheckpointError": "vpatient.virtual_patient",
    "Forecast": "vpatient.virtual_patient",
    "VirtualPatientModel": "vpatient.virtual_patient",
    "ModelSettings": "vpatient.model.latent_ode",
    "TrainSettings": "vpatient.train",
    "Simulator": "vpatient.simulation",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vpatient' has no attribute {name!r}")
