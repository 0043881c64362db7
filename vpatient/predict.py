"""Predictions of a task's label rows, in the layout ``meds-evaluation`` scores.

``predict(model, records, task)`` answers every row (subject, prediction_time) of a
task's label table (:mod:`vpatient.tasks`) with the model's probability of the task's
event within its window, from the subject's data up to the prediction time only: the
record is cut there (:func:`~vpatient.data.timeline.truncate_record`: later
observations, imaging, history, treatments and events removed, follow-up ending at the
prediction time), and the risk is the model's, given the subject event-free then.

The answer is the label table plus ``predicted_boolean_probability`` and
``predicted_boolean_value`` (probability >= 0.5), typed as ``meds_evaluation``'s
``PredictionSchema`` (and checked by it where installed), which its
``evaluate_binary_classification`` scores.

Rows that cannot be answered are refused together, one problem each, before any
simulation: a subject the data lack, a prediction time before the subject's index (time 0)
or after its follow-up ends, or at or after the subject's own event (no longer at risk).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from vpatient.atomic import staged_file
from vpatient.data.meds.codes import is_integer_ids
from vpatient.data.timeline import truncate_record
from vpatient.errors import ConfigError, DataFormatError, Problem, RecordValidationError
from vpatient.schemas import PatientRecord, TimeUnit
from vpatient.tasks import LABEL_COLUMNS, Task, from_timestamps

if TYPE_CHECKING:
    import pyarrow as pa

    from vpatient.virtual_patient import VirtualPatientModel

__all__ = [
    "PREDICTION_COLUMNS",
    "THRESHOLD",
    "label_histories",
    "predict",
    "prediction_frame",
    "prediction_table",
    "write_predictions",
]

#: The columns meds-evaluation reads beside the labels.
PREDICTION_COLUMNS = [*LABEL_COLUMNS, "predicted_boolean_value", "predicted_boolean_probability"]
#: predicted_boolean_value is probability >= THRESHOLD.
THRESHOLD = 0.5


def label_histories(
    records: Sequence[PatientRecord], labels: pd.DataFrame, unit: TimeUnit, event: str, source: str = "label table"
) -> tuple[list[PatientRecord], np.ndarray]:
    """Each label row's record cut at its prediction time, and that time on the record's axis (``unit``).

    Raises :class:`RecordValidationError` listing every row that cannot be predicted
    (module docstring); ``source`` names the label table in the message.
    """
    by_id = _records_by_meds_id(records)
    problems: list[Problem] = []
    histories: list[PatientRecord] = []
    times = np.zeros(len(labels))
    missing: dict[int, int] = {}
    rows = labels.reset_index(drop=True)
    for sid, group in rows.groupby("subject_id", sort=False):
        record = by_id.get(int(sid))
        if record is None:
            missing[int(sid)] = len(group)
            continue
        cut = from_timestamps(record, group["prediction_time"].to_numpy(), unit)
        times[group.index.to_numpy()] = cut
        problems += _row_problems(record, group["prediction_time"].to_numpy(), cut, unit, event)
    for sid, n in missing.items():
        problems.append(Problem(str(sid), "subject_id", sid, f"not in the data ({n} label row(s))", owner=source))
    if problems:
        raise RecordValidationError(problems, header=f"{source}: label rows that cannot be predicted from the data")
    for i, row in enumerate(rows.itertuples(index=False)):
        histories.append(truncate_record(by_id[int(row.subject_id)], float(times[i])))
    return histories, times


def _records_by_meds_id(records: Sequence[PatientRecord]) -> dict[int, PatientRecord]:
    """Records by their id as MEDS's integer (ids that are not integers written plainly cannot be in a label table:
    :func:`~vpatient.tasks.meds_subject_ids`)."""
    return {int(r.subject_id): r for r in records if is_integer_ids((r.subject_id,))}


def _row_problems(record: PatientRecord, stamps: np.ndarray, cut: np.ndarray, unit: TimeUnit, event: str) -> list[Problem]:
    """Why each of one subject's prediction times cannot be answered (none for good rows)."""
    hits = [e.time for e in record.events if e.kind == event]
    first = min(hits) if hits else None
    problems = []
    for stamp, t in zip(stamps, cut, strict=True):
        reason = None
        if t < 0:
            reason = "before the subject's index (time 0 of its record): nothing is known yet"
        elif t > record.end_of_followup:
            reason = f"after the subject's follow-up ends ({record.end_of_followup:g} {unit.value} since index)"
        elif first is not None and first <= t:
            reason = f"at or after the subject's {event} ({first:g} {unit.value} since index): no longer at risk"
        if reason is not None:
            problems.append(Problem(record.subject_id, "prediction_time", str(np.datetime64(stamp, "us")), reason))
    return problems


