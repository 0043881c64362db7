"""The formats vpatient writes records in, and the one call that writes either."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path

from vpatient.schemas import DatasetConfig, PatientRecord

__all__ = ["DataFormat", "write_records"]


class DataFormat(StrEnum):
    """A format records are written in."""

    MEDS = "meds"  # a self-describing MEDS directory (vpatient.data.meds)
    FHIR = "fhir"  # FHIR R4B: Bulk Data NDJSON in a folder, or one Bundle in a .json file (vpatient.data.fhir)


def write_records(
    records: Iterable[PatientRecord],
    config: DatasetConfig,
    out: str | Path,
    fmt: DataFormat,
    *,
    overwrite: bool = False,
    standard: bool = True,
) -> Path:
    """Write ``records`` to ``out`` in ``fmt``; returns the path written.

    ``standard=False`` (MEDS only) writes vpatient's numeric-time extension instead of standard MEDS.
    """
    if fmt == DataFormat.FHIR:
        from vpatient.data.fhir import write_fhir

        return write_fhir(records, config, out, overwrite=overwrite)
    from vpatient.data.meds import write_meds

    return write_meds(records, config, out, overwrite=overwrite, standard=standard)
