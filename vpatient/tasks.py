"""Prediction tasks for shared evaluation: a MEDS label table and the question it asks.

A task is a folder of two files:

- ``task.json``: a :class:`TaskSpec`, what is predicted (the ``event`` variable of the
  dataset config, within ``window`` of the config's ``time_unit`` after each prediction
  time), for the ``dataset`` it was made from, with a ``description``;
- ``labels.parquet``: the label table in the MEDS label schema (``meds.LabelSchema``):
  ``subject_id`` (int64), ``prediction_time`` (timestamp[us]) and ``boolean_value``, one
  row per (subject, prediction time), answered from the subject's data up to and
  including ``prediction_time``.

:func:`make_labels` makes the rows from records, for any event and window: at each visit
time t (a time with an observation or imaging study), ``boolean_value`` says whether the
event happened in (t, t + window]. A visit whose outcome is unknown (follow-up ends before
t + window without the event) gets no row, and nor do visits at or after the subject's
first event (the subject is no longer at risk).

Records keep times since their index in the config's unit; a label table needs calendar
times. A record with ``index_time`` is placed there; one without (PBC's "years since
enrolment") at :data:`~vpatient.data.fhir.coding.RELATIVE_EPOCH`, as vpatient's MEDS and
FHIR writers place it, so the labels join with the data those writers write.

The embedded tasks (:data:`EMBEDDED_TASKS`, made by ``vpatient task make``) ship in the
package; :func:`load_task` reads one by name or any task folder by path.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vpatient.atomic import staged_dir
from vpatient.data.meds.codes import is_integer_ids
from vpatient.errors import ConfigError, DataFormatError, DatasetNotFoundError
from vpatient.schemas import DatasetConfig, PatientRecord, TimeUnit, time_origin

__all__ = [
    "EMBEDDED_TASKS",
    "LABELS_FILE",
    "LABEL_COLUMNS",
    "SPEC_FILE",
    "Task",
    "TaskSpec",
    "from_timestamps",
    "load_task",
    "make_labels",
    "make_task",
    "meds_subject_ids",
    "read_labels",
    "read_task",
    "record_labels",
    "task_summary",
    "to_timestamps",
    "write_task",
]

SPEC_FILE = "task.json"
LABELS_FILE = "labels.parquet"
LABEL_COLUMNS = ["subject_id", "prediction_time", "boolean_value"]

_TASK_FILES = resources.files("vpatient.data") / "files" / "tasks"
#: Tasks shipped with the package, by the name ``--task`` takes: ``<dataset>-<task>``.
EMBEDDED_TASKS = ("pbc2-death_2y",)


class TaskSpec(BaseModel):
    """What a task's labels mean: did ``event`` happen within ``window`` (``time_unit``) after the prediction time."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$", description="Short name, e.g. death_2y.")
    event: str = Field(min_length=1, description="The event variable (a variable of kind event in the dataset config).")
    window: float = Field(gt=0, allow_inf_nan=False, description="How long after the prediction time the event counts.")
    time_unit: TimeUnit = Field(description="The unit of window: the dataset config's time_unit.")
    dataset: str | None = Field(default=None, description="The dataset the labels were made from (a name or path).")
    description: str = ""


@dataclass(frozen=True)
class Task:
    """A task's spec and its label table (columns :data:`LABEL_COLUMNS`, MEDS types)."""

    spec: TaskSpec
    labels: pd.DataFrame

    @property
    def n_positive(self) -> int:
        return int(self.labels["boolean_value"].sum())


# --------------------------------------------------------------------------- time and ids


def _origin(record: PatientRecord) -> np.datetime64:
    return np.datetime64(time_origin(record.index_time), "us")


def to_timestamps(record: PatientRecord, times: Sequence[float] | np.ndarray, unit: TimeUnit) -> np.ndarray:
    """The record's ``times`` (its own axis, ``unit``) as calendar times, rounded to the microsecond as MEDS keeps them."""
    offsets = np.rint(np.asarray(times, dtype=float) * unit.microseconds).astype("int64")
    return _origin(record) + offsets.astype("timedelta64[us]")