def predict(
    model: VirtualPatientModel,
    records: Sequence[PatientRecord],
    task: Task,
    *,
    seed: int = 0,
    n_samples: int = 200,
    batch_size: int = 32,
    progress: bool = False,
) -> pd.DataFrame:
    """The model's answer to every label row of ``task`` (module docstring): :data:`PREDICTION_COLUMNS`, in the labels' order.

    Rows are simulated ``batch_size`` at a time (``n_samples`` posterior sample paths each);
    batch k draws with seed ``seed + k * batch_size``, as one :meth:`simulate` call with
    ``chunk_size=batch_size`` would, so the same seed and batch size give the same numbers.
    """
    spec = task.spec
    if spec.event not in model.layout.events:
        known = ", ".join(model.layout.events) or "none"
        raise ConfigError(f"task {spec.name}: the model does not predict event {spec.event!r}; the events it predicts: {known}")
    if spec.time_unit != model.config.time_unit:
        raise ConfigError(
            f"task {spec.name}: its window is in {spec.time_unit.value} but the model's time unit is {model.time_unit}"
        )
    histories, times = label_histories(records, task.labels, spec.time_unit, spec.event, source=f"task {spec.name}")
    risk = np.zeros(len(histories))
    bar = tqdm(total=len(histories), desc=f"predict {spec.name}", unit="row", file=sys.stderr, disable=not progress)
    for start in range(0, len(histories), batch_size):
        batch = histories[start : start + batch_size]
        horizons = [np.array([t + spec.window]) for t in times[start : start + batch_size]]
        answer = model.event_risk(batch, horizons, spec.event, n_samples, seed + start, chunk_size=batch_size)
        risk[start : start + len(batch)] = answer[:, 0]
        bar.update(len(batch))
    bar.close()
    return prediction_frame(task.labels, risk)


def prediction_frame(labels: pd.DataFrame, probability: np.ndarray) -> pd.DataFrame:
    """The labels with ``probability`` (one per row) and its call at :data:`THRESHOLD`: meds-evaluation's columns."""
    out = labels[LABEL_COLUMNS].reset_index(drop=True).copy()
    p = np.clip(np.asarray(probability, dtype=float), 0.0, 1.0)
    out["predicted_boolean_value"] = p >= THRESHOLD
    out["predicted_boolean_probability"] = p.astype(np.float32)
    return out


def prediction_table(predictions: pd.DataFrame) -> pa.Table:
    """Predictions as the arrow table meds-evaluation reads: the MEDS label columns (checked by ``meds.LabelSchema``),
    ``predicted_boolean_value`` (bool) and ``predicted_boolean_probability`` (float32).

    When meds-evaluation is installed (it is a development dependency), its
    ``PredictionSchema`` checks the table too.
    """
    import pyarrow as pa
    from meds import LabelSchema

    missing = sorted(set(PREDICTION_COLUMNS) - set(predictions.columns))
    if missing:
        raise DataFormatError(f"predictions lack column(s) {', '.join(missing)}")
    table = LabelSchema.align(pa.Table.from_pandas(predictions[LABEL_COLUMNS], preserve_index=False))
    table = table.append_column("predicted_boolean_value", pa.array(predictions["predicted_boolean_value"], pa.bool_()))
    probability = pa.array(predictions["predicted_boolean_probability"].to_numpy(np.float32), pa.float32())
    table = table.append_column("predicted_boolean_probability", probability)
    try:
        from meds_evaluation.schema import PredictionSchema
    except ImportError:  # pragma: no cover - meds-evaluation absent: the columns above are its schema
        return table
    return PredictionSchema.align(table)


def write_predictions(predictions: pd.DataFrame, path: str | Path) -> Path:
    """Write predictions as parquet (:func:`prediction_table`), staged beside ``path`` and renamed into place."""
    import pyarrow.parquet as pq

    table = prediction_table(predictions)
    with staged_file(path) as staging:
        pq.write_table(table, staging)
    return Path(path)
