r"""``vpatient benchmark counterfactual --data synthetic``: outcomes under plans patients did not get.

Only the synthetic generator knows what would have happened under another treatment,
so this benchmark runs on its worlds alone (:data:`WORLDS`: ``synthetic``, in years, and
``synthetic-daily``, in days) and scores against their noiseless truth
(:class:`vpatient.data.synthetic.SyntheticTruth`). Below, the first world's protocol; the
daily world's differences follow it.

Protocol, per confounding strength c (default 0, 1, 2, 3, 4; treatment is assigned with
``P(treated) = sigma(c * standardised baseline severity)``, so sicker patients get the
drug more often as c grows):

- **Cohort**: ``synthetic_cohort(n, seed, confounding=c)``. The *same* seed at every
  strength: the generator draws covariates, initial states and the uniforms of the
  treatment draw in the same order, so the strengths share their patients and differ
  only in who is treated (and what follows from it). Comparing strengths is then a
  paired comparison, not one between five independent cohort draws.
- **Split**: the sorted subject ids are permuted by ``numpy.random.default_rng(seed)``;
  the first ``round(test_fraction * n)`` (20%) are held out, the same ids at every
  strength. The world model, its treatment-blind twin and the regression learn from
  the other 80% (full records).
- **Decision time** s = 1 year (``decision_time``). Held-out patients in follow-up at s
  (end of follow-up > s, hence alive; every synthetic patient has a visit at t=0 <= s)
  are scored. Each is seen as ``truncate_record(record, s)``.
- **Plans** (what-ifs from s, built with :func:`vpatient.plans.exposures_under_plan`,
  the one definition of a what-if: what was given before s is kept, the plan replaces
  what follows; the truth and every method use it):

  - ``factual``: the recorded treatment continues (every patient);
  - ``withdrawn``: the drug stops at s (patients on the drug at s);
  - ``started-earlier``: the drug starts at s, dose 1 (patients not on it at s). The
    generator starts every treated patient at t=0 and never stops, so no patient can be
    started earlier than they were; starting the untreated at s is the earliest start a
    what-if from s can give (earlier than their factual "never"). A start before s would
    contradict the history the forecast conditions on, which was lived untreated;
  - ``doubled``: the dose doubles from s (patients on dose 1 go to dose 2). Patients on
    dose 2 are skipped: dose 4 lies outside the config's allowed dose range (0 to 2),
    where no training patient ever was.

  A plan is scored only for patients it changes (e.g. no "withdrawn" for the untreated).
- **Horizons** 1, 2, 3 years after s. Continuous variables are compared on the
  modelling scale (log bilirubin, log ALT, albumin, log platelets, INR), in standard
  deviations of the training patients' observed values
  (:class:`vpatient.evaluate.protocol.Standardiser`). Truth: the generator's noiseless
  value under the plan's exposures. Prediction: the method's expected value.
- **Scores**, per strength x method x plan: RMSE per variable and horizon (over
  patients); the headline RMSE is the mean over variables and horizons. ``counterfactual``
  pools every (patient, plan) pair of the three counterfactual plans. Survival error:
  mean over patients of \|predicted - true P(no death by s + 3 \| alive at s)\|, where
  the truth is the generator's cause-specific ``S(s+3) / S(s)`` (other events ignored,
  the same quantity the world model's ``survival`` reports). Effects: mean over patients
  of (plan - factual), truth and prediction, in standard deviations; effect RMSE: RMSE
  over patients of predicted - true (plan - factual), mean over variables and horizons
  (the error of each patient's treatment effect; unlike the outcome RMSE it does not
  reward a method for predicting every plan alike).
- **Targets** (per method; the world model is the one held to them): counterfactual RMSE
  <= 1.3 x factual RMSE at every strength, and the counterfactual RMSE at the largest
  strength less than 30% above that at the smallest.

Methods, all trained on the same patients:

- ``vpatient``: :class:`VirtualPatientModel`, default settings; mean over ``n_samples``
  posterior paths of the decoder mean (``SimulatedPaths.expected``) and of the survival.
  Every plan is simulated with the same seed (common random numbers).
- ``vpatient-blind``: the same architecture without the treatment input
  (``ModelSettings(treatment_input=False)``); it predicts the same under every plan.
- ``regression``: per variable and horizon h, a ridge regression (standardised features,
  alpha 1) of the value observed at the visit nearest s + h (within
  ``REGRESSION_WINDOW`` years, after s) on what is known at s (last observed value of
  every continuous variable, training mean if none; the statics; the history codes
  recorded by s) and the observed treatment over (s, s + h] (share of the window on
  the drug and mean dose). Counterfactuals set the treatment features to the plan's.
  Survival: a Cox model (lifelines, ridge penalty 0.01) on the same features with the
  treatment over (s, s + 3], fitted on training patients in follow-up at s, outcome death
  censored at s + 3.

The daily world (``--data synthetic-daily``, :func:`vpatient.data.synthetic.daily_cohort`;
times in days): 1,000 patients per strength, decision time s = day 30, horizons 1 and 5
days; two drugs, so the plans are those of :func:`combination_plans`, applied to every
held-out patient: ``withdrawn`` (nothing from s), ``start-drug_a``, ``start-drug_b`` and
``start-drug_a+drug_b`` (dose 1 from s, nothing else). The regression takes each drug's
share and mean dose; its target is the visit within half a day of s + h.

**Step forecasts and effects** (both worlds, every strength): one step is the cohort's
median visit gap (a day; about half a year in the first world). Every held-out patient
under every plan of :func:`combination_plans` is forecast 1 and 5 steps after s by the
world model (as above), LOCF and the ridge peer (:class:`vpatient.evaluate.ridge.RidgeForecaster`,
which sees each plan's doses), fitted on the same training patients: MAE against the truth
in training sds, pooled over plans and variables. Each start plan's mean effect against
``withdrawn`` (no treatment) on the world's effect variable (daily: log tumour volume;
first world: log bilirubin) at s + 5 steps, by the world model and by ridge, against the
truth's, with the relative error and pass when within 25%.

Everything random derives from ``seed``: the same seed gives the same numbers (on the
same machine and library versions).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import pandas as pd
import typer
from pydantic import Field
from tqdm.auto import tqdm

from vpatient import transforms
from vpatient.benchmarks.base import StrictModel, VersionedBenchmarkResult
from vpatient.data.synthetic import SyntheticCohort, SyntheticTruth, daily_cohort, synthetic_cohort
from vpatient.data.timeline import median_visit_gap, truncate_record
from vpatient.evaluate.baselines import LOCF
from vpatient.evaluate.protocol import Forecaster, ProtocolError, Standardiser, last_observations, survival_setup
from vpatient.evaluate.ridge import RidgeForecaster
from vpatient.model.latent_ode import ModelSettings
from vpatient.plans import dose_at, exposures_under_plan
from vpatient.schemas import DatasetConfig, PatientRecord, TreatmentExposure, TreatmentPlan, VariableKind
from vpatient.tables import markdown_table
from vpatient.train import TrainSettings
from vpatient.virtual_patient import VirtualPatientModel

__all__ = [
    "COUNTERFACTUAL",
    "FACTUAL",
    "METHODS",
    "PLANS",
    "CounterfactualBenchmarkResult",
    "DecisionSplit",
    "ObservedTreatmentRegression",
    "Outcomes",
    "counterfactual_plans",
    "decision_split",
    "parse_strengths",
    "predicted_outcomes",
    "run_counterfactual_benchmark",
    "split_subjects",
    "true_outcomes",
]

log = logging.getLogger(__name__)

FACTUAL = "factual"
#: The counterfactual plans, in report order.
PLANS: tuple[str, ...] = ("withdrawn", "started-earlier", "doubled")
#: Name of the pooled score over every counterfactual (patient, plan) pair.
COUNTERFACTUAL = "counterfactual"
PLAN_DESCRIPTIONS: dict[str, str] = {
    FACTUAL: "the recorded treatment continues (every patient)",
    "withdrawn": "the drug stops at s (patients on it at s)",
    "started-earlier": "the drug starts at s at dose 1 (patients not on it at s; the generator starts every treated "
    "patient at t=0, so starting the untreated at s is the earliest start a what-if from s can give)",
    "doubled": "the dose doubles from s (patients whose doubled dose stays within the config's allowed range: dose 1 -> 2)",
}
#: Methods, in report order.
METHODS: dict[str, str] = {
    "vpatient": "the world model (VirtualPatientModel), mean of posterior sample paths",
    "vpatient-blind": "the same architecture without the treatment input (ModelSettings(treatment_input=False))",
    "regression": "ridge regression per variable and horizon on what is known at s and the observed treatment after s; "
    "Cox model for survival",
}
EVENT = "death"
#: Dose of the drug in the ``started-earlier`` plan (the generator's lower dose).
START_DOSE = 1.0
#: The regression's target is the observation nearest s + h within this many years.
REGRESSION_WINDOW = 0.5
MAX_RATIO = 1.3
MAX_GROWTH = 0.3
#: Steps (median visit gaps) after s at which the step forecasts are scored; effects are read at the last.
STEPS: tuple[int, ...] = (1, 5)
#: An effect is recovered when its relative error is within this.
EFFECT_TOLERANCE = 0.25
#: Peers of the step forecasts, beside the world model.
STEP_METHODS: tuple[str, ...] = ("vpatient", "locf", "ridge")
_UNIT_SUFFIX = {"years": "y", "months": "mo", "days": "d"}


@dataclass(frozen=True)
class CounterfactualWorld:
    """A synthetic world the benchmark runs on: its generator and the protocol's times (in the world's unit)."""

    data: str
    generate: Callable[[int, int, float], SyntheticCohort]  # (n, seed, confounding)
    default_n: int
    decision_time: float
    horizons: tuple[float, ...]
    regression_window: float
    effect_variable: str


#: The worlds, by dataset name.
WORLDS: dict[str, CounterfactualWorld] = {
    "synthetic": CounterfactualWorld(
        "synthetic", lambda n, seed, c: synthetic_cohort(n, seed, confounding=c), 500, 1.0, (1.0, 2.0, 3.0), 0.5, "bilirubin"
    ),
    "synthetic-daily": CounterfactualWorld(
        "synthetic-daily", lambda n, seed, c: daily_cohort(n, seed, confounding=c), 1000, 30.0, (1.0, 5.0), 0.5, "volume"
    ),
}


# --------------------------------------------------------------------------- plans


def counterfactual_plans(
    history: PatientRecord, decision_time: float, treatment: str, max_dose: float = math.inf
) -> dict[str, TreatmentPlan]:
    """The counterfactual plans that change this patient's treatment from ``decision_time`` (module docstring).

    ``history`` needs only the treatments up to ``decision_time``; a plan equal to what
    the patient got is left out.
    """
    dose = float(dose_at(history.treatments, treatment, decision_time))
    plans: dict[str, TreatmentPlan] = {}
    if dose > 0:
        plans["withdrawn"] = TreatmentPlan(name="withdrawn", description=PLAN_DESCRIPTIONS["withdrawn"])
    else:
        plans["started-earlier"] = TreatmentPlan(
            name="started-earlier",
            description=PLAN_DESCRIPTIONS["started-earlier"],
            exposures=[TreatmentExposure(treatment=treatment, start=decision_time, dose=START_DOSE)],
        )
    if 0 < 2 * dose <= max_dose:
        plans["doubled"] = TreatmentPlan(
            name="doubled",
            description=PLAN_DESCRIPTIONS["doubled"],
            exposures=[TreatmentExposure(treatment=treatment, start=decision_time, dose=2 * dose)],
        )
    return plans


def combination_plans(decision_time: float, treatments: Sequence[str], dose: float = START_DOSE) -> dict[str, TreatmentPlan]:
    """Plans from ``decision_time`` for every patient: ``withdrawn`` (nothing), and each treatment alone and all together.

    Named ``start-<a>``, ``start-<b>`` and ``start-<a>+<b>``; each replaces whatever was given after s.
    """
    plans = {"withdrawn": TreatmentPlan(name="withdrawn", description="every treatment stops at s")}
    combos = [[t] for t in treatments] + ([list(treatments)] if len(treatments) > 1 else [])
    for combo in combos:
        name = "start-" + "+".join(combo)
        plans[name] = TreatmentPlan(
            name=name,
            description=f"{' and '.join(combo)} at dose {dose:g} from s, nothing else",
            exposures=[TreatmentExposure(treatment=t, start=decision_time, dose=dose) for t in combo],
        )
    return plans


def _exposures(record: PatientRecord, plan: TreatmentPlan | None, decision_time: float) -> list[TreatmentExposure]:
    """The full exposures of ``record`` under ``plan`` from ``decision_time`` (None: as recorded)."""
    return list(record.treatments) if plan is None else exposures_under_plan(record.treatments, plan, decision_time)


# --------------------------------------------------------------------------- outcomes


@dataclass(frozen=True)
class Outcomes:
    """Outcomes of N patients: continuous values (N, H, V) on the modelling scale, survival (N,)."""

    values: np.ndarray
    survival: np.ndarray

    def take(self, rows: np.ndarray) -> Outcomes:
        return Outcomes(self.values[rows], self.survival[rows])

    def minus(self, other: Outcomes) -> Outcomes:
        return Outcomes(self.values - other.values, self.survival - other.survival)


def true_outcomes(
    truth: SyntheticTruth,
    records: Sequence[PatientRecord],
    plans: Sequence[TreatmentPlan | None],
    decision_time: float,
    horizons: Sequence[float],
    variables: Sequence[str],
) -> Outcomes:
    """The generator's noiseless values at s + h (modelling scale) and P(no death by s + max h | alive at s)."""
    ids = [r.subject_id for r in records]
    exposures = [_exposures(r, p, decision_time) for r, p in zip(records, plans, strict=True)]
    times = decision_time + np.asarray(horizons, dtype=float)
    frame = truth.observables_many(ids, exposures, times)
    values = np.stack(
        [transforms.forward(frame[v].to_numpy(float), truth.config.variable(v).transform) for v in variables], axis=-1
    ).reshape(len(ids), len(times), len(variables))
    surv = truth.survival_many(ids, exposures, np.array([decision_time, times[-1]]), event=EVENT)
    return Outcomes(values, surv[:, 1] / surv[:, 0])


