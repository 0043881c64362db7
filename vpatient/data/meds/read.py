"""MEDS in: a MEDS file or directory (or a data frame) -> validated :class:`~vpatient.schemas.PatientRecord` objects.

The mapping rules and the time axis are described in :mod:`vpatient.data.meds`.
"""

from __future__ import annotations

import logging
import math
import warnings
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vpatient.data.meds.codes import (
    CODE,
    CODES_PATH,
    CONFIG_FILE,
    DATA_DIR,
    DATASET_PATH,
    EXTENSION_COLUMNS,
    MEDS_BIRTH,
    MEDS_COLUMNS,
    METADATA_DIR,
    NUMERIC_VALUE,
    NUMERIC_VALUE_F64,
    REQUIRED_COLUMNS,
    SOURCE_SUBJECT_ID,
    SPLITS_PATH,
    START_SUFFIX,
    STATIC_ROLES,
    STOP_SUFFIX,
    SUBJECT_ID,
    TEXT_VALUE,
    TIME,
    TIME_F64,
    VALUE_ROLES,
    CodeBook,
    MedsLayout,
    Role,
    is_integer_ids,
    subject_sort_key,
)
from vpatient.errors import (
    ConfigError,
    DataFormatError,
    DatasetNotFoundError,
    Problem,
    RecordValidationError,
    UnknownCodeWarning,
    VPatientError,
)
from vpatient.inputs import read_json_file
from vpatient.schemas import (
    DEFAULT_DOSE,
    RELATIVE_EPOCH,
    CodeEncoding,
    DatasetConfig,
    PatientRecord,
    TimeUnit,
    UnknownCodePolicy,
    duplicate_id_problems,
    parse_record,
)

__all__ = ["frame_to_records", "iter_meds", "load_config_for", "read_layout", "read_meds", "report_warnings", "shard_files"]

log = logging.getLogger(__name__)

#: MEDS's optional column of a value's unit (as MEDS ETLs write it); values in another unit than their variable's are
#: converted, as the FHIR reader converts Quantities.
UNIT = "unit"
_CSV_DTYPES = {SUBJECT_ID: str, CODE: str, TEXT_VALUE: str, UNIT: str}


# --------------------------------------------------------------------------- public: reading


def load_config_for(path: str | Path) -> DatasetConfig | None:
    """The dataset config stored in a MEDS directory's metadata (by :func:`write_meds`), or None.

    Used when a command gets a MEDS directory but no ``--config``.
    """
    candidate = Path(path) / METADATA_DIR / CONFIG_FILE
    return DatasetConfig.load(candidate) if candidate.is_file() else None


def read_layout(path: str | Path) -> MedsLayout | None:
    """How vpatient wrote the MEDS directory (its dataset.json) or parquet shard (its metadata) at ``path``.

    None for other tools' data and for CSV files. Used to read vpatient's standard layout
    back losslessly (relative times, exact values, original ids); data without it are
    read as plain MEDS.
    """
    path = Path(path)
    if path.is_file():
        if _file_kind(path) != "parquet":
            return None
        with _reading(path, "parquet file"):
            metadata = pq.read_schema(path).metadata
        return MedsLayout.from_shard_metadata(metadata, str(path))
    file = path / DATASET_PATH
    if not file.is_file():
        return None
    metadata = read_json_file(file, "MEDS dataset metadata")
    if not isinstance(metadata, dict):
        raise DataFormatError(f"{file}: MEDS dataset metadata must be a JSON object, found {type(metadata).__name__}")
    return MedsLayout.from_dataset_metadata(metadata, str(file))


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
    layout = read_layout(path)
    frame = _read_frame(path, layout, config.time_unit)
    if frame.empty:
        raise DataFormatError(f"{path}: no data rows (a header or an empty table only); MEDS data needs at least one row")
    splits = _read_splits(path, layout)
    _check_codes_metadata(path)
    missing_birth = _missing_birth_problems(frame, CodeBook(config), str(path))
    birth_errors = [p for p in missing_birth if p.severity == "error"]
    try:
        records = frame_to_records(frame, config, splits=splits, warnings_out=warnings_out, source=str(path))
    except RecordValidationError as exc:
        if not birth_errors:
            raise
        raise RecordValidationError(birth_errors + exc.problems, header=f"invalid MEDS data in {path}") from None
    if birth_errors:
        raise RecordValidationError(birth_errors, header=f"invalid MEDS data in {path}")
    report_warnings(missing_birth, warnings_out, UserWarning)
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
    book = CodeBook(config)
    layout = read_layout(path)
    splits = _read_splits(path, layout)
    _check_codes_metadata(path)
    rows_read = 0
    unknown = _UnknownCodes(config)
    finished: set[str] = set()
    carry: pd.DataFrame | None = None

    def complete(frame: pd.DataFrame) -> list[PatientRecord]:
        """The complete subjects of one stream batch, raising on its problems."""
        records, problems = _convert(frame, book, splits, warnings_out, unknown)
        if book.config.unknown_codes == UnknownCodePolicy.ERROR:
            problems = unknown.problems() + problems
        if problems:
            raise RecordValidationError(
                problems, header=f"invalid MEDS data in {path} (streaming stops at the first bad batch; read_meds lists all)"
            )
        return records

    for raw, source in _iter_raw_batches(path, batch_size):
        rows_read += len(raw)
        batch = _normalise(raw, source, layout, config.time_unit)
        if carry is not None:
            batch = _concat([carry, batch], source)
        _check_contiguous(batch, finished, source)
        if batch.empty:
            continue
        tail = batch[SUBJECT_ID].to_numpy() == batch[SUBJECT_ID].iat[-1]
        ready, carry = batch[~tail], batch[tail]
        if not ready.empty:
            yield from complete(ready)
            finished.update(ready[SUBJECT_ID].unique())
    if carry is not None and not carry.empty:
        yield from complete(carry)
    if not rows_read:
        raise DataFormatError(f"{path}: no data rows (a header or an empty table only); MEDS data needs at least one row")
    report_warnings(unknown.problems(), warnings_out)


