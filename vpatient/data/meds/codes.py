"""The one table of MEDS codes, columns, dtypes and file layout that every MEDS reader and writer of vpatient uses.

Both writers, :mod:`vpatient.data.meds.write` (records) and the virtual-cohort writer
(:func:`vpatient.simulation.sampling.observe`), name their rows, type their columns and
order their tables from here, so that a virtual cohort is read back by
:mod:`vpatient.data.meds.read` exactly as a real one. Codes, split names and file paths
that MEDS defines come from the ``meds`` package; :class:`MedsLayout` says how a dataset's
shards are typed (standard MEDS, or vpatient's numeric-time extension).

Subject ids: MEDS types ``subject_id`` as int64, and so do both writers whenever every
id is an integer written canonically (virtual patients are numbered, so always). Other
ids (``"syn00001"``) are numbered in the standard layout, the originals kept in the
``source_subject_id`` column; the numeric-time extension writes them as str. The reader
turns every id into str (``PatientRecord.subject_id``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Any

import meds
import pandas as pd
import pyarrow as pa

from vpatient.errors import ConfigError, DataFormatError
from vpatient.schemas import MICROS_PER_DAY, RELATIVE_EPOCH, CodeEncoding, DatasetConfig, TimeUnit, VariableKind, VariableSpec

__all__ = [
    "CODE",
    "CODES_PATH",
    "CODES_SCHEMA",
    "CODE_SEPARATOR",
    "CONFIG_FILE",
    "DATASET_PATH",
    "DATA_DIR",
    "DEFAULT_INDEX_CODE",
    "ETL_NAME",
    "EXTENSION_COLUMNS",
    "HELD_OUT_SPLIT",
    "LAYOUT_KEY",
    "MEDS_BIRTH",
    "MEDS_COLUMNS",
    "MEDS_DEATH",
    "MEDS_VERSION",
    "METADATA_DIR",
    "MICROS_PER_DAY",
    "NUMERIC_TIME_EXTENSION",
    "NUMERIC_VALUE",
    "NUMERIC_VALUE_F64",
    "REQUIRED_COLUMNS",
    "SOURCE_SUBJECT_ID",
    "SPLITS_PATH",
    "SPLIT_ORDER",
    "START_SUFFIX",
    "STATIC_ROLES",
    "STOP_SUFFIX",
    "SUBJECT_ID",
    "SUBJECT_ID_DTYPE",
    "TEXT_VALUE",
    "TIME",
    "TIME_F64",
    "TRAIN_SPLIT",
    "TUNING_SPLIT",
    "UNSPLIT_DIR",
    "VALUE_ROLES",
    "CodeBook",
    "CodeRole",
    "MedsLayout",
    "Role",
    "codes_table",
    "component_code",
    "is_integer_ids",
    "start_code",
    "stop_code",
    "subject_id_column",
    "subject_sort_key",
]

# --------------------------------------------------------------------------- constants

MEDS_BIRTH: str = meds.birth_code
MEDS_DEATH: str = meds.death_code
TRAIN_SPLIT: str = meds.train_split
TUNING_SPLIT: str = meds.tuning_split
HELD_OUT_SPLIT: str = meds.held_out_split
CODE_SEPARATOR = "//"
START_SUFFIX = f"{CODE_SEPARATOR}START"
STOP_SUFFIX = f"{CODE_SEPARATOR}STOP"
#: Index marker written for timestamped records when the config names no index_code.
DEFAULT_INDEX_CODE = "VPATIENT_INDEX"
#: The MEDS schema version written files follow: the installed ``meds`` package's, whose schemas they are checked against.
MEDS_VERSION: str = meds.__version__
ETL_NAME = "vpatient"

SUBJECT_ID, TIME, CODE, NUMERIC_VALUE, TEXT_VALUE = "subject_id", "time", "code", "numeric_value", "text_value"
REQUIRED_COLUMNS = (SUBJECT_ID, TIME, CODE, NUMERIC_VALUE)
MEDS_COLUMNS = (*REQUIRED_COLUMNS, TEXT_VALUE)
#: The subject_id dtype of every table vpatient writes when the ids are integers (MEDS's type).
SUBJECT_ID_DTYPE = "int64"

#: Extension columns of the standard layout (declared in dataset.json): the float64 value and time
#: where the standard float32 ``numeric_value`` and microsecond ``time`` do not hold them exactly,
#: and the original subject id where ids are not integers.
NUMERIC_VALUE_F64, TIME_F64, SOURCE_SUBJECT_ID = "numeric_value_f64", "time_f64", "source_subject_id"
EXTENSION_COLUMNS = (NUMERIC_VALUE_F64, TIME_F64, SOURCE_SUBJECT_ID)

#: Paths inside a MEDS directory, as the ``meds`` package defines them (relative to its root).
DATA_DIR: str = meds.data_subdirectory
CODES_PATH: str = meds.code_metadata_filepath
SPLITS_PATH: str = meds.subject_splits_filepath
DATASET_PATH: str = meds.dataset_metadata_filepath
METADATA_DIR = str(PurePosixPath(CODES_PATH).parent)
#: vpatient's own metadata file: the dataset config, so that a directory describes itself.
CONFIG_FILE = "vpatient_config.json"
#: Folder under data/ for subjects without a split, when other subjects have one.
UNSPLIT_DIR = "unsplit"
#: The order of split folders under data/ (others follow by name).
SPLIT_ORDER = (TRAIN_SPLIT, TUNING_SPLIT, HELD_OUT_SPLIT)

_CANONICAL_INT = re.compile(r"^-?(0|[1-9][0-9]{0,17})$")

#: codes.parquet's columns (MEDS metadata).
CODES_SCHEMA = pa.schema([("code", pa.string()), ("description", pa.string()), ("parent_codes", pa.list_(pa.string()))])


def start_code(code: str) -> str:
    """The code of a treatment's START rows (``numeric_value`` = dose)."""
    return code + START_SUFFIX


