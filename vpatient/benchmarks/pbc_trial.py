r"""``vpatient benchmark pbc-trial``: an in-silico replication of the Mayo PBC trial.

The trial randomised 312 patients to D-penicillamine or placebo, so each arm's
Kaplan-Meier curve is an unbiased estimate of that arm's counterfactual mean survival.
The world model is asked to reproduce both arms from the patients' enrolment records.

Protocol:

- **Models.** In sample: one model trained on every patient's full record. Out of
  sample: the forecasting benchmark's folds (:func:`vpatient.evaluate.protocol.forecast_folds`,
  ``n_folds`` folds of the patients with >= 2 visits, seed ``seed``); fold i's model is
  trained on the other folds' patients. Patients with a single visit are in no fold;
  they are dealt to the folds in turn (sorted ids permuted by ``default_rng(seed)``) and
  simulated with that fold's model, which never saw them. Default train and model
  settings, training seed ``seed``; models are cached (:mod:`vpatient.evaluate.fold_models`).
- **Simulation.** Every patient as known at enrolment (t=0), ``draws_per_record``
  posterior draws each, realised under both arms with common random numbers
  (:meth:`vpatient.simulation.Simulator.trial` with ``population=records``): placebo (no
  treatment, the reference arm) and D-penicillamine at dose 1 from t=0. Loss to
  follow-up is each patient's own end of follow-up; other event kinds (transplant)
  censor death. Out of sample, each fold's held-out patients are simulated by its model
  (the same steps as ``Simulator.trial``, random numbers from ``SeedSequence([seed, fold])``)
  and the folds' simulated patients are pooled into one trial before analysis.
- **Observed.** Kaplan-Meier curve of death per randomised arm with its 95% CI
  (lifelines, transplant censors death), and the Cox hazard ratio of D-penicillamine vs
  placebo with its 95% CI, on all patients.
- **Simulated survival.** Two curves per arm: the *model mean*, the mean over simulated
  patients of the model's exp(-cumulative hazard of death), and the Kaplan-Meier curve
  of the simulated death times. The model mean is the one judged: it is the
  cause-specific ("net") survival that a Kaplan-Meier curve with transplant censored
  estimates under independent censoring, free of the Monte-Carlo noise of the simulated
  event draws. The simulated Kaplan-Meier curve is reported beside it.
- **Checks** (each marked pass/miss): the model-mean survival of each arm at each of
  ``check_times`` (2, 5, 10 years) inside the observed arm's Kaplan-Meier 95% CI; the
  Cox hazard ratio of the simulated data inside the observed hazard ratio's 95% CI.
- **Curve distance** (reported, no target): per arm, the integrated absolute difference
  \int_0^H |S_sim(t) - S_obs(t)| dt in years (H = ``horizon``, 10 years), of both
  simulated curves against the observed Kaplan-Meier step curve; computed exactly for
  piecewise-linear and step curves (:func:`integrated_abs_difference`).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field
from tqdm.auto import tqdm

from vpatient.benchmarks.base import StrictModel, VersionedBenchmarkResult
from vpatient.data.cohort import NO_TREATMENT_ARM, Cohort
from vpatient.evaluate.fold_models import DEFAULT_CACHE, TrainingRun, fold_model, full_model
from vpatient.evaluate.protocol import ProtocolError, held_out_records
from vpatient.model.latent_ode import ModelSettings
from vpatient.schemas import PatientRecord, TreatmentExposure, TreatmentPlan, VariableKind
from vpatient.simulation.sampling import patients_from_records
from vpatient.simulation.simulator import Simulator
from vpatient.simulation.trial import TrialResult, arm_outcomes, hazard_ratio
from vpatient.tables import markdown_table
from vpatient.train import TrainSettings
from vpatient.virtual_patient import VirtualPatientModel

__all__ = [
    "PbcTrialBenchmarkResult",
    "PbcTrialSettings",
    "StepOrLinearCurve",
    "integrated_abs_difference",
    "kaplan_meier_curve",
    "observed_hazard_ratio",
    "pooled_trial",
    "run_pbc_trial_benchmark",
    "trial_arms",
]

log = logging.getLogger(__name__)

EVENT = "death"
PLACEBO = "placebo"
#: Display names of treatments as trial arms (others are named after the treatment variable).
ARM_NAMES: dict[str, str] = {"d_penicillamine": "D-penicillamine"}
JUDGED = "model mean"
_Z95 = 1.959963984540054


# --------------------------------------------------------------------------- curves


@dataclass(frozen=True)
class StepOrLinearCurve:
    """A survival curve S(t) on [0, inf): right-continuous steps or linear between its points.

    A step curve holds ``survival[i]`` on [times[i], times[i + 1]) and is 1 before
    ``times[0]``; a linear curve interpolates and holds its end values outside. Both
    hold the last value after the last point.
    """

    times: np.ndarray
    survival: np.ndarray
    step: bool

    def __call__(self, t: np.ndarray | float) -> np.ndarray:
        t = np.asarray(t, dtype=float)
        if self.step:
            idx = np.searchsorted(self.times, t, side="right")
            return np.concatenate([[1.0], self.survival])[idx]
        return np.interp(t, self.times, self.survival)


def integrated_abs_difference(a: StepOrLinearCurve, b: StepOrLinearCurve, horizon: float) -> float:
    """\\int_0^horizon |a(t) - b(t)| dt, exactly for step and piecewise-linear curves.

    Between consecutive knots of either curve the difference is linear (a step curve is
    constant there), so each piece integrates in closed form, a sign change included.
    """
    if not horizon > 0:
        return 0.0
    knots = np.concatenate([[0.0, horizon], a.times, b.times])
    knots = np.unique(knots[(knots >= 0) & (knots <= horizon)])
    lo, hi = knots[:-1], knots[1:]

    def ends(c: StepOrLinearCurve) -> tuple[np.ndarray, np.ndarray]:
        start = c(lo)  # right limit at the piece's start
        return start, (start if c.step else c(hi))  # left limit at its end

    a0, a1 = ends(a)
    b0, b1 = ends(b)
    d0, d1 = a0 - b0, a1 - b1
    width = hi - lo
    same = d0 * d1 >= 0
    total = np.abs(d0) + np.abs(d1)
    piece = np.where(same, 0.5 * total, (d0**2 + d1**2) / (2 * np.maximum(total, 1e-300))) * width
    return float(piece.sum())


def kaplan_meier_curve(durations: np.ndarray, observed: np.ndarray) -> pd.DataFrame:
    """Kaplan-Meier curve with its 95% CI (lifelines, log-log): time, survival, lower, upper at each step time."""
    from lifelines import KaplanMeierFitter

    km = KaplanMeierFitter().fit(np.asarray(durations, float), np.asarray(observed, int))
    ci = km.confidence_interval_survival_function_
    return pd.DataFrame(
        {
            "time": km.survival_function_.index.to_numpy(float),
            "survival": km.survival_function_.iloc[:, 0].to_numpy(float),
            "lower": ci.iloc[:, 0].to_numpy(float),
            "upper": ci.iloc[:, 1].to_numpy(float),
        }
    )


def _step_at(curve: pd.DataFrame, t: float, column: str) -> float:
    """A Kaplan-Meier table's column at time t (right-continuous; the first row is t=0)."""
    idx = int(np.searchsorted(curve["time"].to_numpy(float), t, side="right")) - 1
    return float(curve[column].iloc[max(idx, 0)])


