r"""``vpatient benchmark cohort-fidelity``: virtual cohorts judged as synthetic data.

Protocol, per fold of the forecasting benchmark's split
(:func:`vpatient.evaluate.protocol.forecast_folds`, ``n_folds`` folds, seed ``seed``):

- **Real patients.** Held out: the fold's test patients, plus the patients with a single
  visit (in no fold) dealt to the folds in turn
  (:func:`vpatient.evaluate.protocol.held_out_records`), so the held-out sets
  partition the cohort. Training: every other patient.
- **Virtual cohort.** The fold's world model (trained on the fold's training patients
  with >= 2 visits; cached, shared with ``pbc-trial``) with a population
  (:meth:`Simulator.fit_population`) fitted on the training patients;
  ``round(virtual_multiple x training patients)`` virtual patients with visits
  ``as_observed`` (a training patient's visit times), followed up to the cohort's
  longest follow-up, written as MEDS and read back.
- **(a) Classifier.** Per patient: static covariates, baseline treatment dose, the
  baseline value of every observed variable, the OLS slope over time of every
  continuous variable (modelling scale), number of visits, follow-up time and an
  indicator per event kind (NaN where unmeasured; the classifier handles it).
  ``HistGradientBoostingClassifier`` tells the real held-out patients from an
  equal-size random sample of the virtual cohort; AUC of the out-of-fold probabilities
  of a stratified ``cv_splits``-fold cross-validation, mean over ``cv_repeats``
  shuffles. Reference: the same classifier telling the real held-out patients from an
  equal-size sample of the real *training* patients (no difference to find: about 0.5,
  the floor the small sample allows). Target: AUC <= 0.60.
- **(b) Train on synthetic, test on real.** The forecasting benchmark's protocol on the
  fold's held-out patients with >= 2 visits: the landmark Cox model (Harrell's C of
  death at the protocol's landmarks s and windows w, outcome censored at s + w; a cell
  with fewer than ``min_deaths`` deaths is not scored; the fold's C is the mean over
  its scored cells) and the linear mixed model (MAE of the later visits' forecasts from
  the first ceil(n/2) visits, in the real training fold's standard deviations), each
  fitted once on the virtual cohort (its patients with >= 2 visits) and once on the
  real training patients (>= 2 visits, as in the forecasting benchmark). Targets:
  mean virtual-trained C >= 0.95 x mean real-trained C, and mean virtual-trained MAE <=
  1.1 x mean real-trained MAE (means over folds).
- **(c) Distributions** (reported, no target; each with the same quantity for real
  training vs real held-out patients as a reference, a virtual cohort of the training
  set's size being compared with the same held-out patients): the Wasserstein distance
  of every observed variable, on the modelling scale standardised by the real training
  mean and sd, within bins of years since enrolment (``year_bins``); the mean absolute
  difference between the correlation matrices of the baseline values of the continuous
  variables (off-diagonal pairs, pairwise-complete Pearson); and the integrated
  absolute difference between the Kaplan-Meier curves of death (other events censor)
  over [0, ``horizon``] years. The figure shows the Kaplan-Meier curves of the pooled
  held-out patients and the pooled virtual cohorts, and baseline histograms.

Everything random derives from ``seed`` (per fold and purpose via ``SeedSequence``).
"""

from __future__ import annotations

import logging
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field
from tqdm.auto import tqdm

from vpatient import transforms
from vpatient.benchmarks.base import StrictModel, VersionedBenchmarkResult, derived_seed, targets_table
from vpatient.benchmarks.pbc_trial import (
    StepOrLinearCurve,
    integrated_abs_difference,
    kaplan_meier_curve,
)
from vpatient.data.cohort import Cohort
from vpatient.data.timeline import observations_frame
from vpatient.evaluate.baselines import LandmarkCox, LinearMixedModel
from vpatient.evaluate.fold_models import DEFAULT_CACHE, TrainingRun, fold_model
from vpatient.evaluate.metrics import mae
from vpatient.evaluate.protocol import (
    DEFAULT_MAX_MISSING,
    QUERY_COLUMNS,
    Fold,
    ProtocolError,
    Standardiser,
    eligible_records,
    forecast_folds,
    forecast_variables,
    held_out_records,
    landmark_split,
    score_forecasts,
    score_survival,
    survival_landmark,
    survival_setup,
    target_frame,
)
from vpatient.model.latent_ode import ModelSettings
from vpatient.plans import dose_at
from vpatient.schemas import DatasetConfig, PatientRecord, VariableKind
from vpatient.simulation.simulator import Simulator
from vpatient.tables import markdown_table
from vpatient.train import TrainSettings

__all__ = [
    "CohortFidelityBenchmarkResult",
    "CohortFidelitySettings",
    "classifier_auc",
    "correlation_gap",
    "patient_features",
    "run_cohort_fidelity_benchmark",
    "wasserstein_by_bin",
]

log = logging.getLogger(__name__)

