r"""Prognostic-score adjustment of a real randomised trial (digital-twin covariate adjustment, PROCOVA).

A randomised trial's effect estimate is unbiased without covariates, but a covariate that
predicts the outcome soaks up outcome variance and can make the estimate more precise.
PROCOVA (the method regulators qualified for trials) uses one such covariate: each
patient's *prognostic score*, the outcome a model predicts for them from baseline data
had they received the control arm. This module computes that score with the world model
and re-analyses a real trial without and with it.

Protocol:

- **Arms.** The treatment arm of each patient as recorded at enrolment
  (:func:`vpatient.data.cohort.arm_of`). The data must hold exactly two arms, one of them
  untreated (``none``): that is the reference (control) arm.
- **Prognostic score, cross-fitted.** The folds of the forecasting protocol
  (:func:`vpatient.evaluate.fold_models.fold_models`, ``n_folds`` folds, seed ``seed``);
  patients too short for the protocol's folds are dealt to the folds' held-out sets as
  the PBC trial benchmark does (:func:`vpatient.evaluate.protocol.held_out_records`),
  so every patient is scored exactly once, by the model of the fold that did not train on
  them. A model that had seen a patient's follow-up would carry that patient's own outcome
  into the covariate, and the adjusted analysis would then be too optimistic; that is why
  no in-sample model is ever used. Each patient is scored from the record as known at
  enrolment (:func:`baseline_record`: truncated at 0, the treatment assigned there
  removed), under the control arm's plan (no treatment), so the score carries prognosis
  and nothing of the treatment given; it is the same whichever arm the patient was in:
  with ``n_samples`` posterior draws (:meth:`VirtualPatientModel.simulate`, which
  ensembles also provide),

  - survival score: :math:`\log(-\log \bar S(h))`, the log cumulative hazard of the mean
    predicted probability :math:`\bar S(h)` of being free of the primary event at the
    horizon ``h`` (other event kinds censor), the scale of a Cox model's linear predictor;
  - lab score: the median over draws of the lab's predicted mean at time ``at`` on the
    modelling scale (transformed, e.g. log bilirubin).

- **Analyses** (:func:`cox_adjustment`, :func:`ancova_adjustment`; both take a
  precomputed score, so they serve any score). Scores are standardised (mean 0, sd 1),
  which changes neither the treatment estimate nor its standard error.

  - Survival: Cox model (lifelines, Efron ties) of the primary event, other event kinds
    censoring at their time; unadjusted = treatment only, adjusted = treatment + score.
  - Lab: ANCOVA (ordinary least squares, classical standard errors and t intervals) of the
    lab at ``at``: each patient's value at the visit nearest ``at`` within ``± window``,
    modelling scale. Both analyses keep the lab's baseline value (last value at or before
    enrolment) as a covariate, the standard ANCOVA of a trial with a baseline measurement,
    so "adjusted" shows what the score adds beyond it: unadjusted = treatment + baseline,
    adjusted = treatment + baseline + score. Patients without the baseline or the
    follow-up value (died, dropped out, not measured near ``at``) are left out and
    counted; the lab analysis therefore compares survivors with a measurement, which is
    not protected by randomisation the way the survival analysis is.

- **Report.** Effects with 95% CIs without and with the score; the standard-error
  reduction :math:`1 - SE_{adj}/SE_{unadj}`; the equivalent sample-size saving
  :math:`1 - (SE_{adj}/SE_{unadj})^2`, the share of patients the adjusted analysis could do
  without for the same precision (negative when adjustment costs precision); patients,
  events and dropped patients; the score's association with the outcome.

In a linear model a score with correlation :math:`\rho` to the outcome shrinks the
variance of the effect by about :math:`\rho^2`. A Cox model is different: its hazard ratio
is not collapsible, so adjusting estimates a conditional effect, further from the null than
the unadjusted marginal one, and its standard error usually does *not* shrink; the gain of
adjustment shows as a larger effect relative to its standard error instead. Under a null
effect, as in PBC, neither moves much. The result reports what is measured.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from vpatient.benchmarks.base import StrictModel
from vpatient.data.cohort import NO_TREATMENT_ARM, Cohort, arm_of
from vpatient.data.timeline import observations_frame, truncate_record
from vpatient.errors import VPatientError
from vpatient.evaluate.fold_models import DEFAULT_CACHE, TrainingRun, fold_models
from vpatient.schemas import PatientRecord, TreatmentPlan, VariableKind

if TYPE_CHECKING:  # torch-backed: imported when scores are computed, not when the CLI starts
    from vpatient.model.latent_ode import ModelSettings
    from vpatient.train import TrainSettings
    from vpatient.virtual_patient import VirtualPatientModel

__all__ = [
    "AdjustedEffect",
    "Estimate",
    "ancova_adjustment",
    "baseline_arms",
    "baseline_record",
    "control_plan",
    "cox_adjustment",
    "cross_fitted_scores",
    "prognostic_scores",
    "trial_table",
]

log = logging.getLogger(__name__)

DEFAULT_EVENT = "death"
DEFAULT_HORIZON = 5.0
DEFAULT_LAB_TIME = 2.0
DEFAULT_WINDOW = 0.5
DEFAULT_SAMPLES = 100


# --------------------------------------------------------------------------- what an analysis returns


class Estimate(StrictModel):
    """One coefficient: estimate, standard error, 95% CI and two-sided p."""

    estimate: float
    se: float
    lower: float
    upper: float
    p: float
    hazard_ratio: float | None = Field(default=None, description="exp(estimate) for a Cox coefficient.")
    hazard_ratio_lower: float | None = None
    hazard_ratio_upper: float | None = None


class AdjustedEffect(StrictModel):
    """A treatment effect estimated without and with the prognostic score."""

    analysis: Literal["cox", "ancova"]
    outcome: str = Field(description="What is analysed, e.g. 'death' or 'log(bilirubin) at 2 years'.")
    effect: str = Field(description="What the treatment coefficient is, e.g. 'log hazard ratio'.")
    unadjusted_covariates: list[str] = Field(description="Covariates of the unadjusted analysis besides treatment.")
    n_patients: int = Field(description="Patients analysed.")
    n_events: int | None = Field(description="Primary events (Cox only).")
    n_dropped: int = Field(description="Patients left out (no outcome, baseline or score).")
    unadjusted: Estimate
    adjusted: Estimate
    score: Estimate = Field(description="The score's coefficient in the adjusted analysis, per standard deviation.")
    score_correlation: float
    correlation_measure: str = Field(description="How score_correlation is measured.")
    se_reduction: float = Field(description="1 - SE_adjusted / SE_unadjusted.")
    sample_size_saving: float = Field(
        description="1 - (SE_adjusted / SE_unadjusted)^2: share of patients the adjusted analysis can do without "
        "for equal precision (negative: it needs more)."
    )
    null_in_adjusted_ci: bool = Field(description="The adjusted 95% CI contains no effect (0 on its scale).")


# --------------------------------------------------------------------------- the analyses


def cox_adjustment(
    durations: np.ndarray, event: np.ndarray, treated: np.ndarray, score: np.ndarray, outcome: str = "event"
) -> AdjustedEffect:
    """Cox log hazard ratio of treated vs untreated, without and with ``score`` as covariate.

    ``durations`` is each patient's time to the event or censoring, ``event`` whether the event
    was observed, ``treated`` the randomised arm (bool), ``score`` the precomputed
    prognostic score (higher: earlier event expected).
    """
    from lifelines import CoxPHFitter
    from lifelines.exceptions import ConvergenceError
    from lifelines.utils import concordance_index

    frame = pd.DataFrame(
        {
            "time": np.asarray(durations, float),
            "event": np.asarray(event, bool).astype(int),
            "treated": np.asarray(treated, bool).astype(float),
            "score": _standardised(score),
        }
    )
    _check_arms(frame["treated"].to_numpy())
    if frame["event"].sum() == 0:
        raise VPatientError(f"no {outcome} events in the data: a Cox analysis needs at least one")
    fits = {}
    for name, covariates in (("unadjusted", ["treated"]), ("adjusted", ["treated", "score"])):
        try:
            fits[name] = CoxPHFitter().fit(frame[["time", "event", *covariates]], "time", "event").summary
        except ConvergenceError as exc:
            raise VPatientError(f"the {name} Cox model of {outcome} did not converge: {exc}") from None
    unadjusted, adjusted = (_cox_estimate(fits[k].loc["treated"]) for k in ("unadjusted", "adjusted"))
    # Somers' D, the rank correlation of score and censored event time: 2C - 1 (a higher score means earlier events).
    c_index = concordance_index(frame["time"], -frame["score"], frame["event"])
    return _adjusted_effect(
        "cox",
        outcome,
        "log hazard ratio",
        [],
        n_patients=len(frame),
        n_events=int(frame["event"].sum()),
        n_dropped=0,
        unadjusted=unadjusted,
        adjusted=adjusted,
        score=_cox_estimate(fits["adjusted"].loc["score"]),
        correlation=2 * c_index - 1,
        measure="Somers' D with the event time (2 C-index - 1)",
    )


def ancova_adjustment(
    outcome: np.ndarray,
    treated: np.ndarray,
    score: np.ndarray,
    baseline: np.ndarray | None = None,
    label: str = "outcome",
) -> AdjustedEffect:
    """ANCOVA difference treated - untreated in ``outcome``, without and with ``score`` as covariate.

    ``baseline`` (the outcome measured at enrolment), when given, is a covariate of both
    analyses. Patients with a missing (NaN) outcome, baseline or score are left out and
    counted in ``n_dropped``. Ordinary least squares with classical standard errors and
    t-distribution intervals.
    """
    y = np.asarray(outcome, float)
    columns = {"treatment": np.asarray(treated, bool).astype(float), "score": np.asarray(score, float)}
    if baseline is not None:
        columns["baseline"] = np.asarray(baseline, float)
    keep = np.isfinite(y) & np.all([np.isfinite(c) for c in columns.values()], axis=0)
    y = y[keep]
    columns = {name: c[keep] for name, c in columns.items()}
    columns["score"] = _standardised(columns["score"])
    _check_arms(columns["treatment"])
    base = ["baseline"] if baseline is not None else []
    unadjusted = _ols(y, columns, ["treatment", *base])
    adjusted = _ols(y, columns, ["treatment", *base, "score"])
    correlation = float(np.corrcoef(columns["score"], y)[0, 1])
    return _adjusted_effect(
        "ancova",
        label,
        "difference",
        base,
        n_patients=len(y),
        n_events=None,
        n_dropped=int((~keep).sum()),
        unadjusted=unadjusted["treatment"],
        adjusted=adjusted["treatment"],
        score=adjusted["score"],
        correlation=correlation,
        measure="Pearson correlation with the outcome",
    )


def _adjusted_effect(
    analysis: Literal["cox", "ancova"],
    outcome: str,
    effect: str,
    covariates: list[str],
    *,
    n_patients: int,
    n_events: int | None,
    n_dropped: int,
    unadjusted: Estimate,
    adjusted: Estimate,
    score: Estimate,
    correlation: float,
    measure: str,
) -> AdjustedEffect:
    ratio = adjusted.se / unadjusted.se
    return AdjustedEffect(
        analysis=analysis,
        outcome=outcome,
        effect=effect,
        unadjusted_covariates=covariates,
        n_patients=n_patients,
        n_events=n_events,
        n_dropped=n_dropped,
        unadjusted=unadjusted,
        adjusted=adjusted,
        score=score,
        score_correlation=float(correlation),
        correlation_measure=measure,
        se_reduction=float(1 - ratio),
        sample_size_saving=float(1 - ratio**2),
        null_in_adjusted_ci=bool(adjusted.lower <= 0 <= adjusted.upper),
    )


def _standardised(values: np.ndarray) -> np.ndarray:
    """Mean 0, sd 1 (sd 1 kept when constant, so a useless score stays finite); NaN stays NaN."""
    x = np.asarray(values, float)
    sd = np.nanstd(x)
    return (x - np.nanmean(x)) / (sd if sd > 0 else 1.0)


def _check_arms(treated: np.ndarray) -> None:
    n_treated = int(treated.sum())
    if n_treated == 0 or n_treated == len(treated):
        raise VPatientError(
            f"only one arm among the {len(treated)} patients analysed: an effect needs treated and untreated patients"
        )


def _cox_estimate(row: pd.Series) -> Estimate:
    return Estimate(
        estimate=float(row["coef"]),
        se=float(row["se(coef)"]),
        lower=float(row["coef lower 95%"]),
        upper=float(row["coef upper 95%"]),
        p=float(row["p"]),
        hazard_ratio=float(row["exp(coef)"]),
        hazard_ratio_lower=float(row["exp(coef) lower 95%"]),
        hazard_ratio_upper=float(row["exp(coef) upper 95%"]),
    )


def _ols(y: np.ndarray, columns: dict[str, np.ndarray], names: list[str]) -> dict[str, Estimate]:
    """Least squares of y on an intercept and ``names``: each coefficient with its classical SE and t interval."""
    from scipy import stats

    x = np.column_stack([np.ones(len(y)), *(columns[n] for n in names)])
    n, p = x.shape
    if n <= p:
        raise VPatientError(f"{n} patients with an outcome: too few for a regression on {p} terms")
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ beta
    df = n - p
    cov = (resid @ resid / df) * np.linalg.pinv(x.T @ x)
    se = np.sqrt(np.diag(cov))
    half = stats.t.ppf(0.975, df) * se
    pvalue = 2 * stats.t.sf(np.abs(beta / se), df)
    return {
        name: Estimate(
            estimate=float(beta[j]),
            se=float(se[j]),
            lower=float(beta[j] - half[j]),
            upper=float(beta[j] + half[j]),
            p=float(pvalue[j]),
        )
        for j, name in enumerate(names, start=1)
    }


# --------------------------------------------------------------------------- the trial as observed


def control_plan() -> TreatmentPlan:
    """The reference arm's plan: no treatment from enrolment."""
    return TreatmentPlan(name="control", description="no treatment (the reference arm)")