def observed_hazard_ratio(durations: np.ndarray, observed: np.ndarray, treated: np.ndarray) -> dict[str, float]:
    """Cox hazard ratio of treated vs untreated with its 95% CI and p (the estimator the simulated trial uses)."""
    treated = np.asarray(treated, bool)
    frame = pd.DataFrame({"time": np.asarray(durations, float), "primary": np.asarray(observed, int)})
    return hazard_ratio(frame[~treated], frame[treated])


# --------------------------------------------------------------------------- arms and patients


def trial_arms(cohort: Cohort) -> tuple[str, dict[str, TreatmentPlan]]:
    """The cohort's treatment variable and the two arms: placebo (reference) and the drug at dose 1 from t=0."""
    treatments = cohort.config.names(VariableKind.TREATMENT)
    if len(treatments) != 1:
        raise ProtocolError(
            f"the trial benchmark needs exactly one treatment variable, config {cohort.config.name!r} has {treatments}"
        )
    (treatment,) = treatments
    drug = ARM_NAMES.get(treatment, treatment)
    plans = {
        PLACEBO: TreatmentPlan(name=PLACEBO, description="no treatment"),
        drug: TreatmentPlan(
            name=drug,
            description=f"{treatment} at dose 1 from enrolment",
            exposures=[TreatmentExposure(treatment=treatment, start=0.0, dose=1.0)],
        ),
    }
    return treatment, plans


