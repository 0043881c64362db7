"""MEDS long tables in, :class:`~vpatient.schemas.PatientRecord` objects out, and back.

MEDS (Medical Event Data Standard) keeps a cohort as one long table with a row per
measurement: ``subject_id``, ``time`` (null for static rows), ``code``,
``numeric_value`` (nullable) and, optionally, ``text_value``. vpatient reads one CSV
or parquet file, or a MEDS directory (``data/**/*.parquet`` plus
``metadata/subject_splits.parquet`` and ``metadata/codes.parquet`` when present), and
writes MEDS directories that also carry the dataset config, so they describe
themselves.

Mapping rules (``C`` is a code a variable lists in ``VariableSpec.codes``; writing
uses ``codes[0]``):

========================  ==========================================================
kind                      rows
========================  ==========================================================
static                    ``C`` with null time; value = ``numeric_value``, or
                          ``categories[text_value]`` when the variable has categories.
static reading            ``MEDS_BIRTH`` at the birth time; value = age at index in the
``MEDS_BIRTH``            config's time unit. Written back at time ``-age`` (numeric
                          times) or ``index_time - age`` (timestamps).
continuous, binary,       ``C`` at a time → Observation; value as for static. A row
ordinal                   with no value is a problem naming subject, code and time.
imaging_embedding         ``C//0`` … ``C//{d-1}`` at one time, ``numeric_value`` the
                          component → one ImagingStudy. Missing, duplicate or extra
                          components are problems.
history                   ``C`` at a time (possibly before index) → HistoryEntry.
treatment                 ``C//START`` (``numeric_value`` = dose, default 1.0) and
                          ``C//STOP`` → TreatmentExposure(start, stop or None, dose).
                          A STOP with no open START, or a START while one is open, is a
                          problem. At equal times a STOP closes before a START opens.
event                     ``C`` at a time → Event(kind=variable name), e.g.
                          ``MEDS_DEATH`` → ``death``.
========================  ==========================================================

Follow-up and time axis:

- ``config.end_of_followup_code`` gives ``end_of_followup``; absent, the subject's last
  *anchoring* row. Anchoring rows are timed rows other than ``MEDS_BIRTH`` and static
  variables' rows (a birth date says nothing about follow-up); rows of unknown codes
  do anchor, since they still show the subject was being seen.
- Numeric times are already in the config's time unit since the index. Timestamps are
  made relative: index = the subject's ``config.index_code`` row (a subject without
  one is a problem), or, when the config sets none, its ``VPATIENT_INDEX`` row (what
  :func:`write_meds` writes), else its first anchoring row;
  ``t = (time - index) / time_unit``. The record keeps ``index_time``.
- Timestamps are naive; time-zone-aware input is converted to UTC first.
- ``config.index_code`` and ``config.end_of_followup_code`` must be marker codes that
  no variable reads (a ConfigError says so otherwise).

Unknown codes (no variable reads them) follow ``config.unknown_codes``: ``error`` and
``warn`` report each code once, with its count of rows and subjects; ``ignore`` drops
them silently.

Writing: a record with ``index_time`` gets a ``time`` column of ``datetime64[us]``
(offsets rounded to the microsecond); records without get a float column; a mix is
an error. Numeric-time data round-trip bit for bit. Deviations from the MEDS schema,
made so that round trips are lossless: ``numeric_value`` is float64 (MEDS: float32),
and ``time`` may be float (times since index) where the source had no calendar time.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vpatient.errors import (
    ConfigError,
    DataFormatError,
    DatasetNotFoundError,
    OutputExistsError,
    Problem,
    RecordValidationError,
    UnknownCodeWarning,
)
from vpatient.schemas import (
    DatasetConfig,
    PatientRecord,
    UnknownCodePolicy,
    VariableKind,
    VariableSpec,
    duplicate_id_problems,
    parse_record,
    record_problems,
)

__all__ = [
    "CODE_SEPARATOR",
    "DEFAULT_INDEX_CODE",
    "HELD_OUT_SPLIT",
    "MEDS_BIRTH",
    "MEDS_COLUMNS",
    "MEDS_DEATH",
    "MEDS_VERSION",
    "REQUIRED_COLUMNS",
    "START_SUFFIX",
    "STOP_SUFFIX",
    "TRAIN_SPLIT",
    "TUNING_SPLIT",
    "OutputExistsError",
    "UnknownCodeWarning",
    "frame_to_records",
    "iter_meds",
    "load_config_for",
    "move_into_place",
    "read_meds",
    "records_to_frame",
    "write_meds",
    "write_meds_metadata",
    "write_meds_shard",
]

log = logging.getLogger(__name__)

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
#: The MEDS schema version these files follow (with the deviations in the module docstring).
MEDS_VERSION = "0.3.3"
ETL_NAME = "vpatient"

SUBJECT_ID, TIME, CODE, NUMERIC_VALUE, TEXT_VALUE = "subject_id", "time", "code", "numeric_value", "text_value"
REQUIRED_COLUMNS = (SUBJECT_ID, TIME, CODE, NUMERIC_VALUE)
MEDS_COLUMNS = (*REQUIRED_COLUMNS, TEXT_VALUE)

DATA_DIR, METADATA_DIR = "data", "metadata"
CODES_FILE, SPLITS_FILE = "codes.parquet", "subject_splits.parquet"
DATASET_FILE, CONFIG_FILE = "dataset.json", "vpatient_config.json"
#: Folder under data/ for subjects without a split, when other subjects have one.
UNSPLIT_DIR = "unsplit"

_MICROS_PER_DAY = 86_400 * 1_000_000
_CANONICAL_INT = re.compile(r"^-?(0|[1-9][0-9]{0,17})$")
_SAFE_SPLIT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_CSV_DTYPES = {SUBJECT_ID: str, CODE: str, TEXT_VALUE: str}
_SPLIT_ORDER = (TRAIN_SPLIT, TUNING_SPLIT, HELD_OUT_SPLIT)


# --------------------------------------------------------------------------- code book


class _Role(StrEnum):
    """What a row means once its code is looked up in the config."""

    STATIC = "static"
    BIRTH = "birth"
    OBSERVED = "observed"
    IMAGING = "imaging"
    HISTORY = "history"
    START = "start"
    STOP = "stop"
    EVENT = "event"


_ROLE_OF_KIND = {
    VariableKind.STATIC: _Role.STATIC,
    VariableKind.CONTINUOUS: _Role.OBSERVED,
    VariableKind.BINARY: _Role.OBSERVED,
    VariableKind.ORDINAL: _Role.OBSERVED,
    VariableKind.HISTORY: _Role.HISTORY,
    VariableKind.EVENT: _Role.EVENT,
}
#: Roles whose rows must carry a value (a birth row's value is its time; doses default to 1.0).
_VALUE_ROLES = (_Role.STATIC, _Role.OBSERVED, _Role.IMAGING)
_STATIC_ROLES = (_Role.STATIC, _Role.BIRTH)


@dataclass(frozen=True)
class _CodeRole:
    spec: VariableSpec
    role: _Role
    component: int = -1


class _CodeBook:
    """Which variable reads each MEDS code of a config, and in which role (both directions)."""

    def __init__(self, config: DatasetConfig):
        self.config = config
        self.exact: dict[str, _CodeRole] = {}
        self.imaging: dict[str, VariableSpec] = {}
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

    def _register(self, spec: VariableSpec, code: str) -> None:
        if spec.kind == VariableKind.IMAGING_EMBEDDING:
            self.imaging[code] = spec
        elif spec.kind == VariableKind.TREATMENT:
            self.exact[code + START_SUFFIX] = _CodeRole(spec, _Role.START)
            self.exact[code + STOP_SUFFIX] = _CodeRole(spec, _Role.STOP)
        elif spec.kind == VariableKind.STATIC and code == MEDS_BIRTH:
            self.exact[code] = _CodeRole(spec, _Role.BIRTH)
        else:
            self.exact[code] = _CodeRole(spec, _ROLE_OF_KIND[spec.kind])

    def lookup(self, code: str) -> _CodeRole | None:
        """The variable and role reading ``code``; None for unknown (and marker) codes."""
        found = self.exact.get(code)
        if found is not None:
            return found
        prefix, sep, suffix = code.rpartition(CODE_SEPARATOR)
        # Any integer suffix maps to the embedding, so that a wrong dimension is reported
        # as such rather than as a pile of unknown codes.
        if sep and suffix.isdigit() and prefix in self.imaging:
            return _CodeRole(self.imaging[prefix], _Role.IMAGING, int(suffix))
        return None

    def spec(self, name: str) -> VariableSpec:
        return self.specs[name]

    def reads_birth(self, spec: VariableSpec) -> bool:
        return spec.kind == VariableKind.STATIC and MEDS_BIRTH in spec.codes


# --------------------------------------------------------------------------- public: reading


def load_config_for(path: str | Path) -> DatasetConfig | None:
    """The dataset config stored in a MEDS directory's metadata (by :func:`write_meds`), or None.

    Used when a command gets a MEDS directory but no ``--config``.
    """
    candidate = Path(path) / METADATA_DIR / CONFIG_FILE
    return DatasetConfig.load(candidate) if candidate.is_file() else None


def read_meds(
    path: str | Path, config: DatasetConfig | None = None, *, warnings_out: list[Problem] | None = None
) -> list[PatientRecord]:
    """Read a MEDS file or directory into validated records, one per subject.

    Rows may come in any order; records come back sorted by subject id (numerically when
    every id is an integer), each in canonical order. ``config`` None uses the config
    stored in the directory's metadata. Problems of all subjects (and unknown codes) are
    collected and raised together as one RecordValidationError; warnings go to
    ``warnings_out`` when given, else through :mod:`warnings`.
    """
    path = _existing(path)
    config = _resolve_config(path, config)
    frame = _read_frame(path)
    records = frame_to_records(frame, config, splits=_read_splits(path), warnings_out=warnings_out)
    log.info("read %d subjects (%d rows) from %s", len(records), len(frame), path)
    return records


def iter_meds(
    path: str | Path,
    config: DatasetConfig | None = None,
    *,
    batch_size: int = 65_536,
    warnings_out: list[Problem] | None = None,
) -> Iterator[PatientRecord]:
    """Stream records subject by subject, reading ``batch_size`` rows at a time.

    For inputs whose rows are grouped by subject, as MEDS shards are (sorted by
    subject_id). A subject may span batches; a subject whose rows are not contiguous is
    a DataFormatError. Unlike :func:`read_meds`, a stream stops at the first batch with
    problems (it cannot list the whole file's problems without reading it all).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    path = _existing(path)
    config = _resolve_config(path, config)
    book = _CodeBook(config)
    splits = _read_splits(path)
    unknown = _UnknownCodes(config)
    finished: set[str] = set()
    carry: pd.DataFrame | None = None
    for raw, source in _iter_raw_batches(path, batch_size):
        batch = _normalise(raw, source)
        if carry is not None:
            batch = _concat([carry, batch], source)
        _check_contiguous(batch, finished, source)
        if batch.empty:
            continue
        tail = batch[SUBJECT_ID].to_numpy() == batch[SUBJECT_ID].iat[-1]
        ready, carry = batch[~tail], batch[tail]
        if not ready.empty:
            yield from _stream_records(ready, book, splits, warnings_out, unknown, path)
            finished.update(ready[SUBJECT_ID].unique())
    if carry is not None and not carry.empty:
        yield from _stream_records(carry, book, splits, warnings_out, unknown, path)
    _report_warnings(unknown.problems(), warnings_out)


def frame_to_records(
    df: pd.DataFrame,
    config: DatasetConfig,
    *,
    splits: Mapping[str, str] | None = None,
    warnings_out: list[Problem] | None = None,
) -> list[PatientRecord]:
    """Convert a MEDS long table (any row order) into validated records, one per subject.

    ``splits`` maps subject id (as str) to its MEDS split. Raises one
    RecordValidationError listing every problem of every subject.
    """
    frame = _normalise(df, "data frame")
    book = _CodeBook(config)
    unknown = _UnknownCodes(config)
    records, problems = _convert(frame, book, splits or {}, warnings_out, unknown)
    problems = [p for p in unknown.problems() if p.severity == "error"] + problems
    problems += duplicate_id_problems(records)
    _report_warnings(unknown.problems(), warnings_out)
    if problems:
        raise RecordValidationError(problems, header=f"invalid MEDS data for config {config.name!r}")
    return records


# --------------------------------------------------------------------------- public: writing


def records_to_frame(records: Iterable[PatientRecord], config: DatasetConfig) -> pd.DataFrame:
    """The MEDS long table of ``records``: sorted by subject, static rows first, then by time.

    Columns: subject_id (int64 when every id is an integer, else str), time (float, or
    datetime64[us] when the records have ``index_time``), code, numeric_value (float64),
    text_value (str or None). Records that do not fit ``config`` raise one
    RecordValidationError listing every problem.
    """
    records = list(records)
    book = _CodeBook(config)
    _check_writable(records, config)
    timestamps = _uses_timestamps(records)
    rows = _RowBuilder()
    for record in records:
        _emit_record(record.in_canonical_order(config), book, rows, timestamps)
    return rows.frame(timestamps, config.time_unit.days)


def write_meds(
    records: Iterable[PatientRecord],
    config: DatasetConfig,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    dataset_name: str | None = None,
    subjects_per_shard: int | None = None,
) -> Path:
    """Write ``records`` as a self-describing MEDS directory and return its path.

    Layout: ``data/<split>/<n>.parquet`` (``data/<n>.parquet`` when no record has a
    split), ``metadata/codes.parquet``, ``metadata/subject_splits.parquet`` (when
    records have splits), ``metadata/dataset.json`` and ``metadata/vpatient_config.json``.
    Everything is written to a temporary folder beside ``out_dir`` and renamed into
    place, so a failure never leaves half a dataset. A non-empty ``out_dir`` is refused
    unless ``overwrite``.
    """
    out_dir = Path(out_dir)
    _check_output_dir(out_dir, overwrite)
    if subjects_per_shard is not None and subjects_per_shard < 1:
        raise ValueError(f"subjects_per_shard must be at least 1, got {subjects_per_shard}")
    records = list(records)
    frame = records_to_frame(records, config)
    splits = {r.subject_id: r.split for r in records if r.split is not None}
    _check_split_names(splits)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        _write_shards(frame, splits, tmp / DATA_DIR, subjects_per_shard)
        write_meds_metadata(config, tmp, dataset_name)
        if splits:
            _write_splits(frame, splits, tmp / METADATA_DIR / SPLITS_FILE)
        move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %d subjects (%d rows) to %s", len(records), len(frame), out_dir)
    return out_dir


def write_meds_metadata(config: DatasetConfig, out_dir: str | Path, dataset_name: str | None = None) -> Path:
    """Write ``metadata/`` (codes, dataset.json, the vpatient config) of a MEDS directory.

    For writers that stream ``data/`` shards themselves (virtual cohorts), so their
    output is the same self-describing MEDS directory :func:`write_meds` produces.
    """
    metadata = Path(out_dir) / METADATA_DIR
    metadata.mkdir(parents=True, exist_ok=True)
    _write_codes(_codes_table(config), metadata / CODES_FILE)
    _write_dataset_json(metadata / DATASET_FILE, dataset_name or config.name)
    config.save(metadata / CONFIG_FILE)
    return metadata


def write_meds_shard(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write one ``data/`` shard: a MEDS table in MEDS order (subject, static rows first, time)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(frame[list(MEDS_COLUMNS)], schema=_meds_schema(frame), preserve_index=False), path)
    return path


# --------------------------------------------------------------------------- input files


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise DatasetNotFoundError(f"MEDS input not found: {path}")
    return path


def _resolve_config(path: Path, config: DatasetConfig | None) -> DatasetConfig:
    if config is not None:
        return config
    stored = load_config_for(path) if path.is_dir() else None
    if stored is None:
        raise ConfigError(f"no dataset config given, and {path} has no {METADATA_DIR}/{CONFIG_FILE}; pass one")
    return stored


def _shards(path: Path) -> list[Path]:
    """The parquet files of a MEDS directory, in a stable order."""
    data = path / DATA_DIR
    if not data.is_dir():
        raise DataFormatError(f"{path} is not a MEDS directory: it has no {DATA_DIR}/ folder")
    shards = sorted(data.rglob("*.parquet"))
    if not shards:
        raise DataFormatError(f"MEDS directory {path} has no parquet files under {DATA_DIR}/")
    return shards


def _file_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    raise DataFormatError(f"{path}: unsupported MEDS input; expected a .csv or .parquet file, or a MEDS directory")


def _read_parquet(path: Path) -> pd.DataFrame:
    present = pq.read_schema(path).names
    _check_columns(present, str(path))
    return pq.read_table(path, columns=[c for c in MEDS_COLUMNS if c in present]).to_pandas()


def _read_frame(path: Path) -> pd.DataFrame:
    """The whole input as one normalised frame."""
    if path.is_dir():
        frames = [_normalise(_read_parquet(shard), str(shard)) for shard in _shards(path)]
        return _concat(frames, str(path))
    if _file_kind(path) == "csv":
        return _normalise(pd.read_csv(path, dtype=_CSV_DTYPES), str(path))
    return _normalise(_read_parquet(path), str(path))


def _iter_raw_batches(path: Path, batch_size: int) -> Iterator[tuple[pd.DataFrame, str]]:
    """Raw row batches of the input and the file each came from, without reading it all."""
    files = _shards(path) if path.is_dir() else [path]
    for file in files:
        if _file_kind(file) == "csv":
            header = pd.read_csv(file, nrows=0).columns
            _check_columns(list(header), str(file))
            for chunk in pd.read_csv(file, dtype=_CSV_DTYPES, chunksize=batch_size):
                yield chunk, str(file)
            continue
        parquet = pq.ParquetFile(file)
        present = parquet.schema_arrow.names
        _check_columns(present, str(file))
        columns = [c for c in MEDS_COLUMNS if c in present]
        for batch in parquet.iter_batches(batch_size=batch_size, columns=columns):
            yield batch.to_pandas(), str(file)


def _read_splits(path: Path) -> dict[str, str]:
    """Subject id → split, from a MEDS directory's metadata (empty when there is none)."""
    file = path / METADATA_DIR / SPLITS_FILE
    if not path.is_dir() or not file.is_file():
        return {}
    table = pd.read_parquet(file)
    missing = [c for c in (SUBJECT_ID, "split") if c not in table.columns]
    if missing:
        raise DataFormatError(f"{file}: missing column(s) {', '.join(map(repr, missing))}; expected subject_id, split")
    ids = _ids_as_str(table[SUBJECT_ID], str(file))
    return dict(zip(ids.tolist(), table["split"].astype(str).tolist(), strict=True))


# --------------------------------------------------------------------------- normalising


def _check_columns(present: Sequence[str], source: str) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in present]
    if missing:
        raise DataFormatError(
            f"{source}: missing required MEDS column(s) {', '.join(map(repr, missing))} "
            f"(found: {', '.join(map(str, present)) or 'none'}; MEDS needs {', '.join(REQUIRED_COLUMNS)})"
        )


