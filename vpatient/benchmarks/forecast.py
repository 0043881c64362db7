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
with fewer than ``min_deaths`` events is not scored (its fold value is missing); the
events are counted pooled over folds.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field
from tqdm.auto import tqdm

from vpatient.benchmarks.base import DEFAULT_OUT_DIR, StrictModel, VersionedBenchmarkResult
from vpatient.data.cohort import Cohort
from vpatient.evaluate.imaging import imaging_targets, reference_forecasts, score_imaging, training_moments
from vpatient.evaluate.metrics import coverage, mae
from vpatient.evaluate.protocol import (
    DEFAULT_EVENT,
    DEFAULT_MAX_MISSING,
    MIN_VISITS,
    QUERY_COLUMNS,
    Forecaster,
    ProtocolError,
    Standardiser,
    eligible_records,
    forecast_folds,
    forecast_variables,
    landmark_split,
    score_forecasts,
    score_survival,
    survival_landmark,
    survival_setup,
    target_frame,
)
from vpatient.schemas import Transform
from vpatient.tables import markdown_table

__all__ = [
    "PREDICTION_COLUMNS",
    "ForecastBenchmarkResult",
    "ForecastScore",
    "ProtocolSettings",
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
    event: str = Field(description="Event kind scored; other events and the end of follow-up censor.")
    min_deaths: int = Field(description="A fold's (s, w) cell with fewer events is not scored.")


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
            paths[-1].parent.mkdir(parents=True, exist_ok=True)
            predictions.to_parquet(paths[-1], index=False)
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
    event: str = DEFAULT_EVENT,
    min_deaths: int = 5,
    progress: bool = True,
) -> tuple[ForecastBenchmarkResult, pd.DataFrame]:
    """Run every method on the protocol's folds; returns the result and the predictions table.

    ``methods`` maps a name to a factory of an unfitted method (a fresh one per fold).
    ``landmarks`` and ``windows`` default to the dataset's (PBC: 1, 3, 5 years each;
    others 1, 2, 3 and 1, 2). The predictions table has :data:`PREDICTION_COLUMNS`, in
    training-fold standard deviations.
    """
    config = cohort.config
    if event not in config.event_kinds:
        raise ProtocolError(f"event {event!r} is not an event kind of config {config.name!r} ({', '.join(config.event_kinds)})")
    landmarks, windows = survival_landmark(config, landmarks, windows)
    records = eligible_records(cohort.records)
    variables, dropped = forecast_variables(records, config, max_missing)
    if dropped:
        log.info("not forecast (> %.0f%% of visits missing): %s", 100 * max_missing, dropped)
    folds = forecast_folds(records, n_folds, seed)
    runtime = dict.fromkeys(methods, 0.0)
    predictions: list[pd.DataFrame] = []
    survival_rows: list[dict] = []
    imaging_rows: list[tuple[str, str, int, float, int]] = []

    for fold in tqdm(folds, desc=f"forecast benchmark {cohort.name}", file=sys.stderr, disable=not progress, unit="fold"):
        scaler = Standardiser.fit(fold.train, config, variables)
        histories, targets = [], []
        for record in fold.test:
            history, later = landmark_split(record)
            histories.append(history)
            targets.append(target_frame(record.subject_id, later, config, variables))
        truth = pd.concat([t for t in targets if len(t)], ignore_index=True)  # subjects with no later cell add nothing
        queries = truth[QUERY_COLUMNS]
        at_landmark = {s: (survival_setup(fold.test, s, event), survival_setup(fold.train, s, event)) for s in landmarks}
        img_queries, img_observed = imaging_targets(fold.test, histories)
        if len(img_queries):
            modality = img_queries["modality"].iloc[0]
            img_mean, img_sd = training_moments(fold.train, modality)
            img_context = (modality, fold.index, img_observed, img_mean, img_sd)
            imaging_rows += [
                _imaging_row(ref, p, *img_context) for ref, p in reference_forecasts(histories, img_queries, img_mean).items()
            ]
        for name, factory in methods.items():
            started = time.perf_counter()
            method = factory().fit(list(fold.train), config, seed)
            if method.forecasts:
                answer = method.forecast(histories, queries.copy())
                predictions.append(score_forecasts(truth, answer, scaler, fold.index, name))
            if len(img_queries) and hasattr(method, "forecast_imaging"):
                imaging_rows.append(_imaging_row(name, method.forecast_imaging(histories, img_queries.copy()), *img_context))
            if method.predicts_risk:
                for s in landmarks:
                    test, train = at_landmark[s]
                    survival_rows += score_survival(method, name, test, train, s, windows, event, min_deaths, fold.index)
            runtime[name] += time.perf_counter() - started
            log.debug("fold %d: %s done (%.1fs so far)", fold.index, name, runtime[name])

    table = (
        pd.concat(predictions, ignore_index=True)[PREDICTION_COLUMNS] if predictions else pd.DataFrame(columns=PREDICTION_COLUMNS)
    )
    result = ForecastBenchmarkResult(
        data=cohort.name,
        n_subjects=len(records),
        n_subjects_total=len(cohort.records),
        variables=variables,
        transforms={v: config.variable(v).transform.value for v in variables},
        dropped_variables=dropped,
        settings=ProtocolSettings(
            n_folds=n_folds,
            seed=seed,
            max_missing=max_missing,
            landmarks=landmarks,
            windows=windows,
            event=event,
            min_deaths=min_deaths,
        ),
        methods=list(methods),
        forecast=_forecast_scores(table, variables),
        survival=_survival_scores(survival_rows, n_folds),
        runtime_seconds={k: round(v, 3) for k, v in runtime.items()},
        imaging=_imaging_scores(imaging_rows),
    )
    return result, table


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
