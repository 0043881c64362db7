"""vpatient: a virtual-patient disease-progression simulator.

Load longitudinal patient records (MEDS tables, the embedded PBC trial, or the
synthetic generator with known ground truth), validate them against a dataset config,
and, in later modules, learn a latent neural-ODE world model of disease to forecast,
simulate what-ifs and cohorts, and choose the next diagnostic test.
"""

from __future__ import annotations

from vpatient.version import __version__

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
    "LimitError",
    "ModelSettings",
    "NumericalError",
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
    "iter_fhir",
    "iter_meds",
    "list_datasets",
    "load_dataset",
    "load_pbc2",
    "parse_plan",
    "parse_record",
    "parse_records",
    "predictions_to_fhir",
    "read_fhir",
    "read_meds",
    "summarize",
    "synthetic_cohort",
    "write_fhir",
    "write_meds",
    "write_predictions_fhir",
]

# Every name loads its module on first use: `import vpatient.model` (torch only) and
# `vpatient --version` must not pay for pydantic, pandas or torch they do not use.
_EXPORTS = {
    "Cohort": "vpatient.data.cohort",
    "iter_fhir": "vpatient.data.fhir",
    "read_fhir": "vpatient.data.fhir",
    "iter_meds": "vpatient.data.meds",
    "read_meds": "vpatient.data.meds",
    "write_meds": "vpatient.data.meds",
    "write_fhir": "vpatient.data.fhir",
    "CohortSummary": "vpatient.data.summary",
    "summarize": "vpatient.data.summary",
    "SyntheticCohort": "vpatient.data.synthetic",
    "SyntheticParams": "vpatient.data.synthetic",
    "SyntheticTruth": "vpatient.data.synthetic",
    "list_datasets": "vpatient.datasets",
    "load_dataset": "vpatient.datasets",
    "load_pbc2": "vpatient.datasets",
    "synthetic_cohort": "vpatient.datasets",
    "ConfigError": "vpatient.errors",
    "DataFormatError": "vpatient.errors",
    "DatasetNotFoundError": "vpatient.errors",
    "OutputExistsError": "vpatient.errors",
    "Problem": "vpatient.errors",
    "RecordValidationError": "vpatient.errors",
    "VPatientError": "vpatient.errors",
    "DatasetConfig": "vpatient.schemas",
    "DiagnosticTest": "vpatient.schemas",
    "Event": "vpatient.schemas",
    "HistoryEntry": "vpatient.schemas",
    "ImagingStudy": "vpatient.schemas",
    "Observation": "vpatient.schemas",
    "PatientRecord": "vpatient.schemas",
    "TreatmentExposure": "vpatient.schemas",
    "TreatmentPlan": "vpatient.schemas",
    "VariableKind": "vpatient.schemas",
    "VariableSpec": "vpatient.schemas",
    "parse_plan": "vpatient.schemas",
    "parse_record": "vpatient.schemas",
    "parse_records": "vpatient.schemas",
    "CheckpointError": "vpatient.errors",
    "LimitError": "vpatient.limits",
    "NumericalError": "vpatient.virtual_patient",
    "Forecast": "vpatient.virtual_patient",
    "VirtualPatientModel": "vpatient.virtual_patient",
    "ModelSettings": "vpatient.model.latent_ode",
    "TrainSettings": "vpatient.train",
    "Simulator": "vpatient.simulation",
    "predictions_to_fhir": "vpatient.report.fhir",
    "write_predictions_fhir": "vpatient.report.fhir",
}


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vpatient' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