def predicted_outcomes(
    model: VirtualPatientModel,
    histories: Sequence[PatientRecord],
    plans: Sequence[TreatmentPlan | None],
    decision_time: float,
    horizons: Sequence[float],
    variables: Sequence[str],
    n_samples: int,
    seed: int,
) -> Outcomes:
    """The world model's mean expected values at s + h and P(no death by s + max h | alive at s).

    ``histories`` must be cut at ``decision_time``. The same seed and histories give the
    same posterior draws whatever the plans, so differences between plans are effects.
    """
    times = decision_time + np.asarray(horizons, dtype=float)
    paths = model.simulate(list(histories), [times] * len(histories), n_samples=n_samples, seed=seed, plans=list(plans))
    columns = [model.layout.continuous.index(v) for v in variables]
    values = paths.expected[..., columns].mean(axis=1)  # (N, H, V)
    survival = paths.survival[:, :, -1, model.layout.events.index(EVENT)].mean(axis=1)
    return Outcomes(values, survival)


class ObservedTreatmentRegression:
    """The regression peer: outcomes at s + h regressed on what is known at s and the treatment after s.

    See the module docstring for the features, targets and the Cox model of survival.
    """

    def __init__(
        self,
        treatment: str | Sequence[str],
        decision_time: float,
        horizons: Sequence[float],
        variables: Sequence[str],
        window: float = REGRESSION_WINDOW,
    ):
        self.treatments = [treatment] if isinstance(treatment, str) else list(treatment)
        self.decision_time = decision_time
        self.horizons = [float(h) for h in horizons]
        self.variables = list(variables)
        self.window = window

    def fit(self, train: Sequence[PatientRecord], config: DatasetConfig) -> ObservedTreatmentRegression:
        from lifelines import CoxPHFitter
        from sklearn.linear_model import Ridge
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        s = self.decision_time
        self.config_ = config
        self.statics_ = config.names(VariableKind.STATIC)
        self.codes_ = config.names(VariableKind.HISTORY)
        followed = [r for r in train if r.end_of_followup > s]
        if len(followed) < 2:
            raise ProtocolError(f"regression: {len(followed)} training patients in follow-up at s={s:g}")
        histories = [truncate_record(r, s) for r in followed]
        known = self._known(histories)
        self.fill_ = known.mean().fillna(0.0).to_dict()
        self.models_: dict[tuple[str, float], object] = {}
        for h in self.horizons:
            target = s + h
            treat = self._treatment([r.treatments for r in followed], h)
            for v in self.variables:
                rows, y = [], []
                for i, r in enumerate(followed):
                    cells = [(abs(o.time - target), o.value) for o in r.observations if o.variable == v and o.time > s]
                    cells = [c for c in cells if c[0] <= self.window]
                    if cells:
                        rows.append(i)
                        y.append(float(transforms.forward(min(cells)[1], config.variable(v).transform)))
                if len(rows) < 2:
                    raise ProtocolError(f"regression: {len(rows)} training values of {v!r} near s + {h:g}")
                x = self._design(known.iloc[rows], treat.iloc[rows])
                self.models_[(v, h)] = make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(x.to_numpy(), np.asarray(y))
        setup = survival_setup(followed, s, EVENT)
        horizon = max(self.horizons)
        by_id = {r.subject_id: r for r in followed}
        treat = self._treatment([by_id[sid].treatments for sid in setup.subject_ids], horizon)
        x = self._design(self._known(setup.histories), treat)
        self.cox_columns_ = [c for c in x.columns if x[c].std() > 0]
        data = x[self.cox_columns_].reset_index(drop=True)
        data["T"] = np.minimum(setup.time, horizon)
        data["E"] = setup.event * (setup.time <= horizon)
        self.cox_ = CoxPHFitter(penalizer=0.01).fit(data, duration_col="T", event_col="E") if data["E"].sum() > 0 else None
        return self

    def predict(self, histories: Sequence[PatientRecord], plans: Sequence[TreatmentPlan | None]) -> Outcomes:
        """Outcomes of ``histories`` (cut at s) under ``plans`` (None: the recorded treatment continues)."""
        s = self.decision_time
        known = self._known(histories)
        exposures = [_exposures(h, p, s) for h, p in zip(histories, plans, strict=True)]
        values = np.empty((len(histories), len(self.horizons), len(self.variables)))
        for j, h in enumerate(self.horizons):
            x = self._design(known, self._treatment(exposures, h)).to_numpy()
            for k, v in enumerate(self.variables):
                values[:, j, k] = self.models_[(v, h)].predict(x)
        if self.cox_ is None:  # no death in the window among training patients
            survival = np.ones(len(histories))
        else:
            x = self._design(known, self._treatment(exposures, max(self.horizons)))[self.cox_columns_]
            survival = self.cox_.predict_survival_function(x, times=[max(self.horizons)]).to_numpy()[0]
        return Outcomes(values, survival)

    def _known(self, histories: Sequence[PatientRecord]) -> pd.DataFrame:
        """What is known at s: last value of each variable, statics, history codes recorded by s."""
        rows = []
        for h in histories:
            last = last_observations(h, self.config_, self.variables)
            row = {f"last_{v}": last[v][1] if v in last else np.nan for v in self.variables}
            row |= {name: h.static.get(name, np.nan) for name in self.statics_}
            row |= {code: float(any(e.code == code for e in h.history)) for code in self.codes_}
            rows.append(row)
        return pd.DataFrame(rows, dtype=float)

    def _treatment(self, exposures: Sequence[Sequence[TreatmentExposure]], horizon: float) -> pd.DataFrame:
        """Share of (s, s + horizon] on each treatment and its mean dose, per patient (midpoint rule, 48 steps)."""
        grid = self.decision_time + horizon * (np.arange(48) + 0.5) / 48
        columns = {}
        for t in self.treatments:
            doses = np.array([dose_at(e, t, grid) for e in exposures]).reshape(len(exposures), len(grid))
            suffix = "" if len(self.treatments) == 1 else f"_{t}"
            columns |= {f"on_treatment{suffix}": (doses > 0).mean(axis=1), f"dose{suffix}": doses.mean(axis=1)}
        return pd.DataFrame(columns)

    def _design(self, known: pd.DataFrame, treatment: pd.DataFrame) -> pd.DataFrame:
        x = known.reset_index(drop=True).fillna(self.fill_)
        return pd.concat([x, treatment.reset_index(drop=True)], axis=1)


