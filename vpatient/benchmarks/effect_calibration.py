"""``vpatient benchmark effect-calibration``: are the intervals of treatment effects honest?

Every method runs in the same process on the same splits: the single model (one set of
weights) and the ensemble (``members`` members on bootstrap resamples, the model's own
uncertainty included; :mod:`vpatient.ensemble`).

**Synthetic** (``--data synthetic``), at each confounding strength: the counterfactual
benchmark's split and plans (:mod:`vpatient.benchmarks.counterfactual`: from
the decision time s, the drug withdrawn, started or doubled). For each held-out patient
and each plan that applies, the true individual effect (plan minus factual, from the
generator's counterfactual truth) of every lab at two horizons (modelling scale) and of
P(no death by s + the last horizon | alive at s) is set against the model's 90%
interval of that effect: the 5% and 95% quantiles, over its sample paths, of the
per-sample difference (common random numbers, so the difference is the effect).
Coverage is reported per quantity; the target is 85-95%.

**PBC** (``--data pbc2``), a randomised trial whose drug had no effect (observed HR
0.998, 95% CI 0.72-1.39; Fleming and Harrington, *Counting Processes and Survival
Analysis*, 1991, app. D):

- the share of patients whose 90% interval of the 5-year survival effect
  (D-penicillamine against placebo from enrolment) excludes zero (target: at most 10%);
- the in-silico trial to 10 years (every patient replayed under both arms, 20 draws each; see
  :mod:`vpatient.simulation.trial` for what its intervals include), in sample (the model
  trained on every patient) and cross-validated (each patient replayed by the model of
  the fold that held it out), beside the observed HR and RMST difference. Target: the
  95% CIs contain the observed estimates and the null.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import Field
from tqdm.auto import tqdm

from vpatient.benchmarks.base import BenchmarkResult, StrictModel
from vpatient.data.cohort import Cohort
from vpatient.data.timeline import truncate_record
from vpatient.evaluate.fold_models import DEFAULT_CACHE, TrainingRun, fold_model, full_model
from vpatient.simulation.trial import TrialResult
from vpatient.tables import markdown_table

__all__ = [
    "EffectCalibrationResult",
    "run_effect_calibration_pbc",
    "run_effect_calibration_synthetic",
]

log = logging.getLogger(__name__)

LEVEL = 0.90
COVERAGE_TARGET = (0.85, 0.95)
MAX_EXCLUDING_ZERO = 0.10


class QuantityCoverage(StrictModel):
    confounding: float
    method: str
    quantity: str = Field(description="'<lab> +<h>' on the modelling scale, or 'survival +<h>'.")
    n: int = Field(description="Patient-plan pairs scored.")
    coverage: float = Field(description="Share of true individual effects inside the 90% interval.")
    mean_width: float
    mean_abs_error: float = Field(description="Mean |predicted mean effect - true effect|.")
    within_target: bool


class TrialEstimate(StrictModel):
    method: str
    setting: str = Field(description="'observed', 'in sample' or 'cross-validated'.")
    hazard_ratio: float | None
    hr_lower: float | None
    hr_upper: float | None
    rmst_difference: float | None
    rmst_lower: float | None
    rmst_upper: float | None
    between_member_sd_log_hr: float | None = None
    contains_observed: bool | None = None
    contains_null: bool | None = None


class NullEffectShare(StrictModel):
    method: str
    n_patients: int
    excluding_zero: float = Field(description="Share of patients whose 90% interval of the 5-year survival effect excludes 0.")
    benefit: float = Field(description="Share whose interval lies wholly above 0.")
    harm: float
    mean_effect: float
    mean_width: float
    within_target: bool


class EffectCalibrationResult(BenchmarkResult):
    """The result of one run (module docstring)."""

    benchmark: str = "effect-calibration"
    data: str
    seed: int
    members: int
    level: float = LEVEL
    settings: dict
    coverage: list[QuantityCoverage] = Field(default_factory=list)
    null_share: list[NullEffectShare] = Field(default_factory=list)
    members_curve: list[NullEffectShare] = Field(
        default_factory=list,
        description="The null-trial share for the first k members of the ensemble, k = 1..members: how many members are enough.",
    )
    trial: list[TrialEstimate] = Field(default_factory=list)
    training_seconds: dict[str, float] = Field(default_factory=dict)
    runtime_seconds: float = 0.0

    @property
    def stem(self) -> str:
        """File name of the result: {benchmark}-{data}."""
        return f"effect-calibration-{self.data}"

    def to_markdown(self) -> str:
        out = [
            f"# Effect calibration ({self.data}, seed {self.seed}; single model vs an ensemble of {self.members})\n",
            f"Command: `vpatient benchmark effect-calibration --data {self.data} --seed {self.seed} --members {self.members}`\n",
        ]
        if self.coverage:
            table = [
                {
                    "confounding": c.confounding,
                    "method": c.method,
                    "quantity": c.quantity,
                    "n": c.n,
                    "coverage of 90% interval": round(c.coverage, 3),
                    "mean width": round(c.mean_width, 4),
                    "MAE of effect": round(c.mean_abs_error, 4),
                    "85-95%": "yes" if c.within_target else "no",
                }
                for c in self.coverage
            ]
            out.append(_section("## Individual effects against the synthetic truth", table))
        if self.null_share:
            table = [
                {
                    "method": s.method,
                    "patients": s.n_patients,
                    "interval excludes 0": round(s.excluding_zero, 3),
                    "benefit": round(s.benefit, 3),
                    "harm": round(s.harm, 3),
                    "mean effect": round(s.mean_effect, 4),
                    "mean width": round(s.mean_width, 4),
                    "<= 10%": "yes" if s.within_target else "no",
                }
                for s in self.null_share
            ]
            out.append(_section("## PBC, a null drug: 5-year survival effect per patient (90% interval)", table))
        if self.members_curve:
            table = [
                {"members": s.method, "interval excludes 0": round(s.excluding_zero, 3), "mean width": round(s.mean_width, 4)}
                for s in self.members_curve
            ]
            out.append(_section("How many members: the same, for the first k members of the ensemble", table))
        if self.trial:
            table = [
                {
                    "method": t.method,
                    "setting": t.setting,
                    "HR (95% CI)": _ci(t.hazard_ratio, t.hr_lower, t.hr_upper),
                    "RMST difference, years (95% CI)": _ci(t.rmst_difference, t.rmst_lower, t.rmst_upper),
                    "between-member sd of log HR": ""
                    if t.between_member_sd_log_hr is None
                    else f"{t.between_member_sd_log_hr:.3f}",
                    "CIs contain observed": _yes(t.contains_observed),
                    "CIs contain null": _yes(t.contains_null),
                }
                for t in self.trial
            ]
            out.append(_section("## PBC trial in silico", table))
        if self.training_seconds:
            out.append("Training seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in self.training_seconds.items()) + "\n")
        out.append(f"Runtime {self.runtime_seconds / 60:.1f} min.\n")
        return "\n".join(out)


def _ci(x: float | None, lo: float | None, hi: float | None) -> str:
    if x is None:
        return ""
    if lo is None or hi is None:
        return f"{x:.3f}"
    return f"{x:.3f} ({lo:.3f} to {hi:.3f})"


def _yes(flag: bool | None) -> str:
    return "" if flag is None else ("yes" if flag else "no")


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _methods(members: int, seed: int, train_settings):
    from vpatient.train import TrainSettings

    base = replace(train_settings or TrainSettings(), seed=seed)
    return {"single model": replace(base, members=1), f"ensemble of {members}": replace(base, members=members)}


def _interval(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tail = (1 - LEVEL) / 2
    return np.quantile(samples, tail, axis=1), np.quantile(samples, 1 - tail, axis=1)


# --------------------------------------------------------------------------- synthetic


def _section(title: str, rows: list[dict]) -> str:
    return f"{title}\n\n{markdown_table(pd.DataFrame(rows), index=False)}\n"


def run_effect_calibration_synthetic(
    n: int = 500,
    seed: int = 0,
    strengths: Sequence[float] = (0.0, 2.0),
    members: int = 5,
    *,
    decision_time: float = 1.0,
    horizons: Sequence[float] = (1.0, 3.0),
    test_fraction: float = 0.2,
    n_samples: int = 100,
    train_settings=None,
    progress: bool = True,
) -> EffectCalibrationResult:
    """Coverage of individual treatment effects against the generator's truth (module docstring)."""
    from vpatient.benchmarks.counterfactual import (
        EVENT,
        PLANS,
        counterfactual_plans,
        decision_split,
        true_outcomes,
    )
    from vpatient.data.synthetic import synthetic_cohort
    from vpatient.virtual_patient import VirtualPatientModel

    started = time.perf_counter()
    horizons = [float(h) for h in horizons]
    methods = _methods(members, seed, train_settings)
    rows, seconds = [], {}
    bar = tqdm(total=len(strengths) * len(methods), desc="effect calibration", unit="fit", file=sys.stderr, disable=not progress)
    for c in strengths:
        cohort = synthetic_cohort(n, seed, confounding=float(c))
        config = cohort.config
        split = decision_split(cohort, seed, test_fraction, decision_time)
        variables, treatment, max_dose = split.variables, split.treatment, split.max_dose
        train, test, histories = split.train, split.test, split.histories
        applicable = [counterfactual_plans(h, decision_time, treatment, max_dose) for h in histories]
        times = decision_time + np.asarray(horizons)
        truth_factual = true_outcomes(cohort.truth, test, [None] * len(test), decision_time, horizons, variables)
        for method, settings in methods.items():
            bar.set_postfix(confounding=f"{c:g}", method=method)
            t0 = time.perf_counter()
            model = VirtualPatientModel.fit(train, config, settings, progress=False)
            seconds[f"confounding {c:g}, {method}"] = round(time.perf_counter() - t0, 1)
            columns = [model.layout.continuous.index(v) for v in variables]
            death = model.layout.events.index(EVENT)
            grids = [times] * len(histories)
            factual = model.simulate(histories, grids, n_samples=n_samples, seed=seed)
            true_effects, lows, highs, means = [], [], [], []
            for plan in PLANS:
                plans = [a.get(plan) for a in applicable]
                mask = np.array([p is not None for p in plans])
                if not mask.any():
                    continue
                paths = model.simulate(histories, grids, n_samples=n_samples, seed=seed, plans=plans)
                # per sample: (N, S, H*V + 1), labs at every horizon then survival at the last
                diff_labs = (paths.expected - factual.expected)[..., columns].reshape(len(histories), n_samples, -1)
                diff_surv = (paths.survival - factual.survival)[:, :, -1, death][..., None]
                diff = np.concatenate([diff_labs, diff_surv], axis=-1)[mask]
                truth = true_outcomes(cohort.truth, test, plans, decision_time, horizons, variables)
                true_diff = np.concatenate(
                    [
                        (truth.values - truth_factual.values).reshape(len(test), -1),
                        (truth.survival - truth_factual.survival)[:, None],
                    ],
                    axis=-1,
                )[mask]
                low, high = _interval(diff)
                lows.append(low)
                highs.append(high)
                means.append(diff.mean(axis=1))
                true_effects.append(true_diff)
            low, high, mean, true = (np.concatenate(x) for x in (lows, highs, means, true_effects))
            names = [f"{v} +{h:g}" for h in horizons for v in variables] + [f"survival +{horizons[-1]:g}"]
            for q, name in enumerate(names):
                inside = (true[:, q] >= low[:, q]) & (true[:, q] <= high[:, q])
                coverage = float(inside.mean())
                rows.append(
                    QuantityCoverage(
                        confounding=float(c),
                        method=method,
                        quantity=name,
                        n=len(true),
                        coverage=coverage,
                        mean_width=float((high[:, q] - low[:, q]).mean()),
                        mean_abs_error=float(np.abs(mean[:, q] - true[:, q]).mean()),
                        within_target=COVERAGE_TARGET[0] <= coverage <= COVERAGE_TARGET[1],
                    )
                )
            bar.update()
    bar.close()
    return EffectCalibrationResult(
        data="synthetic",
        seed=seed,
        members=members,
        settings={
            "n": n,
            "strengths": [float(c) for c in strengths],
            "decision_time": decision_time,
            "horizons": horizons,
            "test_fraction": test_fraction,
            "n_samples": n_samples,
            "plans": list(PLANS),
            "train_settings": {m: s.to_dict() for m, s in methods.items()},
        },
        coverage=rows,
        training_seconds=seconds,
        runtime_seconds=round(time.perf_counter() - started, 1),
    )


