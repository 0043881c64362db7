"""The forecasting benchmark protocol: folds, landmark splits, standardisation, the Forecaster interface.

Every method (the world model and its peers) is scored on exactly the same splits:

- subjects with at least :data:`MIN_VISITS` visits (distinct observation times,
  :meth:`PatientRecord.visit_times`);
- ``KFold(n_folds, shuffle=True, random_state=seed)`` over the sorted unique subject ids
  (numerically when every id is integer-like, else as strings);
- the forecast variables: every continuous variable of the config after its transform,
  except those missing in more than ``max_missing`` of the visits (PBC: cholesterol);
- for a test subject with n visits the first ceil(n/2) are observed (the landmark s is the
  time of the last of them), and every continuous variable at every later visit is a target;
- errors in standard deviations of the training fold (:class:`Standardiser`);
- survival at fixed landmarks s: test subjects still in follow-up at s, seen only up to s
  (:func:`survival_landmark` chooses them when not given; :func:`event_to_score` the event).

A method implements :class:`Forecaster` and knows nothing of folds or metrics; it may say
that it does not apply to a dataset (:func:`not_applicable`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold

from vpatient import transforms
from vpatient.data.cohort import Cohort
from vpatient.data.timeline import observations_frame, truncate_record
from vpatient.errors import VPatientError
from vpatient.evaluate.metrics import harrell_c, ipcw_brier, kaplan_meier
from vpatient.schemas import DatasetConfig, Observation, PatientRecord, TimeUnit, VariableKind

__all__ = [
    "DEFAULT_EVENT",
    "DEFAULT_MAX_MISSING",
    "LANDMARK_QUANTILES",
    "MIN_VISITS",
    "QUERY_COLUMNS",
    "WINDOW_FRACTIONS",
    "Fold",
    "Forecaster",
    "ProtocolError",
    "Standardiser",
    "SurvivalLandmark",
    "eligible_records",
    "event_to_score",
    "forecast_folds",
    "forecast_variables",
    "held_out_records",
    "landmark_split",
    "last_observations",
    "n_observed_visits",
    "not_applicable",
    "round_significant",
    "score_forecasts",
    "score_survival",
    "sort_subject_ids",
    "survival_landmark",
    "survival_setup",
    "target_frame",
    "treated_by",
]

#: Subjects need this many visits to have both a history and something to forecast.
MIN_VISITS = 2
#: Continuous variables missing in more than this fraction of visits are not forecast.
DEFAULT_MAX_MISSING = 0.3
#: Event kind whose risk is scored; other event kinds censor.
DEFAULT_EVENT = "death"
#: Columns of the queries a Forecaster answers.
QUERY_COLUMNS = ["subject_id", "time", "variable"]

#: Survival landmarks and windows (years) of the embedded datasets, fixed so that their committed
#: results reproduce; any other dataset gets landmarks and windows derived from its own visits.
_SURVIVAL_GRID: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "pbc2": ((1.0, 3.0, 5.0), (1.0, 3.0, 5.0)),
    "synthetic": ((1.0, 2.0, 3.0), (1.0, 2.0)),
}
#: Derived landmarks: these quantiles of the pooled visit times.
LANDMARK_QUANTILES = (0.25, 0.5, 0.75)
#: Derived windows: these fractions of the median follow-up.
WINDOW_FRACTIONS = (0.25, 0.5)


class ProtocolError(VPatientError, ValueError):
    """The data cannot be scored with this protocol (too few subjects, no forecast variable)."""


# --------------------------------------------------------------------------- interface


@runtime_checkable
class Forecaster(Protocol):
    """What every method of the benchmark implements (the world model included).

    ``forecasts`` and ``predicts_risk`` say which halves of the benchmark a method takes
    part in; ``risk_is_probability`` says whether its risk is a probability (then it gets
    a Brier score) or only a ranking score (C-index only). A method that needs something
    of the data (a variable by name) may also define ``applies(config) -> str | None``,
    the reason it does not apply to ``config`` or None; :func:`not_applicable` asks it.
    """

    name: str
    forecasts: ClassVar[bool]
    predicts_risk: ClassVar[bool]
    risk_is_probability: ClassVar[bool]

    def fit(self, train: list[PatientRecord], config: DatasetConfig, seed: int) -> Forecaster:
        """Learn from the training fold's full records; returns self."""
        ...

    def forecast(self, histories: list[PatientRecord], queries: pd.DataFrame) -> pd.DataFrame:
        """Predict the queried cells from the histories.

        ``queries`` has columns subject_id, time, variable; the answer has the same rows
        plus ``mean`` (the method's point forecast, scored by MAE: the world model gives its
        predictive median there), ``q05`` and ``q95`` (the 90% prediction interval) on the
        MODELLING scale (transformed, not standardised). The column keeps its name so
        committed predictions still load.
        """
        ...

    def risk(self, histories: list[PatientRecord], landmark: float, windows: list[float], event: str) -> pd.DataFrame | None:
        """Risk of ``event`` within ``landmark + window`` for histories truncated at ``landmark``.

        Returns columns subject_id, window, risk; None when the method has no survival model.
        """
        ...


