"""The formats vpatient reads and writes records in, and the one call that reads either (telling them apart by
content) and the one that writes either.

Every command and API that takes data by path (``load_dataset``, ``vpatient validate``,
``train``/``forecast``/``whatif --data``, the dashboard's upload) reads it through
:func:`read_records`, so FHIR is accepted wherever MEDS is.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path

from vpatient.errors import ConfigError, Problem
from vpatient.schemas import DatasetConfig, PatientRecord

__all__ = ["DataFormat", "format_of", "read_records", "stored_config", "write_records"]


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


def format_of(path: str | Path) -> DataFormat:
    """The format of the data at ``path``, by content: FHIR for an ``.ndjson`` file, a ``.json`` file of a
    resource or Bundle, or a folder of those; MEDS otherwise (a patient record's ``.json`` is neither)."""
    from vpatient.data.fhir.read import is_fhir

    return DataFormat.FHIR if is_fhir(path) else DataFormat.MEDS


def stored_config(path: str | Path) -> DatasetConfig | None:
    """The dataset config that vpatient stored with the data at ``path``, or None.

    A MEDS directory keeps it in ``metadata/vpatient_config.json``; a FHIR folder that
    :func:`~vpatient.data.fhir.write_fhir` wrote keeps it beside the resources.
    """
    path = Path(path)
    if not path.is_dir():
        return None
    from vpatient.data.meds import load_config_for
    from vpatient.data.meds.codes import CONFIG_FILE

    beside = path / CONFIG_FILE
    if format_of(path) == DataFormat.FHIR and beside.is_file():
        return DatasetConfig.load(beside)
    return load_config_for(path)


def read_records(
    path: str | Path, config: DatasetConfig | None, *, warnings_out: list[Problem] | None = None
) -> list[PatientRecord]:
    """The validated records at ``path``, read as :func:`format_of` says.

    Data vpatient wrote (a MEDS directory, a FHIR folder) bring their own config when
    ``config`` is None; other FHIR needs one.
    """
    config = config if config is not None else stored_config(path)
    if format_of(path) == DataFormat.FHIR:
        from vpatient.data.fhir import read_fhir

        if config is None:
            raise ConfigError(f"{path}: this FHIR carries no vpatient config; pass one with --config CONFIG.json")
        return read_fhir(path, config, warnings_out)
    from vpatient.data.meds import read_meds

    return read_meds(path, config, warnings_out=warnings_out)
