"""Validate input files against a dataset config and report every problem at once.

This is what ``vpatient validate`` runs; loaders raise on the same problems, so a file
that validates here also loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vpatient.errors import ConfigError, DatasetNotFoundError, Problem, RecordValidationError
from vpatient.inputs import read_json_file
from vpatient.schemas import DatasetConfig, parse_records

__all__ = ["ValidationReport", "validate_path"]


@dataclass
class ValidationReport:
    """Problems found in one input, and how many subjects it held (when it could be read)."""

    source: str
    problems: list[Problem] = field(default_factory=list)
    n_subjects: int | None = None

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def headline(self) -> str:
        subjects = f"{self.n_subjects} subjects, " if self.n_subjects is not None else ""
        verdict = "valid" if self.ok else "INVALID"
        return f"{self.source}: {verdict} ({subjects}{len(self.errors)} errors, {len(self.warnings)} warnings)"


def validate_path(path: str | Path, config: str | Path | DatasetConfig | None) -> ValidationReport:
    """Validate MEDS or FHIR data (file or directory) or JSON record(s) at ``path``.

    A MEDS directory is also checked against the ``meds`` package's schemas
    (:func:`~vpatient.data.meds.meds_schema_problems`).
    """
    path = Path(path)
    if not path.exists():
        raise DatasetNotFoundError(f"no such file or directory: {path}")
    cfg = _config_for(path, config)
    report = ValidationReport(source=str(path))
    warnings: list[Problem] = []
    from vpatient.data.formats import DataFormat, format_of, read_records

    fhir = format_of(path) == DataFormat.FHIR
    try:
        if path.suffix.lower() == ".json" and not fhir:
            records = parse_records(_json_items(path), cfg, warnings)
        else:
            records = read_records(path, cfg, warnings_out=warnings)
        report.n_subjects = len(records)
    except RecordValidationError as exc:
        report.problems += exc.problems
    report.problems += warnings
    if path.is_dir() and not fhir:
        from vpatient.data.meds import meds_schema_problems

        report.problems += meds_schema_problems(path)
    return report


def _config_for(path: Path, config: str | Path | DatasetConfig | None) -> DatasetConfig:
    if isinstance(config, DatasetConfig):
        return config
    if config is not None:
        return DatasetConfig.load(config)
    found = None
    if path.is_dir():
        from vpatient.data.formats import stored_config

        found = stored_config(path)
    if found is None:
        raise ConfigError(f"{path}: no dataset config given and none stored with the data; pass --config CONFIG.json")
    return found


def _json_items(path: Path) -> list:
    data = read_json_file(path, "patient record")
    return data if isinstance(data, list) else [data]
