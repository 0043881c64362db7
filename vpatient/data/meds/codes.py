"""The one table of MEDS codes, columns and dtypes that every MEDS reader and writer of vpatient uses.

Both writers, :mod:`vpatient.data.meds.write` (records) and the virtual-cohort writer
(:func:`vpatient.simulation.sampling.observe`), name their rows, type their columns and
order their tables from here, so that a virtual cohort is read back by
:mod:`vpatient.data.meds.read` exactly as a real one.

Subject ids: MEDS types ``subject_id`` as int64, and so do both writers whenever every
id is an integer written canonically (virtual patients are numbered, so always). Ids
that are not (``"syn00001"``) are written as str rather than renumbered, so that a round
trip keeps them; the reader turns every id into str (``PatientRecord.subject_id``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

import pandas as pd
import pyarrow as pa

from vpatient.errors import ConfigError
from vpatient.schemas import CodeEncoding, DatasetConfig, VariableKind, VariableSpec

__all__ = [
    "CODE",
    "CODES_FILE",
    "CODES_SCHEMA",
    "CODE_SEPARATOR",
    "CONFIG_FILE",
    "DATASET_FILE",
    "DATA_DIR",
    "DEFAULT_INDEX_CODE",
    "ETL_NAME",
    "HELD_OUT_SPLIT",
    "MEDS_BIRTH",
    "MEDS_COLUMNS",
    "MEDS_DEATH",
    "MEDS_VERSION",
    "METADATA_DIR",
    "MICROS_PER_DAY",
    "NUMERIC_VALUE",
    "REQUIRED_COLUMNS",
    "SPLITS_FILE",
    "SPLIT_ORDER",
    "START_SUFFIX",
    "STATIC_ROLES",
    "STOP_SUFFIX",
    "SUBJECT_ID",
    "SUBJECT_ID_DTYPE",
    "TEXT_VALUE",
    "TIME",
    "TRAIN_SPLIT",
    "TUNING_SPLIT",
    "UNSPLIT_DIR",
    "VALUE_ROLES",
    "CodeBook",
    "CodeRole",
    "Role",
    "codes_table",
    "component_code",
    "is_integer_ids",
    "meds_schema",
    "start_code",
    "stop_code",
    "subject_id_column",
    "subject_sort_key",
]

# --------------------------------------------------------------------------- constants

MEDS_BIRTH = "MEDS_BIRTH"
MEDS_DEATH = "MEDS_DEATH"
TRAIN_SPLIT = "train"
TUNING_SPLIT = "tuning"
HELD_OUT_SPLIT = "held_out"
CODE_SEPARATOR = "//"
START_SUFFIX = f"{CODE_SEPARATOR}START"
STOP_SUFFIX = f"{CODE_SEPARATOR}STOP"
#: Index marker written for timestamped records when the config names no index_code.
DEFAULT_INDEX_CODE = "VPATIENT_INDEX"
#: The MEDS schema version these files follow (with the deviations in :mod:`vpatient.data.meds`).
MEDS_VERSION = "0.3.3"
ETL_NAME = "vpatient"

SUBJECT_ID, TIME, CODE, NUMERIC_VALUE, TEXT_VALUE = "subject_id", "time", "code", "numeric_value", "text_value"
REQUIRED_COLUMNS = (SUBJECT_ID, TIME, CODE, NUMERIC_VALUE)
MEDS_COLUMNS = (*REQUIRED_COLUMNS, TEXT_VALUE)
#: The subject_id dtype of every table vpatient writes when the ids are integers (MEDS's type).
SUBJECT_ID_DTYPE = "int64"

DATA_DIR, METADATA_DIR = "data", "metadata"
CODES_FILE, SPLITS_FILE = "codes.parquet", "subject_splits.parquet"
DATASET_FILE, CONFIG_FILE = "dataset.json", "vpatient_config.json"
#: Folder under data/ for subjects without a split, when other subjects have one.
UNSPLIT_DIR = "unsplit"
#: The order of split folders under data/ (others follow by name).
SPLIT_ORDER = (TRAIN_SPLIT, TUNING_SPLIT, HELD_OUT_SPLIT)

#: Microseconds in a day: timestamps and float times convert through whole microseconds.
MICROS_PER_DAY = 86_400 * 1_000_000
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


def meds_schema(frame: pd.DataFrame) -> pa.Schema:
    """The parquet schema of a MEDS table: subject_id int64 (str ids: string), time float or timestamp[us]."""
    return pa.schema(
        [
            (SUBJECT_ID, pa.int64() if pd.api.types.is_integer_dtype(frame[SUBJECT_ID]) else pa.string()),
            (TIME, pa.timestamp("us") if pd.api.types.is_datetime64_dtype(frame[TIME]) else pa.float64()),
            (CODE, pa.string()),
            (NUMERIC_VALUE, pa.float64()),
            (TEXT_VALUE, pa.string()),
        ]
    )


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
