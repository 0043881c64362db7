"""Patient data from a path, MEDS or FHIR: the one place that tells them apart by content.

Every command and API that takes data by path (``load_dataset``, ``vpatient validate``,
``train``/``forecast``/``whatif --data``, the dashboard's upload) reads it here, so FHIR
is accepted wherever MEDS is.
"""

from __future__ import annotations

from pathlib import Path

from vpatient.errors import Problem
from vpatient.schemas import DatasetConfig, PatientRecord

__all__ = ["is_fhir", "read_records"]


def is_fhir(path: str | Path) -> bool:
    """Whether ``path`` holds FHIR (an ``.ndjson`` file, a ``.json`` file of a resource or Bundle, or a folder of
    those) rather than MEDS or a patient record's JSON."""
    from vpatient.data.fhir.read import is_fhir as looks_fhir

    return looks_fhir(path)


def read_records(
    path: str | Path, config: DatasetConfig | None, *, warnings_out: list[Problem] | None = None
) -> list[PatientRecord]:
    """The validated records at ``path``: FHIR when :func:`is_fhir` says so, else MEDS (file or directory).

    FHIR carries no vpatient config, so it needs ``config``; MEDS written by vpatient
    brings its own when ``config`` is None.
    """
    if is_fhir(path):
        from vpatient.data.fhir.read import read_fhir
        from vpatient.errors import ConfigError

        if config is None:
            raise ConfigError(f"{path}: FHIR data carry no vpatient config; pass one with --config CONFIG.json")
        return read_fhir(path, config, warnings_out)
    from vpatient.data.meds import read_meds

    return read_meds(path, config, warnings_out=warnings_out)