def frame_to_records(
    df: pd.DataFrame,
    config: DatasetConfig,
    *,
    splits: Mapping[str, str] | None = None,
    warnings_out: list[Problem] | None = None,
    source: str = "data frame",
) -> list[PatientRecord]:
    """Convert a MEDS long table (any row order) into validated records, one per subject.

    ``splits`` maps subject id (as str) to its MEDS split; ``source`` names the input in
    problems. Raises one RecordValidationError listing every problem of every subject.
    """
    frame = _normalise(df, source)
    book = CodeBook(config)
    unknown = _UnknownCodes(config)
    records, problems = _convert(frame, book, splits or {}, warnings_out, unknown)
    problems = [p for p in unknown.problems() if p.severity == "error"] + problems
    problems += duplicate_id_problems(records)
    report_warnings(unknown.problems(), warnings_out)
    if problems:
        raise RecordValidationError(problems, header=f"invalid MEDS data for config {config.name!r}")
    return records


def _missing_birth_problems(frame: pd.DataFrame, book: CodeBook, source: str) -> list[Problem]:
    """The static variable read from MEDS_BIRTH rows, where subjects have no such row.

    Some subjects without one is a warning (their age is unknown); every subject without
    one is an error, since it means the rows were dropped or coded otherwise.
    """
    birth = book.lookup(MEDS_BIRTH)
    if birth is None or birth.role != Role.BIRTH or frame.empty:
        return []
    subjects = _subjects_in_order(frame[SUBJECT_ID].unique().tolist())
    born = set(frame.loc[frame[CODE].eq(MEDS_BIRTH), SUBJECT_ID])
    lacking = [sid for sid in subjects if sid not in born]
    if not lacking:
        return []
    name = birth.spec.name
    return [
        Problem(
            None,
            f"static.{name}",
            MEDS_BIRTH,
            f"{len(lacking)} of {_plural(len(subjects), 'subject')} have no {MEDS_BIRTH!r} row, so no {name} "
            f"({_subjects_shown(lacking[:_SHOWN_SUBJECTS], len(lacking))})",
            "error" if len(lacking) == len(subjects) else "warning",
            owner=source,
        )
    ]


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


def shard_files(path: Path) -> list[Path]:
    """The parquet files of a MEDS directory, in a stable order (sorted paths); a DataFormatError when there are none."""
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


@contextmanager
def _reading(path: Path, kind: str) -> Iterator[None]:
    """Turn what pyarrow and pandas raise on a damaged or foreign file into a DataFormatError naming it.

    ``kind`` is "parquet file" or "CSV file". Our own errors pass through.
    """
    try:
        yield
    except VPatientError:
        raise
    except UnicodeDecodeError as exc:
        raise DataFormatError(
            f"{path}: {kind} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); save it as UTF-8"
        ) from None
    except pd.errors.EmptyDataError:
        raise DataFormatError(f"{path}: {kind} is empty; MEDS needs a header row ({', '.join(REQUIRED_COLUMNS)})") from None
    except (pa.ArrowException, ValueError, OSError, EOFError, zlib.error) as exc:
        # pandas' ParserError is a ValueError; gzip's BadGzipFile an OSError.
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataFormatError(f"{path}: not a readable {kind} ({reason}){_delimiter_hint(path, kind)}") from None


def _delimiter_hint(path: Path, kind: str) -> str:
    """A hint when a CSV file looks separated by something other than commas (say, ';' with decimal commas)."""
    if kind != "CSV file":
        return ""
    try:
        with path.open("rb") as handle:
            header = handle.readline(4096).decode("utf-8", "replace")
    except OSError:
        return ""
    for separator in (";", "\t", "|"):
        if separator in header and "," not in header:
            return f"; MEDS CSV files are comma-separated, and this one looks {separator!r}-separated"
    return ""