def _normalise(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """The MEDS columns with one dtype each: ids and codes str, time float or datetime64[us]."""
    _check_columns(list(df.columns), source)
    for column in (SUBJECT_ID, CODE):
        nulls = int(df[column].isna().sum())
        if nulls:
            raise DataFormatError(f"{source}: {nulls} row(s) have no {column}")
    text = df[TEXT_VALUE] if TEXT_VALUE in df.columns else pd.Series(None, index=df.index, dtype=object)
    out = pd.DataFrame(
        {
            SUBJECT_ID: _ids_as_str(df[SUBJECT_ID], source),
            TIME: _normalise_time(df[TIME], source),
            CODE: df[CODE].astype(str),
            NUMERIC_VALUE: _as_float(df[NUMERIC_VALUE], NUMERIC_VALUE, source),
            TEXT_VALUE: text.astype(object).where(text.notna(), None),
        }
    )
    return out.reset_index(drop=True)


def _ids_as_str(ids: pd.Series, source: str) -> pd.Series:
    """Subject ids as str; integral floats (a CSV column with gaps) lose their '.0'."""
    if pd.api.types.is_float_dtype(ids):
        if not np.all(np.mod(ids.dropna(), 1) == 0):
            raise DataFormatError(f"{source}: subject_id holds non-integer numbers such as {ids[np.mod(ids, 1) != 0].iat[0]!r}")
        return ids.astype("int64").astype(str)
    if pd.api.types.is_object_dtype(ids) and not all(isinstance(x, str) for x in ids):
        return ids.map(str)
    return ids.astype(str)


def _as_float(values: pd.Series, column: str, source: str) -> pd.Series:
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return values.astype("float64")
    converted = pd.to_numeric(values, errors="coerce")
    bad = converted.isna() & values.notna()
    if bad.any():
        raise DataFormatError(f"{source}: {column} holds non-numbers, such as {values[bad].iat[0]!r} ({int(bad.sum())} rows)")
    return converted.astype("float64")


def _normalise_time(times: pd.Series, source: str) -> pd.Series:
    """Float times since index, or naive datetime64[us] (UTC when the input had a zone)."""
    if isinstance(times.dtype, pd.DatetimeTZDtype):
        times = times.dt.tz_convert("UTC").dt.tz_localize(None)
    if pd.api.types.is_datetime64_dtype(times):
        return times.astype("datetime64[us]")
    if pd.api.types.is_numeric_dtype(times) and not pd.api.types.is_bool_dtype(times):
        return times.astype("float64")
    present = times.dropna()
    if present.empty:
        return pd.Series(np.nan, index=times.index, dtype="float64")
    numbers = pd.to_numeric(present, errors="coerce")
    if numbers.notna().all():
        return pd.to_numeric(times, errors="coerce").astype("float64")
    if numbers.notna().any():
        raise DataFormatError(
            f"{source}: time mixes numbers ({present[numbers.notna()].iat[0]!r}) and timestamps "
            f"({present[numbers.isna()].iat[0]!r}); use one or the other"
        )
    try:
        parsed = pd.to_datetime(times, format="ISO8601", utc=True)
    except (ValueError, TypeError) as exc:
        raise DataFormatError(f"{source}: time column is neither numbers nor ISO 8601 timestamps: {exc}") from None
    return parsed.dt.tz_localize(None).astype("datetime64[us]")


def _concat(frames: Sequence[pd.DataFrame], source: str) -> pd.DataFrame:
    """Concatenate normalised frames whose time columns must agree (an all-null one adapts)."""
    stamped = [pd.api.types.is_datetime64_dtype(f[TIME]) for f in frames]
    if any(stamped) and not all(stamped):
        numeric = [f for f, s in zip(frames, stamped, strict=True) if not s]
        if any(f[TIME].notna().any() for f in numeric):
            raise DataFormatError(f"{source}: some parts have numeric times and others timestamps; use one or the other")
        frames = [f if s else f.assign(**{TIME: f[TIME].astype("datetime64[us]")}) for f, s in zip(frames, stamped, strict=True)]
    return pd.concat(frames, ignore_index=True)


def _check_contiguous(batch: pd.DataFrame, finished: set[str], source: str) -> None:
    """Each subject's rows in one run, and none of a subject already streamed."""
    ids = batch[SUBJECT_ID]
    runs = ids[ids.ne(ids.shift())]
    repeated = runs[runs.duplicated()]
    earlier = runs[runs.isin(finished)]
    offender = repeated.iat[0] if not repeated.empty else (earlier.iat[0] if not earlier.empty else None)
    if offender is not None:
        raise DataFormatError(
            f"{source}: the rows of subject {offender!r} are not contiguous; iter_meds streams subject by "
            f"subject and needs each subject's rows together (as in MEDS shards, sorted by subject_id). "
            f"Use read_meds, or sort the file by subject_id"
        )


# --------------------------------------------------------------------------- rows → records


class _UnknownCodes:
    """Counts of rows and subjects per unknown code, reported once per code."""

    def __init__(self, config: DatasetConfig):
        self.config = config
        self.rows: Counter[str] = Counter()
        self.subjects: Counter[str] = Counter()

    def add(self, rows: pd.DataFrame) -> None:
        if self.config.unknown_codes == UnknownCodePolicy.IGNORE or rows.empty:
            return
        grouped = rows.groupby(CODE, sort=False)[SUBJECT_ID]
        self.rows.update(grouped.size().to_dict())
        # Subjects never span two calls (read_meds converts once; iter_meds checks
        # contiguity), so per-call distinct counts add up.
        self.subjects.update(grouped.nunique().to_dict())

    def problems(self) -> list[Problem]:
        policy = self.config.unknown_codes
        severity = "error" if policy == UnknownCodePolicy.ERROR else "warning"
        return [
            Problem(
                None,
                CODE,
                code,
                f"unknown code: {_plural(self.rows[code], 'row')} in {_plural(self.subjects[code], 'subject')}; "
                f"no variable of config {self.config.name!r} reads it (unknown_codes={policy!s})",
                severity,
            )
            for code in sorted(self.rows)
        ]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _report_warnings(problems: list[Problem], warnings_out: list[Problem] | None) -> None:
    for problem in problems:
        if problem.severity != "warning":
            continue
        if warnings_out is not None:
            warnings_out.append(problem)
        else:
            warnings.warn(str(problem), UnknownCodeWarning, stacklevel=3)


def _stream_records(
    frame: pd.DataFrame,
    book: _CodeBook,
    splits: Mapping[str, str],
    warnings_out: list[Problem] | None,
    unknown: _UnknownCodes,
    path: Path,
) -> Iterator[PatientRecord]:
    """Convert the complete subjects of one stream batch, raising on its problems."""
    records, problems = _convert(frame, book, splits, warnings_out, unknown)
    if book.config.unknown_codes == UnknownCodePolicy.ERROR:
        problems = unknown.problems() + problems
    if problems:
        raise RecordValidationError(
            problems, header=f"invalid MEDS data in {path} (streaming stops at the first bad batch; read_meds lists all)"
        )
    yield from records


def _convert(
    frame: pd.DataFrame,
    book: _CodeBook,
    splits: Mapping[str, str],
    warnings_out: list[Problem] | None,
    unknown: _UnknownCodes,
) -> tuple[list[PatientRecord], list[Problem]]:
    """Records of the complete subjects in ``frame``, and every problem found on the way.

    The one conversion that read_meds, iter_meds and frame_to_records share.
    """
    subjects = frame[SUBJECT_ID].unique().tolist()
    frame = _annotate(frame, book)
    unknown.add(frame[frame["_role"].isna() & ~frame[CODE].isin(book.markers)])
    t, index_times, problems = _timeline(frame, book)
    frame["_t"] = t
    ends, end_problems = _ends_of_followup(frame, book, subjects)
    problems += end_problems
    frame = frame[frame["_role"].notna()].sort_values(["_skey", "_t", "_row"], na_position="first")
    values, usable, value_problems = _values(frame, book)
    problems += value_problems
    data, assembly_problems = _assemble(frame, values, usable, book)
    problems += assembly_problems
    records: list[PatientRecord] = []
    for sid in _subjects_in_order(subjects):
        record = data.get(sid) or _empty_record(sid)
        record["index_time"] = index_times.get(sid)
        record["split"] = splits.get(sid)
        if sid not in ends:
            continue  # already reported: without an end of follow-up there is no record to check
        record["end_of_followup"] = ends[sid]
        try:
            records.append(parse_record(record, book.config, warnings_out).in_canonical_order(book.config))
        except RecordValidationError as exc:
            problems += exc.problems
    return records, problems


def _annotate(frame: pd.DataFrame, book: _CodeBook) -> pd.DataFrame:
    """Add each row's variable, role and imaging component, a subject sort key and row number."""
    lookups = {code: book.lookup(code) for code in frame[CODE].unique()}
    found = {code: role for code, role in lookups.items() if role is not None}
    return frame.assign(
        _var=frame[CODE].map({c: r.spec.name for c, r in found.items()}),
        _role=frame[CODE].map({c: r.role.value for c, r in found.items()}),
        _comp=frame[CODE].map({c: r.component for c, r in found.items()}),
        _skey=_subject_sort_key(frame[SUBJECT_ID]),
        _row=np.arange(len(frame)),
    )


def _subject_sort_key(ids: pd.Series) -> pd.Series:
    """Numeric order when every id is an integer (so 2 < 10), string order otherwise."""
    unique = ids.unique()
    if all(_CANONICAL_INT.match(x) for x in unique):
        return ids.astype("int64")
    return ids


def _subjects_in_order(subjects: list[str]) -> list[str]:
    if all(_CANONICAL_INT.match(x) for x in subjects):
        return sorted(subjects, key=int)
    return sorted(subjects)


def _anchors(frame: pd.DataFrame) -> pd.Series:
    """Rows that place a subject in follow-up: timed, neither birth nor static."""
    return frame[TIME].notna() & ~frame["_role"].isin(_STATIC_ROLES) & frame[CODE].ne(MEDS_BIRTH)


def _timeline(frame: pd.DataFrame, book: _CodeBook) -> tuple[np.ndarray, dict[str, datetime], list[Problem]]:
    """Each row's time since its subject's index (in the config's unit), and the index times."""
    if not pd.api.types.is_datetime64_dtype(frame[TIME]):
        return frame[TIME].to_numpy(dtype="float64"), {}, []
    index, problems = _index_times(frame, book)
    origin = index.reindex(frame[SUBJECT_ID].to_numpy()).to_numpy(dtype="datetime64[us]")
    delta = frame[TIME].to_numpy(dtype="datetime64[us]") - origin
    valid = ~np.isnat(delta)
    t = np.full(len(frame), np.nan)
    # One division of whole microseconds, so that writing (rint(t * unit)) recovers them exactly.
    t[valid] = delta[valid].astype("int64") / (_MICROS_PER_DAY * book.config.time_unit.days)
    return t, {sid: ts.to_pydatetime() for sid, ts in index.items()}, problems


def _index_times(frame: pd.DataFrame, book: _CodeBook) -> tuple[pd.Series, list[Problem]]:
    """Each subject's time zero: its index-code row, else (no index_code set) its first anchoring row."""
    problems: list[Problem] = []
    marked = frame[frame[CODE].eq(book.index_code) & frame[TIME].notna()].groupby(SUBJECT_ID)[TIME]
    explicit = marked.min()
    for sid, n in marked.nunique().items():
        if n > 1:
            problems.append(
                Problem(sid, "index_time", f"<{n} times>", f"{n} different {book.index_code!r} rows; one index time expected")
            )
    first = frame[_anchors(frame)].groupby(SUBJECT_ID)[TIME].min()
    if book.config.index_code is not None:
        for sid in first.index.difference(explicit.index):
            problems.append(
                Problem(sid, "index_time", None, f"no {book.index_code!r} row; config.index_code says it marks time zero")
            )
        return explicit, problems
    return explicit.combine_first(first), problems


def _ends_of_followup(frame: pd.DataFrame, book: _CodeBook, subjects: list[str]) -> tuple[dict[str, float], list[Problem]]:
    """Each subject's end of follow-up: its end-of-follow-up row, else its last anchoring row.

    A subject with timed rows but no time axis (no index) has no end either; its index
    problem is reported already.
    """
    problems: list[Problem] = []
    rows = frame[frame[CODE].eq(book.eof_code)]
    for sid in rows.loc[rows[TIME].isna(), SUBJECT_ID].unique():
        problems.append(Problem(sid, "end_of_followup", None, f"{book.eof_code!r} row without a time"))
    marked = rows[rows[TIME].notna()].groupby(SUBJECT_ID)["_t"]
    for sid, n in marked.nunique().items():
        if n > 1:
            problems.append(
                Problem(sid, "end_of_followup", f"<{n} times>", f"{n} different {book.eof_code!r} rows; one expected")
            )
    anchors = frame[_anchors(frame)]
    last = anchors.groupby(SUBJECT_ID)["_t"].max()
    ends = marked.max().combine_first(last).dropna()
    timed = set(anchors[SUBJECT_ID].unique())
    for sid in subjects:
        if sid not in ends.index and sid not in timed:
            problems.append(
                Problem(
                    sid,
                    "end_of_followup",
                    None,
                    f"no timed rows, so no time axis and no end of follow-up ({book.eof_code!r} row)",
                )
            )
    return ends.to_dict(), problems


def _values(frame: pd.DataFrame, book: _CodeBook) -> tuple[np.ndarray, np.ndarray, list[Problem]]:
    """Each row's value (numeric_value, or the category of text_value), which rows are usable, and problems."""
    role = frame["_role"].to_numpy(dtype=object)
    value = frame[NUMERIC_VALUE].to_numpy(dtype="float64", copy=True)
    needs = np.isin(role, [r.value for r in _VALUE_ROLES])
    texty = needs & np.isnan(value) & frame[TEXT_VALUE].notna().to_numpy()
    if texty.any():
        categories = {(v.name, text): float(x) for v in book.config.variables for text, x in (v.categories or {}).items()}
        keys = zip(frame["_var"].to_numpy()[texty], frame[TEXT_VALUE].to_numpy()[texty], strict=True)
        value[texty] = [categories.get(key, np.nan) for key in keys]
    value[(role == _Role.START.value) & np.isnan(value)] = 1.0  # a START without a dose: dose 1
    missing = needs & np.isnan(value)
    timed_role = role != _Role.STATIC.value
    untimed = timed_role & frame[TIME].isna().to_numpy()
    # Timed rows of a subject without a time axis (index problem, reported already) are skipped.
    unplaced = timed_role & ~untimed & np.isnan(frame["_t"].to_numpy())
    problems = [_missing_value_problem(row, book) for row in frame[missing].to_dict("records")]
    problems += [_untimed_problem(row) for row in frame[untimed & ~missing].to_dict("records")]
    return value, ~(missing | untimed | unplaced), problems


def _where(row: dict[str, Any]) -> str:
    """Field name of a row's variable in a record, for problems."""
    prefix = {
        _Role.STATIC: "static",
        _Role.BIRTH: "static",
        _Role.OBSERVED: "observations",
        _Role.IMAGING: "imaging",
        _Role.HISTORY: "history",
        _Role.START: "treatments",
        _Role.STOP: "treatments",
        _Role.EVENT: "events",
    }[_Role(row["_role"])]
    return f"{prefix}.{row['_var']}"


def _shown_time(time: Any) -> str:
    if time is None or (isinstance(time, float) and math.isnan(time)) or time is pd.NaT:
        return "no time (static row)"
    return f"time {time:g}" if isinstance(time, float) else f"time {time}"


def _missing_value_problem(row: dict[str, Any], book: _CodeBook) -> Problem:
    spec = book.spec(row["_var"])
    where = f"row with code {row[CODE]!r} at {_shown_time(row[TIME])}"
    text = row[TEXT_VALUE]
    if text is not None and spec.categories:
        known = ", ".join(spec.categories)
        return Problem(row[SUBJECT_ID], _where(row), text, f"{where}: text_value is not a category of {spec.name} ({known})")
    return Problem(row[SUBJECT_ID], _where(row), None, f"{where} has no value (numeric_value is null)")


def _untimed_problem(row: dict[str, Any]) -> Problem:
    return Problem(row[SUBJECT_ID], _where(row), None, f"row with code {row[CODE]!r} has no time; only static variables may")


def _empty_record(sid: str) -> dict[str, Any]:
    return {
        "subject_id": sid,
        "static": {},
        "observations": [],
        "imaging": [],
        "history": [],
        "treatments": [],
        "events": [],
    }


def _assemble(
    frame: pd.DataFrame, values: np.ndarray, usable: np.ndarray, book: _CodeBook
) -> tuple[dict[str, dict[str, Any]], list[Problem]]:
    """Record dicts (lists in time order) from rows sorted by subject and time."""
    data: dict[str, dict[str, Any]] = {}
    problems: list[Problem] = []
    studies: dict[tuple[str, str, float], dict[int, float]] = {}
    doses: dict[tuple[str, str], list[tuple[float, int, float]]] = {}
    columns = (frame[SUBJECT_ID], frame["_t"], frame["_var"], frame["_role"], frame["_comp"], frame[CODE])
    rows = zip(*(c.to_numpy()[usable].tolist() for c in columns), values[usable].tolist(), strict=True)
    for sid, t, name, role, comp, code, value in rows:
        record = data.get(sid)
        if record is None:
            record = data[sid] = _empty_record(sid)
        if role == _Role.OBSERVED:
            record["observations"].append({"time": t, "variable": name, "value": value})
        elif role == _Role.IMAGING:
            components = studies.setdefault((sid, name, t), {})
            if int(comp) in components:
                problems.append(Problem(sid, f"imaging.{name}", value, f"code {code!r} given twice at time {t:g}"))
            components[int(comp)] = value
        elif role == _Role.HISTORY:
            record["history"].append({"time": t, "code": name})
        elif role == _Role.EVENT:
            record["events"].append({"time": t, "kind": name})
        elif role in (_Role.START, _Role.STOP):
            doses.setdefault((sid, name), []).append((t, 0 if role == _Role.STOP else 1, value))
        else:  # static or birth
            problems += _set_static(record, name, -t if role == _Role.BIRTH else value, code)
    problems += _add_studies(data, studies, book)
    problems += _add_exposures(data, doses)
    return data, problems


def _set_static(record: dict[str, Any], name: str, value: float, code: str) -> list[Problem]:
    static = record["static"]
    if name in static and static[name] != value:
        return [Problem(record["subject_id"], f"static.{name}", value, f"given twice (code {code!r}), first as {static[name]!r}")]
    static[name] = value
    return []


def _add_studies(
    data: dict[str, dict[str, Any]], studies: dict[tuple[str, str, float], dict[int, float]], book: _CodeBook
) -> list[Problem]:
    """One ImagingStudy per (subject, modality, time), whose components must be 0..d-1."""
    problems: list[Problem] = []
    for (sid, name, t), components in studies.items():
        dimension = book.spec(name).dimension or 0
        if sorted(components) != list(range(dimension)):
            missing = sorted(set(range(dimension)) - set(components))
            extra = sorted(set(components) - set(range(dimension)))
            detail = "; ".join(
                part
                for part in (
                    f"components {missing} missing" if missing else "",
                    f"components {extra} beyond the dimension" if extra else "",
                )
                if part
            )
            problems.append(
                Problem(
                    sid,
                    f"imaging.{name}",
                    f"<{len(components)} components>",
                    f"embedding at time {t:g} has {len(components)} components, dimension {dimension} expected ({detail})",
                )
            )
            continue
        data[sid]["imaging"].append({"time": t, "modality": name, "embedding": [components[j] for j in range(dimension)]})
    return problems


def _add_exposures(
    data: dict[str, dict[str, Any]], doses: dict[tuple[str, str], list[tuple[float, int, float]]]
) -> list[Problem]:
    """Pair each treatment's START and STOP rows in time order (a STOP first at equal times)."""
    problems: list[Problem] = []
    for (sid, name), marks in doses.items():
        exposures = data[sid]["treatments"]
        open_: dict[str, float] | None = None
        for t, kind, dose in sorted(marks, key=lambda m: (m[0], m[1])):
            if kind == 0 and open_ is None:
                problems.append(
                    Problem(sid, f"treatments.{name}", t, f"{STOP_SUFFIX[2:]} at time {t:g} with no open {START_SUFFIX[2:]}")
                )
            elif kind == 0:
                exposures.append({"treatment": name, "start": open_["start"], "stop": t, "dose": open_["dose"]})
                open_ = None
            elif open_ is not None:
                problems.append(
                    Problem(
                        sid,
                        f"treatments.{name}",
                        t,
                        f"START at time {t:g} while the exposure started at {open_['start']:g} is still open",
                    )
                )
            else:
                open_ = {"start": t, "dose": dose}
        if open_ is not None:
            exposures.append({"treatment": name, "start": open_["start"], "stop": None, "dose": open_["dose"]})
    return problems


# --------------------------------------------------------------------------- records → rows


def _check_writable(records: Sequence[PatientRecord], config: DatasetConfig) -> None:
    """Every record must fit the config, or its variables have no code to be written under."""
    problems = [p for r in records for p in record_problems(r, config) if p.severity == "error"]
    problems += duplicate_id_problems(records)
    if problems:
        raise RecordValidationError(problems, header=f"records do not fit config {config.name!r}; nothing written")


def _uses_timestamps(records: Sequence[PatientRecord]) -> bool:
    """True when every record has an index_time, False when none has; a mix is an error."""
    stamped = [r.subject_id for r in records if r.index_time is not None]
    if not stamped or len(stamped) == len(records):
        return bool(stamped)
    relative = [r.subject_id for r in records if r.index_time is None]
    raise DataFormatError(
        f"records mix calendar and relative times: subjects {stamped[:3]} have an index_time, "
        f"subjects {relative[:3]} do not; MEDS needs one kind of time column"
    )


class _RowBuilder:
    """Column lists of a MEDS table, filled record by record."""

    def __init__(self) -> None:
        self.subject: list[str] = []
        self.t: list[float] = []
        self.code: list[str] = []
        self.value: list[float] = []
        self.text: list[str | None] = []
        self.origin: list[datetime | None] = []

    def add(
        self, sid: str, origin: datetime | None, t: float | None, code: str, value: float = math.nan, text: str | None = None
    ) -> None:
        self.subject.append(sid)
        self.origin.append(origin)
        self.t.append(math.nan if t is None else t)
        self.code.append(code)
        self.value.append(value)
        self.text.append(text)

    def frame(self, timestamps: bool, unit_days: float) -> pd.DataFrame:
        t = np.asarray(self.t, dtype="float64")
        ids = pd.Series(self.subject, dtype=object)
        frame = pd.DataFrame(
            {
                SUBJECT_ID: _ids_for_writing(ids),
                TIME: _timestamps(self.origin, t, unit_days) if timestamps else t,
                CODE: pd.Series(self.code, dtype=object),
                NUMERIC_VALUE: np.asarray(self.value, dtype="float64"),
                TEXT_VALUE: pd.Series(self.text, dtype=object),
            }
        )
        # MEDS order: by subject, static rows first, then by time; ties keep canonical order.
        order = pd.DataFrame({"s": _subject_sort_key(ids), "t": t, "r": np.arange(len(t))})
        order = order.sort_values(["s", "t", "r"], na_position="first")
        return frame.iloc[order.index.to_numpy()].reset_index(drop=True)


def _ids_for_writing(ids: pd.Series) -> pd.Series:
    """int64 when every id is an integer written canonically (MEDS's type), else str."""
    if len(ids) and all(_CANONICAL_INT.match(x) for x in ids.unique()):
        return ids.astype("int64")
    return ids


def _naive_utc(moment: datetime) -> np.datetime64:
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return np.datetime64(moment, "us")


def _timestamps(origins: list[datetime | None], t: np.ndarray, unit_days: float) -> np.ndarray:
    """index_time + t, rounded to the microsecond; NaT for static rows."""
    base = np.array([_naive_utc(o) if o is not None else np.datetime64("NaT") for o in origins], dtype="datetime64[us]")
    valid = ~np.isnan(t)
    offsets = np.zeros(len(t), dtype="int64")
    offsets[valid] = np.rint(t[valid] * (_MICROS_PER_DAY * unit_days)).astype("int64")
    out = base + offsets.astype("timedelta64[us]")
    out[~valid] = np.datetime64("NaT")
    return out


def _value_columns(spec: VariableSpec, value: float) -> tuple[float, str | None]:
    """(numeric_value, text_value): a category's name when the variable has one for the value."""
    for name, number in (spec.categories or {}).items():
        if number == value:
            return math.nan, name
    return value, None


def _emit_record(record: PatientRecord, book: _CodeBook, rows: _RowBuilder, timestamps: bool) -> None:
    sid = record.subject_id
    origin = record.index_time if timestamps else None

    def add(t: float | None, code: str, value: float = math.nan, text: str | None = None) -> None:
        rows.add(sid, origin, t, code, value, text)

    for name, value in record.static.items():
        spec = book.spec(name)
        if book.reads_birth(spec):
            add(-value, MEDS_BIRTH)
        else:
            add(None, spec.codes[0], *_value_columns(spec, value))
    if timestamps:
        add(0.0, book.index_code)
    for obs in record.observations:
        spec = book.spec(obs.variable)
        add(obs.time, spec.codes[0], *_value_columns(spec, obs.value))
    for study in record.imaging:
        code = book.spec(study.modality).codes[0]
        for j, component in enumerate(study.embedding):
            add(study.time, f"{code}{CODE_SEPARATOR}{j}", component)
    for entry in record.history:
        add(entry.time, book.spec(entry.code).codes[0])
    for exposure in record.treatments:
        code = book.spec(exposure.treatment).codes[0]
        add(exposure.start, code + START_SUFFIX, exposure.dose)
        if exposure.stop is not None:
            add(exposure.stop, code + STOP_SUFFIX)
    for event in record.events:
        add(event.time, book.spec(event.kind).codes[0])
    add(record.end_of_followup, book.eof_code)


# --------------------------------------------------------------------------- output directory


def _check_output_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError(f"{out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise OutputExistsError(f"{out_dir} is not empty; pass overwrite=True to replace it")


def _check_split_names(splits: Mapping[str, str]) -> None:
    bad = sorted({s for s in splits.values() if not _SAFE_SPLIT.match(s) or s == UNSPLIT_DIR})
    if bad:
        raise DataFormatError(
            f"split names {bad} cannot name a folder under {DATA_DIR}/ (letters, digits, '_', '.', '-'; not {UNSPLIT_DIR!r})"
        )


def _shard_folders(frame: pd.DataFrame, splits: Mapping[str, str]) -> dict[str, list[str]]:
    """Folder under data/ → its subjects (in table order): one per split, '' when none has one."""
    folders: dict[str, list[str]] = {}
    for sid in frame[SUBJECT_ID].astype(str).unique():
        folder = splits.get(sid, UNSPLIT_DIR) if splits else ""
        folders.setdefault(folder, []).append(sid)
    known = {name: i for i, name in enumerate(_SPLIT_ORDER)}
    return dict(sorted(folders.items(), key=lambda kv: (known.get(kv[0], len(known)), kv[0])))


def _meds_schema(frame: pd.DataFrame) -> pa.Schema:
    return pa.schema(
        [
            (SUBJECT_ID, pa.int64() if pd.api.types.is_integer_dtype(frame[SUBJECT_ID]) else pa.string()),
            (TIME, pa.timestamp("us") if pd.api.types.is_datetime64_dtype(frame[TIME]) else pa.float64()),
            (CODE, pa.string()),
            (NUMERIC_VALUE, pa.float64()),
            (TEXT_VALUE, pa.string()),
        ]
    )


def _write_shards(frame: pd.DataFrame, splits: Mapping[str, str], data_dir: Path, subjects_per_shard: int | None) -> None:
    schema = _meds_schema(frame)
    ids = frame[SUBJECT_ID].astype(str)
    for folder, subjects in _shard_folders(frame, splits).items():
        target = data_dir / folder if folder else data_dir
        target.mkdir(parents=True, exist_ok=True)
        size = subjects_per_shard or max(len(subjects), 1)
        for n, start in enumerate(range(0, len(subjects), size)):
            part = frame[ids.isin(subjects[start : start + size])]
            pq.write_table(pa.Table.from_pandas(part, schema=schema, preserve_index=False), target / f"{n}.parquet")
    if not data_dir.exists():  # no records: an empty shard keeps the directory readable
        data_dir.mkdir(parents=True)
        pq.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False), data_dir / "0.parquet")