# --------------------------------------------------------------------------- result types


class CounterfactualSettings(StrictModel):
    """The protocol a result was produced under."""

    n: int = Field(description="Subjects per synthetic cohort (one cohort per strength, same seed).")
    seed: int
    strengths: list[float] = Field(description="Confounding strengths of the treatment assignment.")
    test_fraction: float
    decision_time: float = Field(description="s: plans start here; histories are cut here (years).")
    horizons: list[float] = Field(description="Years after s at which outcomes are scored.")
    n_samples: int = Field(description="Posterior sample paths per patient and plan (world models).")
    event: str = EVENT
    plans: dict[str, str] = Field(description="What each plan means.")
    methods: dict[str, str]
    standardisation: str = "training patients' sd of each variable's observed values on the modelling scale"
    max_ratio: float = Field(description="Target: counterfactual RMSE <= max_ratio x factual RMSE at every strength.")
    max_growth: float = Field(
        description="Target: counterfactual RMSE grows by less than this from the smallest strength to the largest."
    )
    train_settings: dict
    model_settings: dict
    # written only when they differ from what results before them meant, so those reload byte for byte
    time_unit: str = Field(
        default="years", exclude_if=lambda u: u == "years", description="Time unit of the decision time, horizons and step."
    )
    step_forecasts: StepSettings | None = Field(default=None, exclude_if=lambda v: v is None)


