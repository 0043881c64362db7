"""Records as time lines: cut a record at a time, and flatten observations to a long table.

``truncate_record`` is how every forecaster (the world model and its peers) sees a
patient "as of" a landmark time s: nothing after s leaks in.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from vpatient import transforms
from vpatient.schemas import DatasetConfig, PatientRecord

__all__ = ["median_visit_gap", "observations_frame", "truncate_record"]


def truncate_record(record: PatientRecord, until: float) -> PatientRecord:
    """The record as known at time ``until``: entries after it removed, follow-up ended there.

    Treatments still running at ``until`` stay open (stop None) when they were open, or
    keep their stop if it lies before ``until``. Events after ``until`` are removed, so
    a subject alive at ``until`` looks censored there.
    """
    treatments = [
        e.model_copy(update={"stop": e.stop if e.stop is None or e.stop <= until else None})
        for e in record.treatments
        if e.start <= until
    ]
    return record.model_copy(
        update={
            "observations": [o for o in record.observations if o.time <= until],
            "imaging": [s for s in record.imaging if s.time <= until],
            "history": [h for h in record.history if h.time <= until],
            "treatments": treatments,
            "events": [e for e in record.events if e.time <= until],
            "end_of_followup": min(record.end_of_followup, until),
        }
    )


def observations_frame(records: Iterable[PatientRecord], config: DatasetConfig, transformed: bool = True) -> pd.DataFrame:
    """Long table of observations: subject_id, time, variable, value.

    With ``transformed`` the values are on the modelling scale (log bilirubin, ...).
    """
    rows = [(r.subject_id, o.time, o.variable, o.value) for r in records for o in r.observations]
    frame = pd.DataFrame(rows, columns=["subject_id", "time", "variable", "value"])
    if transformed and len(frame):
        for var in config.variables:
            mask = frame["variable"].to_numpy() == var.name
            if mask.any():
                frame.loc[mask, "value"] = transforms.forward(frame.loc[mask, "value"].to_numpy(), var.transform)
    frame["value"] = frame["value"].astype(np.float64)
    return frame


def median_visit_gap(records: Sequence[PatientRecord]) -> float:
    """The median gap between consecutive distinct visit times, pooled over ``records`` (1.0 when no one has two visits).

    The network's time scale: a typical interval between measurements, in the data's own unit.
    """
    gaps = np.concatenate([np.diff(r.visit_times()) for r in records] or [np.zeros(0)])
    gaps = gaps[gaps > 0]
    return float(np.median(gaps)) if len(gaps) else 1.0