#: The columns vpatient reads: MEDS's, and its own extension columns when present.
_READ_COLUMNS = (*MEDS_COLUMNS, *EXTENSION_COLUMNS, UNIT)


def _read_parquet(path: Path) -> pd.DataFrame:
    with _reading(path, "parquet file"):
        present = pq.read_schema(path).names
        _check_columns(present, str(path))
        return pq.read_table(path, columns=[c for c in _READ_COLUMNS if c in present]).to_pandas()


def _read_csv(path: Path) -> pd.DataFrame:
    with _reading(path, "CSV file"):
        return pd.read_csv(path, dtype=_CSV_DTYPES)


def _read_frame(path: Path, layout: MedsLayout | None, unit: TimeUnit) -> pd.DataFrame:
    """The whole input as one normalised frame (``layout``: how vpatient wrote it, when it did)."""
    if path.is_dir():
        shards = shard_files(path)
        frames = [_normalise(_read_parquet(shard), str(shard), layout, unit) for shard in shards]
        return _concat(frames, str(path), [str(shard) for shard in shards])
    if _file_kind(path) == "csv":
        return _normalise(_read_csv(path), str(path))
    return _normalise(_read_parquet(path), str(path), layout, unit)


def _iter_raw_batches(path: Path, batch_size: int) -> Iterator[tuple[pd.DataFrame, str]]:
    """Raw row batches of the input and the file each came from, without reading it all."""
    files = shard_files(path) if path.is_dir() else [path]
    for file in files:
        csv = _file_kind(file) == "csv"
        batches = _csv_batches(file, batch_size) if csv else _parquet_batches(file, batch_size)
        first_row = 0
        with _reading(file, "CSV file" if csv else "parquet file"):
            for batch in batches:
                # Numbered through the file, so that a problem's row number is the file's.
                batch.index = pd.RangeIndex(first_row, first_row + len(batch))
                first_row += len(batch)
                yield batch, str(file)


def _csv_batches(file: Path, batch_size: int) -> Iterator[pd.DataFrame]:
    _check_columns(list(pd.read_csv(file, nrows=0).columns), str(file))
    yield from pd.read_csv(file, dtype=_CSV_DTYPES, chunksize=batch_size)


def _parquet_batches(file: Path, batch_size: int) -> Iterator[pd.DataFrame]:
    parquet = pq.ParquetFile(file)
    present = parquet.schema_arrow.names
    _check_columns(present, str(file))
    columns = [c for c in _READ_COLUMNS if c in present]
    for batch in parquet.iter_batches(batch_size=batch_size, columns=columns):
        yield batch.to_pandas()


def _read_splits(path: Path, layout: MedsLayout | None) -> dict[str, str]:
    """Subject id (as the records have it) → split, from a MEDS directory's metadata (empty when there is none)."""
    file = path / SPLITS_PATH
    if not path.is_dir() or not file.is_file():
        return {}
    with _reading(file, "parquet file"):
        table = pq.read_table(file).to_pandas()
    missing = [c for c in (SUBJECT_ID, "split") if c not in table.columns]
    if missing:
        raise DataFormatError(f"{file}: missing column(s) {', '.join(map(repr, missing))}; expected subject_id, split")
    ids = _ids_as_str(table, str(file))
    if layout is not None and layout.standard and layout.source_ids:
        originals = _source_ids(path)
        ids = ids.map(lambda sid: originals.get(sid, sid))
    return dict(zip(ids.tolist(), table["split"].astype(str).tolist(), strict=True))


def _source_ids(path: Path) -> dict[str, str]:
    """Written subject id (as str) → the original one, from the shards' ``source_subject_id`` column (ids only)."""
    found: dict[str, str] = {}
    for shard in shard_files(path):
        with _reading(shard, "parquet file"):
            if SOURCE_SUBJECT_ID not in pq.read_schema(shard).names:
                continue
            pairs = pq.read_table(shard, columns=[SUBJECT_ID, SOURCE_SUBJECT_ID]).to_pandas().drop_duplicates(SUBJECT_ID)
        found.update(zip(pairs[SUBJECT_ID].astype(str), pairs[SOURCE_SUBJECT_ID].astype(str), strict=True))
    return found


def _check_codes_metadata(path: Path) -> None:
    """A MEDS directory's metadata/codes.parquet, when there is one, must be a readable table of codes.

    vpatient maps codes with the config and does not need it, but a damaged one means a
    damaged copy, and other MEDS tools will fail on it.
    """
    file = path / CODES_PATH
    if not path.is_dir() or not file.exists():
        return
    with _reading(file, "parquet file"):
        present = pq.read_table(file).column_names
    if CODE not in present:
        raise DataFormatError(f"{file}: MEDS codes metadata has no {CODE!r} column (found: {', '.join(present) or 'none'})")


# --------------------------------------------------------------------------- normalising