class StepSettings(StrictModel):
    """The protocol of the step forecasts and the recovered effects."""

    step: float = Field(description="One step: the median gap between consecutive visits.")
    steps: list[int] = Field(description="Steps after s at which the forecasts are scored; effects are read at the last.")
    plans: list[str] = Field(description="Plans from s, every held-out patient under each.")
    effect_variable: str = Field(description="Variable whose mean effects (plan - withdrawn) are checked against the truth.")
    effect_tolerance: float = Field(description="Pass: |relative error of a mean effect| <= this.")


class StepScore(StrictModel):
    """Error of one method's forecasts k steps after s under the step plans, at one strength (training sds)."""

    confounding: float
    method: str
    mae: list[float] = Field(description="Per step: mean |predicted - true| over patients, plans and variables.")
    mae_by_plan: dict[str, list[float]] = Field(description="Per plan, per step (mean over patients and variables).")


class EffectCheck(StrictModel):
    """A treatment plan's mean effect (vs withdrawn) on the effect variable at the last step, predicted and true."""

    confounding: float
    plan: str
    method: str
    true_effect: float
    predicted_effect: float
    relative_error: float = Field(description="(predicted - true) / |true|.")
    passed: bool = Field(description="|relative error| <= the tolerance.")


class CohortSummary(StrictModel):
    """One strength's cohort, split and training."""

    confounding: float
    n_train: int
    n_test: int = Field(description="Held-out patients in follow-up at s (scored).")
    treated_share_train: float
    treated_share_test: float
    n_by_plan: dict[str, int] = Field(description="Scored patients per plan.")
    epochs: dict[str, int] = Field(description="Epochs run per world model (early stopping).")
    seconds: dict[str, float] = Field(description="Fit + predict seconds per method; context only.")


class PlanScore(StrictModel):
    """Error of one method under one plan at one strength (standardised units)."""

    confounding: float
    method: str
    plan: str
    n: int = Field(description="Scored (patient, plan) pairs.")
    rmse: float = Field(description="Mean over variables and horizons of the RMSE over patients.")
    rmse_by_horizon: list[float] = Field(description="Mean over variables, per horizon.")
    rmse_by_variable: dict[str, list[float]] = Field(description="Per variable, per horizon.")
    survival_error: float = Field(description="Mean |predicted - true| P(no death by s + max horizon | alive at s).")
    effect_rmse: float | None = Field(
        default=None,
        description="RMSE over patients of predicted - true (plan - factual), mean over variables and horizons; None for factual.",
    )
    effect_true: dict[str, list[float]] | None = Field(
        default=None, description="Mean (plan - factual) of the truth per variable and horizon; None for pooled and factual."
    )
    effect_predicted: dict[str, list[float]] | None = None
    survival_effect_true: float | None = None
    survival_effect_predicted: float | None = None


class TargetCheck(StrictModel):
    """The benchmark's targets for one method."""

    method: str
    factual_rmse: list[float] = Field(description="Per strength.")
    counterfactual_rmse: list[float] = Field(description="Per strength, pooled over plans.")
    ratio: list[float] = Field(description="counterfactual / factual RMSE per strength.")
    ratio_pass: bool
    growth: float | None = Field(description="counterfactual RMSE at the largest strength / at the smallest - 1.")
    growth_pass: bool | None


