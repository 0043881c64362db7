"""The forecasting benchmark: every method on the same folds, forecasts and survival scored alike.

``run_forecast_benchmark(cohort, methods)`` runs the protocol of
:mod:`vpatient.evaluate.protocol` and returns a :class:`ForecastBenchmarkResult` (a
pydantic model, written as JSON and as a markdown table) and the long table of every
predicted cell, from which anyone can recompute the forecast metrics.

Forecast scores: MAE in training-fold standard deviations over every scored cell of a
fold (pooled over subjects and variables), then mean and std (ddof=1) over folds; the
same per variable; coverage of the 90% interval likewise.

Survival scores, per landmark s and window w: Harrell's C of the risk of the event
within s + w (outcome administratively censored at s + w), and the IPCW Brier score at
s + w (censoring survival by reverse Kaplan-Meier on the training fold's subjects in
follow-up at s; only for methods whose risk is a probability). A (s, w) cell of a fold
with fewer than ``min_events`` events is not scored (its fold value is missing; the
result's notes say which cells); the events are counted pooled over folds. Data without
an event (:func:`~vpatient.evaluate.protocol.event_to_score`) are scored on forecasts only.

Methods that do not apply to the data (:func:`~vpatient.evaluate.protocol.not_applicable`)
are refused before any training, or, with ``skip_inapplicable``, left out and listed.

With a ``parts_dir``, each (fold, method) is written there as soon as it finishes
(:class:`ResultParts`), and a rerun with the same data and settings loads the finished
ones and runs only the rest; the result is the same as that of an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, is_dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field
from tqdm.auto import tqdm

from vpatient.atomic import staged_file
from vpatient.benchmarks.base import DEFAULT_OUT_DIR, StrictModel, VersionedBenchmarkResult
from vpatient.data.cohort import Cohort
from vpatient.evaluate.imaging import imaging_targets, reference_forecasts, score_imaging, training_moments
from vpatient.evaluate.metrics import coverage, mae
from vpatient.evaluate.protocol import (
    DEFAULT_MAX_MISSING,
    MIN_VISITS,
    QUERY_COLUMNS,
    Fold,
    Forecaster,
    ProtocolError,
    Standardiser,
    eligible_records,
    event_to_score,
    forecast_folds,
    forecast_variables,
    landmark_split,
    not_applicable,
    score_forecasts,
    score_survival,
    survival_landmark,
    survival_setup,
    target_frame,
)
from vpatient.schemas import DatasetConfig, PatientRecord, Transform
from vpatient.staging import staging_file
from vpatient.tables import markdown_table
from vpatient.version import __version__, source_digest

__all__ = [
    "PREDICTION_COLUMNS",
    "FoldPart",
    "ForecastBenchmarkResult",
    "ForecastScore",
    "ProtocolSettings",
    "ResultParts",
    "SurvivalScore",
    "run_forecast_benchmark",
]

log = logging.getLogger(__name__)

#: Columns of the predictions table (values in training-fold standard deviations).
PREDICTION_COLUMNS = ["subject_id", "time", "variable", "observed", "mean", "q05", "q95", "fold", "method"]


# --------------------------------------------------------------------------- result types


class ProtocolSettings(StrictModel):
    """The protocol a result was produced under; two results compare only if these agree."""

    n_folds: int = Field(ge=2)
    seed: int
    min_visits: int = Field(default=MIN_VISITS, description="Subjects with fewer visits are left out.")
    observed_visits: str = Field(default="ceil(n/2)", description="Visits observed of a test subject with n visits.")
    max_missing: float = Field(description="Continuous variables missing at a larger share of visits are not forecast.")
    interval_level: float = 0.9
    standardisation: str = "training-fold mean and std of each variable on the modelling scale"
    landmarks: list[float] = Field(description="Survival landmarks s (time units of the data).")
    windows: list[float] = Field(description="Survival windows w: risk of the event within s + w.")
    event: str | None = Field(
        description="Event kind scored; other events and the end of follow-up censor. None: no survival part."
    )
    min_deaths: int = Field(description="A fold's (s, w) cell with fewer events is not scored (--min-events).")


class ForecastScore(StrictModel):
    """Forecast scores of one method (standardised units), over folds."""

    method: str
    mae_mean: float
    mae_std: float
    mae_folds: list[float]
    mae_by_variable: dict[str, float | None] = Field(description="Per-variable MAE, mean over folds.")
    coverage_mean: float = Field(description="Share of cells inside the 90% interval, mean over folds.")
    coverage_std: float
    coverage_by_variable: dict[str, float | None]
    n_cells: int = Field(description="Scored cells, all folds.")


class SurvivalScore(StrictModel):
    """Survival scores of one method at one landmark s and window w, over folds (None: not scored)."""

    method: str
    landmark: float
    window: float
    n_at_risk: int = Field(description="Test subjects in follow-up at s, pooled over folds.")
    deaths: int = Field(description="Events within (s, s + w], pooled over folds.")
    folds_scored: int
    c_index_mean: float | None
    c_index_std: float | None
    c_index_folds: list[float | None]
    brier_mean: float | None = Field(description="IPCW Brier score at s + w; None for risk scores that are no probability.")
    brier_std: float | None
    brier_folds: list[float | None]


class ImagingScore(StrictModel):
    """Forecast error of a modality's embeddings at the studies after the landmark."""

    method: str
    modality: str
    mae: float = Field(description="Mean over folds of the MAE in training-fold sds per dimension.")
    mae_std: float
    studies: int = Field(description="Studies scored, pooled over folds.")