def _check_columns(present: Sequence[str], source: str) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in present]
    if missing:
        hint = ""
        if len(present) == 1 and any(sep in str(present[0]) for sep in ";\t|"):
            hint = "; the file looks separated by something other than commas, and MEDS CSV files are comma-separated"
        raise DataFormatError(
            f"{source}: missing required MEDS column(s) {', '.join(map(repr, missing))} "
            f"(found: {', '.join(map(str, present)) or 'none'}; MEDS needs {', '.join(REQUIRED_COLUMNS)}){hint}"
        )


def _first_rows(df: pd.DataFrame, bad: pd.Series | np.ndarray, limit: int = 3) -> str:
    """Where the first offending rows are: "row 12 (subject 5), row 40 (subject 7), ...".

    Rows count from 1 in the table read (the first data row after a CSV header is row 1).
    """
    positions = np.flatnonzero(np.asarray(bad, dtype=bool))
    numbers = df.index.to_numpy()[positions] if pd.api.types.is_integer_dtype(df.index) else positions
    ids = df[SUBJECT_ID].to_numpy()[positions] if SUBJECT_ID in df.columns else [None] * len(positions)
    shown = [
        f"row {int(n) + 1}" + ("" if sid is None or (isinstance(sid, float) and math.isnan(sid)) else f" (subject {sid})")
        for n, sid in zip(numbers[:limit], ids[:limit], strict=True)
    ]
    return ", ".join(shown) + (", ..." if len(positions) > limit else "")


def _normalise(df: pd.DataFrame, source: str, layout: MedsLayout | None = None, unit: TimeUnit = TimeUnit.YEARS) -> pd.DataFrame:
    """The MEDS columns with one dtype each: ids and codes str, time float or datetime64[us], values float64.

    ``layout`` (vpatient's standard layout, from dataset.json) turns its extension columns
    and relative timestamps back into what was written; ``unit`` is the reading config's.
    """
    _check_columns(list(df.columns), source)
    for column in (SUBJECT_ID, CODE):
        nulls = df[column].isna()
        if nulls.any():
            raise DataFormatError(f"{source}: {int(nulls.sum())} row(s) have no {column}: {_first_rows(df, nulls)}")
    text = df[TEXT_VALUE] if TEXT_VALUE in df.columns else pd.Series(None, index=df.index, dtype=object)
    out = pd.DataFrame(
        {
            SUBJECT_ID: _ids_as_str(df, source),
            TIME: _normalise_time(df, source),
            CODE: df[CODE].astype(str),
            NUMERIC_VALUE: _as_float(df, NUMERIC_VALUE, source),
            TEXT_VALUE: text.astype(object).where(text.notna(), None),
        }
    )
    if UNIT in df.columns:
        out[UNIT] = df[UNIT].astype(object).where(df[UNIT].notna(), None)
    if layout is not None and layout.standard:
        out = _from_standard(df, out, layout, unit, source)
    return out.reset_index(drop=True)


def _from_standard(df: pd.DataFrame, out: pd.DataFrame, layout: MedsLayout, unit: TimeUnit, source: str) -> pd.DataFrame:
    """vpatient's standard layout read back: original ids, float64 values, relative times (index_time None).

    An extension value is used only where the standard column still holds it rounded (its
    float32, its microsecond), so that a value another tool changed since is read as changed.
    """
    if layout.source_ids and SOURCE_SUBJECT_ID in df.columns:
        originals = df[SOURCE_SUBJECT_ID]
        nulls = originals.isna()
        if nulls.any():
            raise DataFormatError(
                f"{source}: {int(nulls.sum())} row(s) have no {SOURCE_SUBJECT_ID}: {_first_rows(df, nulls.to_numpy())}"
            )
        out[SUBJECT_ID] = originals.astype(str).to_numpy()
    if NUMERIC_VALUE_F64 in df.columns:
        value = out[NUMERIC_VALUE].to_numpy()
        exact = _as_float(df, NUMERIC_VALUE_F64, source).to_numpy()
        with np.errstate(over="ignore"):  # beyond float32's range: inf in both, as written
            use = ~np.isnan(exact) & (exact.astype(np.float32) == value.astype(np.float32))
        out[NUMERIC_VALUE] = np.where(use, exact, value)
    if layout.relative and not pd.api.types.is_datetime64_dtype(out[TIME]) and out[TIME].notna().any():
        raise DataFormatError(
            f"{source}: time holds numbers, but {DATASET_PATH} says this directory is standard MEDS, whose times are "
            f"timestamps; was the shard written by another tool?"
        )
    if layout.relative and pd.api.types.is_datetime64_dtype(out[TIME]):
        stamps = out[TIME].to_numpy(dtype="datetime64[us]")
        static = np.isnat(stamps)
        micros = (stamps - np.datetime64(RELATIVE_EPOCH, "us")).astype(np.int64)
        unit_micros = unit.microseconds
        t = np.where(static, np.nan, micros / unit_micros)
        if TIME_F64 in df.columns and unit == layout.time_unit:
            exact = _as_float(df, TIME_F64, source).to_numpy()
            use = ~static & ~np.isnan(exact) & (np.rint(np.nan_to_num(exact) * unit_micros) == micros)
            t = np.where(use, exact, t)
        out[TIME] = t
    return out