class CounterfactualBenchmarkResult(VersionedBenchmarkResult):
    """The result of ``vpatient benchmark counterfactual``."""

    benchmark: Literal["counterfactual"] = "counterfactual"
    data: str
    variables: list[str] = Field(description="Scored continuous variables.")
    transforms: dict[str, str]
    settings: CounterfactualSettings
    cohorts: list[CohortSummary]
    scores: list[PlanScore]
    targets: list[TargetCheck]
    runtime_seconds: float
    step_scores: list[StepScore] = Field(
        default_factory=list, exclude_if=lambda v: not v, description="One- and five-step forecasts under plans."
    )
    effects: list[EffectCheck] = Field(
        default_factory=list, exclude_if=lambda v: not v, description="Recovered treatment effects against the truth."
    )

    @property
    def stem(self) -> str:
        """File name of the result: {benchmark}-{data}."""
        return f"counterfactual-{self.data}"

    def to_markdown(self) -> str:
        """Targets, errors by plan, and effects as markdown tables."""
        s = self.settings
        names = [f"{'log ' if self.transforms[v] == 'log' else ''}{v}" for v in self.variables]
        last = len(s.horizons) - 1
        u = _UNIT_SUFFIX.get(s.time_unit, s.time_unit)
        h_cols = [f"{h:g} {u}" for h in s.horizons]
        lines = [
            f"# Counterfactual benchmark: {self.data}",
            "",
            f"vpatient {self.vpatient_version}, seed {s.seed}; {s.n} subjects per cohort, one cohort per confounding "
            f"strength ({', '.join(f'{c:g}' for c in s.strengths)}), {1 - s.test_fraction:.0%} to train, held-out "
            f"patients in follow-up at the decision time s = {s.decision_time:g} {u} scored at s + "
            f"{', '.join(f'{h:g}' for h in s.horizons)} {u} against the generator's noiseless truth; {s.n_samples} "
            f"posterior paths per patient and plan. Errors in training sds ({', '.join(names)}). "
            f"Runtime {self.runtime_seconds / 60:.1f} min.",
            "",
            "Plans from s: " + "; ".join(f"**{k}**: {v}" for k, v in s.plans.items()) + ".",
            "",
            "## Targets",
            "",
            f"RMSE = mean over variables and horizons; counterfactual = every (patient, plan) pair of the "
            f"counterfactual plans. Targets: ratio <= {s.max_ratio:g} at every strength; counterfactual RMSE growth "
            f"from strength {s.strengths[0]:g} to {s.strengths[-1]:g} < {s.max_growth:.0%}.",
            "",
        ]
        rows = []
        for t in self.targets:
            for i, c in enumerate(s.strengths):
                rows.append(
                    {
                        "method": t.method,
                        "strength": c,
                        "factual RMSE": t.factual_rmse[i],
                        "counterfactual RMSE": t.counterfactual_rmse[i],
                        "ratio": t.ratio[i],
                        f"ratio <= {s.max_ratio:g}": "pass" if t.ratio[i] <= s.max_ratio else "miss",
                    }
                )
        lines += [markdown_table(pd.DataFrame(rows), index=False), ""]
        for t in self.targets:
            growth = "-" if t.growth is None else f"{t.growth:+.1%} ({'pass' if t.growth_pass else 'miss'})"
            lines.append(f"- {t.method}: ratio target {'pass' if t.ratio_pass else 'miss'}; counterfactual RMSE growth {growth}")
        lines += [
            "",
            "## Error by plan",
            "",
            f"RMSE per horizon (mean over variables) and over horizons; effect RMSE: error of each patient's (plan - factual), "
            f"mean over variables and horizons; survival error: mean |error| of P(no {s.event} by s + {s.horizons[-1]:g} {u} "
            "| alive at s).",
            "",
        ]
        rows = [
            {"strength": x.confounding, "method": x.method, "plan": x.plan, "n": x.n}
            | dict(zip(h_cols, x.rmse_by_horizon, strict=True))
            | {"mean": x.rmse, "effect RMSE": x.effect_rmse, "survival error": x.survival_error}
            for x in self.scores
        ]
        lines += [markdown_table(pd.DataFrame(rows), index=False), ""]
        lines += [
            f"## Mean effect of each plan at s + {s.horizons[last]:g} {u} (plan - factual, training sds)",
            "",
            "The generator's truth beside each method's prediction; the blind model predicts no effect by construction.",
            "",
        ]
        rows = []
        for x in self.scores:
            if x.effect_true is None or x.method == "vpatient-blind":
                continue
            base = {"strength": x.confounding, "plan": x.plan, "n": x.n}
            sources = [("truth", x.effect_true, x.survival_effect_true)] if x.method == "vpatient" else []
            sources.append((x.method, x.effect_predicted, x.survival_effect_predicted))
            for source, effect, survival in sources:  # the truth once per (strength, plan), with vpatient's row
                rows.append(
                    base
                    | {"source": source}
                    | {n: effect[v][last] for n, v in zip(names, self.variables, strict=True)}
                    | {"survival": survival}
                )
        order = {name: i for i, name in enumerate(("truth", *METHODS))}
        plan_names = [p for p in s.plans if p != FACTUAL]
        rows.sort(key=lambda r: (r["strength"], plan_names.index(r["plan"]), order[r["source"]]))
        if rows:
            lines += [markdown_table(pd.DataFrame(rows), index=False), ""]
        lines += ["## Cohorts", ""]
        rows = [
            {
                "strength": c.confounding,
                "train": c.n_train,
                "test": c.n_test,
                "treated (train)": c.treated_share_train,
                "treated (test)": c.treated_share_test,
            }
            | {f"n {p}": c.n_by_plan.get(p, 0) for p in plan_names}
            | {f"epochs {m}": e for m, e in c.epochs.items()}
            | {f"s {m}": sec for m, sec in c.seconds.items()}
            for c in self.cohorts
        ]
        lines += [markdown_table(pd.DataFrame(rows), index=False), ""]
        lines += self._steps_markdown()
        return "\n".join(lines)

    def _steps_markdown(self) -> list[str]:
        """The step forecasts and the recovered effects, when the run measured them."""
        s = self.settings.step_forecasts
        if s is None or not self.step_scores:
            return []
        u = _UNIT_SUFFIX.get(self.settings.time_unit, self.settings.time_unit)
        steps = s.steps
        lines = [
            f"## Step forecasts under plans (one step = {s.step:g} {u}, the median visit gap)",
            "",
            f"MAE in training sds over held-out patients, plans ({', '.join(s.plans)}) and variables, at s + k steps; "
            "truth: the generator's noiseless values under each plan.",
            "",
        ]
        rows = [
            {"strength": x.confounding, "method": x.method}
            | {f"{k} step{'s' if k > 1 else ''}": m for k, m in zip(steps, x.mae, strict=True)}
            for x in self.step_scores
        ]
        lines += [markdown_table(pd.DataFrame(rows), index=False), ""]
        lines += [
            f"## Effects on {s.effect_variable} at s + {steps[-1]} steps vs no treatment (modelling scale)",
            "",
            f"Mean over held-out patients of (plan - withdrawn); pass: relative error within {s.effect_tolerance:.0%}.",
            "",
        ]
        rows = [
            {
                "strength": x.confounding,
                "plan": x.plan,
                "method": x.method,
                "true": x.true_effect,
                "predicted": x.predicted_effect,
                "relative error": x.relative_error,
                "within": "pass" if x.passed else "miss",
            }
            for x in self.effects
        ]
        lines += [markdown_table(pd.DataFrame(rows), index=False), ""]
        return lines