EVENT = "death"
MAX_AUC = 0.60
MIN_C_RATIO = 0.95
MAX_MAE_RATIO = 1.1
YEAR_BINS: tuple[tuple[float, float], ...] = ((0.0, 1.0), (1.0, 3.0), (3.0, 5.0), (5.0, math.inf))


# --------------------------------------------------------------------------- per-patient summaries


def _observed_variables(config: DatasetConfig) -> list[str]:
    return config.names(VariableKind.CONTINUOUS, VariableKind.BINARY, VariableKind.ORDINAL)


def patient_features(records: Sequence[PatientRecord], config: DatasetConfig) -> pd.DataFrame:
    """One row per patient: what a classifier sees (module docstring, (a)); NaN where unmeasured.

    Values on the modelling scale (log labs); slopes per year by OLS over the patient's
    observations of the variable (NaN with fewer than two distinct times).
    """
    static = config.names(VariableKind.STATIC)
    treatments = config.names(VariableKind.TREATMENT)
    observed = _observed_variables(config)
    continuous = config.names(VariableKind.CONTINUOUS)
    events = config.event_kinds
    spec = {v: config.variable(v).transform for v in observed}
    rows = []
    for r in records:
        row: dict[str, float] = {f"static:{s}": float(r.static.get(s, np.nan)) for s in static}
        row |= {f"dose at 0:{t}": float(dose_at(r.treatments, t, 0.0)) for t in treatments}
        visits = r.visit_times()
        first = visits[0] if visits else 0.0
        series: dict[str, list[tuple[float, float]]] = {v: [] for v in observed}
        for o in r.observations:
            if o.variable in series:
                series[o.variable].append((o.time, float(transforms.forward(o.value, spec[o.variable]))))
        for v in observed:
            at_first = [y for t, y in series[v] if t == first]
            row[f"baseline:{v}"] = at_first[0] if at_first else np.nan
        for v in continuous:
            pts = np.asarray(series[v], dtype=float).reshape(-1, 2)
            t, y = pts[:, 0], pts[:, 1]
            row[f"slope:{v}"] = float(np.cov(t, y, ddof=0)[0, 1] / np.var(t)) if len(np.unique(t)) > 1 else np.nan
        row["visits"] = float(len(visits))
        row["follow-up"] = float(r.end_of_followup)
        for e in events:
            row[f"event:{e}"] = float(any(x.kind == e for x in r.events))
        rows.append(row)
    return pd.DataFrame(rows, dtype=float)


# --------------------------------------------------------------------------- (a) classifier