# --------------------------------------------------------------------------- PBC


def run_effect_calibration_pbc(
    cohort: Cohort,
    seed: int = 0,
    members: int = 5,
    n_folds: int = 5,
    *,
    horizon: float = 5.0,
    years: float = 10.0,
    draws_per_record: int = 20,
    n_samples: int = 100,
    event: str = "death",
    train_settings=None,
    cache_dir: str | Path | None = DEFAULT_CACHE,
    progress: bool = True,
) -> EffectCalibrationResult:
    """The null trial: per-patient effect intervals and the in-silico trial, single model vs ensemble (module docstring)."""
    from vpatient.benchmarks.pbc_trial import (
        NO_TREATMENT_ARM,
        observed_hazard_ratio,
        pooled_trial,
        trial_arms,
    )
    from vpatient.evaluate.protocol import held_out_records
    from vpatient.plots import survival_table
    from vpatient.virtual_patient import VirtualPatientModel

    started = time.perf_counter()
    treatment, arms = trial_arms(cohort)
    placebo, drug = list(arms)
    durations, died, baseline = survival_table(cohort, event)
    treated = np.array([a != NO_TREATMENT_ARM for a in baseline])
    observed_hr = observed_hazard_ratio(durations, died, treated)
    observed_rmst = _observed_rmst_difference(durations, died, treated, years)
    trial_rows = [
        TrialEstimate(
            method="the real trial",
            setting="observed",
            hazard_ratio=_finite(observed_hr["hazard_ratio"]),
            hr_lower=_finite(observed_hr["lower"]),
            hr_upper=_finite(observed_hr["upper"]),
            rmst_difference=observed_rmst,
            rmst_lower=None,
            rmst_upper=None,
        )
    ]
    methods = _methods(members, seed, train_settings)
    splits = held_out_records(cohort, n_folds, seed) if n_folds > 1 else []
    share_rows, curve_rows, seconds = [], [], {}
    bar = tqdm(
        total=len(methods) * (2 + len(splits)),
        desc="effect calibration (pbc)",
        unit="step",
        file=sys.stderr,
        disable=not progress,
    )
    histories = [truncate_record(r, 0.0) for r in cohort.records]
    for method, settings in methods.items():
        bar.set_postfix(method=method, step="model on all patients")
        t0 = time.perf_counter()
        run = TrainingRun(seed, cache_dir, settings)
        model = full_model(cohort, run)
        seconds[f"{method}, all patients"] = round(time.perf_counter() - t0, 1)
        bar.update()
        bar.set_postfix(method=method, step="per-patient effects")
        plans = (arms[placebo], arms[drug])
        share_rows.append(_null_share(method, model, histories, plans, horizon, event, n_samples, seed))
        if model.n_members > 1:
            curve = [
                _null_share(
                    f"first {k}",
                    VirtualPatientModel(model.members[:k], model.config, model.scalers),
                    histories,
                    plans,
                    horizon,
                    event,
                    n_samples,
                    seed,
                )
                for k in range(1, model.n_members)
            ]
            curve_rows = [*curve, share_rows[-1].model_copy(update={"method": f"first {model.n_members}"})]
        bar.set_postfix(method=method, step="in-sample trial")
        trial = pooled_trial([(model, cohort.records)], arms, years, event, seed, draws_per_record)
        trial_rows.append(_trial_row(method, "in sample", trial, observed_hr, observed_rmst))
        bar.update()
        if splits:
            parts = []
            for i, (train, test) in enumerate(splits):
                bar.set_postfix(method=method, step=f"fold {i} model")
                t0 = time.perf_counter()
                parts.append((fold_model(cohort, i, n_folds, train, run), test))
                seconds[f"{method}, fold {i}"] = round(time.perf_counter() - t0, 1)
                bar.update()
            trial = pooled_trial(parts, arms, years, event, seed, draws_per_record)
            trial_rows.append(_trial_row(method, "cross-validated", trial, observed_hr, observed_rmst))
    bar.close()
    return EffectCalibrationResult(
        data=cohort.name,
        seed=seed,
        members=members,
        settings={
            "treatment": treatment,
            "arms": list(arms),
            "horizon": horizon,
            "years": years,
            "draws_per_record": draws_per_record,
            "n_samples": n_samples,
            "folds": n_folds,
            "train_settings": {m: s.to_dict() for m, s in methods.items()},
        },
        null_share=share_rows,
        members_curve=curve_rows,
        trial=trial_rows,
        training_seconds=seconds,
        runtime_seconds=round(time.perf_counter() - started, 1),
    )