def _ids_as_str(df: pd.DataFrame, source: str) -> pd.Series:
    """Subject ids as str; integral floats (a CSV column with gaps) lose their '.0'."""
    ids = df[SUBJECT_ID]
    if pd.api.types.is_float_dtype(ids):
        bad = ~(np.isfinite(ids) & (np.mod(ids, 1) == 0))
        if bad.any():
            raise DataFormatError(
                f"{source}: subject_id holds non-integer numbers such as {ids[bad].iat[0]!r}: {_first_rows(df, bad)}"
            )
        return ids.astype("int64").astype(str)
    if pd.api.types.is_object_dtype(ids) and not all(isinstance(x, str) for x in ids):
        return ids.map(str)
    return ids.astype(str)


def _as_float(df: pd.DataFrame, column: str, source: str) -> pd.Series:
    values = df[column]
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return values.astype("float64")
    converted = pd.to_numeric(values, errors="coerce")
    bad = converted.isna() & values.notna()
    if bad.any():
        raise DataFormatError(
            f"{source}: {column} holds non-numbers, such as {values[bad].iat[0]!r} ({_plural(int(bad.sum()), 'row')}: {_first_rows(df, bad)})"
        )
    return converted.astype("float64")


#: The calendar a timestamp must lie in (a record's index_time is a Python datetime): year 1 to 9999.
_FIRST_DAY, _LAST_DAY = np.datetime64("0001-01-01", "us"), np.datetime64("9999-12-31T23:59:59.999999", "us")


def _normalise_time(df: pd.DataFrame, source: str) -> pd.Series:
    """Float times since index, or naive datetime64[us] (UTC when the input had a zone)."""
    times = df[TIME]
    if isinstance(times.dtype, pd.DatetimeTZDtype):
        times = times.dt.tz_convert("UTC").dt.tz_localize(None)
    if pd.api.types.is_datetime64_dtype(times):
        return _in_calendar(times.astype("datetime64[us]"), df, source)
    if pd.api.types.is_numeric_dtype(times) and not pd.api.types.is_bool_dtype(times):
        return times.astype("float64")
    present = times.dropna()
    if present.empty:
        return pd.Series(np.nan, index=times.index, dtype="float64")
    numbers = pd.to_numeric(present, errors="coerce")
    if numbers.notna().all():
        return pd.to_numeric(times, errors="coerce").astype("float64")
    if numbers.notna().any():
        stamps = times.notna() & pd.to_numeric(times, errors="coerce").isna()
        raise DataFormatError(
            f"{source}: time mixes numbers ({present[numbers.notna()].iat[0]!r}) and timestamps "
            f"({present[numbers.isna()].iat[0]!r}, {_first_rows(df, stamps)}); use one or the other"
        )
    try:
        parsed = pd.to_datetime(times, format="ISO8601", utc=True)
    except (ValueError, TypeError, OverflowError) as exc:
        unparsed = times.notna() & pd.to_datetime(times, format="ISO8601", utc=True, errors="coerce").isna()
        where = f" ({_first_rows(df, unparsed)})" if unparsed.any() else ""
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataFormatError(f"{source}: time column is neither numbers nor ISO 8601 timestamps{where}: {reason}") from None
    return _in_calendar(parsed.dt.tz_localize(None).astype("datetime64[us]"), df, source)


def _in_calendar(times: pd.Series, df: pd.DataFrame, source: str) -> pd.Series:
    """``times``, refused when some lie outside years 1 to 9999 (a damaged file: parquet holds any 64-bit count)."""
    values = times.to_numpy(dtype="datetime64[us]")
    outside = ~np.isnat(values) & ((values < _FIRST_DAY) | (values > _LAST_DAY))
    if outside.any():
        raise DataFormatError(f"{source}: time {values[outside][0]} is outside the years 1 to 9999 ({_first_rows(df, outside)})")
    return times