def pooled_trial(
    parts: Sequence[tuple[VirtualPatientModel, Sequence[PatientRecord]]],
    arms: dict[str, TreatmentPlan],
    years: float,
    event: str,
    seed: int,
    draws_per_record: int,
) -> TrialResult:
    """One trial of several groups of real patients, each simulated by its own model, analysed together.

    Group k follows the steps of :meth:`Simulator.trial` on real records with random
    numbers from ``SeedSequence([seed, k])``; with one group it is that call exactly.
    """
    per_patient, sums = [], []
    offset = sources = 0
    for k, (model, records) in enumerate(parts):
        plans = {name: plan.check(model.config) for name, plan in arms.items()}
        rng = np.random.default_rng(np.random.SeedSequence([seed, k]))
        patients = patients_from_records(model, list(records), rng, at=0.0, draws_per_record=draws_per_record)
        frame, total = arm_outcomes(model, patients, plans, years)
        frame["subject_id"] = frame["subject_id"] + offset  # unique ids across groups (arms are paired by id)
        frame["source"] = frame["source"] + sources  # and unique real patients (the clusters of their draws)
        offset += len(patients)
        sources += len(records)
        per_patient.append(frame)
        sums.append(total)
    settings = {
        "years": years,
        "population": f"{len(parts)} groups of records at enrolment",
        "draws_per_record": draws_per_record,
    }
    return TrialResult.analyse(
        pd.concat(per_patient, ignore_index=True), pd.concat(sums, ignore_index=True), list(arms), event, years, seed, settings
    )


# --------------------------------------------------------------------------- result types


class Curve(StrictModel):
    """One survival curve of the figure (times in years)."""

    setting: str = Field(description="'observed', 'in-sample' or 'cross-validated'.")
    arm: str
    source: str = Field(description="'observed Kaplan-Meier', 'model mean' or 'simulated Kaplan-Meier'.")
    step: bool = Field(description="True: right-continuous steps; False: linear between points.")
    time: list[float]
    survival: list[float]
    lower: list[float]
    upper: list[float]


class SurvivalCheck(StrictModel):
    """Survival of one arm at one time: observed (with its 95% CI) and simulated."""

    arm: str
    time: float
    observed: float
    observed_lower: float
    observed_upper: float
    model_mean: float = Field(description="Mean over simulated patients of exp(-cumulative hazard); judged.")
    simulated_km: float = Field(description="Kaplan-Meier of the simulated event times (reported).")
    inside: bool = Field(description="The model mean lies inside the observed 95% CI.")
    simulated_km_inside: bool


class HazardRatio(StrictModel):
    hazard_ratio: float | None
    lower: float | None
    upper: float | None
    p: float | None


class HazardRatioCheck(StrictModel):
    arm: str
    reference: str
    observed: HazardRatio
    simulated: HazardRatio = Field(description="Cox model of the simulated trial (arms as independent samples).")
    inside: bool = Field(description="The simulated hazard ratio lies inside the observed 95% CI.")


class CurveDistance(StrictModel):
    arm: str
    model_mean: float = Field(description="Integral over [0, horizon] of |model mean - observed KM|, years.")
    simulated_km: float = Field(description="The same for the simulated Kaplan-Meier curve, years.")


class TrialCheck(StrictModel):
    """One simulated replication (in sample or cross-validated) against the observed trial."""

    setting: str
    description: str
    n_patients: int
    n_simulated: int = Field(description="Simulated patients per arm (patients x draws).")
    survival: list[SurvivalCheck]
    hazard_ratio: HazardRatioCheck
    distance: list[CurveDistance]
    simulated_rmst_difference: float = Field(description="Paired model RMST difference drug - placebo to `years`, years.")
    checks_passed: int
    checks_total: int
    seconds: float