def _null_share(method: str, model, histories, plans, horizon: float, event: str, n_samples: int, seed: int) -> NullEffectShare:
    """How many patients' 90% interval of the survival effect at ``horizon`` (plans[1] - plans[0]) excludes zero."""
    paths = model.simulate_plans(
        histories, [np.array([0.0, horizon])] * len(histories), list(plans), n_samples=n_samples, seed=seed
    )
    k = model.layout.events.index(event)
    effect = paths[1].survival[:, :, -1, k] - paths[0].survival[:, :, -1, k]  # (N, S)
    low, high = _interval(effect)
    excluding = (low > 0) | (high < 0)
    return NullEffectShare(
        method=method,
        n_patients=len(histories),
        excluding_zero=float(excluding.mean()),
        benefit=float((low > 0).mean()),
        harm=float((high < 0).mean()),
        mean_effect=float(effect.mean()),
        mean_width=float((high - low).mean()),
        within_target=float(excluding.mean()) <= MAX_EXCLUDING_ZERO,
    )


def _observed_rmst_difference(durations: np.ndarray, died: np.ndarray, treated: np.ndarray, horizon: float) -> float:
    """RMST (to ``horizon``) of the treated arm's Kaplan-Meier minus the untreated arm's."""
    from lifelines import KaplanMeierFitter
    from lifelines.utils import restricted_mean_survival_time

    def rmst(rows: np.ndarray) -> float:
        km = KaplanMeierFitter().fit(durations[rows], died[rows])
        return float(restricted_mean_survival_time(km, t=horizon))

    return rmst(treated) - rmst(~treated)


def _trial_row(method: str, setting: str, trial: TrialResult, observed_hr: dict, observed_rmst: float) -> TrialEstimate:
    """The simulated trial's HR and RMST difference (to its horizon) beside the observed ones."""
    hr = trial.hazard_ratios.iloc[0]
    rmst = trial.rmst.iloc[0]
    hr_ok = hr["lower"] <= observed_hr["hazard_ratio"] <= hr["upper"]
    rmst_ok = rmst["lower"] <= observed_rmst <= rmst["upper"]
    return TrialEstimate(
        method=method,
        setting=setting,
        hazard_ratio=_finite(hr["hazard_ratio"]),
        hr_lower=_finite(hr["lower"]),
        hr_upper=_finite(hr["upper"]),
        rmst_difference=_finite(rmst["difference"]),
        rmst_lower=_finite(rmst["lower"]),
        rmst_upper=_finite(rmst["upper"]),
        between_member_sd_log_hr=_finite(hr["between_member_sd"]),
        contains_observed=bool(hr_ok and rmst_ok),
        contains_null=bool(hr["lower"] <= 1.0 <= hr["upper"] and rmst["lower"] <= 0.0 <= rmst["upper"]),
    )