# --------------------------------------------------------------------------- the run


def run_counterfactual_benchmark(
    n: int | None = None,
    seed: int = 0,
    strengths: Sequence[float] = (0.0, 1.0, 2.0, 3.0, 4.0),
    *,
    data: str = "synthetic",
    decision_time: float | None = None,
    horizons: Sequence[float] | None = None,
    test_fraction: float = 0.2,
    n_samples: int = 100,
    train_settings: TrainSettings | None = None,
    model_settings: ModelSettings | None = None,
    progress: bool = True,
) -> CounterfactualBenchmarkResult:
    """Run the protocol of the module docstring on the world ``data`` (:data:`WORLDS`); ``n``, ``decision_time``
    and ``horizons`` default to the world's, ``train_settings`` to ``TrainSettings(seed=seed)``."""
    if data not in WORLDS:
        raise ProtocolError(f"{data!r} has no counterfactual truth; the synthetic worlds are {', '.join(WORLDS)}")
    world = WORLDS[data]
    n = world.default_n if n is None else n
    decision_time = world.decision_time if decision_time is None else decision_time
    world = replace(world, decision_time=decision_time)
    horizons = world.horizons if horizons is None else horizons
    if not strengths:
        raise ProtocolError("no confounding strength given")
    if not 0 < test_fraction < 1:
        raise ProtocolError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    strengths = sorted(float(c) for c in strengths)
    horizons = [float(h) for h in horizons]
    train_settings = replace(train_settings or TrainSettings(), seed=seed)
    model_settings = model_settings or ModelSettings()
    blind_settings = replace(model_settings, treatment_input=False)
    started = time.perf_counter()
    cohorts, scores, step_scores, effects = [], [], [], []
    bar = tqdm(
        total=len(strengths) * len(METHODS), desc="counterfactual benchmark", unit="fit", file=sys.stderr, disable=not progress
    )
    for c in strengths:
        cohort = world.generate(n, seed, c)
        summary, rows, steps, checks = _one_strength(
            cohort,
            world,
            c,
            seed,
            decision_time,
            horizons,
            test_fraction,
            n_samples,
            train_settings,
            model_settings,
            blind_settings,
            bar,
        )
        cohorts.append(summary)
        scores += rows
        step_scores += steps
        effects += checks
    bar.close()
    variables = cohort.config.names(VariableKind.CONTINUOUS)
    treatments = cohort.config.names(VariableKind.TREATMENT)
    step_plans = combination_plans(decision_time, treatments)
    if len(treatments) > 1:
        descriptions = {FACTUAL: PLAN_DESCRIPTIONS[FACTUAL]} | {k: p.description or k for k, p in step_plans.items()}
    else:
        descriptions = PLAN_DESCRIPTIONS
    return CounterfactualBenchmarkResult(
        data=cohort.name,
        variables=variables,
        transforms={v: cohort.config.variable(v).transform.value for v in variables},
        settings=CounterfactualSettings(
            n=n,
            seed=seed,
            strengths=strengths,
            test_fraction=test_fraction,
            decision_time=decision_time,
            horizons=horizons,
            n_samples=n_samples,
            plans=descriptions,
            methods=METHODS,
            max_ratio=MAX_RATIO,
            max_growth=MAX_GROWTH,
            train_settings=train_settings.to_dict(),
            model_settings=model_settings.to_dict(),
            time_unit=cohort.config.time_unit.value,
            step_forecasts=StepSettings(
                step=visit_step(cohort.records),
                steps=list(STEPS),
                plans=list(step_plans),
                effect_variable=world.effect_variable,
                effect_tolerance=EFFECT_TOLERANCE,
            ),
        ),
        cohorts=cohorts,
        scores=scores,
        targets=[_targets(scores, m, strengths) for m in METHODS],
        runtime_seconds=round(time.perf_counter() - started, 1),
        step_scores=step_scores,
        effects=effects,
    )


@dataclass(frozen=True)
class DecisionSplit:
    """A synthetic cohort split for a decision at time s: who trains, who is scored, and what is known of them at s."""

    variables: list[str]  # the continuous variables scored
    treatment: str  # the first treatment (the only one of the first world)
    max_dose: float  # its plausible maximum (inf when unbounded)
    train: list[PatientRecord]
    test: list[PatientRecord]  # held-out patients still in follow-up at s
    histories: list[PatientRecord]  # the test patients' records cut at s
    treatments: list[str] = field(default_factory=list)  # every treatment of the world


def decision_split(cohort: SyntheticCohort, seed: int, test_fraction: float, decision_time: float) -> DecisionSplit:
    """Split ``cohort`` by :func:`split_subjects` and keep the held-out patients in follow-up at ``decision_time``."""
    config = cohort.config
    treatments = config.names(VariableKind.TREATMENT)
    treatment = treatments[0]
    spec = config.variable(treatment)
    train_ids, test_ids = split_subjects([r.subject_id for r in cohort.records], seed, test_fraction)
    test = [r for r in cohort.records if r.subject_id in test_ids and r.end_of_followup > decision_time]
    if not test:
        raise ProtocolError(f"no held-out patient in follow-up at s={decision_time:g}")
    return DecisionSplit(
        variables=config.names(VariableKind.CONTINUOUS),
        treatment=treatment,
        max_dose=spec.plausible_range[1] if spec.plausible_range else math.inf,
        train=[r for r in cohort.records if r.subject_id in train_ids],
        test=test,
        histories=[truncate_record(r, decision_time) for r in test],
        treatments=treatments,
    )