def classifier_auc(a: pd.DataFrame, b: pd.DataFrame, seed: int, n_splits: int = 5, n_repeats: int = 5) -> float:
    """Cross-validated AUC of gradient boosting telling the rows of ``a`` from those of ``b``.

    Out-of-fold probabilities of a stratified ``n_splits``-fold split, AUC over all rows;
    mean over ``n_repeats`` shuffles (split ``r`` seeded ``seed + r``). 0.5: no difference found.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold
    from threadpoolctl import threadpool_limits

    x = pd.concat([a, b], ignore_index=True).to_numpy(float)
    y = np.concatenate([np.zeros(len(a), int), np.ones(len(b), int)])
    splits = min(n_splits, len(a), len(b))
    if splits < 2:
        raise ProtocolError(f"too few patients for a cross-validated classifier ({len(a)} vs {len(b)})")
    aucs = []
    # One OpenMP thread: with torch's own OpenMP runtime loaded in the process, the two runtimes' spinning threads
    # fight over the cores and a fit that takes 30 ms takes seconds (the test suite's fidelity fixture: 4 s -> 235 s
    # on 2 busy cores). These patient tables have hundreds of rows, where one thread is as fast as many.
    with threadpool_limits(limits=1, user_api="openmp"):
        for r in range(n_repeats):
            oof = np.zeros(len(y))
            for train, test in StratifiedKFold(splits, shuffle=True, random_state=seed + r).split(x, y):
                clf = HistGradientBoostingClassifier(random_state=seed + r).fit(x[train], y[train])
                oof[test] = clf.predict_proba(x[test])[:, 1]
            aucs.append(roc_auc_score(y, oof))
    return float(np.mean(aucs))


# --------------------------------------------------------------------------- (b) train on synthetic, test on real


def _tstr(
    train: list[PatientRecord],
    test: list[PatientRecord],
    config: DatasetConfig,
    variables: list[str],
    scaler: Standardiser,
    real_train: list[PatientRecord],
    landmarks: list[float],
    windows: list[float],
    event: str,
    min_deaths: int,
    seed: int,
    fold: int,
) -> tuple[float, list[dict], float]:
    """Forecast MAE of the mixed model and C-index rows of the landmark Cox model, both fitted on ``train``.

    Scored on the held-out ``test`` exactly as the forecasting benchmark scores them
    (``real_train`` gives the censoring distribution its Brier score would need).
    """
    histories, targets = [], []
    for record in test:
        history, later = landmark_split(record)
        histories.append(history)
        targets.append(target_frame(record.subject_id, later, config, variables))
    truth = pd.concat([t for t in targets if len(t)], ignore_index=True)
    lmm = LinearMixedModel().fit(train, config, seed)
    scored = score_forecasts(truth, lmm.forecast(histories, truth[QUERY_COLUMNS].copy()), scaler, fold, lmm.name)
    cox = LandmarkCox().fit(train, config, seed)
    rows = []
    for s in landmarks:
        at_test, at_train = survival_setup(test, s, event), survival_setup(real_train, s, event)
        try:
            rows += score_survival(cox, cox.name, at_test, at_train, s, windows, event, min_deaths, fold)
        except (ProtocolError, ValueError) as exc:  # e.g. no death after s in a small training set
            log.warning("fold %d: landmark Cox at s=%g not scored (%s)", fold, s, exc)
            rows += [dict(landmark=s, window=float(w), c=math.nan) for w in windows]
    cells = [r["c"] for r in rows if math.isfinite(r["c"])]
    return mae(scored["observed"], scored["mean"]), rows, float(np.mean(cells)) if cells else math.nan


# --------------------------------------------------------------------------- (c) distributions


def wasserstein_by_bin(
    a: pd.DataFrame, b: pd.DataFrame, variables: Sequence[str], bins: Sequence[tuple[float, float]]
) -> dict[str, dict[str, float | None]]:
    """Per variable and bin of ``time``: the Wasserstein distance between the ``value`` columns of two long frames."""
    from scipy.stats import wasserstein_distance

    out: dict[str, dict[str, float | None]] = {}
    for v in variables:
        av, bv = a[a["variable"] == v], b[b["variable"] == v]
        out[v] = {}
        for lo, hi in bins:
            x = av.loc[(av["time"] >= lo) & (av["time"] < hi), "value"].to_numpy(float)
            y = bv.loc[(bv["time"] >= lo) & (bv["time"] < hi), "value"].to_numpy(float)
            out[v][_bin_name(lo, hi)] = float(wasserstein_distance(x, y)) if len(x) and len(y) else None
    return out


def _bin_name(lo: float, hi: float) -> str:
    return f"{lo:g}+" if math.isinf(hi) else f"{lo:g}-{hi:g}"


def _baseline_frame(records: Sequence[PatientRecord], config: DatasetConfig, variables: Sequence[str]) -> pd.DataFrame:
    features = patient_features(records, config)
    return features[[f"baseline:{v}" for v in variables]].set_axis(list(variables), axis=1)


def correlation_gap(a: pd.DataFrame, b: pd.DataFrame) -> float:
    """Mean absolute difference of the off-diagonal Pearson correlations (pairwise complete) of two tables' columns."""
    ca, cb = a.corr().to_numpy(), b.corr().to_numpy()
    upper = np.triu_indices(ca.shape[0], k=1)
    diff = np.abs(ca[upper] - cb[upper])
    return float(np.nanmean(diff)) if np.isfinite(diff).any() else math.nan


def _km(records: Sequence[PatientRecord], config: DatasetConfig, event: str) -> pd.DataFrame:
    from vpatient.plots import survival_table

    durations, observed, _ = survival_table(Cohort("km", list(records), config), event)
    return kaplan_meier_curve(durations, observed)


def _km_distance(a: pd.DataFrame, b: pd.DataFrame, horizon: float) -> float:
    curve = lambda c: StepOrLinearCurve(c["time"].to_numpy(float), c["survival"].to_numpy(float), step=True)  # noqa: E731
    return integrated_abs_difference(curve(a), curve(b), horizon)


# --------------------------------------------------------------------------- result types


class LandmarkCell(StrictModel):
    landmark: float
    window: float
    c_index_real: float | None = Field(description="Landmark Cox fitted on the real training patients.")
    c_index_virtual: float | None = Field(description="Landmark Cox fitted on the virtual cohort.")


class FoldFidelity(StrictModel):
    """Every score of one fold."""

    fold: int
    n_train: int = Field(description="Real training patients (the population is fitted on them).")
    n_model_train: int = Field(description="Of them, the world model's training patients (>= 2 visits).")
    n_test: int = Field(description="Real held-out patients.")
    n_virtual: int
    deaths_test: float = Field(description="Share of held-out patients whose follow-up ended in death.")
    deaths_virtual: float
    auc: float = Field(description="(a) real held-out vs virtual.")
    auc_real_vs_real: float = Field(description="(a) reference: real held-out vs real training.")
    c_index_real: float | None = Field(description="(b) mean over scored cells, trained on real patients.")
    c_index_virtual: float | None
    mae_real: float = Field(description="(b) mixed-model forecast MAE in training sds, trained on real patients.")
    mae_virtual: float
    cells: list[LandmarkCell]
    wasserstein: dict[str, dict[str, float | None]] = Field(
        description="(c) variable -> year bin -> distance, virtual vs held-out."
    )
    wasserstein_reference: dict[str, dict[str, float | None]] = Field(description="(c) real training vs held-out.")
    wasserstein_mean: float | None
    wasserstein_reference_mean: float | None
    correlation_gap: float | None
    correlation_gap_reference: float | None
    km_distance: float = Field(description="(c) integral over [0, horizon] of |KM virtual - KM held-out|, years.")
    km_distance_reference: float
    seconds: float