def _write_splits(frame: pd.DataFrame, splits: Mapping[str, str], file: Path) -> None:
    ids = frame[SUBJECT_ID].drop_duplicates()
    keep = ids.astype(str).isin(list(splits))
    table = pd.DataFrame({SUBJECT_ID: ids[keep].to_numpy(), "split": [splits[s] for s in ids[keep].astype(str)]})
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), file)


def _codes_table(config: DatasetConfig) -> pd.DataFrame:
    """The codes.parquet table of a config: every code it reads or writes, with a description."""
    rows: list[tuple[str, str, list[str] | None]] = []
    for spec in config.variables:
        about = spec.description or spec.name
        about += f" ({spec.unit})" if spec.unit else ""
        for code in spec.codes:
            if spec.kind == VariableKind.IMAGING_EMBEDDING:
                rows += [
                    (f"{code}{CODE_SEPARATOR}{j}", f"{about}: embedding component {j}", [code])
                    for j in range(spec.dimension or 0)
                ]
            elif spec.kind == VariableKind.TREATMENT:
                rows += [
                    (code + START_SUFFIX, f"{about}: start (numeric_value = dose)", [code]),
                    (code + STOP_SUFFIX, f"{about}: stop", [code]),
                ]
            elif code == MEDS_BIRTH:
                rows.append((code, f"birth; {spec.name} is the age at index", None))
            else:
                rows.append((code, about, None))
    rows.append((config.end_of_followup_code, "end of follow-up (vpatient)", None))
    rows.append((config.index_code or DEFAULT_INDEX_CODE, "index time, time zero (vpatient)", None))
    return pd.DataFrame(rows, columns=["code", "description", "parent_codes"]).drop_duplicates("code")


def _write_codes(codes: pd.DataFrame, file: Path) -> None:
    schema = pa.schema([("code", pa.string()), ("description", pa.string()), ("parent_codes", pa.list_(pa.string()))])
    pq.write_table(pa.Table.from_pandas(codes, schema=schema, preserve_index=False), file)


def _etl_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vpatient")
    except PackageNotFoundError:  # running from a source tree
        from vpatient.version import __version__

        return __version__


def _write_dataset_json(file: Path, dataset_name: str) -> None:
    metadata = {
        "dataset_name": dataset_name,
        "dataset_version": "",
        "etl_name": ETL_NAME,
        "etl_version": _etl_version(),
        "meds_version": MEDS_VERSION,
        "created_at": datetime.now(UTC).isoformat(),
        "extension_columns": [],
    }
    file.write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")


def move_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename the finished folder into place; an old one is moved aside first, then removed."""
    if not out_dir.exists():
        os.rename(tmp, out_dir)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
    os.rmdir(aside)
    os.rename(out_dir, aside)
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        os.rename(aside, out_dir)
        raise
    shutil.rmtree(aside, ignore_errors=True)