def not_applicable(method: Forecaster, config: DatasetConfig, event: str | None) -> str | None:
    """Why ``method`` cannot take part in a benchmark of ``config`` scoring ``event``; None when it can.

    A method with an ``applies(config)`` check is asked first (what it needs of the
    config); a method that only predicts risk needs an event to score.
    """
    check = getattr(method, "applies", None)
    reason = check(config) if check is not None else None
    if reason is None and not method.forecasts and event is None:
        reason = "predicts risk only, and there is no event to score"
    return reason


# --------------------------------------------------------------------------- subjects and folds


def sort_subject_ids(ids: Iterable[str]) -> list[str]:
    """Unique ids, numerically sorted when all are integer-like ('2' before '10'), else as strings."""
    unique = set(ids)
    if unique and all(re.fullmatch(r"[+-]?\d+", s) for s in unique):
        return sorted(unique, key=lambda s: (int(s), s))
    return sorted(unique)


def eligible_records(records: Iterable[PatientRecord], min_visits: int = MIN_VISITS) -> list[PatientRecord]:
    """Records with at least ``min_visits`` visits, in sorted subject-id order."""
    by_id = {r.subject_id: r for r in records if len(r.visit_times()) >= min_visits}
    return [by_id[s] for s in sort_subject_ids(by_id)]


@dataclass(frozen=True)
class Fold:
    """One cross-validation fold: the records to learn from and the records to score."""

    index: int
    train: list[PatientRecord] = field(repr=False)
    test: list[PatientRecord] = field(repr=False)

    @property
    def train_ids(self) -> list[str]:
        return [r.subject_id for r in self.train]

    @property
    def test_ids(self) -> list[str]:
        return [r.subject_id for r in self.test]


def forecast_folds(cohort: Cohort | Sequence[PatientRecord], n_folds: int = 5, seed: int = 0) -> list[Fold]:
    """The protocol's folds: eligible subjects, ``KFold(shuffle=True, random_state=seed)`` on sorted ids."""
    records = eligible_records(cohort.records if isinstance(cohort, Cohort) else cohort)
    if len(records) < n_folds:
        raise ProtocolError(f"{len(records)} subjects with >= {MIN_VISITS} visits: too few for {n_folds} folds")
    folds = []
    splitter = KFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for i, (train_idx, test_idx) in enumerate(splitter.split(np.arange(len(records)))):
        folds.append(Fold(i, [records[j] for j in train_idx], [records[j] for j in test_idx]))
    return folds


def forecast_variables(
    records: Sequence[PatientRecord], config: DatasetConfig, max_missing: float = DEFAULT_MAX_MISSING
) -> tuple[list[str], dict[str, float]]:
    """Continuous variables to forecast, and those dropped with their missing fraction.

    A variable's missing fraction is the share of visits (over ``records``) without a
    value of it. Variables above ``max_missing`` are dropped: forecasting a lab measured
    at fewer than 70% of visits scores a different population of cells than the others.
    """
    n_visits = sum(len(r.visit_times()) for r in records)
    if n_visits == 0:
        raise ProtocolError("no visits to score")
    observed: dict[str, set[tuple[str, float]]] = {name: set() for name in config.names(VariableKind.CONTINUOUS)}
    for r in records:
        for o in r.observations:
            if o.variable in observed:
                observed[o.variable].add((r.subject_id, o.time))
    used, dropped = [], {}
    for name, cells in observed.items():
        missing = 1.0 - len(cells) / n_visits
        if missing > max_missing:
            dropped[name] = round(missing, 4)
        else:
            used.append(name)
    if not used:
        raise ProtocolError(f"config {config.name!r} has no continuous variable with <= {max_missing:.0%} missing visits")
    return used, dropped


# --------------------------------------------------------------------------- landmark split