def _empty(value: object) -> bool:
    return not value


class ForecastBenchmarkResult(VersionedBenchmarkResult):
    """The result of ``vpatient benchmark forecast``: settings, data, and every method's scores."""

    benchmark: Literal["forecast"] = "forecast"
    data: str
    n_subjects: int = Field(description="Subjects scored (at least min_visits visits).")
    n_subjects_total: int
    variables: list[str] = Field(description="Forecast variables, on the modelling scale.")
    transforms: dict[str, str] = Field(description="Transform of each forecast variable.")
    dropped_variables: dict[str, float] = Field(
        description="Continuous variables not forecast, with their missing share of visits."
    )
    settings: ProtocolSettings
    methods: list[str]
    forecast: list[ForecastScore]
    survival: list[SurvivalScore]
    runtime_seconds: dict[str, float] = Field(
        description="Fit + predict time per method over all folds; context only (shared, noisy machines)."
    )
    imaging: list[ImagingScore] = Field(
        default_factory=list, description="Imaging-embedding forecasts, when the data have imaging."
    )
    # The three below are left out of the JSON when empty, so results from before them reload and re-dump unchanged.
    skipped_methods: dict[str, str] = Field(
        default_factory=dict,
        exclude_if=_empty,
        description="Methods left out because they do not apply to the data, with the reason.",
    )
    survival_skipped: str | None = Field(
        default=None, exclude_if=_empty, description="Why survival was not scored; None when it was."
    )
    notes: list[str] = Field(
        default_factory=list, exclude_if=_empty, description="Warnings about the run, e.g. survival cells with too few events."
    )
    mae_by_visits_ahead: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        exclude_if=_empty,
        description="Method -> visits ahead of the landmark (1, 2, 3-5, 6-10, 11+) -> MAE of those cells, all folds pooled.",
    )

    @property
    def stem(self) -> str:
        """File name of the result: forecast-{data}."""
        return f"forecast-{self.data}"

    def write(
        self,
        out_dir: str | Path = DEFAULT_OUT_DIR,
        *,
        json_path: str | Path | None = None,
        predictions: pd.DataFrame | None = None,
        predictions_path: str | Path | None = None,
    ) -> list[Path]:
        """Write the JSON (default ``out_dir/<stem>.json``) and markdown and, if asked, the predictions parquet."""
        if predictions_path is not None and predictions is None:
            raise ValueError("predictions_path given without predictions")
        paths = super().write(out_dir, json_path=json_path)
        if predictions_path is not None:
            paths.append(Path(predictions_path))
            with staged_file(paths[-1]) as staging:
                predictions.to_parquet(staging, index=False)
            log.info("wrote %s", paths[-1])
        return paths

    def to_markdown(self) -> str:
        """The result as markdown tables: forecasts, C-index, Brier score, events per cell."""
        s = self.settings
        names = [f"{'log ' if self.transforms[v] == Transform.LOG else ''}{v}" for v in self.variables]
        dropped = ", ".join(f"{k} ({v:.0%} missing)" for k, v in self.dropped_variables.items()) or "none"
        lines = [
            f"# Forecasting benchmark: {self.data}",
            "",
            f"{self.n_subjects} of {self.n_subjects_total} subjects (>= {s.min_visits} visits), {s.n_folds}-fold "
            f"cross-validation over subjects (seed {s.seed}); a test subject with n visits is observed for the first "
            f"{s.observed_visits} and forecast at every later visit. vpatient {self.vpatient_version}.",
            "",
            f"Variables: {', '.join(names)}. Not forecast (> {s.max_missing:.0%} of visits missing): {dropped}.",
            "",
        ]
        if self.skipped_methods:
            skipped = "; ".join(f"{name} ({reason})" for name, reason in self.skipped_methods.items())
            lines += [f"Methods not run (they do not apply to these data): {skipped}.", ""]
        if self.forecast:
            lines += [
                "## Forecasts of later visits",
                "",
                "MAE in training-fold standard deviations (all cells of a fold pooled; mean ± std over folds); "
                f"coverage of the {s.interval_level:.0%} prediction interval.",
                "",
            ]
            rows = []
            for f in self.forecast:
                row = {"method": f.method, "MAE": _pm(f.mae_mean, f.mae_std), "coverage": _pm(f.coverage_mean, f.coverage_std)}
                row |= {n: f.mae_by_variable.get(v) for n, v in zip(names, self.variables, strict=True)}
                row["cells"] = f.n_cells
                rows.append(row)
            lines += [markdown_table(pd.DataFrame(rows), index=False), ""]
        if self.mae_by_visits_ahead:
            lines += [
                "MAE by how far ahead the forecast looks, in visits after the landmark (all folds pooled):",
                "",
                markdown_table(pd.DataFrame(self.mae_by_visits_ahead).T.rename_axis("method").reset_index(), index=False),
                "",
            ]
        if self.survival:
            cells = sorted({(x.landmark, x.window) for x in self.survival})
            header = {c: f"s={c[0]:g} w={c[1]:g}" for c in cells}
            by = {(x.method, x.landmark, x.window): x for x in self.survival}
            methods = list(dict.fromkeys(x.method for x in self.survival))
            lines += [
                f"## Survival: {s.event} within s + w, from data up to s",
                "",
                f"Harrell's C (outcome censored at s + w; mean ± std over folds; a fold's cell with < {s.min_deaths} events is not scored).",
                "",
            ]
            lines += [_cell_table(methods, cells, header, by, "c_index"), ""]
            prob = [m for m in methods if any(by[(m, *c)].brier_mean is not None for c in cells)]
            if prob:
                lines += [
                    "IPCW Brier score at s + w (censoring by reverse Kaplan-Meier on the training fold; lower is better).",
                    "",
                ]
                lines += [_cell_table(prob, cells, header, by, "brier"), ""]
            first = methods[0]
            lines += [f"Events and subjects at risk per cell, pooled over folds (folds scored of {s.n_folds}).", ""]
            lines += [
                markdown_table(
                    pd.DataFrame(
                        [
                            {"": f"{s.event}s"} | {header[c]: by[(first, *c)].deaths for c in cells},
                            {"": "at risk"} | {header[c]: by[(first, *c)].n_at_risk for c in cells},
                            {"": "folds scored"} | {header[c]: by[(first, *c)].folds_scored for c in cells},
                        ]
                    ),
                    index=False,
                ),
                "",
            ]
        if self.survival_skipped:
            lines += ["## Survival", "", f"Not scored: {self.survival_skipped}.", ""]
        if self.imaging:
            lines += [
                "## Imaging embeddings at the studies after the landmark",
                "",
                "MAE in training-fold sds per embedding dimension (mean ± std over folds).",
                "",
            ]
            lines += [
                markdown_table(
                    pd.DataFrame(
                        [
                            {"method": i.method, "modality": i.modality, "MAE": _pm(i.mae, i.mae_std), "studies": i.studies}
                            for i in self.imaging
                        ]
                    ),
                    index=False,
                ),
                "",
            ]
        if self.notes:
            lines += ["## Notes", "", *(f"- {note}" for note in self.notes), ""]
        lines += [
            "Runtime (seconds, all folds, fit + predict; context only): "
            + ", ".join(f"{k} {v:.1f}" for k, v in self.runtime_seconds.items()),
            "",
        ]
        return "\n".join(lines)