def baseline_arms(records: Sequence[PatientRecord]) -> tuple[np.ndarray, str]:
    """Each record's arm at enrolment, and the treated arm; VPatientError unless two arms, one untreated."""
    arms = np.array([arm_of(r) for r in records], dtype=object)
    sizes = pd.Series(arms).value_counts().sort_index()
    found = ", ".join(f"{arm} ({n} patients)" for arm, n in sizes.items()) or "no patients"
    if len(sizes) != 2 or NO_TREATMENT_ARM not in sizes:
        raise VPatientError(
            f"trial adjustment needs a randomised trial of two arms at enrolment, one of them untreated "
            f"('{NO_TREATMENT_ARM}'); the data have {len(sizes)} arm(s): {found}"
        )
    (treated,) = [a for a in sizes.index if a != NO_TREATMENT_ARM]
    return arms, str(treated)


def trial_table(cohort: Cohort, event: str, lab: str | None, at: float, window: float) -> pd.DataFrame:
    """One row per patient: subject_id, arm, treated, time, event, and the lab's baseline and outcome values.

    ``time``/``event``: time to the first ``event`` or censoring, other event kinds
    censoring at their time. ``baseline``: the lab's last value at or before enrolment;
    ``outcome``: its value at the visit nearest ``at`` within ``window`` (ties: the earlier);
    both on the modelling scale, NaN when missing (or when ``lab`` is None).
    """
    from vpatient.plots import survival_table

    arms, treated_arm = baseline_arms(cohort.records)
    durations, observed, _ = survival_table(cohort, event)
    table = pd.DataFrame(
        {
            "subject_id": cohort.subject_ids(),
            "arm": arms,
            "treated": arms == treated_arm,
            "time": durations,
            "event": observed,
            "baseline": np.nan,
            "outcome": np.nan,
        }
    )
    if lab is None:
        return table
    obs = observations_frame(cohort.records, cohort.config, transformed=True)
    obs = obs[obs["variable"] == lab]
    before = obs[obs["time"] <= 0].sort_values("time").groupby("subject_id")["value"].last()
    near = obs.assign(gap=(obs["time"] - at).abs())
    near = near[near["gap"] <= window].sort_values(["gap", "time"]).groupby("subject_id")["value"].first()
    table["baseline"] = table["subject_id"].map(before).astype(float)
    table["outcome"] = table["subject_id"].map(near).astype(float)
    return table