class ObservedArm(StrictModel):
    arm: str
    n: int
    deaths: int
    other_events: int = Field(description="Other event kinds (transplant), which censor death.")


class PbcTrialBenchmarkResult(VersionedBenchmarkResult):
    """The result of ``vpatient benchmark pbc-trial`` (protocol: module docstring)."""

    benchmark: Literal["pbc-trial"] = "pbc-trial"
    data: str
    event: str
    treatment: str
    arms: dict[str, str] = Field(description="Arm -> plan description; the first is the reference.")
    n_patients: int
    seed: int
    n_folds: int
    years: float = Field(description="Simulated follow-up, years.")
    draws_per_record: int
    check_times: list[float]
    horizon: float = Field(description="Upper limit of the integrated absolute difference, years.")
    judged: str = Field(description="Which simulated curve the survival checks judge, and why.")
    observed: list[ObservedArm]
    in_sample: TrialCheck
    cross_validated: TrialCheck
    curves: list[Curve]
    train_settings: dict
    model_settings: dict
    runtime_seconds: float

    def plot(self, path: Path) -> Path:
        """The result's figure, drawn by :func:`plot_pbc_trial`."""
        return plot_pbc_trial(self, path)

    def to_markdown(self) -> str:
        placebo, drug = list(self.arms)
        lines = [
            f"# In-silico replication of the PBC trial: {self.data}",
            "",
            f"vpatient {self.vpatient_version}, seed {self.seed}. {self.n_patients} patients "
            f"({', '.join(f'{o.n} {o.arm}' for o in self.observed)}), each simulated from its enrolment record "
            f"({self.draws_per_record} posterior draws) under both arms with common random numbers, "
            f"{self.years:g} years; event {self.event}, other events censor it. "
            f"In sample: one model trained on every patient. Cross-validated: {self.n_folds} folds over patients, "
            "each fold's held-out patients simulated by the model trained on the other folds, pooled.",
            "",
            f"Judged: the **{JUDGED}** curve. {self.judged}",
            "",
            "## Checks",
            "",
        ]
        rows = []
        for check in (self.in_sample, self.cross_validated):
            for s in check.survival:
                rows.append(
                    {
                        "setting": check.setting,
                        "check": f"S({s.time:g}y) {s.arm}",
                        "simulated (model mean)": s.model_mean,
                        "simulated (KM)": s.simulated_km,
                        "observed": s.observed,
                        "observed 95% CI": f"{s.observed_lower:.3f}-{s.observed_upper:.3f}",
                        "result": _mark(s.inside),
                    }
                )
            hr = check.hazard_ratio
            rows.append(
                {
                    "setting": check.setting,
                    "check": f"HR {hr.arm} vs {hr.reference}",
                    "simulated (model mean)": None,
                    "simulated (KM)": hr.simulated.hazard_ratio,
                    "observed": hr.observed.hazard_ratio,
                    "observed 95% CI": _ci(hr.observed),
                    "result": _mark(hr.inside),
                }
            )
        lines += [markdown_table(pd.DataFrame(rows), index=False), ""]
        lines += [
            "Passed: "
            + "; ".join(f"{c.setting} {c.checks_passed} of {c.checks_total}" for c in (self.in_sample, self.cross_validated))
            + ". The hazard ratio's simulated value comes from a Cox model of the simulated event times "
            f"(its own 95% CI: in sample {_ci(self.in_sample.hazard_ratio.simulated)}, cross-validated "
            f"{_ci(self.cross_validated.hazard_ratio.simulated)}); p of the observed HR "
            f"{_fmt(self.in_sample.hazard_ratio.observed.p)}.",
            "",
            f"## Integrated absolute difference from the observed Kaplan-Meier curve, 0 to {self.horizon:g} years",
            "",
            "Years of survival probability; 0 is a perfect match (no target).",
            "",
        ]
        rows = [
            {"setting": c.setting, "arm": d.arm, "model mean": d.model_mean, "simulated KM": d.simulated_km}
            for c in (self.in_sample, self.cross_validated)
            for d in c.distance
        ]
        lines += [markdown_table(pd.DataFrame(rows), index=False), ""]
        lines += [
            f"Paired RMST difference {drug} - {placebo} to {self.years:g} years (model): in sample "
            f"{self.in_sample.simulated_rmst_difference:.3f}, cross-validated {self.cross_validated.simulated_rmst_difference:.3f} years.",
            "",
            f"Observed events: {', '.join(f'{o.arm} {o.deaths} {self.event}s, {o.other_events} other' for o in self.observed)}. "
            f"Runtime {self.runtime_seconds:.0f} s (training included unless cached; context only).",
            "",
        ]
        return "\n".join(lines)