class FeatureGap(StrictModel):
    """One per-patient summary on its own: how well it tells real from virtual (pooled over folds)."""

    feature: str
    auc: float = Field(description="Cross-validated AUC of the classifier on this summary alone (1 shuffle).")
    real_mean: float | None
    virtual_mean: float | None
    real_missing: float
    virtual_missing: float


class Summary(StrictModel):
    quantity: str
    mean: float | None
    sd: float | None
    reference_mean: float | None = None
    reference_sd: float | None = None


class Target(StrictModel):
    name: str
    value: float | None
    threshold: str
    passed: bool


class Curve(StrictModel):
    label: str
    time: list[float]
    survival: list[float]
    lower: list[float]
    upper: list[float]


class Histogram(StrictModel):
    variable: str
    edges: list[float]
    real: list[float] = Field(description="Density of the pooled real held-out patients' baseline values.")
    virtual: list[float] = Field(description="Density of the pooled virtual patients' baseline values.")


class CohortFidelityBenchmarkResult(VersionedBenchmarkResult):
    """The result of ``vpatient benchmark cohort-fidelity`` (protocol: module docstring)."""

    benchmark: Literal["cohort-fidelity"] = "cohort-fidelity"
    data: str
    event: str
    n_patients: int
    seed: int
    n_folds: int
    years: float = Field(description="Follow-up of the virtual cohorts (the cohort's longest), years.")
    virtual_multiple: float
    schedule: str
    cv_splits: int
    cv_repeats: int
    features: list[str]
    year_bins: list[str]
    landmarks: list[float]
    windows: list[float]
    min_deaths: int
    forecast_variables: list[str]
    horizon: float
    folds: list[FoldFidelity]
    auc_pooled: float = Field(
        description="(a) diagnostic: the classifier on every fold's held-out patients and virtual samples pooled "
        "(n_pooled each); more patients, more power than the per-fold AUC that is judged."
    )
    n_pooled: int
    feature_gaps: list[FeatureGap] = Field(description="(a) diagnostic: each summary alone, pooled; furthest from 0.5 first.")
    summary: list[Summary]
    targets: list[Target]
    curves: list[Curve]
    histograms: list[Histogram]
    train_settings: dict
    model_settings: dict
    runtime_seconds: float

    def plot(self, path: Path) -> Path:
        """The result's figure, drawn by :func:`plot_cohort_fidelity`."""
        return plot_cohort_fidelity(self, path)

    def to_markdown(self) -> str:
        lines = [
            f"# Virtual cohorts as synthetic data: {self.data}",
            "",
            f"vpatient {self.vpatient_version}, seed {self.seed}. {self.n_folds}-fold split over {self.n_patients} patients: "
            f"per fold a virtual cohort ({self.virtual_multiple:g} x the real training patients, visits {self.schedule}, "
            f"{self.years:.3g} years) from the fold's model and a population fitted on its training patients, judged "
            "against the held-out real patients. Mean ± sd over folds; the reference compares the real training "
            "patients with the same held-out patients.",
            "",
            "## Targets",
            "",
            targets_table((t.name, t.value, t.threshold, t.passed) for t in self.targets),
            "",
            "## Scores",
            "",
            markdown_table(
                pd.DataFrame(
                    [
                        {
                            "quantity": s.quantity,
                            "virtual": _pm(s.mean, s.sd),
                            "reference (real training)": _pm(s.reference_mean, s.reference_sd),
                        }
                        for s in self.summary
                    ]
                ),
                index=False,
            ),
            "",
            f"(a) AUC of {self.cv_splits}-fold stratified cross-validation (mean of {self.cv_repeats} shuffles) of gradient "
            f"boosting on {len(self.features)} per-patient summaries, held-out patients vs an equal-size sample. (b) landmark "
            f"Cox C-index of {self.event} (landmarks {', '.join(f'{x:g}' for x in self.landmarks)}, windows "
            f"{', '.join(f'{x:g}' for x in self.windows)}; cells with < {self.min_deaths} deaths in a fold not scored; the "
            "reference column is the model trained on real patients) and mixed-model forecast MAE in training sds. (c) "
            "standardised Wasserstein distances (mean over variables and year bins), correlation gap of baseline "
            f"continuous values, integrated |KM difference| of {self.event} over 0-{self.horizon:g} years.",
            "",
            f"Pooled over folds ({self.n_pooled} held-out patients vs {self.n_pooled} virtual; diagnostic, more power than a "
            f"fold): AUC {self.auc_pooled:.3f}. The summaries that give virtual patients away best on their own (AUC of "
            "each alone, pooled; means on the modelling scale):",
            "",
            markdown_table(
                pd.DataFrame(
                    [
                        {
                            "summary": g.feature,
                            "AUC alone": g.auc,
                            "real mean": g.real_mean,
                            "virtual mean": g.virtual_mean,
                            "missing real": g.real_missing,
                            "missing virtual": g.virtual_missing,
                        }
                        for g in self.feature_gaps[:8]
                    ]
                ),
                index=False,
            ),
            "",
            "## Wasserstein distance by variable and years since enrolment",
            "",
            "Virtual vs held-out (real training vs held-out in brackets), mean over folds, standardised units.",
            "",
        ]
        variables = list(self.folds[0].wasserstein) if self.folds else []
        rows = []
        for v in variables:
            row = {"variable": v}
            for b in self.year_bins:
                virt = _mean([f.wasserstein[v][b] for f in self.folds])
                ref = _mean([f.wasserstein_reference[v][b] for f in self.folds])
                row[f"{b} y"] = "-" if virt is None else f"{virt:.3f} ({ref:.3f})" if ref is not None else f"{virt:.3f}"
            rows.append(row)
        lines += [markdown_table(pd.DataFrame(rows), index=False), "", "## Per fold", ""]
        rows = [
            {
                "fold": f.fold,
                "train": f.n_train,
                "held out": f.n_test,
                "virtual": f.n_virtual,
                "deaths held out": f.deaths_test,
                "deaths virtual": f.deaths_virtual,
                "AUC": f.auc,
                "AUC real-real": f.auc_real_vs_real,
                "C real": f.c_index_real,
                "C virtual": f.c_index_virtual,
                "MAE real": f.mae_real,
                "MAE virtual": f.mae_virtual,
                "s": f.seconds,
            }
            for f in self.folds
        ]
        lines += [markdown_table(pd.DataFrame(rows), index=False), ""]
        lines += [f"Runtime {self.runtime_seconds:.0f} s (training included unless cached; context only).", ""]
        return "\n".join(lines)