def n_observed_visits(n_visits: int) -> int:
    """Visits observed for a subject with ``n_visits`` visits: ceil(n/2)."""
    return math.ceil(n_visits / 2)


def landmark_split(record: PatientRecord) -> tuple[PatientRecord, list[Observation]]:
    """Split a record at its forecast landmark: the history, and the observations to predict.

    The history is the record truncated (:func:`truncate_record`) at s, the time of its
    ceil(n/2)-th visit, so nothing after s (values, events, follow-up) leaks in. The
    targets are every observation after s, on the natural scale (all variables; see
    :func:`target_frame` for the scored cells).
    """
    visits = record.visit_times()
    if len(visits) < MIN_VISITS:
        raise ProtocolError(f"subject {record.subject_id}: {len(visits)} visit(s), the protocol needs >= {MIN_VISITS}")
    landmark = visits[n_observed_visits(len(visits)) - 1]
    history = truncate_record(record, landmark)
    targets = [o for o in record.observations if o.time > landmark]
    return history, targets


def target_frame(
    subject_id: str, targets: Iterable[Observation], config: DatasetConfig, variables: Sequence[str]
) -> pd.DataFrame:
    """The scored cells of one subject: subject_id, time, variable, observed (modelling scale)."""
    wanted = set(variables)
    rows = [(subject_id, o.time, o.variable, o.value) for o in targets if o.variable in wanted]
    frame = pd.DataFrame(rows, columns=[*QUERY_COLUMNS, "observed"])
    frame["observed"] = frame["observed"].astype(np.float64)
    for name in wanted:
        mask = frame["variable"].to_numpy() == name
        if mask.any():
            frame.loc[mask, "observed"] = transforms.forward(
                frame.loc[mask, "observed"].to_numpy(), config.variable(name).transform
            )
    return frame


# --------------------------------------------------------------------------- standardisation