def split_subjects(ids: Sequence[str], seed: int, test_fraction: float) -> tuple[set[str], set[str]]:
    """Train and test ids: the sorted ids permuted by ``default_rng(seed)``, the first share held out."""
    order = sorted(ids)
    perm = np.random.default_rng(seed).permutation(len(order))
    n_test = max(1, round(test_fraction * len(order)))
    test = {order[i] for i in perm[:n_test]}
    return set(order) - test, test


def _one_strength(
    cohort: SyntheticCohort,
    world: CounterfactualWorld,
    confounding: float,
    seed: int,
    decision_time: float,
    horizons: list[float],
    test_fraction: float,
    n_samples: int,
    train_settings: TrainSettings,
    model_settings: ModelSettings,
    blind_settings: ModelSettings,
    bar: tqdm,
) -> tuple[CohortSummary, list[PlanScore], list[StepScore], list[EffectCheck]]:
    config = cohort.config
    split = decision_split(cohort, seed, test_fraction, decision_time)
    variables = split.variables
    train, test, histories = split.train, split.test, split.histories
    sd = np.array([Standardiser.fit(train, config, variables).std[v] for v in variables])

    # which plan applies to whom; every plan is simulated for every patient (None where it does not
    # apply, i.e. the factual), so that each call sees the same histories in the same chunks
    plan_names, applicable = _main_plans(split, decision_time)
    plan_lists = {FACTUAL: [None] * len(test)} | {p: [a.get(p) for a in applicable] for p in plan_names}
    truth = {p: true_outcomes(cohort.truth, test, plans, decision_time, horizons, variables) for p, plans in plan_lists.items()}
    masks = {FACTUAL: np.ones(len(test), bool)} | {p: np.array([p in a for a in applicable]) for p in plan_names}

    predictions: dict[str, dict[str, Outcomes]] = {}
    seconds: dict[str, float] = {}
    epochs: dict[str, int] = {}
    for name, settings in (("vpatient", model_settings), ("vpatient-blind", blind_settings)):
        bar.set_postfix(strength=f"{confounding:g}", method=name)
        t0 = time.perf_counter()
        model = VirtualPatientModel.fit(train, config, train_settings, settings, progress=False)
        predictions[name] = {
            p: predicted_outcomes(model, histories, plans, decision_time, horizons, variables, n_samples, seed)
            for p, plans in plan_lists.items()
        }
        seconds[name] = round(time.perf_counter() - t0, 1)
        epochs[name] = len(model.history.train_loss)
        if name == "vpatient":
            world_model = model
        log.info("strength %g: %s fitted in %d epochs, %.0f s", confounding, name, epochs[name], seconds[name])
        bar.update()
    bar.set_postfix(strength=f"{confounding:g}", method="regression")
    t0 = time.perf_counter()
    regression = ObservedTreatmentRegression(split.treatments, decision_time, horizons, variables, world.regression_window).fit(
        train, config
    )
    predictions["regression"] = {p: regression.predict(histories, plans) for p, plans in plan_lists.items()}
    seconds["regression"] = round(time.perf_counter() - t0, 1)
    bar.update()

    scores = []
    for method in METHODS:
        pred = predictions[method]
        effects = {p: (pred[p].minus(pred[FACTUAL]), truth[p].minus(truth[FACTUAL])) for p in plan_names}  # (predicted, true)
        for plan in (FACTUAL, *plan_names):
            m = masks[plan]
            if m.any():
                effect = None if plan == FACTUAL else (effects[plan][0].take(m), effects[plan][1].take(m))
                scores.append(
                    _score(confounding, method, plan, pred[plan].take(m), truth[plan].take(m), sd, variables, effect, True)
                )
        if not any(masks[p].any() for p in plan_names):
            raise ProtocolError(f"strength {confounding:g}: no counterfactual plan applies to any held-out patient")

        def pooled(outcomes: dict[str, Outcomes]) -> Outcomes:
            return _stack([outcomes[p] for p in plan_names], [masks[p] for p in plan_names])

        effect = (pooled({p: e[0] for p, e in effects.items()}), pooled({p: e[1] for p, e in effects.items()}))
        scores.append(_score(confounding, method, COUNTERFACTUAL, pooled(pred), pooled(truth), sd, variables, effect, False))

    summary = CohortSummary(
        confounding=confounding,
        n_train=len(train),
        n_test=len(test),
        treated_share_train=round(float(np.mean([bool(r.treatments) for r in train])), 4),
        treated_share_test=round(float(np.mean([bool(r.treatments) for r in test])), 4),
        n_by_plan={p: int(m.sum()) for p, m in masks.items()},
        epochs=epochs,
        seconds=seconds,
    )
    step_scores, effects = _step_forecasts(cohort, split, world, confounding, world_model, sd, n_samples, seed)
    return summary, scores, step_scores, effects


def _main_plans(split: DecisionSplit, decision_time: float) -> tuple[tuple[str, ...], list[dict[str, TreatmentPlan]]]:
    """The plans of the error tables and who they apply to: one treatment, the plans that change it
    (:func:`counterfactual_plans`); several, :func:`combination_plans` for every patient."""
    if len(split.treatments) <= 1:
        return PLANS, [counterfactual_plans(h, decision_time, split.treatment, split.max_dose) for h in split.histories]
    plans = combination_plans(decision_time, split.treatments)
    return tuple(plans), [plans] * len(split.histories)


def visit_step(records: Sequence[PatientRecord]) -> float:
    """One step of the step forecasts: the median gap between consecutive visits."""
    if not any(len(r.visit_times()) > 1 for r in records):
        raise ProtocolError("no patient with two visits: no visit step")
    return median_visit_gap(records)