# --------------------------------------------------------------------------- prognostic scores


def baseline_record(record: PatientRecord) -> PatientRecord:
    """The record as known at enrolment (time 0), without the treatment assigned there.

    The randomised treatment is not baseline data: the model's posterior at enrolment
    would otherwise see it (its encoder and posterior refinement read the doses), and a
    score that differs between arms is no longer a pre-treatment covariate. Treatments
    that started before enrolment stay, as history.
    """
    known = truncate_record(record, 0.0)
    return known.model_copy(update={"treatments": [e for e in known.treatments if e.start < 0]})


def prognostic_scores(
    model: VirtualPatientModel,
    records: Sequence[PatientRecord],
    *,
    event: str,
    horizon: float,
    lab: str | None,
    at: float,
    n_samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
) -> pd.DataFrame:
    """Each record's prognostic scores from its enrolment data under the control plan (module docstring).

    Columns: subject_id, survival_score (log cumulative hazard of ``event`` at
    ``horizon``), lab_score (median predicted ``lab`` at ``at``, modelling scale; NaN when
    ``lab`` is None). Only :meth:`VirtualPatientModel.simulate` is used.
    """
    config = model.config
    histories = [baseline_record(r) for r in records]
    grid = np.array(sorted({horizon, at}))
    plan = control_plan()
    paths = model.simulate(histories, [grid] * len(histories), n_samples=n_samples, seed=seed, plans=[plan] * len(histories))
    k = config.event_kinds.index(event)
    mean_survival = paths.survival[:, :, int(np.searchsorted(grid, horizon)), k].mean(axis=1)  # (B,)
    # log(-log S): floored, so a patient the model gives no risk at all gets a finite, very low score
    survival_score = np.log(np.maximum(-np.log(np.clip(mean_survival, 1e-300, 1.0)), 1e-8))
    lab_score = np.full(len(histories), np.nan)
    if lab is not None:
        j = config.names(VariableKind.CONTINUOUS).index(lab)
        lab_score = np.median(paths.expected[:, :, int(np.searchsorted(grid, at)), j], axis=1)
    return pd.DataFrame({"subject_id": [r.subject_id for r in records], "survival_score": survival_score, "lab_score": lab_score})


