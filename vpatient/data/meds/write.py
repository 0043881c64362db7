"""MEDS out: :class:`~vpatient.schemas.PatientRecord` objects -> a self-describing MEDS directory.

Also the pieces that writers streaming their own shards share (virtual cohorts:
:mod:`vpatient.simulation.virtual_cohort`): the metadata, one shard, and moving a
finished directory into place. Every shard is typed by one :class:`~vpatient.data.meds.codes.MedsLayout`
(:func:`meds_table`), standard MEDS unless the numeric-time extension is asked for. The
mapping rules and the layouts are described in :mod:`vpatient.data.meds`.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vpatient.atomic import check_output_dir, move_into_place
from vpatient.data.meds.codes import (
    CODE,
    CODES_PATH,
    CODES_SCHEMA,
    CONFIG_FILE,
    DATA_DIR,
    DATASET_PATH,
    ETL_NAME,
    MEDS_BIRTH,
    MEDS_COLUMNS,
    MEDS_VERSION,
    METADATA_DIR,
    NUMERIC_VALUE,
    NUMERIC_VALUE_F64,
    SOURCE_SUBJECT_ID,
    SPLIT_ORDER,
    SPLITS_PATH,
    SUBJECT_ID,
    SUBJECT_ID_DTYPE,
    TEXT_VALUE,
    TIME,
    TIME_F64,
    UNSPLIT_DIR,
    CodeBook,
    MedsLayout,
    codes_table,
    component_code,
    is_integer_ids,
    start_code,
    stop_code,
    subject_id_column,
    subject_sort_key,
)
from vpatient.data.writable import check_writable
from vpatient.errors import DataFormatError
from vpatient.schemas import RELATIVE_EPOCH, DatasetConfig, PatientRecord, TimeUnit, naive_utc
from vpatient.staging import staging_dir
from vpatient.version import __version__

__all__ = [
    "meds_order",
    "meds_rows",
    "meds_table",
    "move_into_place",
    "records_to_frame",
    "standard_meds_table",
    "write_meds",
    "write_meds_metadata",
    "write_meds_shard",
    "write_meds_table",
]

log = logging.getLogger(__name__)

_SAFE_SPLIT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


# --------------------------------------------------------------------------- public: writing


def records_to_frame(records: Iterable[PatientRecord], config: DatasetConfig) -> pd.DataFrame:
    """The MEDS long table of ``records``: sorted by subject, static rows first, then by time.

    Columns: subject_id (int64 when every id is an integer, else str), time (float, or
    datetime64[us] when the records have ``index_time``), code, numeric_value (float64),
    text_value (str or None). Records that do not fit ``config`` raise one
    RecordValidationError listing every problem.
    """
    records = list(records)
    book = CodeBook(config)
    check_writable(records, config)
    timestamps = _uses_timestamps(records)
    rows = _RowBuilder()
    for record in records:
        _emit_record(record.in_canonical_order(config), book, rows, timestamps)
    return rows.frame(timestamps, config.time_unit)


def write_meds(
    records: Iterable[PatientRecord],
    config: DatasetConfig,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    dataset_name: str | None = None,
    subjects_per_shard: int | None = None,
    standard: bool = True,
) -> Path:
    """Write ``records`` as a self-describing MEDS directory and return its path.

    Layout: ``data/<split>/<n>.parquet`` (``data/<n>.parquet`` when no record has a
    split), ``metadata/codes.parquet``, ``metadata/subject_splits.parquet`` (when
    records have splits), ``metadata/dataset.json`` and ``metadata/vpatient_config.json``.
    Everything is written to a temporary folder beside ``out_dir`` and renamed into
    place, so a failure never leaves half a dataset. A non-empty ``out_dir`` is refused
    unless ``overwrite``.

    ``standard`` (the default) writes MEDS as the ``meds`` package defines it, plus the
    extension columns that keep round trips lossless (:mod:`vpatient.data.meds`).
    ``standard=False`` writes vpatient's numeric-time extension instead, which departs
    from the MEDS standard (float64 values, float times where records have no calendar
    time, str ids where ids are not integers): other MEDS tools may refuse it.
    """
    out_dir = Path(out_dir)
    check_output_dir(out_dir, overwrite)
    if subjects_per_shard is not None and subjects_per_shard < 1:
        raise ValueError(f"subjects_per_shard must be at least 1, got {subjects_per_shard}")
    records = list(records)
    frame = records_to_frame(records, config)
    layout = MedsLayout(
        standard=standard,
        relative=not _uses_timestamps(records),
        time_unit=config.time_unit,
        source_ids=not is_integer_ids(r.subject_id for r in records),
    )
    if layout.standard and layout.source_ids:
        frame = _number_subjects(frame)
    splits = {r.subject_id: r.split for r in records if r.split is not None}
    _check_split_names(splits)
    tmp = staging_dir(out_dir)
    try:
        _write_shards(frame, splits, tmp / DATA_DIR, subjects_per_shard, layout)
        write_meds_metadata(config, tmp, layout, dataset_name)
        if splits:
            _write_splits(frame, splits, tmp / SPLITS_PATH)
        move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %d subjects (%d rows) to %s", len(records), len(frame), out_dir)
    return out_dir


def write_meds_metadata(config: DatasetConfig, out_dir: str | Path, layout: MedsLayout, dataset_name: str | None = None) -> Path:
    """Write ``metadata/`` (codes, dataset.json, the vpatient config) of a MEDS directory whose shards follow ``layout``.

    For writers that stream ``data/`` shards themselves (virtual cohorts), so their
    output is the same self-describing MEDS directory :func:`write_meds` produces.
    """
    root = Path(out_dir)
    metadata = root / METADATA_DIR
    metadata.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(codes_table(config), schema=CODES_SCHEMA, preserve_index=False), root / CODES_PATH)
    _write_dataset_json(root / DATASET_PATH, dataset_name or config.name, layout)
    config.save(metadata / CONFIG_FILE)
    return metadata


def write_meds_shard(frame: pd.DataFrame, path: str | Path, layout: MedsLayout) -> Path:
    """Write one ``data/`` shard: a MEDS table in MEDS order (subject, static rows first, time), typed by ``layout``."""
    return write_meds_table(meds_table(frame, layout), path)


def write_meds_table(table: pa.Table, path: str | Path) -> Path:
    """Write the arrow table of one ``data/`` shard (:func:`meds_table`, :meth:`MedsColumns.table`) as parquet."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Dictionary pages pay off for the repetitive strings only; numbers (values, times) are mostly
    # distinct, and building a dictionary for them first was half of the writing time.
    strings = [f.name for f in table.schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    pq.write_table(table, path, use_dictionary=strings)
    return path


def meds_table(frame: pd.DataFrame, layout: MedsLayout) -> pa.Table:
    """The arrow table of a MEDS frame (:func:`records_to_frame`, :func:`meds_rows`) in ``layout``.

    Standard layout: ``numeric_value`` float32, with the float64 value in
    ``numeric_value_f64`` where float32 does not hold it exactly (null elsewhere);
    relative times (float) become ``RELATIVE_EPOCH + t`` rounded to the microsecond, with
    ``t`` in ``time_f64`` where the timestamp does not give it back exactly. The frame's
    ids must be integers (:func:`_number_subjects` numbers others first).
    """
    schema = layout.data_schema()
    if not layout.standard:
        return pa.Table.from_pandas(frame[list(MEDS_COLUMNS)], schema=schema, preserve_index=False)
    time = frame[TIME].to_numpy(dtype=np.float64 if layout.relative else "datetime64[us]")
    source = frame[SOURCE_SUBJECT_ID].to_numpy(dtype=object) if layout.source_ids else None
    return standard_meds_table(
        frame[SUBJECT_ID].to_numpy(dtype=np.int64),
        time,
        pa.array(frame[CODE].to_numpy(dtype=object), pa.string()),
        frame[NUMERIC_VALUE].to_numpy(dtype=np.float64),
        pa.array(frame[TEXT_VALUE].to_numpy(dtype=object), pa.large_string(), from_pandas=True),
        layout,
        source,
    )


def standard_meds_table(
    subject_id: np.ndarray,
    time: np.ndarray,
    code: pa.Array,
    value: np.ndarray,
    text: pa.Array,
    layout: MedsLayout,
    source_subject_id: np.ndarray | None = None,
) -> pa.Table:
    """The standard-layout arrow table (:func:`meds_table`) of MEDS columns: int64 ids, float (relative) or
    datetime64[us] times, string codes, float64 values (NaN: none), large-string texts (null: none)."""
    schema = layout.data_schema()
    with np.errstate(over="ignore"):  # beyond float32's range: inf, the float64 kept beside it
        narrow = value.astype(np.float32)
    missing = np.isnan(value)
    columns = {
        SUBJECT_ID: pa.array(subject_id, pa.int64()),
        CODE: code,
        NUMERIC_VALUE: pa.array(narrow, pa.float32(), mask=missing),
        TEXT_VALUE: text,
        NUMERIC_VALUE_F64: pa.array(value, pa.float64(), mask=missing | (narrow == value)),
    }
    if layout.relative:
        columns[TIME], columns[TIME_F64] = _relative_time_arrays(time, layout.unit_micros)
    else:
        columns[TIME] = pa.array(time, pa.timestamp("us"), from_pandas=True)
    if layout.source_ids:
        columns[SOURCE_SUBJECT_ID] = pa.array(source_subject_id, pa.string())
    return pa.Table.from_arrays([columns[name] for name in schema.names], schema=schema)


def _relative_time_arrays(t: np.ndarray, unit_micros: float) -> tuple[pa.Array, pa.Array]:
    """(time, time_f64) of times since index: timestamps from RELATIVE_EPOCH, and ``t`` where they do not give it back.

    The reader divides whole microseconds by ``unit_micros``; the check below is that
    same division, so what it reads is ``t`` bit for bit, from one column or the other.
    """
    static = np.isnan(t)
    micros = np.rint(np.where(static, 0.0, t) * unit_micros).astype(np.int64)
    origin = np.datetime64(RELATIVE_EPOCH, "us").astype(np.int64)
    stamps = pa.array(micros + origin, pa.int64(), mask=static).cast(pa.timestamp("us"))
    exact = static | (micros / unit_micros == t)
    return stamps, pa.array(t, pa.float64(), mask=exact)


def _number_subjects(frame: pd.DataFrame) -> pd.DataFrame:
    """Ids that are not integers numbered 0, 1, ... in table order, the originals kept in ``source_subject_id``."""
    numbers, _ = pd.factorize(frame[SUBJECT_ID], sort=False)
    return frame.assign(**{SOURCE_SUBJECT_ID: frame[SUBJECT_ID], SUBJECT_ID: numbers.astype(SUBJECT_ID_DTYPE)})


# --------------------------------------------------------------------------- records → rows


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

    def frame(self, timestamps: bool, unit: TimeUnit) -> pd.DataFrame:
        t = np.asarray(self.t, dtype="float64")
        ids = pd.Series(self.subject, dtype=object)
        frame = pd.DataFrame(
            {
                SUBJECT_ID: subject_id_column(ids),
                TIME: _timestamps(self.origin, t, unit) if timestamps else t,
                CODE: pd.Series(self.code, dtype=object),
                NUMERIC_VALUE: np.asarray(self.value, dtype="float64"),
                TEXT_VALUE: pd.Series(self.text, dtype=object),
            }
        )
        # Ties keep canonical order.
        return frame.iloc[meds_order(subject_sort_key(ids), t)].reset_index(drop=True)


def meds_order(subject_key: pd.Series | np.ndarray, t: np.ndarray) -> np.ndarray:
    """Row positions in MEDS order: by subject, static rows (no time) first, then by time; ties keep their order.

    ``subject_key`` sorts the subjects (:func:`~vpatient.data.meds.codes.subject_sort_key`
    for str ids), ``t`` is each row's float time (NaN for static rows).
    """
    subjects = np.asarray(subject_key)
    if not np.issubdtype(subjects.dtype, np.number):
        subjects = pd.factorize(subjects, sort=True)[0]
    t = np.asarray(t, dtype=np.float64)
    # lexsort sorts by its last key first; NaN times (static rows) before every timed row.
    return np.lexsort((np.arange(len(t)), t, ~np.isnan(t), subjects))


def meds_rows(
    ids: np.ndarray,
    t: np.ndarray | None,
    code: str | np.ndarray,
    values: np.ndarray | None = None,
    labels: Mapping[float, str] | None = None,
) -> pd.DataFrame:
    """MEDS rows of integer-numbered subjects (virtual patients), one per id, with float times.

    ``code`` is one code for all rows or one per row; ``t`` None makes static rows,
    ``values`` None rows without a value. A value that ``labels`` names
    (:meth:`~vpatient.data.meds.codes.CodeBook.labels`) is written as that text, as
    :func:`records_to_frame` writes it.
    """
    n = len(ids)
    numeric = np.full(n, np.nan) if values is None else np.asarray(values, dtype=np.float64)
    text = np.full(n, None, dtype=object)
    for number, label in (labels or {}).items():
        match = numeric == number
        text[match] = label
        numeric = np.where(match, np.nan, numeric)
    return pd.DataFrame(
        {
            SUBJECT_ID: np.asarray(ids, dtype=SUBJECT_ID_DTYPE),
            TIME: np.full(n, np.nan) if t is None else np.asarray(t, dtype=np.float64),
            CODE: np.full(n, code, dtype=object) if isinstance(code, str) else np.asarray(code, dtype=object),
            NUMERIC_VALUE: numeric,
            TEXT_VALUE: text,
        }
    )


def _timestamps(origins: list[datetime | None], t: np.ndarray, unit: TimeUnit) -> np.ndarray:
    """index_time + t, rounded to the microsecond (as :func:`~vpatient.schemas.calendar_time`); NaT for static rows."""
    base = np.array(
        [np.datetime64(naive_utc(o), "us") if o is not None else np.datetime64("NaT") for o in origins], dtype="datetime64[us]"
    )
    valid = ~np.isnan(t)
    offsets = np.zeros(len(t), dtype="int64")
    offsets[valid] = np.rint(t[valid] * unit.microseconds).astype("int64")
    out = base + offsets.astype("timedelta64[us]")
    out[~valid] = np.datetime64("NaT")
    return out


def _value_columns(labels: Mapping[float, str], value: float) -> tuple[float, str | None]:
    """(numeric_value, text_value): a category's name when the variable has one for the value."""
    text = labels.get(value)
    return (value, None) if text is None else (math.nan, text)


def _emit_record(record: PatientRecord, book: CodeBook, rows: _RowBuilder, timestamps: bool) -> None:
    sid = record.subject_id
    origin = record.index_time if timestamps else None

    def add(t: float | None, code: str, value: float = math.nan, text: str | None = None) -> None:
        rows.add(sid, origin, t, code, value, text)

    for name, value in record.static.items():
        if book.reads_birth(book.spec(name)):
            add(-value, MEDS_BIRTH)
        else:
            add(None, book.code(name), *_value_columns(book.labels(name), value))
    if timestamps:
        add(0.0, book.index_code)
    for obs in record.observations:
        add(obs.time, book.code(obs.variable), *_value_columns(book.labels(obs.variable), obs.value))
    for study in record.imaging:
        code = book.code(study.modality)
        for j, component in enumerate(study.embedding):
            add(study.time, component_code(code, j), component)
    for entry in record.history:
        add(entry.time, book.code(entry.code))
    for exposure in record.treatments:
        code = book.code(exposure.treatment)
        add(exposure.start, start_code(code), exposure.dose)
        if exposure.stop is not None:
            add(exposure.stop, stop_code(code))
    for event in record.events:
        add(event.time, book.code(event.kind))
    add(record.end_of_followup, book.eof_code)


# --------------------------------------------------------------------------- output directory


def _check_split_names(splits: Mapping[str, str]) -> None:
    bad = sorted({s for s in splits.values() if not _SAFE_SPLIT.match(s) or s == UNSPLIT_DIR})
    if bad:
        raise DataFormatError(
            f"split names {bad} cannot name a folder under {DATA_DIR}/ (letters, digits, '_', '.', '-'; not {UNSPLIT_DIR!r})"
        )


def _record_ids(frame: pd.DataFrame) -> pd.Series:
    """Each row's subject id as the records have it (str): the original where ids were numbered."""
    return frame[SOURCE_SUBJECT_ID] if SOURCE_SUBJECT_ID in frame.columns else frame[SUBJECT_ID].astype(str)


def _shard_folders(frame: pd.DataFrame, splits: Mapping[str, str]) -> dict[str, list[str]]:
    """Folder under data/ → its subjects (in table order): one per split, '' when none has one."""
    folders: dict[str, list[str]] = {}
    for sid in _record_ids(frame).unique():
        folder = splits.get(sid, UNSPLIT_DIR) if splits else ""
        folders.setdefault(folder, []).append(sid)
    known = {name: i for i, name in enumerate(SPLIT_ORDER)}
    return dict(sorted(folders.items(), key=lambda kv: (known.get(kv[0], len(known)), kv[0])))


def _write_shards(
    frame: pd.DataFrame, splits: Mapping[str, str], data_dir: Path, subjects_per_shard: int | None, layout: MedsLayout
) -> None:
    ids = _record_ids(frame)
    for folder, subjects in _shard_folders(frame, splits).items():
        target = data_dir / folder if folder else data_dir
        size = subjects_per_shard or max(len(subjects), 1)
        for n, start in enumerate(range(0, len(subjects), size)):
            write_meds_shard(frame[ids.isin(subjects[start : start + size])], target / f"{n}.parquet", layout)
    if not data_dir.exists():  # no records: an empty shard keeps the directory readable
        write_meds_shard(frame, data_dir / "0.parquet", layout)


def _write_splits(frame: pd.DataFrame, splits: Mapping[str, str], file: Path) -> None:
    """metadata/subject_splits.parquet (``meds.SubjectSplitSchema``: the ids as written, int64 in the standard layout)."""
    first = ~frame[SUBJECT_ID].duplicated()
    written, ids = frame[SUBJECT_ID][first], _record_ids(frame)[first]
    keep = ids.isin(list(splits)).to_numpy()
    id_type = pa.int64() if pd.api.types.is_integer_dtype(written) else pa.string()
    schema = pa.schema([pa.field(SUBJECT_ID, id_type, nullable=False), pa.field("split", pa.string(), nullable=False)])
    table = pa.table([written[keep].to_numpy(), [splits[s] for s in ids[keep]]], schema=schema)
    pq.write_table(table, file)


def _write_dataset_json(file: Path, dataset_name: str, layout: MedsLayout) -> None:
    """metadata/dataset.json (``meds.DatasetMetadataSchema``), with the layout's extension columns and vpatient section."""
    created = datetime.now(UTC)
    metadata = {
        "dataset_name": dataset_name,
        # vpatient's exports have no release numbers of their own: an export is versioned by its date.
        "dataset_version": created.date().isoformat(),
        "etl_name": ETL_NAME,
        "etl_version": __version__,  # the code running, rather than whichever copy is installed
        "meds_version": MEDS_VERSION,
        "created_at": created.isoformat(),
        **layout.dataset_metadata(),
    }
    file.write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