def _concat(frames: Sequence[pd.DataFrame], source: str, parts: Sequence[str] | None = None) -> pd.DataFrame:
    """Concatenate normalised frames whose time columns must agree (an all-null one adapts).

    ``parts`` names each frame's file, for the message when they disagree.
    """
    stamped = [pd.api.types.is_datetime64_dtype(f[TIME]) for f in frames]
    if any(stamped) and not all(stamped):
        numeric = [i for i, s in enumerate(stamped) if not s and frames[i][TIME].notna().any()]
        if numeric:
            which = ""
            if parts is not None:
                which = f" ({parts[numeric[0]]} has numbers, {parts[stamped.index(True)]} timestamps)"
            raise DataFormatError(f"{source}: some parts have numeric times and others timestamps{which}; use one or the other")
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
        self.examples: dict[str, list[str]] = {}  # the first few subjects per code, for the message

    def add(self, rows: pd.DataFrame) -> None:
        if self.config.unknown_codes == UnknownCodePolicy.IGNORE or rows.empty:
            return
        grouped = rows.groupby(CODE, sort=False)[SUBJECT_ID]
        self.rows.update(grouped.size().to_dict())
        # Subjects never span two calls (read_meds converts once; iter_meds checks
        # contiguity), so per-call distinct counts add up.
        self.subjects.update(grouped.nunique().to_dict())
        for code, ids in grouped.unique().items():
            shown = self.examples.setdefault(code, [])
            shown += [str(sid) for sid in ids[: _SHOWN_SUBJECTS - len(shown)]]

    def problems(self) -> list[Problem]:
        policy = self.config.unknown_codes
        severity = "error" if policy == UnknownCodePolicy.ERROR else "warning"
        return [
            Problem(
                None,
                CODE,
                code,
                f"unknown code: {_plural(self.rows[code], 'row')} in {_plural(self.subjects[code], 'subject')} "
                f"({_subjects_shown(self.examples[code], self.subjects[code])}); "
                f"no variable of config {self.config.name!r} reads it (unknown_codes={policy!s})",
                severity,
            )
            for code in sorted(self.rows)
        ]


#: How many subjects a problem about many names, so that a user can find the rows.
_SHOWN_SUBJECTS = 3


def _subjects_shown(first: Sequence[str], total: int) -> str:
    """Say "subject 7" or "subjects 1, 4, 9, ..." for a problem about ``total`` subjects whose first ones are ``first``."""
    listed = ", ".join(first) + (", ..." if total > len(first) else "")
    return f"subject {listed}" if total == 1 else f"subjects {listed}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def report_warnings(
    problems: list[Problem], warnings_out: list[Problem] | None, category: type[Warning] = UnknownCodeWarning
) -> None:
    """Pass on the warnings among ``problems``: into ``warnings_out`` when given, else through :mod:`warnings`
    (the MEDS and FHIR readers' one way)."""
    for problem in problems:
        if problem.severity != "warning":
            continue
        if warnings_out is not None:
            warnings_out.append(problem)
        else:
            warnings.warn(str(problem), category, stacklevel=3)