def from_timestamps(record: PatientRecord, stamps: np.ndarray, unit: TimeUnit) -> np.ndarray:
    """Calendar times back on the record's axis (``unit`` since its index).

    A stamp that is one of the record's own times to the microsecond (a visit's) is that
    time exactly, so that a record cut there keeps what happened at it.
    """
    offsets = (np.asarray(stamps, dtype="datetime64[us]") - _origin(record)).astype("int64")
    times = offsets / unit.microseconds
    known = np.unique(np.asarray(_record_times(record), dtype=float))
    if known.size:
        known_offsets = np.rint(known * unit.microseconds).astype("int64")
        at = np.searchsorted(known_offsets, offsets)
        hit = (at < known.size) & (known_offsets[np.minimum(at, known.size - 1)] == offsets)
        times[hit] = known[at[hit]]
    return times


def _record_times(record: PatientRecord) -> list[float]:
    """Every time an entry of the record carries."""
    times = [*record.visit_times(), *(e.time for e in record.events), *(h.time for h in record.history)]
    times += [t for e in record.treatments for t in (e.start, e.stop) if t is not None]
    return [*times, record.end_of_followup]


def meds_subject_ids(ids: Iterable[str]) -> np.ndarray:
    """Subject ids as MEDS's int64; a DataFormatError naming the first ids that are not integers.

    Only ids written plainly (``7``, not ``007`` or ``+7``) are integers here, as in vpatient's
    MEDS export (:func:`~vpatient.data.meds.codes.is_integer_ids`), which numbers other ids
    afresh: a label of subject ``007`` as 7 would name another subject of that export.
    """
    ids = list(ids)
    bad = [s for s in ids if not is_integer_ids((s,))]
    if bad:
        shown = ", ".join(repr(s) for s in list(dict.fromkeys(bad))[:5])
        raise DataFormatError(
            f"MEDS label tables key subjects by int64 subject_id; {len(bad)} id(s) are not 64-bit integers "
            f"written plainly, without sign or leading zeros (e.g. {shown})"
        )
    return np.asarray([int(s) for s in ids], dtype="int64")


# --------------------------------------------------------------------------- making labels


def _check_event(config: DatasetConfig, event: str) -> None:
    if event not in config.event_kinds:
        known = ", ".join(config.event_kinds) or "none"
        raise ConfigError(f"event {event!r} is not an event variable of config {config.name!r} (its events: {known})")


def record_labels(record: PatientRecord, event: str, window: float) -> list[tuple[float, bool]]:
    """(visit time t, did ``event`` happen in (t, t + window]) of one record, for the visits whose outcome is known."""
    hits = [e.time for e in record.events if e.kind == event]
    first = min(hits) if hits else None
    rows = []
    for t in record.visit_times():
        if first is not None and first <= t:
            break  # no longer at risk: the event ends the subject's rows
        happened = first is not None and first <= t + window
        if happened or record.end_of_followup >= t + window:
            rows.append((t, happened))
    return rows


def make_labels(records: Iterable[PatientRecord], config: DatasetConfig, event: str, window: float) -> pd.DataFrame:
    """The MEDS label table of "``event`` within ``window`` after each visit" (module docstring), subjects in record order."""
    _check_event(config, event)
    if not (np.isfinite(window) and window > 0):
        raise ConfigError(f"window = {window!r}: must be a time > 0 in {config.time_unit.value}")
    parts = []
    for record in records:
        rows = record_labels(record, event, window)
        if rows:
            times, values = zip(*rows, strict=True)
            parts.append(
                pd.DataFrame(
                    {
                        "subject_id": meds_subject_ids([record.subject_id] * len(rows)),
                        "prediction_time": to_timestamps(record, times, config.time_unit),
                        "boolean_value": np.asarray(values, dtype=bool),
                    }
                )
            )
    if not parts:
        return _empty_labels()
    return pd.concat(parts, ignore_index=True)


def _empty_labels() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "subject_id": np.zeros(0, dtype="int64"),
            "prediction_time": np.zeros(0, dtype="datetime64[us]"),
            "boolean_value": np.zeros(0, dtype=bool),
        }
    )


