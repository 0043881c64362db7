"""Imaging-embedding forecasts, scored beside the labs in the forecasting benchmark.

For each test subject, every imaging study after its landmark is a target: the whole
embedding vector, standardised per dimension with the training fold's mean and sd, and
scored by the mean absolute error over dimensions and studies. Methods that forecast
imaging implement ``forecast_imaging(histories, queries) -> (N, dim) array`` (queries:
subject_id, time, modality); two references need no model: the training mean, and the
subject's last study before the landmark carried forward (the training mean when none).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from vpatient.schemas import PatientRecord

__all__ = ["IMAGING_REFERENCES", "imaging_targets", "score_imaging"]

IMAGING_REFERENCES = ("imaging-mean", "imaging-last-study")


def imaging_targets(test: Sequence[PatientRecord], histories: Sequence[PatientRecord]) -> tuple[pd.DataFrame, np.ndarray]:
    """Queries (subject_id, time, modality) of the studies after each landmark, and their embeddings."""
    cut = {h.subject_id: h.end_of_followup for h in histories}
    rows, vectors = [], []
    for record in test:
        for study in record.imaging:
            if study.time > cut[record.subject_id]:
                rows.append((record.subject_id, study.time, study.modality))
                vectors.append(study.embedding)
    queries = pd.DataFrame(rows, columns=["subject_id", "time", "modality"])
    return queries, np.asarray(vectors, dtype=float)


def training_moments(train: Sequence[PatientRecord], modality: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and sd of a modality's embeddings in the training fold."""
    vectors = np.asarray([s.embedding for r in train for s in r.imaging if s.modality == modality], dtype=float)
    return vectors.mean(axis=0), vectors.std(axis=0, ddof=1)


def reference_forecasts(histories: Sequence[PatientRecord], queries: pd.DataFrame, mean: np.ndarray) -> dict[str, np.ndarray]:
    """The two model-free references for every query."""
    last = {}
    for h in histories:
        for study in h.imaging:  # histories hold only studies up to the landmark, in time order
            last[(h.subject_id, study.modality)] = np.asarray(study.embedding)
    carried = np.stack([last.get((q.subject_id, q.modality), mean) for q in queries.itertuples(index=False)])
    return {"imaging-mean": np.broadcast_to(mean, carried.shape), "imaging-last-study": carried}


def score_imaging(predicted: np.ndarray, observed: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> float:
    """MAE over dimensions and studies, in training-fold sds per dimension."""
    return float(np.mean(np.abs((predicted - observed) / sd)))