def _convert(
    frame: pd.DataFrame,
    book: CodeBook,
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


def _annotate(frame: pd.DataFrame, book: CodeBook) -> pd.DataFrame:
    """Add each row's variable, role and imaging component, a subject sort key and row number."""
    lookups = {code: book.lookup(code) for code in frame[CODE].unique()}
    found = {code: role for code, role in lookups.items() if role is not None}
    return frame.assign(
        _var=frame[CODE].map({c: r.spec.name for c, r in found.items()}),
        _role=frame[CODE].map({c: r.role.value for c, r in found.items()}),
        _comp=frame[CODE].map({c: r.component for c, r in found.items()}),
        _suffix=frame[CODE].map({c: r.suffix for c, r in found.items() if r.suffix is not None}),
        _skey=subject_sort_key(frame[SUBJECT_ID]),
        _row=np.arange(len(frame)),
    )


def _subjects_in_order(subjects: list[str]) -> list[str]:
    if is_integer_ids(subjects):
        return sorted(subjects, key=int)
    return sorted(subjects)


def _anchors(frame: pd.DataFrame) -> pd.Series:
    """Rows that place a subject in follow-up: timed, neither birth nor static."""
    return frame[TIME].notna() & ~frame["_role"].isin(STATIC_ROLES) & frame[CODE].ne(MEDS_BIRTH)


def _timeline(frame: pd.DataFrame, book: CodeBook) -> tuple[np.ndarray, dict[str, datetime], list[Problem]]:
    """Each row's time since its subject's index (in the config's unit), and the index times."""
    if not pd.api.types.is_datetime64_dtype(frame[TIME]):
        return frame[TIME].to_numpy(dtype="float64"), {}, []
    index, problems = _index_times(frame, book)
    origin = index.reindex(frame[SUBJECT_ID].to_numpy()).to_numpy(dtype="datetime64[us]")
    delta = frame[TIME].to_numpy(dtype="datetime64[us]") - origin
    valid = ~np.isnat(delta)
    t = np.full(len(frame), np.nan)
    # One division of whole microseconds, so that writing (rint(t * unit)) recovers them exactly.
    t[valid] = delta[valid].astype("int64") / book.config.time_unit.microseconds
    return t, {sid: ts.to_pydatetime() for sid, ts in index.items()}, problems


def _index_times(frame: pd.DataFrame, book: CodeBook) -> tuple[pd.Series, list[Problem]]:
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


def _ends_of_followup(frame: pd.DataFrame, book: CodeBook, subjects: list[str]) -> tuple[dict[str, float], list[Problem]]:
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


def _values(frame: pd.DataFrame, book: CodeBook) -> tuple[np.ndarray, np.ndarray, list[Problem]]:
    """Each row's value (numeric_value, or the category of text_value), which rows are usable, and problems."""
    role = frame["_role"].to_numpy(dtype=object)
    value = frame[NUMERIC_VALUE].to_numpy(dtype="float64", copy=True)
    needs = np.isin(role, [r.value for r in VALUE_ROLES])
    texty = needs & np.isnan(value) & frame[TEXT_VALUE].notna().to_numpy()
    if texty.any():
        categories = {(v.name, text): float(x) for v in book.config.variables for text, x in (v.categories or {}).items()}
        keys = zip(frame["_var"].to_numpy()[texty], frame[TEXT_VALUE].to_numpy()[texty], strict=True)
        value[texty] = [categories.get(key, np.nan) for key in keys]
    suffixed = frame["_suffix"].notna().to_numpy()
    if suffixed.any():  # code_suffix statics: the code carries the value, whatever the value columns say
        pairs = zip(frame["_var"].to_numpy()[suffixed], frame["_suffix"].to_numpy()[suffixed], strict=True)
        value[suffixed] = [book.suffix_value(book.spec(name), suffix) for name, suffix in pairs]
    foreign, problems = _to_variable_units(frame, book, value)
    value[(role == Role.START.value) & np.isnan(value) & ~foreign] = DEFAULT_DOSE
    missing = needs & np.isnan(value) & ~foreign
    timed_role = role != Role.STATIC.value
    untimed = timed_role & frame[TIME].isna().to_numpy()
    # Timed rows of a subject without a time axis (index problem, reported already) are skipped.
    unplaced = timed_role & ~untimed & np.isnan(frame["_t"].to_numpy())
    problems += [_missing_value_problem(row, book) for row in frame[missing].to_dict("records")]
    problems += [_untimed_problem(row) for row in frame[untimed & ~missing & ~foreign].to_dict("records")]
    return value, ~(missing | untimed | unplaced | foreign), problems


def _to_variable_units(frame: pd.DataFrame, book: CodeBook, value: np.ndarray) -> tuple[np.ndarray, list[Problem]]:
    """Convert ``value`` in place to each variable's unit where the row's ``unit`` names another; the rows whose unit
    cannot be converted (their values unusable), and one problem per variable and unit."""
    bad = np.zeros(len(frame), dtype=bool)
    if UNIT not in frame.columns:
        return bad, []
    from vpatient.data.fhir.units import UnitMismatch, convert  # here: vpatient.data.fhir imports this module

    targets = {v.name: v.unit for v in book.config.variables if v.unit is not None}
    names = frame["_var"].to_numpy(dtype=object)
    units = frame[UNIT].to_numpy(dtype=object)
    stated = frame[UNIT].fillna("").astype(str).str.strip().ne("").to_numpy()  # "" is no unit, as null is
    given = stated & frame["_var"].isin(list(targets)).to_numpy() & ~np.isnan(value)
    problems = []
    for name, unit in sorted({(str(n), str(u)) for n, u in zip(names[given], units[given], strict=True)}):
        rows = given & (names == name) & (units == unit)
        try:
            value[rows] = value[rows] * convert(1.0, unit, targets[name])  # the table's units differ by a factor
        except UnitMismatch as exc:
            bad |= rows
            first = frame[rows].iloc[0]
            problems.append(
                Problem(
                    first[SUBJECT_ID],
                    _where(first.to_dict()),
                    unit,
                    f"{int(rows.sum())} row(s) with code {first[CODE]!r} in unit {unit!r}: {name}: {exc}",
                )
            )
    return bad, problems


def _where(row: dict[str, Any]) -> str:
    """Field name of a row's variable in a record, for problems."""
    prefix = {
        Role.STATIC: "static",
        Role.BIRTH: "static",
        Role.OBSERVED: "observations",
        Role.IMAGING: "imaging",
        Role.HISTORY: "history",
        Role.START: "treatments",
        Role.STOP: "treatments",
        Role.VISIT_DOSE: "treatments",
        Role.EVENT: "events",
    }[Role(row["_role"])]
    return f"{prefix}.{row['_var']}"


def _shown_time(time: Any) -> str:
    if time is None or (isinstance(time, float) and math.isnan(time)) or time is pd.NaT:
        return "no time (static row)"
    return f"time {time:g}" if isinstance(time, float) else f"time {time}"


def _missing_value_problem(row: dict[str, Any], book: CodeBook) -> Problem:
    spec = book.spec(row["_var"])
    where = f"row with code {row[CODE]!r} at {_shown_time(row[TIME])}"
    suffix = row["_suffix"]
    if isinstance(suffix, str):
        expected = f"one of {', '.join(spec.categories)}" if spec.categories is not None else "a number"
        return Problem(
            row[SUBJECT_ID], _where(row), suffix, f"{where}: {suffix!r} is not a level of {spec.name} ({expected} expected)"
        )
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
    frame: pd.DataFrame, values: np.ndarray, usable: np.ndarray, book: CodeBook
) -> tuple[dict[str, dict[str, Any]], list[Problem]]:
    """Record dicts (lists in time order) from rows sorted by subject and time."""
    data: dict[str, dict[str, Any]] = {}
    problems: list[Problem] = []
    studies: dict[tuple[str, str, float], dict[int, float]] = {}
    doses: dict[tuple[str, str], list[tuple[float, int, float]]] = {}
    visits: dict[tuple[str, str], list[tuple[float, float]]] = {}
    columns = (frame[SUBJECT_ID], frame["_t"], frame["_var"], frame["_role"], frame["_comp"], frame[CODE])
    rows = zip(*(c.to_numpy()[usable].tolist() for c in columns), values[usable].tolist(), strict=True)
    for sid, t, name, role, comp, code, value in rows:
        record = data.get(sid)
        if record is None:
            record = data[sid] = _empty_record(sid)
        if role == Role.OBSERVED:
            record["observations"].append({"time": t, "variable": name, "value": value})
        elif role == Role.IMAGING:
            components = studies.setdefault((sid, name, t), {})
            if int(comp) in components:
                problems.append(Problem(sid, f"imaging.{name}", value, f"code {code!r} given twice at time {t:g}"))
            components[int(comp)] = value
        elif role == Role.HISTORY:
            record["history"].append({"time": t, "code": name})
        elif role == Role.EVENT:
            record["events"].append({"time": t, "kind": name})
        elif role in (Role.START, Role.STOP):
            doses.setdefault((sid, name), []).append((t, 0 if role == Role.STOP else 1, value))
        elif role == Role.VISIT_DOSE:
            visits.setdefault((sid, name), []).append((t, value))
        else:  # static or birth
            problems += _set_static(record, name, -t if role == Role.BIRTH else value, code)
    problems += _add_studies(data, studies, book)
    problems += _add_exposures(data, doses)
    problems += _add_visit_exposures(data, visits, book)
    return data, problems