@dataclass(frozen=True)
class Standardiser:
    """Per-variable mean and std of the training fold (modelling scale), to score in SD units.

    Fitted on the training fold only, and applied to observed values, predicted means
    and interval bounds alike (an affine map, so intervals stay intervals).
    """

    mean: dict[str, float]
    std: dict[str, float]

    @classmethod
    def fit(cls, train: Sequence[PatientRecord], config: DatasetConfig, variables: Sequence[str]) -> Standardiser:
        frame = observations_frame(train, config, transformed=True)
        mean, std = {}, {}
        for name in variables:
            values = frame.loc[frame["variable"] == name, "value"].to_numpy()
            if len(values) < 2:
                raise ProtocolError(f"variable {name!r}: {len(values)} training value(s), cannot standardise")
            mean[name] = float(values.mean())
            std[name] = float(values.std(ddof=1)) or 1.0
        return cls(mean, std)

    def transform(self, frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
        """A copy of ``frame`` with ``columns`` standardised by each row's ``variable``."""
        out = frame.copy()
        mu = out["variable"].map(self.mean).to_numpy(dtype=float)
        sd = out["variable"].map(self.std).to_numpy(dtype=float)
        for col in columns:
            out[col] = (out[col].to_numpy(dtype=float) - mu) / sd
        return out


# --------------------------------------------------------------------------- covariates shared by the peers


def treated_by(record: PatientRecord, time: float) -> float:
    """1.0 if the subject has a treatment exposure (dose > 0) starting at or before ``time``."""
    return float(any(e.start <= time and e.dose > 0 for e in record.treatments))


def last_observations(record: PatientRecord, config: DatasetConfig, variables: Sequence[str]) -> dict[str, tuple[float, float]]:
    """Time and value (modelling scale) of each variable's last observation in the record; absent ones left out."""
    last: dict[str, tuple[float, float]] = {}
    wanted = set(variables)
    for o in record.observations:
        if o.variable in wanted and (o.variable not in last or o.time >= last[o.variable][0]):
            last[o.variable] = (o.time, o.value)
    return {
        name: (time, float(transforms.forward(value, config.variable(name).transform))) for name, (time, value) in last.items()
    }


# --------------------------------------------------------------------------- survival landmarks


def event_to_score(
    config: DatasetConfig, records: Iterable[PatientRecord], event: str | None = None
) -> tuple[str | None, str | None]:
    """The event kind whose risk is scored, or None with the reason survival is not scored.

    ``event`` when given (it must be an event kind of ``config``), else ``death`` when the
    config has it, else the config's first event kind. An event no subject has cannot be
    scored either.
    """
    kinds = config.event_kinds
    if event is not None and event not in kinds:
        raise ProtocolError(f"event {event!r} is not an event kind of config {config.name!r} ({', '.join(kinds) or 'none'})")
    chosen = event or (DEFAULT_EVENT if DEFAULT_EVENT in kinds else (kinds[0] if kinds else None))
    if chosen is None:
        return None, f"config {config.name!r} declares no event kind"
    if not any(e.kind == chosen for r in records for e in r.events):
        return None, f"no subject has a {chosen!r} event"
    return chosen, None


def round_significant(x: float, digits: int = 2) -> float:
    """``x`` rounded to ``digits`` significant digits (4.37 -> 4.4, 0.0837 -> 0.084, 137 -> 140)."""
    return float(f"{x:.{digits}g}") if x else 0.0


def survival_landmark(
    config: DatasetConfig,
    landmarks: Sequence[float] | None = None,
    windows: Sequence[float] | None = None,
    records: Sequence[PatientRecord] = (),
) -> tuple[list[float], list[float]]:
    """Landmarks and windows (the config's time unit): the ones given, else the embedded dataset's, else from ``records``.

    PBC keeps 1, 3, 5 and 1, 3, 5 years and the synthetic data 1, 2, 3 and 1, 2 (their
    committed results; a config of that name in another time unit is just other data).
    Other data: landmarks at the 25/50/75% quantiles of the pooled visit times (so most
    subjects have a history before each, and many are still followed after it) and
    windows of 1/4 and 1/2 of the median follow-up (long enough for events to happen,
    short enough that subjects are still followed to s + w), each rounded to 2
    significant digits; landmarks at or before time 0 are left out.
    """
    if config.name in _SURVIVAL_GRID and config.time_unit == TimeUnit.YEARS:
        grid_landmarks, grid_windows = _SURVIVAL_GRID[config.name]
    elif landmarks is None or windows is None:
        grid_landmarks, grid_windows = _derived_grid(config, records)
    else:
        grid_landmarks = grid_windows = ()
    return list(landmarks if landmarks is not None else grid_landmarks), list(windows if windows is not None else grid_windows)


def _derived_grid(config: DatasetConfig, records: Sequence[PatientRecord]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Landmarks and windows from the visit times and follow-up of ``records`` (see :func:`survival_landmark`)."""
    times = np.array([t for r in records for t in r.visit_times()], dtype=float)
    if not times.size:
        raise ProtocolError(f"config {config.name!r}: no visits to choose survival landmarks from; give them (--landmarks)")
    quantiles = np.quantile(times, LANDMARK_QUANTILES)
    landmarks = tuple(sorted({round_significant(q) for q in quantiles if q > 0}))
    median_followup = float(np.median([r.end_of_followup for r in records]))
    windows = tuple(sorted({round_significant(f * median_followup) for f in WINDOW_FRACTIONS if f * median_followup > 0}))
    if not landmarks or not windows:
        raise ProtocolError(
            f"config {config.name!r}: no survival landmark or window after time 0 in the data; give them (--landmarks, --windows)"
        )
    return landmarks, windows


@dataclass(frozen=True)
class SurvivalLandmark:
    """Subjects in follow-up at a landmark s, seen up to s, with their outcome measured from s.

    ``time`` is the time from s to the first event of interest or the end of follow-up;
    ``event`` is 1 when the event of interest ended follow-up (other events censor).
    """

    landmark: float
    histories: list[PatientRecord] = field(repr=False)
    subject_ids: list[str] = field(repr=False)
    time: np.ndarray = field(repr=False)
    event: np.ndarray = field(repr=False)


def survival_setup(records: Iterable[PatientRecord], landmark: float, event: str = DEFAULT_EVENT) -> SurvivalLandmark:
    """The subjects of ``records`` still in follow-up at ``landmark`` (end of follow-up > s).

    A subject's histories are truncated at s, so a risk computed from them cannot know
    that the subject lived to a later visit.
    """
    histories, ids, times, events = [], [], [], []
    for r in records:
        if r.end_of_followup <= landmark:
            continue
        hits = [e.time for e in r.events if e.kind == event]
        if hits and min(hits) <= landmark:  # died before s but still followed: not at risk
            continue
        end = min(hits) if hits else r.end_of_followup
        histories.append(truncate_record(r, landmark))
        ids.append(r.subject_id)
        times.append(end - landmark)
        events.append(1 if hits else 0)
    return SurvivalLandmark(landmark, histories, ids, np.asarray(times, dtype=float), np.asarray(events, dtype=int))


def held_out_records(cohort: Cohort, n_folds: int, seed: int) -> list[tuple[list[PatientRecord], list[PatientRecord]]]:
    """Per fold of ``forecast_folds``: (training records, held-out records).

    Patients in no fold (fewer visits than the protocol needs) are dealt to the folds'
    held-out sets in turn, their sorted ids permuted by ``default_rng(seed)``, so every
    patient is held out exactly once.
    """
    folds = forecast_folds(cohort, n_folds, seed)
    in_folds = {sid for f in folds for sid in f.test_ids}
    by_id = {r.subject_id: r for r in cohort.records}
    rest = sort_subject_ids(set(by_id) - in_folds)
    order = np.random.default_rng(seed).permutation(len(rest))
    extra: list[list[PatientRecord]] = [[] for _ in folds]
    for position, i in enumerate(order):
        extra[position % len(folds)].append(by_id[rest[i]])
    return [(list(f.train), [*f.test, *extra[k]]) for k, f in enumerate(folds)]


# --------------------------------------------------------------------------- scoring one fold


def score_forecasts(truth: pd.DataFrame, answer: pd.DataFrame, scaler: Standardiser, fold: int, method: str) -> pd.DataFrame:
    """Join a method's answer to the truth of one fold, on the standardised scale.

    ``truth`` has :data:`QUERY_COLUMNS` and ``observed``; ``answer`` the method's ``mean``,
    ``q05`` and ``q95`` per query. Raises :class:`ProtocolError` unless every query is
    answered. The rows carry ``fold`` and ``method`` so folds and methods stack into one table.
    """
    missing = {"mean", "q05", "q95"} - set(answer.columns)
    if missing:
        raise ProtocolError(f"{method}: forecast lacks column(s) {sorted(missing)}")
    merged = truth.merge(answer[[*QUERY_COLUMNS, "mean", "q05", "q95"]], on=QUERY_COLUMNS, how="left", validate="one_to_one")
    bad = merged[["mean", "q05", "q95"]].isna().any(axis=1)
    if bad.any():
        raise ProtocolError(f"{method}: no forecast for {int(bad.sum())} of {len(merged)} queried cells (fold {fold})")
    merged = scaler.transform(merged, ["observed", "mean", "q05", "q95"])
    merged["fold"] = fold
    merged["method"] = method
    return merged


def score_survival(
    method: Forecaster,
    name: str,
    test: SurvivalLandmark,
    train: SurvivalLandmark,
    landmark: float,
    windows: Sequence[float],
    event: str,
    min_deaths: int,
    fold: int,
) -> list[dict]:
    """One row per window: the fold's scores of a method's risk of ``event`` at this landmark.

    Harrell's C of the risk within ``landmark + w`` and, for methods whose risk is a
    probability, the IPCW Brier score (censoring by reverse Kaplan-Meier on ``train``);
    a window with fewer than ``min_deaths`` events gets NaN scores. Rows are dicts with
    method, landmark, window, fold, n, deaths, c, brier. A method that gives no risk
    (``risk`` returns None) gets no rows.
    """
    rows = []
    if len(test.subject_ids) == 0:
        return [
            dict(method=name, landmark=landmark, window=w, fold=fold, n=0, deaths=0, c=math.nan, brier=math.nan) for w in windows
        ]
    answer = method.risk(test.histories, landmark, list(windows), event)
    if answer is None:
        return rows
    risk = answer.pivot(index="subject_id", columns="window", values="risk").reindex(index=test.subject_ids)
    censoring = kaplan_meier(train.time, 1 - train.event)
    for w in windows:
        values = risk[float(w)].to_numpy(float)
        if np.isnan(values).any():
            raise ProtocolError(f"{name}: no risk for {int(np.isnan(values).sum())} subjects at s={landmark:g}, w={w:g}")
        deaths = int(((test.event == 1) & (test.time <= w)).sum())
        c = brier = math.nan
        if deaths >= min_deaths:
            c = harrell_c(test.time, test.event, values, horizon=w)
            if method.risk_is_probability:
                brier = ipcw_brier(test.time, test.event, values, w, censoring)
        rows.append(
            dict(method=name, landmark=landmark, window=float(w), fold=fold, n=len(values), deaths=deaths, c=c, brier=brier)
        )
    return rows