def _step_forecasts(
    cohort: SyntheticCohort,
    split: DecisionSplit,
    world: CounterfactualWorld,
    confounding: float,
    model: VirtualPatientModel,
    sd: np.ndarray,
    n_samples: int,
    seed: int,
) -> tuple[list[StepScore], list[EffectCheck]]:
    """Forecasts :data:`STEPS` visit steps after s under :func:`combination_plans`, by the world model, LOCF
    and ridge; and each plan's mean effect (vs withdrawn) on the world's effect variable, predicted and true."""
    s, variables = world.decision_time, split.variables
    horizons = [k * visit_step(cohort.records) for k in STEPS]
    plans = combination_plans(s, split.treatments)
    everyone = {name: [plan] * len(split.test) for name, plan in plans.items()}
    truth = {name: true_outcomes(cohort.truth, split.test, p, s, horizons, variables).values for name, p in everyone.items()}
    peers: dict[str, Forecaster] = {"locf": LOCF(), "ridge": RidgeForecaster()}
    for peer in peers.values():
        peer.fit(split.train, cohort.config, seed)
    predicted: dict[str, dict[str, np.ndarray]] = {
        "vpatient": {
            name: predicted_outcomes(model, split.histories, p, s, horizons, variables, n_samples, seed).values
            for name, p in everyone.items()
        }
    }
    for method, peer in peers.items():
        predicted[method] = {name: _peer_values(peer, split.histories, p, s, horizons, variables) for name, p in everyone.items()}
    scores = []
    for method in STEP_METHODS:
        errors = {name: np.abs(predicted[method][name] - truth[name]) / sd for name in plans}  # (N, H, V) each
        scores.append(
            StepScore(
                confounding=confounding,
                method=method,
                mae=[float(x) for x in np.mean([e.mean(axis=(0, 2)) for e in errors.values()], axis=0)],
                mae_by_plan={name: [float(x) for x in e.mean(axis=(0, 2))] for name, e in errors.items()},
            )
        )
    k = variables.index(world.effect_variable)
    effects = []
    for name in plans:
        if name == "withdrawn":
            continue
        true = float((truth[name] - truth["withdrawn"])[:, -1, k].mean())
        for method in ("vpatient", "ridge"):
            guess = float((predicted[method][name] - predicted[method]["withdrawn"])[:, -1, k].mean())
            error = (guess - true) / abs(true) if true != 0 else math.inf
            effects.append(
                EffectCheck(
                    confounding=confounding,
                    plan=name,
                    method=method,
                    true_effect=true,
                    predicted_effect=guess,
                    relative_error=error,
                    passed=abs(error) <= EFFECT_TOLERANCE,
                )
            )
    return scores, effects


def _peer_values(
    peer: Forecaster,
    histories: Sequence[PatientRecord],
    plans: Sequence[TreatmentPlan | None],
    decision_time: float,
    horizons: Sequence[float],
    variables: Sequence[str],
) -> np.ndarray:
    """A forecast benchmark peer's means at s + h under the plans: (N, H, V) on the modelling scale.

    Peers that take treatments (``forecast_under``) see each plan's exposures; the others forecast the same under every plan.
    """
    times = decision_time + np.asarray(horizons, dtype=float)
    queries = pd.DataFrame(
        [(h.subject_id, t, v) for h in histories for t in times for v in variables], columns=["subject_id", "time", "variable"]
    )
    if hasattr(peer, "forecast_under"):
        answer = peer.forecast_under(
            histories, queries, [_exposures(h, p, decision_time) for h, p in zip(histories, plans, strict=True)]
        )
    else:
        answer = peer.forecast(list(histories), queries)
    return answer["mean"].to_numpy(float).reshape(len(histories), len(times), len(variables))


def _stack(outcomes: Sequence[Outcomes], masks: Sequence[np.ndarray]) -> Outcomes:
    return Outcomes(
        np.concatenate([o.values[m] for o, m in zip(outcomes, masks, strict=True)]),
        np.concatenate([o.survival[m] for o, m in zip(outcomes, masks, strict=True)]),
    )


def _score(
    confounding: float,
    method: str,
    plan: str,
    pred: Outcomes,
    truth: Outcomes,
    sd: np.ndarray,
    variables: Sequence[str],
    effect: tuple[Outcomes, Outcomes] | None,
    mean_effects: bool,
) -> PlanScore:
    """RMSE over patients per horizon and variable, in sds; mean |survival error|; errors of the effects.

    ``effect`` holds the predicted and true (plan - factual) of the same patients;
    ``mean_effects`` adds their means (not for the pooled plans, whose effects differ in sign).
    """
    rmse = _rmse(pred, truth, sd)  # (H, V)
    score = PlanScore(
        confounding=confounding,
        method=method,
        plan=plan,
        n=len(truth.survival),
        rmse=float(rmse.mean()),
        rmse_by_horizon=[float(x) for x in rmse.mean(axis=1)],
        rmse_by_variable={v: [float(x) for x in rmse[:, k]] for k, v in enumerate(variables)},
        survival_error=float(np.mean(np.abs(pred.survival - truth.survival))),
    )
    if effect is not None:
        predicted, true = effect
        score.effect_rmse = float(_rmse(predicted, true, sd).mean())
        if mean_effects:

            def means(o: Outcomes) -> dict[str, list[float]]:
                delta = (o.values / sd).mean(axis=0)  # (H, V)
                return {v: [float(x) for x in delta[:, k]] for k, v in enumerate(variables)}

            score.effect_true, score.survival_effect_true = means(true), float(true.survival.mean())
            score.effect_predicted, score.survival_effect_predicted = means(predicted), float(predicted.survival.mean())
    return score


def _rmse(pred: Outcomes, truth: Outcomes, sd: np.ndarray) -> np.ndarray:
    """RMSE over patients of (N, H, V) values, in sds: (H, V)."""
    return np.sqrt(np.mean(((pred.values - truth.values) / sd) ** 2, axis=0))


def _targets(scores: Sequence[PlanScore], method: str, strengths: Sequence[float]) -> TargetCheck:
    by = {(x.confounding, x.plan): x.rmse for x in scores if x.method == method}
    factual = [by[(c, FACTUAL)] for c in strengths]
    counterfactual = [by[(c, COUNTERFACTUAL)] for c in strengths]
    ratio = [cf / f for cf, f in zip(counterfactual, factual, strict=True)]
    growth = counterfactual[-1] / counterfactual[0] - 1 if len(strengths) > 1 else None
    return TargetCheck(
        method=method,
        factual_rmse=factual,
        counterfactual_rmse=counterfactual,
        ratio=ratio,
        ratio_pass=all(r <= MAX_RATIO for r in ratio),
        growth=growth,
        growth_pass=None if growth is None else growth < MAX_GROWTH,
    )


# --------------------------------------------------------------------------- writing


def parse_strengths(spec: str) -> list[float]:
    """'0,1,2,3,4' -> [0.0, 1.0, 2.0, 3.0, 4.0]; a bad list is a usage error."""
    try:
        values = [float(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) for v in values):
        raise typer.BadParameter(f"{spec!r}: give comma-separated numbers, e.g. 0,1,2,3,4", param_hint="--strengths")
    return values