def _set_static(record: dict[str, Any], name: str, value: float, code: str) -> list[Problem]:
    static = record["static"]
    if name in static and static[name] != value:
        return [Problem(record["subject_id"], f"static.{name}", value, f"given twice (code {code!r}), first as {static[name]!r}")]
    static[name] = value
    return []


def _add_studies(
    data: dict[str, dict[str, Any]], studies: dict[tuple[str, str, float], dict[int, float]], book: CodeBook
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


def _add_visit_exposures(
    data: dict[str, dict[str, Any]], visits: dict[tuple[str, str], list[tuple[float, float]]], book: CodeBook
) -> list[Problem]:
    """Turn each per-visit treatment's values (rows in time order) into exposures; bad values are problems."""
    problems: list[Problem] = []
    for (sid, name), rows in visits.items():
        indicator = book.spec(name).encoding == CodeEncoding.PER_VISIT_INDICATOR
        bad = _visit_value_problems(sid, name, book.code(name), rows, indicator)
        if bad:
            problems += bad
            continue
        # An indicator's 1 is the default dose, as for a START row without a value.
        doses = [(t, v * DEFAULT_DOSE if indicator else v) for t, v in dict(rows).items()]
        data[sid]["treatments"] += [
            {"treatment": name, "start": start, "stop": stop, "dose": dose} for start, stop, dose in _visit_runs(doses)
        ]
    return problems


def _visit_value_problems(sid: str, name: str, code: str, rows: list[tuple[float, float]], indicator: bool) -> list[Problem]:
    """Per-visit values that are not an indicator (0/1) or a dose (>= 0), and times with two different values."""
    field = f"treatments.{name}"
    expected = "0 or 1 (per-visit indicator)" if indicator else "a finite dose >= 0 (per-visit dose)"
    valid = (lambda v: v in (0.0, 1.0)) if indicator else (lambda v: math.isfinite(v) and v >= 0)
    problems = [Problem(sid, field, v, f"code {code!r} at time {t:g}: {expected} expected") for t, v in rows if not valid(v)]
    values_at: dict[float, set[float]] = {}
    for t, v in rows:
        values_at.setdefault(t, set()).add(v)
    problems += [
        Problem(sid, field, sorted(vs), f"code {code!r} has {len(vs)} different values at time {t:g}; one expected")
        for t, vs in values_at.items()
        if len(vs) > 1
    ]
    return problems


def _visit_runs(doses: list[tuple[float, float]]) -> list[tuple[float, float | None, float]]:
    """(start, stop, dose) exposures of one treatment's per-visit doses, given as (time, dose) in time order.

    A run starts at a visit with a positive dose and stops at the next visit whose dose
    differs (0: stopped; another dose: a new run starts there). The last run stays open
    (stop None: ongoing at end of follow-up), as a START without a STOP does: a visit only
    says what was given then, and stopping the run at the last visit would give a
    treatment first seen there a run of no length.
    """
    runs: list[tuple[float, float | None, float]] = []
    start, current = math.nan, 0.0
    for t, dose in doses:
        if dose == current:
            continue
        if current > 0:
            runs.append((start, t, current))
        start, current = t, dose
    if current > 0:
        runs.append((start, None, current))
    return runs