def make_task(
    records: Sequence[PatientRecord],
    config: DatasetConfig,
    event: str,
    window: float,
    name: str,
    description: str = "",
    dataset: str | None = None,
) -> Task:
    """A task (spec and labels) of "``event`` within ``window`` after each visit"; the description says so when not given."""
    labels = make_labels(records, config, event, window)
    unit = config.time_unit.value
    spec = TaskSpec(
        name=name,
        event=event,
        window=window,
        time_unit=config.time_unit,
        dataset=dataset,
        description=description
        or f"{event} within {window:g} {unit} after each visit (a time with an observation), from the data up to that visit; "
        f"visits whose outcome is censored, and visits from the {event} on, have no row",
    )
    return Task(spec, labels)


# --------------------------------------------------------------------------- files


def write_task(task: Task, path: str | Path) -> Path:
    """Write ``task`` as a task folder at ``path`` (staged, then moved into place; an earlier task there is replaced)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from meds import LabelSchema

    table = LabelSchema.align(pa.Table.from_pandas(task.labels[LABEL_COLUMNS], preserve_index=False))
    with staged_dir(path, marker=SPEC_FILE) as staging:
        pq.write_table(table, staging / LABELS_FILE)
        (staging / SPEC_FILE).write_text(task.spec.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return Path(path)


def read_task(path: str | Path) -> Task:
    """Read a task folder; a clear error naming the file for a missing file, a bad spec or a table that is not MEDS labels."""
    folder = Path(path)
    if not folder.is_dir():
        raise DatasetNotFoundError(
            f"no task folder {folder} (a folder with {SPEC_FILE} and {LABELS_FILE}; see vpatient task make)"
        )
    for name in (SPEC_FILE, LABELS_FILE):
        if not (folder / name).is_file():
            raise DatasetNotFoundError(f"task folder {folder} has no {name}")
    try:
        spec = TaskSpec.model_validate_json((folder / SPEC_FILE).read_text(encoding="utf-8"))
    except ValidationError as exc:
        fields = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(file)'}: {e['msg']}" for e in exc.errors())
        raise DataFormatError(f"{folder / SPEC_FILE}: not a task spec: {fields}") from None
    return Task(spec, read_labels(folder / LABELS_FILE))


def read_labels(path: str | Path) -> pd.DataFrame:
    """A binary MEDS label table (subject_id, prediction_time, boolean_value), checked by ``meds.LabelSchema``."""
    import pyarrow.parquet as pq
    from flexible_schema import SchemaValidationError, TableValidationError
    from meds import LabelSchema

    try:
        table = LabelSchema.align(pq.read_table(path))
    except (SchemaValidationError, TableValidationError) as exc:
        raise DataFormatError(f"{path}: not a MEDS label table: {exc}") from None
    except (OSError, ValueError) as exc:  # not parquet at all
        raise DataFormatError(f"{path}: cannot read it as parquet: {exc}") from None
    if "boolean_value" not in table.column_names:
        raise DataFormatError(f"{path}: no boolean_value column; vpatient predicts binary tasks only")
    frame = table.select(LABEL_COLUMNS).to_pandas()
    for column in ("prediction_time", "boolean_value"):  # MEDS lets both be null; a row without either asks nothing
        nulls = frame[column].isna()
        if nulls.any():
            rows = ", ".join(str(i) for i in np.flatnonzero(nulls)[:3]) + (", ..." if nulls.sum() > 3 else "")
            raise DataFormatError(f"{path}: {int(nulls.sum())} label row(s) have no {column} (rows {rows})")
    frame["boolean_value"] = frame["boolean_value"].astype(bool)
    frame["prediction_time"] = frame["prediction_time"].astype("datetime64[us]")
    return frame


def load_task(spec: str | Path) -> Task:
    """An embedded task by name (:data:`EMBEDDED_TASKS`) or a task folder by path."""
    name = str(spec)
    if name in EMBEDDED_TASKS:
        with resources.as_file(_TASK_FILES / name) as folder:
            return read_task(folder)
    if not Path(name).exists():
        raise DatasetNotFoundError(f"no task {name!r}: not an embedded task ({', '.join(EMBEDDED_TASKS)}) and no such folder")
    return read_task(name)


def task_summary(task: Task) -> str:
    """One line: the task, its rows, subjects and positives (no patient data)."""
    labels = task.labels
    s = task.spec
    return (
        f"task {s.name}: {s.event} within {s.window:g} {s.time_unit.value}; {len(labels)} label rows of "
        f"{labels['subject_id'].nunique()} subjects, {task.n_positive} positive"
    )