def stop_code(code: str) -> str:
    """The code of a treatment's STOP rows."""
    return code + STOP_SUFFIX


def component_code(code: str, j: int) -> str:
    """The code of component ``j`` of an imaging embedding."""
    return f"{code}{CODE_SEPARATOR}{j}"


# --------------------------------------------------------------------------- subject ids and dtypes


def is_integer_ids(ids: Iterable[str]) -> bool:
    """True when every (str) id is an integer written canonically, so that int64 keeps it (True when empty)."""
    return all(_CANONICAL_INT.match(x) for x in ids)


def subject_sort_key(ids: pd.Series) -> pd.Series:
    """Numeric order when every id is an integer (so 2 < 10), string order otherwise."""
    if is_integer_ids(ids.unique()):
        return ids.astype(SUBJECT_ID_DTYPE)
    return ids


def subject_id_column(ids: pd.Series) -> pd.Series:
    """The subject_id column as written: int64 (MEDS's type) when every str id is an integer, else str."""
    if len(ids) and is_integer_ids(ids.unique()):
        return ids.astype(SUBJECT_ID_DTYPE)
    return ids


#: The name of vpatient's numeric-time extension (``write_meds(standard=False)``, CLI ``--meds-extension``).
NUMERIC_TIME_EXTENSION = "numeric-time"
#: dataset.json's key for what vpatient needs to read its own layout back (MEDS allows extra keys).
LAYOUT_KEY = "vpatient"


