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
    "Cohort",
    "CohortSummary",
    "ConfigError",
    "DataFormatError",
    "DatasetConfig",
    "DatasetNotFoundError",
    "DiagnosticTest",
    "Event",
    "HistoryEntry",
    "ImagingStudy",
    "Observation",
    "OutputExistsError",
    "PatientRecord",
    "Problem",
    "RecordValidationError",
    "SyntheticCohort",
    "SyntheticParams",
    "SyntheticTruth",
    "TreatmentExposure",
    "TreatmentPlan",
    "VPatientError",
    "VariableKind",
    "VariableSpec",
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