def _mark(ok: bool) -> str:
    return "pass" if ok else "miss"


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def _ci(hr: HazardRatio) -> str:
    return f"{_fmt(hr.hazard_ratio)} ({_fmt(hr.lower)}-{_fmt(hr.upper)})"


def _opt(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class PbcTrialSettings:
    """What ``run_pbc_trial_benchmark`` runs (protocol: module docstring)."""

    seed: int = 0
    n_folds: int = 5
    #: Simulated follow-up, years; at least the last check time and the horizon.
    years: float = 12.0
    draws_per_record: int = 20
    check_times: Sequence[float] = (2.0, 5.0, 10.0)
    horizon: float = 10.0
    event: str = EVENT
    train_settings: TrainSettings | None = None
    model_settings: ModelSettings | None = None
    cache_dir: str | Path | None = DEFAULT_CACHE
    progress: bool = True


def run_pbc_trial_benchmark(cohort: Cohort, settings: PbcTrialSettings | None = None) -> PbcTrialBenchmarkResult:
    """Run the protocol of the module docstring on ``cohort`` (PBC, or any randomised cohort with one treatment)."""
    s = settings or PbcTrialSettings()
    seed, n_folds, years, horizon, event, progress = s.seed, s.n_folds, s.years, s.horizon, s.event, s.progress
    draws_per_record, cache_dir = s.draws_per_record, s.cache_dir
    train_settings, model_settings = s.train_settings, s.model_settings
    check_times = s.check_times
    if event not in cohort.config.event_kinds:
        raise ProtocolError(f"event {event!r} is not an event kind of config {cohort.config.name!r}")
    check_times = [float(t) for t in check_times]
    if max(check_times) > years or horizon > years:
        raise ProtocolError(f"simulate at least as long as the checks: years = {years:g} < {max([*check_times, horizon]):g}")
    started = time.perf_counter()
    run = TrainingRun(seed, cache_dir, train_settings, model_settings)
    train_settings, model_settings = run.resolved()
    treatment, arms = trial_arms(cohort)
    placebo, drug = list(arms)

    # the trial as observed
    from vpatient.plots import survival_table

    durations, died, baseline = survival_table(cohort, event)
    label = {NO_TREATMENT_ARM: placebo, treatment: drug}
    unknown = sorted(set(baseline) - set(label))
    if unknown:
        raise ProtocolError(f"baseline arms {unknown} are neither untreated nor {treatment} alone")
    real_arm = np.array([label[a] for a in baseline])
    observed_km = {arm: kaplan_meier_curve(durations[real_arm == arm], died[real_arm == arm]) for arm in arms}
    hr_observed = observed_hazard_ratio(durations, died, real_arm == drug)
    other = np.array(
        [any(e.kind != event for e in r.events) and not any(e.kind == event for e in r.events) for r in cohort.records]
    )
    observed = [
        ObservedArm(
            arm=a,
            n=int((real_arm == a).sum()),
            deaths=int(died[real_arm == a].sum()),
            other_events=int(other[real_arm == a].sum()),
        )
        for a in arms
    ]

    splits = held_out_records(cohort, n_folds, seed)
    bar = tqdm(total=2 + n_folds, desc="pbc-trial benchmark", unit="step", file=sys.stderr, disable=not progress)
    bar.set_postfix(step="model on all patients")
    t0 = time.perf_counter()
    model = full_model(cohort, run)
    bar.update()
    bar.set_postfix(step="in-sample trial")
    trial = Simulator(model).trial(
        arms, seed=seed, years=years, event=event, population=cohort.records, draws_per_record=draws_per_record, progress=False
    )
    bar.update()
    seconds_in = time.perf_counter() - t0

    t0 = time.perf_counter()
    parts = []
    for k, (train, test) in enumerate(splits):
        bar.set_postfix(step=f"fold {k} model")
        parts.append((fold_model(cohort, k, n_folds, train, run), test))
        bar.update()
    pooled = pooled_trial(parts, arms, years, event, seed, draws_per_record)
    bar.close()
    seconds_cv = time.perf_counter() - t0

    curves = [
        Curve(
            setting="observed",
            arm=arm,
            source="observed Kaplan-Meier",
            step=True,
            time=_r(c["time"]),
            survival=_r(c["survival"]),
            lower=_r(c["lower"]),
            upper=_r(c["upper"]),
        )
        for arm, c in observed_km.items()
    ]
    checks = []
    for setting, description, result, n_pat, secs in (
        ("in-sample", "one model trained on every patient", trial, len(cohort.records), seconds_in),
        (
            "cross-validated",
            f"{n_folds} folds; each patient simulated by the model of the fold that held it out",
            pooled,
            sum(len(t) for _, t in splits),
            seconds_cv,
        ),
    ):
        check, fig_curves = _judge(
            setting, description, result, n_pat, observed_km, hr_observed, check_times, horizon, drug, placebo
        )
        checks.append(check.model_copy(update={"seconds": round(secs, 1)}))
        curves += fig_curves
    return PbcTrialBenchmarkResult(
        data=cohort.name,
        event=event,
        treatment=treatment,
        arms={name: plan.description or name for name, plan in arms.items()},
        n_patients=len(cohort.records),
        seed=seed,
        n_folds=n_folds,
        years=years,
        draws_per_record=draws_per_record,
        check_times=check_times,
        horizon=horizon,
        judged=(
            "It is the mean over simulated patients of the model's exp(-cumulative hazard of death): the "
            "cause-specific survival, which is what a Kaplan-Meier curve with the other events censored estimates "
            "under independent censoring, without the Monte-Carlo noise of simulated event draws. The Kaplan-Meier "
            "curve of the simulated event times (censored at each patient's own end of follow-up and by other "
            "simulated events) is reported beside it."
        ),
        observed=observed,
        in_sample=checks[0],
        cross_validated=checks[1],
        curves=curves,
        train_settings=train_settings.to_dict(),
        model_settings=model_settings.to_dict(),
        runtime_seconds=round(time.perf_counter() - started, 1),
    )


def _r(values: np.ndarray) -> list[float]:
    return [round(float(v), 5) for v in values]


def _judge(
    setting: str,
    description: str,
    trial: TrialResult,
    n_patients: int,
    observed_km: dict[str, pd.DataFrame],
    hr_observed: dict[str, float],
    check_times: list[float],
    horizon: float,
    drug: str,
    placebo: str,
) -> tuple[TrialCheck, list[Curve]]:
    model_at = trial.survival_at(check_times, source="model").set_index(["arm", "time"])["survival"]
    km_at = trial.survival_at(check_times, source="kaplan_meier").set_index(["arm", "time"])["survival"]
    survival, distance, curves = [], [], []
    for arm in trial.arms:
        obs = observed_km[arm]
        for t in check_times:
            lo, hi = _step_at(obs, t, "lower"), _step_at(obs, t, "upper")
            m, k = float(model_at[(arm, t)]), float(km_at[(arm, t)])
            survival.append(
                SurvivalCheck(
                    arm=arm,
                    time=t,
                    observed=_step_at(obs, t, "survival"),
                    observed_lower=lo,
                    observed_upper=hi,
                    model_mean=m,
                    simulated_km=k,
                    inside=bool(lo <= m <= hi),
                    simulated_km_inside=bool(lo <= k <= hi),
                )
            )
        obs_curve = StepOrLinearCurve(obs["time"].to_numpy(float), obs["survival"].to_numpy(float), step=True)
        model = trial.model_survival[trial.model_survival["arm"] == arm]
        km = trial.kaplan_meier[trial.kaplan_meier["arm"] == arm]
        model_curve = StepOrLinearCurve(model["time"].to_numpy(float), model["survival"].to_numpy(float), step=False)
        km_curve = StepOrLinearCurve(km["time"].to_numpy(float), km["survival"].to_numpy(float), step=True)
        distance.append(
            CurveDistance(
                arm=arm,
                model_mean=integrated_abs_difference(model_curve, obs_curve, horizon),
                simulated_km=integrated_abs_difference(km_curve, obs_curve, horizon),
            )
        )
        for source, table, step in ((JUDGED, model, False), ("simulated Kaplan-Meier", km, True)):
            curves.append(
                Curve(
                    setting=setting,
                    arm=arm,
                    source=source,
                    step=step,
                    time=_r(table["time"]),
                    survival=_r(table["survival"]),
                    lower=_r(table["lower"]),
                    upper=_r(table["upper"]),
                )
            )
    row = trial.hazard_ratios.set_index("arm").loc[drug]
    simulated = HazardRatio(
        hazard_ratio=_opt(row["hazard_ratio"]), lower=_opt(row["lower"]), upper=_opt(row["upper"]), p=_opt(row["p"])
    )
    observed = HazardRatio(**{k: _opt(hr_observed[k]) for k in ("hazard_ratio", "lower", "upper", "p")})
    inside = (
        simulated.hazard_ratio is not None
        and observed.lower is not None
        and observed.lower <= simulated.hazard_ratio <= observed.upper
    )
    hr = HazardRatioCheck(arm=drug, reference=placebo, observed=observed, simulated=simulated, inside=bool(inside))
    rmst = trial.rmst.set_index("arm").loc[drug, "difference"]
    passed = sum(s.inside for s in survival) + int(hr.inside)
    check = TrialCheck(
        setting=setting,
        description=description,
        n_patients=n_patients,
        n_simulated=trial.n_patients,
        survival=survival,
        hazard_ratio=hr,
        distance=distance,
        simulated_rmst_difference=float(rmst),
        checks_passed=passed,
        checks_total=len(survival) + 1,
        seconds=0.0,
    )
    return check, curves


# --------------------------------------------------------------------------- writing


def plot_pbc_trial(result: PbcTrialBenchmarkResult, path: str | Path) -> Path:
    """Observed Kaplan-Meier curves (steps, 95% band) against the simulated curves per arm; one panel per setting."""
    # A bare Figure draws without pyplot, so no backend is selected behind the caller's back.
    from matplotlib.figure import Figure

    settings = [result.in_sample, result.cross_validated]
    fig = Figure(figsize=(6.2 * len(settings), 4.4))
    axes = fig.subplots(1, len(settings), sharey=True, squeeze=False)
    colours = {arm: f"C{k}" for k, arm in enumerate(result.arms)}
    for ax, check in zip(axes[0], settings, strict=True):
        for c in result.curves:
            colour = colours[c.arm]
            t = np.asarray(c.time)
            keep = t <= result.years + 1e-9
            if c.setting == "observed":
                ax.step(t[keep], np.asarray(c.survival)[keep], where="post", color=colour, lw=1.6, label=f"{c.arm}: observed KM")
                ax.fill_between(
                    t[keep], np.asarray(c.lower)[keep], np.asarray(c.upper)[keep], step="post", color=colour, alpha=0.15
                )
            elif c.setting == check.setting:
                if c.source == JUDGED:
                    ax.plot(t, c.survival, color=colour, ls="--", lw=1.6, label=f"{c.arm}: {JUDGED} (judged)")
                else:
                    ax.step(t, c.survival, where="post", color=colour, ls=":", lw=1.2, label=f"{c.arm}: simulated KM")
        for t in result.check_times:
            ax.axvline(t, color="0.7", lw=0.6, zorder=0)
        ax.set_title(
            f"{check.setting}: {check.checks_passed}/{check.checks_total} checks pass, HR "
            f"{_fmt(check.hazard_ratio.simulated.hazard_ratio)} vs {_fmt(check.hazard_ratio.observed.hazard_ratio)} observed",
            fontsize=9,
        )
        ax.set_xlabel("years since enrolment")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"probability free of {result.event}")
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"{result.data}: observed trial vs in-silico replication ({result.n_patients} patients)", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path