def cross_fitted_scores(
    cohort: Cohort,
    n_folds: int = 5,
    seed: int = 0,
    *,
    event: str = DEFAULT_EVENT,
    horizon: float = DEFAULT_HORIZON,
    lab: str | None = None,
    at: float = DEFAULT_LAB_TIME,
    n_samples: int = DEFAULT_SAMPLES,
    train_settings: TrainSettings | None = None,
    model_settings: ModelSettings | None = None,
    cache_dir: str | Path | None = DEFAULT_CACHE,
    progress: bool = False,
) -> pd.DataFrame:
    """Every patient's prognostic scores, each from the fold model that did not train on them.

    The fold models are :func:`fold_models` (cached, shared with the simulation
    benchmarks); the held-out sets are :func:`held_out_records`, so patients in no fold of
    the protocol are scored too. Columns: those of :func:`prognostic_scores` and ``fold``.
    """
    from vpatient.evaluate.protocol import held_out_records

    models = fold_models(cohort, n_folds, TrainingRun(seed, cache_dir, train_settings, model_settings, progress))
    splits = held_out_records(cohort, n_folds, seed)  # the same folds (forecast_folds), rest dealt in
    parts = []
    for fold_model, (_, held_out) in zip(models, splits, strict=True):
        index = fold_model.fold.index
        log.info("fold %d: scoring %d held-out patients", index, len(held_out))
        scores = prognostic_scores(
            fold_model.model, held_out, event=event, horizon=horizon, lab=lab, at=at, n_samples=n_samples, seed=seed
        )
        parts.append(scores.assign(fold=index))
    return pd.concat(parts, ignore_index=True)