def _cell_table(methods: Sequence[str], cells: Sequence[tuple[float, float]], header: dict, by: dict, metric: str) -> str:
    """One row per method, one column per (landmark, window): ``metric`` mean ± std over folds."""
    rows = [
        {"method": m}
        | {header[c]: _pm(getattr(by[(m, *c)], f"{metric}_mean"), getattr(by[(m, *c)], f"{metric}_std")) for c in cells}
        for m in methods
    ]
    return markdown_table(pd.DataFrame(rows), index=False)


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None or not math.isfinite(mean):
        return "-"
    return f"{mean:.3f} ± {std:.3f}" if std is not None and math.isfinite(std) else f"{mean:.3f}"


def _opt(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if not arr.size:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else math.nan


# --------------------------------------------------------------------------- the run


def run_forecast_benchmark(
    cohort: Cohort,
    methods: Mapping[str, Callable[[], Forecaster]],
    n_folds: int = 5,
    seed: int = 0,
    *,
    max_missing: float = DEFAULT_MAX_MISSING,
    landmarks: Sequence[float] | None = None,
    windows: Sequence[float] | None = None,
    event: str | None = None,
    min_events: int = 5,
    progress: bool = True,
    skip_inapplicable: bool = False,
    parts_dir: str | Path | None = None,
    fresh: bool = False,
) -> tuple[ForecastBenchmarkResult, pd.DataFrame]:
    """Run every method on the protocol's folds; returns the result and the predictions table.

    ``methods`` maps a name to a factory of an unfitted method (a fresh one per fold).
    A method that does not apply to the data raises :class:`ProtocolError` before any
    training, unless ``skip_inapplicable`` (then it is left out and listed in the result).
    ``event`` defaults to :func:`event_to_score`'s choice; ``landmarks`` and ``windows`` to
    :func:`survival_landmark`'s. ``parts_dir``: keep each finished (fold, method) there and
    reuse those of an earlier run with the same data and settings (``fresh``: recompute
    them all). The predictions table has :data:`PREDICTION_COLUMNS`, in training-fold
    standard deviations.
    """
    config = cohort.config
    records = eligible_records(cohort.records)
    event, survival_skipped = event_to_score(config, records, event)
    chosen, skipped = _applicable_methods(methods, config, event, skip_inapplicable)
    landmarks, windows = survival_landmark(config, landmarks, windows, records) if event else ([], [])
    variables, dropped = forecast_variables(records, config, max_missing)
    if dropped:
        log.info("not forecast (> %.0f%% of visits missing): %s", 100 * max_missing, dropped)
    if survival_skipped:
        log.warning("survival not scored: %s", survival_skipped)
    folds = forecast_folds(records, n_folds, seed)
    settings = ProtocolSettings(
        n_folds=n_folds,
        seed=seed,
        max_missing=max_missing,
        landmarks=landmarks,
        windows=windows,
        event=event,
        min_deaths=min_events,
    )
    store = ResultParts(Path(parts_dir), _run_key(records, cohort, settings), fresh) if parts_dir is not None else None
    if store:
        store.announce([(fold.index, name, factory()) for fold in folds for name, factory in chosen.items()])
    parts: list[FoldPart] = []
    imaging_rows: list[tuple[str, str, int, float, int]] = []
    bar = tqdm(
        total=len(folds) * len(chosen),
        desc=f"forecast benchmark {cohort.name}",
        file=sys.stderr,
        disable=not progress,
        unit="fit",
    )
    with bar:
        for fold in folds:
            setup = _FoldSetup.build(fold, config, variables, landmarks, event)
            imaging_rows += setup.reference_imaging
            for name, factory in chosen.items():
                bar.set_postfix_str(f"fold {fold.index + 1}/{len(folds)}: {name}")
                method = factory()
                part = store.load(fold.index, name, method) if store else None
                if part is None:
                    if hasattr(method, "progress"):  # the world model's own training bar, inside ours
                        method.progress = progress
                    part = _run_method(method, name, fold, config, setup, settings)
                    if store:
                        store.save(fold.index, name, method, part)
                parts.append(part)
                imaging_rows += part.imaging
                bar.update()

    predictions = [p.predictions for p in parts if p.predictions is not None]
    table = (
        pd.concat(predictions, ignore_index=True)[PREDICTION_COLUMNS] if predictions else pd.DataFrame(columns=PREDICTION_COLUMNS)
    )
    runtime = dict.fromkeys(chosen, 0.0)
    for part in parts:
        runtime[part.method] += part.seconds
    survival = _survival_scores([row for p in parts for row in p.survival], n_folds)
    notes = _few_event_notes(survival, settings)
    for note in notes:
        log.warning("%s", note)
    result = ForecastBenchmarkResult(
        data=cohort.name,
        n_subjects=len(records),
        n_subjects_total=len(cohort.records),
        variables=variables,
        transforms={v: config.variable(v).transform.value for v in variables},
        dropped_variables=dropped,
        settings=settings,
        methods=list(chosen),
        forecast=_forecast_scores(table, variables),
        survival=survival,
        runtime_seconds={k: round(v, 3) for k, v in runtime.items()},
        imaging=_imaging_scores(imaging_rows),
        skipped_methods=skipped,
        survival_skipped=survival_skipped,
        notes=notes,
        mae_by_visits_ahead=mae_by_visits_ahead(table),
    )
    return result, table


#: Bins of visits ahead of the landmark: the step forecasts a user of daily data asks about, then longer ranges.
VISITS_AHEAD_BINS = ((1, 1, "1"), (2, 2, "2"), (3, 5, "3-5"), (6, 10, "6-10"), (11, 10**9, "11+"))


def mae_by_visits_ahead(table: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Method -> bin of visits ahead -> MAE over the predictions table's cells in it (bins with no cell left out).

    A cell's visits ahead is the rank of its time among its subject's forecast times: the
    first visit after the landmark is 1.
    """
    if table.empty:
        return {}
    ahead = table.groupby(["method", "subject_id"])["time"].rank(method="dense")
    error = (table["mean"] - table["observed"]).abs()
    out: dict[str, dict[str, float]] = {}
    for method in table["method"].unique():
        mine = table["method"] == method
        row = {}
        for lo, hi, label in VISITS_AHEAD_BINS:
            cells = mine & ahead.between(lo, hi)
            if cells.any():
                row[label] = round(float(error[cells].mean()), 3)
        out[str(method)] = row
    return out


def _applicable_methods(
    methods: Mapping[str, Callable[[], Forecaster]], config: DatasetConfig, event: str | None, skip: bool
) -> tuple[dict[str, Callable[[], Forecaster]], dict[str, str]]:
    """The methods that apply to the data, and those that do not with the reason (an error unless ``skip``)."""
    reasons = {name: not_applicable(factory(), config, event) for name, factory in methods.items()}
    skipped = {name: reason for name, reason in reasons.items() if reason is not None}
    if skipped and not skip:
        listed = "; ".join(f"{name}: {reason}" for name, reason in skipped.items())
        raise ProtocolError(f"method(s) that do not apply to config {config.name!r}: {listed}")
    for name, reason in skipped.items():
        log.info("not run: %s (%s)", name, reason)
    return {name: f for name, f in methods.items() if name not in skipped}, skipped


@dataclass(frozen=True)
class _FoldSetup:
    """What every method of one fold is scored against: queries, truth, landmark setups, imaging targets."""

    scaler: Standardiser
    histories: list[PatientRecord]
    truth: pd.DataFrame
    at_landmark: dict
    imaging_queries: pd.DataFrame
    imaging_context: tuple | None
    reference_imaging: list[tuple[str, str, int, float, int]]

    @classmethod
    def build(
        cls, fold: Fold, config: DatasetConfig, variables: Sequence[str], landmarks: Sequence[float], event: str | None
    ) -> _FoldSetup:
        histories, targets = [], []
        for record in fold.test:
            history, later = landmark_split(record)
            histories.append(history)
            targets.append(target_frame(record.subject_id, later, config, variables))
        truth = pd.concat([t for t in targets if len(t)], ignore_index=True)  # subjects with no later cell add nothing
        at_landmark = {s: (survival_setup(fold.test, s, event), survival_setup(fold.train, s, event)) for s in landmarks}
        img_queries, img_observed = imaging_targets(fold.test, histories)
        context, references = None, []
        if len(img_queries):
            modality = img_queries["modality"].iloc[0]
            img_mean, img_sd = training_moments(fold.train, modality)
            context = (modality, fold.index, img_observed, img_mean, img_sd)
            references = [
                _imaging_row(ref, p, *context) for ref, p in reference_forecasts(histories, img_queries, img_mean).items()
            ]
        scaler = Standardiser.fit(fold.train, config, variables)
        return cls(scaler, histories, truth, at_landmark, img_queries, context, references)


def _run_method(
    method: Forecaster, name: str, fold: Fold, config: DatasetConfig, setup: _FoldSetup, settings: ProtocolSettings
) -> FoldPart:
    """Fit ``method`` on the fold's training records and score it on the fold's test records."""
    started = time.perf_counter()
    method = method.fit(list(fold.train), config, settings.seed)
    predictions, survival, imaging = None, [], []
    if method.forecasts:
        answer = method.forecast(setup.histories, setup.truth[QUERY_COLUMNS].copy())
        predictions = score_forecasts(setup.truth, answer, setup.scaler, fold.index, name)
    if setup.imaging_context is not None and hasattr(method, "forecast_imaging"):
        predicted = method.forecast_imaging(setup.histories, setup.imaging_queries.copy())
        imaging.append(_imaging_row(name, predicted, *setup.imaging_context))
    if method.predicts_risk and settings.event is not None:
        for s in settings.landmarks:
            test, train = setup.at_landmark[s]
            survival += score_survival(
                method, name, test, train, s, settings.windows, settings.event, settings.min_deaths, fold.index
            )
    seconds = time.perf_counter() - started
    log.debug("fold %d: %s done in %.1fs", fold.index, name, seconds)
    return FoldPart(name, predictions, survival, imaging, seconds)


def _few_event_notes(survival: Sequence[SurvivalScore], settings: ProtocolSettings) -> list[str]:
    """A warning per (landmark, window) cell that some fold could not score for too few events."""
    notes = []
    first = survival[0].method if survival else None
    for cell in (x for x in survival if x.method == first):
        missing = settings.n_folds - cell.folds_scored
        if missing:
            outcome = "not scored" if cell.folds_scored == 0 else f"scored on {cell.folds_scored} fold(s) only"
            notes.append(
                f"s={cell.landmark:g} w={cell.window:g}: fewer than {settings.min_deaths} {settings.event} events in {missing} "
                f"of {settings.n_folds} folds ({cell.deaths} pooled over folds, {cell.n_at_risk} at risk): {outcome}."
            )
    return notes


# --------------------------------------------------------------------------- finished parts, for resuming


@dataclass(frozen=True)
class FoldPart:
    """What one method produced on one fold: its scored cells, survival rows, imaging rows and runtime."""

    method: str
    predictions: pd.DataFrame | None
    survival: list[dict]
    imaging: list[tuple[str, str, int, float, int]]
    seconds: float

    def to_json(self) -> str:
        """The part as JSON; floats keep every digit, so a reloaded part scores exactly as the original."""
        predictions = None if self.predictions is None else self.predictions[PREDICTION_COLUMNS].to_dict(orient="list")
        data = dict(
            method=self.method, predictions=predictions, survival=self.survival, imaging=self.imaging, seconds=self.seconds
        )
        return json.dumps(data, default=_json_scalar)

    @classmethod
    def from_json(cls, text: str) -> FoldPart:
        data = json.loads(text)
        predictions = None
        if data["predictions"] is not None:
            predictions = pd.DataFrame(data["predictions"], columns=PREDICTION_COLUMNS).astype(_PREDICTION_DTYPES)
        imaging = [tuple(row) for row in data["imaging"]]
        return cls(data["method"], predictions, data["survival"], imaging, float(data["seconds"]))


_PREDICTION_DTYPES = {c: "float64" for c in ("time", "observed", "mean", "q05", "q95")} | {"fold": "int64"}


def _json_scalar(value: object) -> object:
    if isinstance(value, np.generic):  # numpy ints and bools of the score rows
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to a result part")


class ResultParts:
    """The finished (fold, method) parts of a run, one JSON file each in ``folder``.

    A part's file name carries a hash of everything that determines it: the records and
    config, the protocol settings (seed, folds, landmarks, windows, event, ...), the vpatient
    version, the fold, and the method's name, class and settings. A part of a run with
    anything different is never reused. Files are written to a temporary name and renamed,
    so a stopped run leaves whole parts only. ``fresh``: load none (and overwrite them).
    """

    def __init__(self, folder: Path, run_key: str, fresh: bool = False) -> None:
        self.folder = folder
        self.run_key = run_key
        self.fresh = fresh

    def path(self, fold: int, name: str, method: Forecaster) -> Path:
        """The file of this fold's part of ``method`` (called ``name``)."""
        digest = hashlib.sha256(f"{self.run_key}|{fold}|{name}|{_method_fingerprint(method)}".encode()).hexdigest()[:16]
        return self.folder / f"fold{fold}-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}-{digest}.json"

    def announce(self, planned: Sequence[tuple[int, str, Forecaster]]) -> int:
        """Log how many of the ``planned`` (fold, name, method) parts an earlier run finished; returns that number."""
        done = 0 if self.fresh else sum(self.path(*p).is_file() for p in planned)
        if done:
            log.warning(
                "resuming: %d of %d (fold, method) parts were finished by an earlier run (%s; --fresh recomputes them)",
                done,
                len(planned),
                self.folder,
            )
        return done

    def load(self, fold: int, name: str, method: Forecaster) -> FoldPart | None:
        """The part finished by an earlier run, or None (none, or ``fresh``)."""
        path = self.path(fold, name, method)
        if self.fresh or not path.is_file():
            return None
        log.info("fold %d: %s loaded from %s", fold, name, path)
        return FoldPart.from_json(path.read_text(encoding="utf-8"))

    def save(self, fold: int, name: str, method: Forecaster, part: FoldPart) -> Path:
        """Write ``part`` atomically (a temporary file, then ``os.replace``)."""
        path = self.path(fold, name, method)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = staging_file(path)
        tmp.write_text(part.to_json(), encoding="utf-8")
        os.replace(tmp, path)
        return path


def _run_key(records: Sequence[PatientRecord], cohort: Cohort, settings: ProtocolSettings) -> str:
    """A hash of the data, config, protocol settings and vpatient version and source code of a run."""
    digest = hashlib.sha256()
    digest.update(f"{cohort.name}|{__version__}|{source_digest()}".encode())
    digest.update(cohort.config.model_dump_json().encode())
    digest.update(settings.model_dump_json().encode())
    for record in records:
        digest.update(record.model_dump_json().encode())
    return digest.hexdigest()


def _method_fingerprint(method: Forecaster) -> str:
    """The method's class and settings: its public attributes that are plain values or dataclasses.

    Fitted state (``x_``), private names and the progress flag do not count; other objects
    (e.g. a synthetic truth, determined by the data) count by their type only.
    """
    settings = {}
    for key, value in sorted(vars(method).items()):
        if key.startswith("_") or key.endswith("_") or key == "progress":
            continue
        plain = (
            value is None or isinstance(value, str | int | float | bool) or (is_dataclass(value) and not isinstance(value, type))
        )
        settings[key] = repr(value) if plain else type(value).__qualname__
    return f"{type(method).__module__}.{type(method).__qualname__}{json.dumps(settings, sort_keys=True)}"


def _imaging_row(
    method: str, predicted: np.ndarray, modality: str, fold: int, observed: np.ndarray, mean: np.ndarray, sd: np.ndarray
) -> tuple[str, str, int, float, int]:
    """One fold's imaging score of one method: (method, modality, fold, MAE, studies)."""
    return (method, modality, fold, score_imaging(predicted, observed, mean, sd), len(observed))


def _imaging_scores(rows: list[tuple[str, str, int, float, int]]) -> list[ImagingScore]:
    frame = pd.DataFrame(rows, columns=["method", "modality", "fold", "mae", "studies"])
    out = []
    for (method, modality), part in frame.groupby(["method", "modality"], sort=False):
        mean, std = _mean_std(part["mae"].tolist())
        out.append(ImagingScore(method=method, modality=modality, mae=mean, mae_std=std, studies=int(part["studies"].sum())))
    return out


def _forecast_scores(table: pd.DataFrame, variables: Sequence[str]) -> list[ForecastScore]:
    out = []
    for method, rows in table.groupby("method", sort=False):
        folds = [r for _, r in rows.groupby("fold")]
        mae_folds = [mae(r["observed"], r["mean"]) for r in folds]
        cov_folds = [coverage(r["observed"], r["q05"], r["q95"]) for r in folds]
        by_var_mae, by_var_cov = {}, {}
        for v in variables:
            sub = [r[r["variable"] == v] for r in folds]
            by_var_mae[v] = _opt(_mean_std([mae(r["observed"], r["mean"]) for r in sub if len(r)])[0])
            by_var_cov[v] = _opt(_mean_std([coverage(r["observed"], r["q05"], r["q95"]) for r in sub if len(r)])[0])
        m, sd = _mean_std(mae_folds)
        cm, csd = _mean_std(cov_folds)
        out.append(
            ForecastScore(
                method=str(method),
                mae_mean=m,
                mae_std=sd,
                mae_folds=mae_folds,
                mae_by_variable=by_var_mae,
                coverage_mean=cm,
                coverage_std=csd,
                coverage_by_variable=by_var_cov,
                n_cells=len(rows),
            )
        )
    return out


def _survival_scores(rows: list[dict], n_folds: int) -> list[SurvivalScore]:
    if not rows:
        return []
    frame = pd.DataFrame(rows)
    out = []
    for (method, s, w), cell in frame.groupby(["method", "landmark", "window"], sort=False):
        cell = cell.sort_values("fold")
        cm, csd = _mean_std(cell["c"].tolist())
        bm, bsd = _mean_std(cell["brier"].tolist())
        out.append(
            SurvivalScore(
                method=str(method),
                landmark=float(s),
                window=float(w),
                n_at_risk=int(cell["n"].sum()),
                deaths=int(cell["deaths"].sum()),
                folds_scored=int(cell["c"].notna().sum()),
                c_index_mean=_opt(cm),
                c_index_std=_opt(csd),
                c_index_folds=[_opt(x) for x in cell["c"]],
                brier_mean=_opt(bm),
                brier_std=_opt(bsd),
                brier_folds=[_opt(x) for x in cell["brier"]],
            )
        )
    return out