def _pm(mean: float | None, sd: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.3f} ± {sd:.3f}" if sd is not None else f"{mean:.3f}"


def _finite(values: Sequence[float | None]) -> np.ndarray:
    return np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)


def _mean(values: Sequence[float | None]) -> float | None:
    arr = _finite(values)
    return float(arr.mean()) if arr.size else None


def _sd(values: Sequence[float | None]) -> float | None:
    arr = _finite(values)
    return float(arr.std(ddof=1)) if arr.size > 1 else None


def _opt(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class CohortFidelitySettings:
    """What ``run_cohort_fidelity_benchmark`` runs (protocol: module docstring)."""

    seed: int = 0
    n_folds: int = 5
    #: Virtual cohort size as a multiple of the real training patients.
    virtual_multiple: float = 1.0
    cv_splits: int = 5
    cv_repeats: int = 5
    event: str = EVENT
    min_deaths: int = 5
    horizon: float = 10.0
    year_bins: Sequence[tuple[float, float]] = YEAR_BINS
    train_settings: TrainSettings | None = None
    model_settings: ModelSettings | None = None
    cache_dir: str | Path | None = DEFAULT_CACHE
    progress: bool = True


@dataclass(frozen=True)
class _Protocol:
    """What every fold shares: the settings, the training run of every fold model, and the data's layout."""

    settings: CohortFidelitySettings
    config: DatasetConfig
    run: TrainingRun
    years: float
    landmarks: list[float]
    windows: list[float]
    variables: list[str]
    observed_vars: list[str]
    continuous: list[str]


@dataclass
class _Pooled:
    """What is pooled over folds for the diagnostics: held-out and virtual patients, classifier inputs."""

    test: list[PatientRecord] = field(default_factory=list)
    virtual: list[PatientRecord] = field(default_factory=list)
    real_x: list[pd.DataFrame] = field(default_factory=list)
    virtual_x: list[pd.DataFrame] = field(default_factory=list)
    features: list[str] = field(default_factory=list)


def run_cohort_fidelity_benchmark(
    cohort: Cohort, settings: CohortFidelitySettings | None = None
) -> CohortFidelityBenchmarkResult:
    """Run the protocol of the module docstring on ``cohort`` (default settings: :class:`CohortFidelitySettings`)."""
    s = settings or CohortFidelitySettings()
    started = time.perf_counter()
    protocol = _protocol(cohort, s)
    folds = forecast_folds(cohort, s.n_folds, s.seed)
    splits = held_out_records(cohort, s.n_folds, s.seed)
    fold_rows: list[FoldFidelity] = []
    pooled = _Pooled()
    for fold, (_, test) in tqdm(
        list(zip(folds, splits, strict=True)),
        desc="cohort-fidelity benchmark",
        unit="fold",
        file=sys.stderr,
        disable=not s.progress,
    ):
        fold_rows.append(_score_fold(cohort, protocol, fold, test, pooled))
    return _result(cohort, protocol, fold_rows, pooled, started)


def _protocol(cohort: Cohort, s: CohortFidelitySettings) -> _Protocol:
    """Check the settings against the data and fill in what every fold shares."""
    config = cohort.config
    if s.event not in config.event_kinds:
        raise ProtocolError(f"event {s.event!r} is not an event kind of config {config.name!r}")
    if not s.virtual_multiple > 0:
        raise ProtocolError(f"virtual_multiple must be > 0, got {s.virtual_multiple}")
    landmarks, windows = survival_landmark(config)
    return _Protocol(
        settings=s,
        config=config,
        run=TrainingRun(s.seed, s.cache_dir, s.train_settings, s.model_settings),
        years=float(max(r.end_of_followup for r in cohort.records)),
        landmarks=landmarks,
        windows=windows,
        variables=forecast_variables(eligible_records(cohort.records), config, DEFAULT_MAX_MISSING)[0],
        observed_vars=_observed_variables(config),
        continuous=config.names(VariableKind.CONTINUOUS),
    )


def _virtual_cohort(cohort: Cohort, p: _Protocol, fold: Fold, train: list[PatientRecord]) -> list[PatientRecord]:
    """The fold's virtual patients: its model (cached), a population fitted on the real training patients, a cohort drawn."""
    s, k = p.settings, fold.index
    model = fold_model(cohort, k, s.n_folds, fold.train, p.run)
    sim = Simulator(model)
    sim.fit_population(train, seed=derived_seed(s.seed, k, 0))
    n_virtual = max(1, round(s.virtual_multiple * len(train)))
    with tempfile.TemporaryDirectory(prefix="vpatient-fidelity-") as tmp:
        return sim.cohort(
            n_virtual,
            seed=derived_seed(s.seed, k, 1),
            years=p.years,
            schedule="as_observed",
            out=Path(tmp) / "cohort",
            progress=False,
        ).records()


def _classifier_scores(
    p: _Protocol, k: int, test: list[PatientRecord], virtual: list[PatientRecord], train: list[PatientRecord], pooled: _Pooled
) -> tuple[float, float]:
    """(a) AUC of real held-out vs virtual, and of real held-out vs real training (the reference)."""
    s = p.settings
    rng = np.random.default_rng(derived_seed(s.seed, k, 2))
    real_x, virtual_x, train_x = (patient_features(r, p.config) for r in (test, virtual, train))
    pooled.features = list(real_x.columns)
    n = len(test)
    virtual_sample = virtual_x.iloc[rng.choice(len(virtual_x), min(n, len(virtual_x)), replace=False)]
    auc = classifier_auc(real_x, virtual_sample, s.seed, s.cv_splits, s.cv_repeats)
    pooled.real_x.append(real_x)
    pooled.virtual_x.append(virtual_sample)
    auc_ref = classifier_auc(
        real_x, train_x.iloc[rng.choice(len(train_x), min(n, len(train_x)), replace=False)], s.seed, s.cv_splits, s.cv_repeats
    )
    return auc, auc_ref


def _tstr_scores(p: _Protocol, fold: Fold, virtual: list[PatientRecord]) -> dict:
    """(b) Train on synthetic, test on real: forecast MAE and C-index, trained on real and on virtual patients."""
    s = p.settings
    scaler = Standardiser.fit(fold.train, p.config, p.variables)
    common = (p.config, p.variables, scaler, list(fold.train), p.landmarks, p.windows, s.event, s.min_deaths, s.seed, fold.index)
    mae_real, cells_real, c_real = _tstr(list(fold.train), list(fold.test), *common)
    mae_virtual, cells_virtual, c_virtual = _tstr(eligible_records(virtual), list(fold.test), *common)
    by_cell = {(r["landmark"], r["window"]): r["c"] for r in cells_virtual}
    cells = [
        LandmarkCell(
            landmark=r["landmark"],
            window=r["window"],
            c_index_real=_opt(r["c"]),
            c_index_virtual=_opt(by_cell.get((r["landmark"], r["window"]))),
        )
        for r in cells_real
    ]
    return dict(
        c_index_real=_opt(c_real), c_index_virtual=_opt(c_virtual), mae_real=mae_real, mae_virtual=mae_virtual, cells=cells
    )


def _distribution_scores(
    p: _Protocol, test: list[PatientRecord], virtual: list[PatientRecord], train: list[PatientRecord]
) -> dict:
    """(c) Distances of the virtual patients' distributions from the held-out ones, with real training as reference."""
    s, config, observed_vars = p.settings, p.config, p.observed_vars
    standard = Standardiser.fit(train, config, observed_vars)

    def long(records: Sequence[PatientRecord]) -> pd.DataFrame:
        frame = observations_frame(records, config, transformed=True)
        frame = frame[frame["variable"].isin(observed_vars)]
        return standard.transform(frame, ["value"])

    long_test, long_virtual, long_train = long(test), long(virtual), long(train)
    w_virtual = wasserstein_by_bin(long_virtual, long_test, observed_vars, s.year_bins)
    w_ref = wasserstein_by_bin(long_train, long_test, observed_vars, s.year_bins)
    base_test, base_virtual, base_train = (_baseline_frame(r, config, p.continuous) for r in (test, virtual, train))
    km_test, km_virtual, km_train = (_km(r, config, s.event) for r in (test, virtual, train))
    return dict(
        wasserstein=w_virtual,
        wasserstein_reference=w_ref,
        wasserstein_mean=_mean([x for d in w_virtual.values() for x in d.values()]),
        wasserstein_reference_mean=_mean([x for d in w_ref.values() for x in d.values()]),
        correlation_gap=_opt(correlation_gap(base_virtual, base_test)),
        correlation_gap_reference=_opt(correlation_gap(base_train, base_test)),
        km_distance=_km_distance(km_virtual, km_test, s.horizon),
        km_distance_reference=_km_distance(km_train, km_test, s.horizon),
    )


def _score_fold(cohort: Cohort, p: _Protocol, fold: Fold, test: list[PatientRecord], pooled: _Pooled) -> FoldFidelity:
    """Every score of one fold: its virtual cohort judged by (a), (b) and (c)."""
    t0 = time.perf_counter()
    held = {r.subject_id for r in test}
    train = [r for r in cohort.records if r.subject_id not in held]
    virtual = _virtual_cohort(cohort, p, fold, train)
    pooled.virtual += virtual
    pooled.test += test
    auc, auc_ref = _classifier_scores(p, fold.index, test, virtual, train, pooled)
    tstr = _tstr_scores(p, fold, virtual)
    distributions = _distribution_scores(p, test, virtual, train)

    def died(records: Sequence[PatientRecord]) -> float:
        return float(np.mean([any(e.kind == p.settings.event for e in r.events) for r in records]))

    return FoldFidelity(
        fold=fold.index,
        n_train=len(train),
        n_model_train=len(fold.train),
        n_test=len(test),
        n_virtual=len(virtual),
        deaths_test=round(died(test), 4),
        deaths_virtual=round(died(virtual), 4),
        auc=auc,
        auc_real_vs_real=auc_ref,
        **tstr,
        **distributions,
        seconds=round(time.perf_counter() - t0, 1),
    )


def _result(
    cohort: Cohort, p: _Protocol, fold_rows: list[FoldFidelity], pooled: _Pooled, started: float
) -> CohortFidelityBenchmarkResult:
    """The folds summarised against the targets, with the pooled diagnostics, curves and histograms."""
    s, config = p.settings, p.config
    train_settings, model_settings = p.run.resolved()
    summary, targets = _summarise(fold_rows)
    real_pool, virtual_pool = pd.concat(pooled.real_x, ignore_index=True), pd.concat(pooled.virtual_x, ignore_index=True)
    auc_pooled = classifier_auc(real_pool, virtual_pool, s.seed, s.cv_splits, s.cv_repeats)
    giveaways = [
        FeatureGap(
            feature=f,
            auc=classifier_auc(real_pool[[f]], virtual_pool[[f]], s.seed, s.cv_splits, 1),
            real_mean=_opt(float(real_pool[f].mean())),
            virtual_mean=_opt(float(virtual_pool[f].mean())),
            real_missing=round(float(real_pool[f].isna().mean()), 4),
            virtual_missing=round(float(virtual_pool[f].isna().mean()), 4),
        )
        for f in pooled.features
    ]
    curves = [
        Curve(label=label, **{c: [round(float(x), 5) for x in table[c]] for c in ("time", "survival", "lower", "upper")})
        for label, table in (
            (f"real held-out (n={len(pooled.test)})", _km(pooled.test, config, s.event)),
            (f"virtual (n={len(pooled.virtual)})", _km(pooled.virtual, config, s.event)),
        )
    ]
    return CohortFidelityBenchmarkResult(
        data=cohort.name,
        event=s.event,
        n_patients=len(cohort.records),
        seed=s.seed,
        n_folds=s.n_folds,
        years=p.years,
        virtual_multiple=s.virtual_multiple,
        schedule="as_observed",
        cv_splits=s.cv_splits,
        cv_repeats=s.cv_repeats,
        features=pooled.features,
        year_bins=[_bin_name(lo, hi) for lo, hi in s.year_bins],
        landmarks=p.landmarks,
        windows=p.windows,
        min_deaths=s.min_deaths,
        forecast_variables=p.variables,
        horizon=s.horizon,
        folds=fold_rows,
        auc_pooled=auc_pooled,
        n_pooled=len(real_pool),
        feature_gaps=sorted(giveaways, key=lambda g: -abs(g.auc - 0.5)),
        summary=summary,
        targets=targets,
        curves=curves,
        histograms=_histograms(pooled.test, pooled.virtual, config, p.continuous),
        train_settings=train_settings.to_dict(),
        model_settings=model_settings.to_dict(),
        runtime_seconds=round(time.perf_counter() - started, 1),
    )


def _summarise(folds: list[FoldFidelity]) -> tuple[list[Summary], list[Target]]:
    def col(name: str) -> list[float | None]:
        return [getattr(f, name) for f in folds]

    pairs = [
        ("(a) classifier AUC", "auc", "auc_real_vs_real"),
        ("(b) landmark Cox C-index", "c_index_virtual", "c_index_real"),
        ("(b) mixed-model forecast MAE", "mae_virtual", "mae_real"),
        ("(c) Wasserstein distance (mean)", "wasserstein_mean", "wasserstein_reference_mean"),
        ("(c) correlation gap", "correlation_gap", "correlation_gap_reference"),
        ("(c) integrated |KM difference|, years", "km_distance", "km_distance_reference"),
        ("share of patients who died", "deaths_virtual", "deaths_test"),
    ]
    summary = [
        Summary(quantity=q, mean=_mean(col(a)), sd=_sd(col(a)), reference_mean=_mean(col(b)), reference_sd=_sd(col(b)))
        for q, a, b in pairs
    ]
    summary[-1] = summary[-1].model_copy(update={"quantity": "share who died (reference: held-out)"})
    auc = _mean(col("auc"))
    c_virtual, c_real = _mean(col("c_index_virtual")), _mean(col("c_index_real"))
    mae_virtual, mae_real = _mean(col("mae_virtual")), _mean(col("mae_real"))
    c_ratio = c_virtual / c_real if c_virtual is not None and c_real else None
    mae_ratio = mae_virtual / mae_real if mae_virtual is not None and mae_real else None
    targets = [
        Target(name="(a) AUC real vs virtual", value=auc, threshold=f"<= {MAX_AUC:g}", passed=auc is not None and auc <= MAX_AUC),
        Target(
            name="(b) C-index virtual-trained / real-trained",
            value=c_ratio,
            threshold=f">= {MIN_C_RATIO:g}",
            passed=c_ratio is not None and c_ratio >= MIN_C_RATIO,
        ),
        Target(
            name="(b) forecast MAE virtual-trained / real-trained",
            value=mae_ratio,
            threshold=f"<= {MAX_MAE_RATIO:g}",
            passed=mae_ratio is not None and mae_ratio <= MAX_MAE_RATIO,
        ),
    ]
    return summary, targets


def _histograms(
    real: Sequence[PatientRecord],
    virtual: Sequence[PatientRecord],
    config: DatasetConfig,
    variables: Sequence[str],
    bins: int = 20,
) -> list[Histogram]:
    """Densities of the baseline values (modelling scale) on common edges spanning the real and virtual values."""
    a, b = _baseline_frame(real, config, variables), _baseline_frame(virtual, config, variables)
    out = []
    for v in variables:
        x, y = a[v].dropna().to_numpy(float), b[v].dropna().to_numpy(float)
        if not len(x):
            continue
        edges = np.histogram_bin_edges(np.concatenate([x, y]), bins=bins)
        dx = np.histogram(x, edges, density=True)[0]
        dy = np.histogram(y, edges, density=True)[0] if len(y) else np.zeros(bins)
        out.append(Histogram(variable=v, edges=_r(edges), real=_r(dx), virtual=_r(dy)))
    return out


def _r(values: np.ndarray) -> list[float]:
    return [round(float(v), 5) for v in values]


# --------------------------------------------------------------------------- writing


def plot_cohort_fidelity(result: CohortFidelityBenchmarkResult, path: str | Path) -> Path:
    """Kaplan-Meier curves of the pooled real held-out patients and virtual cohorts, and baseline histograms."""
    # A bare Figure draws without pyplot, so no backend is selected behind the caller's back.
    from matplotlib.figure import Figure

    panels = 1 + len(result.histograms)
    cols = min(4, panels)
    rows = math.ceil(panels / cols)
    fig = Figure(figsize=(4.0 * cols, 3.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    flat = axes.ravel()
    ax = flat[0]
    for k, c in enumerate(result.curves):
        ax.step(c.time, c.survival, where="post", color=f"C{k}", label=c.label)
        ax.fill_between(c.time, c.lower, c.upper, step="post", color=f"C{k}", alpha=0.15)
    ax.set_xlabel("years since enrolment")
    ax.set_ylabel(f"free of {result.event}")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Kaplan-Meier of {result.event}, folds pooled", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    for ax, h in zip(flat[1:], result.histograms, strict=False):
        edges = np.asarray(h.edges)
        ax.stairs(h.real, edges, color="C0", label="real held-out", lw=1.4)
        ax.stairs(h.virtual, edges, color="C1", label="virtual", lw=1.4)
        ax.set_title(f"baseline {h.variable} (modelling scale)", fontsize=9)
        ax.set_yticks([])
        ax.grid(alpha=0.3)
    if len(flat) > 1 and result.histograms:
        flat[1].legend(fontsize=7)
    for ax in flat[panels:]:
        ax.set_visible(False)
    target = {t.name: t for t in result.targets}
    auc = next(iter(target.values()))
    fig.suptitle(
        f"{result.data}: virtual cohorts vs real held-out patients ({result.n_folds} folds; classifier AUC {auc.value:.3f})"
        if auc.value is not None
        else f"{result.data}: virtual cohorts vs real held-out patients",
        fontsize=11,
    )
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path