@dataclass(frozen=True)
class MedsLayout:
    """How the data shards of a MEDS directory are typed, and what vpatient needs to read them back losslessly.

    ``standard`` True is MEDS as the ``meds`` package defines it (``meds.DataSchema``), plus
    extension columns declared in dataset.json: :data:`NUMERIC_VALUE_F64` (always),
    :data:`TIME_F64` (``relative``) and :data:`SOURCE_SUBJECT_ID` (``source_ids``). False is
    vpatient's numeric-time extension, which departs from MEDS: float64 ``numeric_value``,
    float ``time`` (times since index) when ``relative``, str ``subject_id`` when ``source_ids``.

    ``relative``: the records have no calendar time (``index_time`` None); the standard
    layout places them from :data:`~vpatient.schemas.RELATIVE_EPOCH` in ``time_unit``.
    ``source_ids``: the subject ids are not all integers.
    """

    standard: bool = True
    relative: bool = False
    time_unit: TimeUnit = TimeUnit.YEARS
    source_ids: bool = False

    @property
    def unit_micros(self) -> float:
        """Microseconds in one unit of time: times convert through whole microseconds."""
        return self.time_unit.microseconds

    def extension_columns(self) -> list[str]:
        """The standard layout's extension columns in this dataset (none for the numeric-time extension)."""
        if not self.standard:
            return []
        used = {NUMERIC_VALUE_F64: True, TIME_F64: self.relative, SOURCE_SUBJECT_ID: self.source_ids}
        return [column for column in EXTENSION_COLUMNS if used[column]]

    def data_schema(self) -> pa.Schema:
        """The parquet schema of every data shard: ``meds.DataSchema``'s columns, then the extension columns.

        The layout also rides in the schema's metadata (key :data:`LAYOUT_KEY`), so that a
        shard read on its own, without its directory's dataset.json, still reads back exactly.
        """
        return self._columns().with_metadata({LAYOUT_KEY: json.dumps(self.dataset_metadata())})

    def _columns(self) -> pa.Schema:
        if not self.standard:
            return pa.schema(
                [
                    (SUBJECT_ID, pa.string() if self.source_ids else pa.int64()),
                    (TIME, pa.float64() if self.relative else pa.timestamp("us")),
                    (CODE, pa.string()),
                    (NUMERIC_VALUE, pa.float64()),
                    (TEXT_VALUE, pa.string()),
                ]
            )
        extension = {NUMERIC_VALUE_F64: pa.float64(), TIME_F64: pa.float64(), SOURCE_SUBJECT_ID: pa.string()}
        return pa.schema([*meds.DataSchema.schema(), *((c, extension[c]) for c in self.extension_columns())])

    def dataset_metadata(self) -> dict[str, Any]:
        """dataset.json's entries for this layout: the declared extension columns and vpatient's own section."""
        columns = self.extension_columns()
        section: dict[str, Any] = {
            "layout": "standard" if self.standard else NUMERIC_TIME_EXTENSION,
            "relative_time": self.relative,
            "time_unit": self.time_unit.value,
        }
        if self.standard and self.relative:
            section["time_origin"] = RELATIVE_EPOCH.isoformat()
        return {
            "raw_source_id_columns": [c for c in columns if c == SOURCE_SUBJECT_ID],
            "other_extension_columns": [c for c in columns if c != SOURCE_SUBJECT_ID],
            LAYOUT_KEY: section,
        }

    @classmethod
    def from_shard_metadata(cls, metadata: dict[bytes, bytes] | None, source: str) -> MedsLayout | None:
        """The layout a shard written by vpatient carries in its parquet metadata; None for other files."""
        raw = (metadata or {}).get(LAYOUT_KEY.encode())
        if raw is None:
            return None
        try:
            found = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise DataFormatError(f"{source}: its {LAYOUT_KEY!r} metadata is not JSON") from None
        if not isinstance(found, dict):
            raise DataFormatError(f"{source}: its {LAYOUT_KEY!r} metadata is not a JSON object")
        return cls.from_dataset_metadata(found, source)

    @classmethod
    def from_dataset_metadata(cls, metadata: dict[str, Any], source: str) -> MedsLayout | None:
        """The layout a vpatient-written dataset.json describes; None when it has no vpatient section (other tools).

        A section that is not what vpatient writes is a DataFormatError naming ``source``.
        """
        section = metadata.get(LAYOUT_KEY)
        if section is None:
            return None
        try:
            layout = section["layout"]
            if layout not in ("standard", NUMERIC_TIME_EXTENSION):
                raise ValueError(f"layout {layout!r} is neither 'standard' nor {NUMERIC_TIME_EXTENSION!r}")
            origin = section.get("time_origin")
            if origin is not None and origin != RELATIVE_EPOCH.isoformat():
                raise ValueError(f"time_origin {origin!r}; vpatient places relative times from {RELATIVE_EPOCH.isoformat()}")
            return cls(
                standard=layout == "standard",
                relative=bool(section["relative_time"]),
                time_unit=TimeUnit(section["time_unit"]),
                source_ids=SOURCE_SUBJECT_ID in metadata.get("raw_source_id_columns", []),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataFormatError(f"{source}: the {LAYOUT_KEY!r} section is not what vpatient writes ({exc})") from None


# --------------------------------------------------------------------------- code book


class Role(StrEnum):
    """What a row means once its code is looked up in the config."""

    STATIC = "static"
    BIRTH = "birth"
    OBSERVED = "observed"
    IMAGING = "imaging"
    HISTORY = "history"
    START = "start"
    STOP = "stop"
    VISIT_DOSE = "visit_dose"
    EVENT = "event"


_ROLE_OF_KIND = {
    VariableKind.STATIC: Role.STATIC,
    VariableKind.CONTINUOUS: Role.OBSERVED,
    VariableKind.BINARY: Role.OBSERVED,
    VariableKind.ORDINAL: Role.OBSERVED,
    VariableKind.HISTORY: Role.HISTORY,
    VariableKind.EVENT: Role.EVENT,
}
#: Roles whose rows must carry a value (a birth row's value is its time; START doses default to 1.0).
VALUE_ROLES = (Role.STATIC, Role.OBSERVED, Role.IMAGING, Role.VISIT_DOSE)
#: Roles of rows that say nothing about follow-up.
STATIC_ROLES = (Role.STATIC, Role.BIRTH)


@dataclass(frozen=True)
class CodeRole:
    """The variable a code belongs to, its role, (imaging) the embedding component, and (code_suffix) the value's text."""

    spec: VariableSpec
    role: Role
    component: int = -1
    suffix: str | None = None


class CodeBook:
    """Which variable reads each MEDS code of a config, and in which role (both directions)."""

    def __init__(self, config: DatasetConfig):
        self.config = config
        self.exact: dict[str, CodeRole] = {}
        self.imaging: dict[str, VariableSpec] = {}
        self.suffixed: dict[str, VariableSpec] = {}
        for spec in config.variables:
            for code in spec.codes:
                self._register(spec, code)
        self.index_code = config.index_code or DEFAULT_INDEX_CODE
        self.eof_code = config.end_of_followup_code
        self.markers = frozenset({self.index_code, self.eof_code, DEFAULT_INDEX_CODE})
        for marker in sorted(self.markers):
            role = self.lookup(marker)
            if role is not None:
                raise ConfigError(
                    f"config {config.name!r}: marker code {marker!r} (index or end of follow-up) is also read "
                    f"by variable {role.spec.name!r}; use a code of its own for the marker"
                )
        self.specs = {v.name: v for v in config.variables}
        self._labels: dict[str, dict[float, str]] = {}

    def _register(self, spec: VariableSpec, code: str) -> None:
        if spec.kind == VariableKind.IMAGING_EMBEDDING:
            self.imaging[code] = spec
        elif spec.kind == VariableKind.TREATMENT:
            self.exact[start_code(code)] = CodeRole(spec, Role.START)
            self.exact[stop_code(code)] = CodeRole(spec, Role.STOP)
            if spec.encoding != CodeEncoding.VPATIENT:  # per-visit values
                self.exact[code] = CodeRole(spec, Role.VISIT_DOSE)
        elif spec.kind == VariableKind.STATIC and code == MEDS_BIRTH:
            self.exact[code] = CodeRole(spec, Role.BIRTH)
        else:
            self.exact[code] = CodeRole(spec, _ROLE_OF_KIND[spec.kind])
            if spec.encoding == CodeEncoding.CODE_SUFFIX:
                self.suffixed[code] = spec

    def lookup(self, code: str) -> CodeRole | None:
        """The variable and role reading ``code``; None for unknown (and marker) codes."""
        found = self.exact.get(code)
        if found is not None:
            return found
        prefix, sep, suffix = code.rpartition(CODE_SEPARATOR)
        # Any integer suffix maps to the embedding, so that a wrong dimension is reported
        # as such rather than as a pile of unknown codes.
        if sep and suffix.isdigit() and prefix in self.imaging:
            return CodeRole(self.imaging[prefix], Role.IMAGING, int(suffix))
        # Any suffix maps to its variable, so that an undeclared level is reported as such
        # (naming subject and code) rather than as an unknown code.
        if sep and prefix in self.suffixed:
            return CodeRole(self.suffixed[prefix], Role.STATIC, suffix=suffix)
        return None

    def spec(self, name: str) -> VariableSpec:
        """The variable called ``name``."""
        return self.specs[name]

    def code(self, name: str) -> str:
        """The code variable ``name`` is written under: its first."""
        return self.specs[name].codes[0]

    def labels(self, name: str) -> dict[float, str]:
        """Value -> the category name it is written as (``text_value``); the first name when two share a value."""
        found = self._labels.get(name)
        if found is None:
            found = {}
            for label, number in (self.specs[name].categories or {}).items():
                found.setdefault(number, label)
            self._labels[name] = found
        return found

    def suffix_value(self, spec: VariableSpec, suffix: str) -> float:
        """The value a ``code_suffix`` code's suffix stands for: its category, else a number; NaN when neither."""
        if spec.categories is not None:
            return float(spec.categories.get(suffix, math.nan))
        try:
            return float(suffix)
        except ValueError:
            return math.nan

    def reads_birth(self, spec: VariableSpec) -> bool:
        """True when the static variable is the age at index, read from the ``MEDS_BIRTH`` row."""
        return spec.kind == VariableKind.STATIC and MEDS_BIRTH in spec.codes


def codes_table(config: DatasetConfig) -> pd.DataFrame:
    """The codes.parquet table of a config: every code it reads or writes, with a description."""
    rows: list[tuple[str, str, list[str] | None]] = []
    for spec in config.variables:
        about = spec.description or spec.name
        about += f" ({spec.unit})" if spec.unit else ""
        for code in spec.codes:
            if spec.kind == VariableKind.IMAGING_EMBEDDING:
                rows += [
                    (component_code(code, j), f"{about}: embedding component {j}", [code]) for j in range(spec.dimension or 0)
                ]
            elif spec.kind == VariableKind.TREATMENT:
                rows += [
                    (start_code(code), f"{about}: start (numeric_value = dose)", [code]),
                    (stop_code(code), f"{about}: stop", [code]),
                ]
                if spec.encoding != CodeEncoding.VPATIENT:
                    rows.append((code, f"{about}: {spec.encoding.value.replace('_', ' ')} (numeric_value)", None))
            elif code == MEDS_BIRTH:
                rows.append((code, f"birth; {spec.name} is the age at index", None))
            else:
                rows.append((code, about, None))
                if spec.encoding == CodeEncoding.CODE_SUFFIX:
                    rows += [(f"{code}{CODE_SEPARATOR}{label}", f"{about}: {label}", [code]) for label in spec.categories or {}]
    rows.append((config.end_of_followup_code, "end of follow-up (vpatient)", None))
    rows.append((config.index_code or DEFAULT_INDEX_CODE, "index time, time zero (vpatient)", None))
    return pd.DataFrame(rows, columns=["code", "description", "parent_codes"]).drop_duplicates("code")
