"""``vpatient benchmark trial-adjustment`` and ``vpatient trial adjust``: the real trial re-analysed with a prognostic score.

The protocol, the score and the analyses are :mod:`vpatient.simulation.adjustment`'s;
this module runs them on a cohort (:func:`run_trial_adjustment`) and holds the result
that is written as ``trial-adjustment.json`` and ``.md``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pandas as pd
from pydantic import Field

from vpatient.benchmarks.base import VersionedBenchmarkResult
from vpatient.data.cohort import NO_TREATMENT_ARM, Cohort
from vpatient.errors import VPatientError
from vpatient.evaluate.fold_models import DEFAULT_CACHE, TrainingRun
from vpatient.schemas import DatasetConfig, Transform, VariableKind
from vpatient.simulation.adjustment import (
    DEFAULT_EVENT,
    DEFAULT_HORIZON,
    DEFAULT_LAB_TIME,
    DEFAULT_SAMPLES,
    DEFAULT_WINDOW,
    AdjustedEffect,
    ancova_adjustment,
    baseline_arms,
    cox_adjustment,
    cross_fitted_scores,
    trial_table,
)
from vpatient.tables import markdown_table

if TYPE_CHECKING:  # torch-backed: imported when scores are computed, not when the CLI starts
    from vpatient.model.latent_ode import ModelSettings
    from vpatient.train import TrainSettings

__all__ = ["SE_TARGET", "STEM", "TrialAdjustmentResult", "run_trial_adjustment"]

#: The issue's target: the adjusted log hazard ratio's standard error at least this much smaller.
SE_TARGET = 0.10
STEM = "trial-adjustment"


class TrialAdjustmentResult(VersionedBenchmarkResult):
    """The result of ``vpatient trial adjust`` / ``vpatient benchmark trial-adjustment`` (protocol: module docstring)."""

    benchmark: Literal["trial-adjustment"] = "trial-adjustment"
    data: str
    time_unit: str
    treatment_arm: str
    reference_arm: str
    arm_sizes: dict[str, int]
    n_patients: int
    event: str
    horizon: float = Field(description="Time of the survival score, in time_unit.")
    lab: str | None
    lab_at: float
    lab_window: float
    seed: int
    n_folds: int
    n_samples: int = Field(description="Posterior draws per patient behind each score.")
    scoring: str = Field(description="How the prognostic scores were computed.")
    survival: AdjustedEffect
    lab_effect: AdjustedEffect | None
    se_target: float = Field(description="Target reduction of the log hazard ratio's standard error.")
    survival_target_met: bool = Field(description="SE reduced by at least se_target and the adjusted CI contains HR 1.")
    train_settings: dict
    model_settings: dict
    runtime_seconds: float

    def to_markdown(self) -> str:
        unit = self.time_unit
        arms = ", ".join(f"{arm} {n}" for arm, n in self.arm_sizes.items())
        lines = [
            f"# Prognostic-score (PROCOVA) adjustment of the {self.data} trial",
            "",
            f"{self.treatment_arm} against {self.reference_arm} (reference); {self.n_patients} patients ({arms}). {self.scoring}",
            "",
            f"## Survival: {self.event} (Cox)",
            "",
            _effect_table(self.survival),
            "",
            _effect_summary(self.survival),
            f"Target: the log hazard ratio's SE at least {self.se_target:.0%} smaller with the score, the effect still "
            f"null: **{'met' if self.survival_target_met else 'missed'}**. A Cox model's hazard ratio is not collapsible: "
            "adjusting estimates a conditional effect, and its standard error usually does not shrink the way a linear "
            "model's does.",
            "",
        ]
        if self.lab_effect is not None:
            lab = self.lab_effect
            lines += [
                f"## Lab: {lab.outcome} (ANCOVA)",
                "",
                f"The value at the visit nearest {self.lab_at:g} {unit} (within ± {self.lab_window:g}); both analyses "
                "keep the baseline value as a covariate. Patients without either value (died, dropped out, not "
                f"measured) are left out ({lab.n_dropped}), so this compares survivors with a measurement.",
                "",
                _effect_table(lab),
                "",
                _effect_summary(lab),
            ]
        lines += [
            f"Runtime {self.runtime_seconds:.0f} s (training included unless cached; context only).",
            "",
        ]
        return "\n".join(lines)


def _effect_table(effect: AdjustedEffect) -> str:
    rows = []
    for name, est, covariates in (
        ("unadjusted", effect.unadjusted, ["treatment", *effect.unadjusted_covariates]),
        ("adjusted", effect.adjusted, ["treatment", *effect.unadjusted_covariates, "prognostic score"]),
    ):
        row = {
            "analysis": name,
            "covariates": " + ".join(covariates),
            effect.effect: est.estimate,
            "SE": est.se,
            "95% CI": f"{est.lower:.3f} to {est.upper:.3f}",
        }
        if est.hazard_ratio is not None:
            row["HR (95% CI)"] = f"{est.hazard_ratio:.3f} ({est.hazard_ratio_lower:.3f}-{est.hazard_ratio_upper:.3f})"
        row["p"] = est.p
        rows.append(row)
    return markdown_table(pd.DataFrame(rows), index=False)


def _effect_summary(effect: AdjustedEffect) -> str:
    events = f", {effect.n_events} events" if effect.n_events is not None else ""
    return (
        f"SE reduction **{effect.se_reduction:+.1%}**, equivalent sample-size saving **{effect.sample_size_saving:+.1%}** "
        f"({effect.n_patients} patients{events}, {effect.n_dropped} left out). Score: {effect.correlation_measure} "
        f"{effect.score_correlation:.3f}; its coefficient per sd {effect.score.estimate:.3f} "
        f"(95% CI {effect.score.lower:.3f} to {effect.score.upper:.3f}).\n"
    )


def run_trial_adjustment(
    cohort: Cohort,
    n_folds: int = 5,
    seed: int = 0,
    *,
    event: str | None = None,
    horizon: float = DEFAULT_HORIZON,
    lab: str | None = None,
    at: float = DEFAULT_LAB_TIME,
    window: float = DEFAULT_WINDOW,
    n_samples: int = DEFAULT_SAMPLES,
    train_settings: TrainSettings | None = None,
    model_settings: ModelSettings | None = None,
    cache_dir: str | Path | None = DEFAULT_CACHE,
    progress: bool = False,
) -> TrialAdjustmentResult:
    """Score every patient (cross-fitted) and re-analyse the trial without and with the score (module docstring).

    ``event``: default ``death`` when the config has it, else its first event kind.
    ``lab``: default the config's first continuous variable. Inputs are checked before
    any model is trained.
    """
    started = time.perf_counter()
    event, lab = _check_inputs(cohort, event, lab, horizon, at, window, n_folds, n_samples)
    table = trial_table(cohort, event, lab, at, window)
    if not table["event"].any():
        raise VPatientError(f"no {event} events in data {cohort.name!r}: a Cox analysis needs at least one")
    train_settings, model_settings = TrainingRun(seed, cache_dir, train_settings, model_settings).resolved()
    scores = cross_fitted_scores(
        cohort,
        n_folds,
        seed,
        event=event,
        horizon=horizon,
        lab=lab,
        at=at,
        n_samples=n_samples,
        train_settings=train_settings,
        model_settings=model_settings,
        cache_dir=cache_dir,
        progress=progress,
    )
    table = table.merge(scores, on="subject_id", how="left", validate="one_to_one")
    survival = cox_adjustment(table["time"], table["event"], table["treated"], table["survival_score"], outcome=event)
    lab_effect = ancova_adjustment(
        table["outcome"],
        table["treated"],
        table["lab_score"],
        baseline=table["baseline"],
        label=_lab_label(cohort.config, lab, at),
    )
    treated_arm = str(table.loc[table["treated"], "arm"].iloc[0])
    return TrialAdjustmentResult(
        data=cohort.name,
        time_unit=cohort.config.time_unit.value,
        treatment_arm=treated_arm,
        reference_arm=NO_TREATMENT_ARM,
        arm_sizes={str(a): int(n) for a, n in table["arm"].value_counts().sort_index().items()},
        n_patients=len(table),
        event=event,
        horizon=horizon,
        lab=lab,
        lab_at=at,
        lab_window=window,
        seed=seed,
        n_folds=n_folds,
        n_samples=n_samples,
        scoring=(
            f"Prognostic scores cross-fitted over {n_folds} folds (seed {seed}): each patient scored by the model of the "
            "fold that did not train on them, from the record as known at enrolment without the assigned treatment, "
            f"predicted under no treatment (the reference arm), {n_samples} posterior draws: survival score log(-log S) of {event} at {horizon:g} {cohort.config.time_unit.value}, "
            f"lab score the median predicted {_lab_label(cohort.config, lab, at)}."
        ),
        survival=survival,
        lab_effect=lab_effect,
        se_target=SE_TARGET,
        survival_target_met=bool(survival.se_reduction >= SE_TARGET and survival.null_in_adjusted_ci),
        train_settings=train_settings.to_dict(),
        model_settings=model_settings.to_dict(),
        runtime_seconds=round(time.perf_counter() - started, 1),
    )


def _check_inputs(
    cohort: Cohort,
    event: str | None,
    lab: str | None,
    horizon: float,
    at: float,
    window: float,
    n_folds: int,
    n_samples: int,
) -> tuple[str, str]:
    """The event and lab to analyse (defaults filled in); VPatientError naming what is wrong."""
    config = cohort.config
    kinds = config.event_kinds
    if not kinds:
        raise VPatientError(f"config {config.name!r} has no event kinds: nothing to analyse with a Cox model")
    if event is None:
        event = DEFAULT_EVENT if DEFAULT_EVENT in kinds else kinds[0]
    if event not in kinds:
        raise VPatientError(f"unknown event {event!r}: config {config.name!r} has {', '.join(kinds)}")
    labs = config.names(VariableKind.CONTINUOUS)
    if lab is None:
        if not labs:
            raise VPatientError(f"config {config.name!r} has no continuous lab to analyse")
        lab = labs[0]
    if lab not in labs:
        raise VPatientError(f"unknown lab {lab!r}: the continuous variables of config {config.name!r} are {', '.join(labs)}")
    for name, value in (("horizon", horizon), ("at", at), ("window", window)):
        if not (math.isfinite(value) and value > 0):
            raise VPatientError(f"{name} = {value!r}: must be a time > 0 ({config.time_unit.value})")
    if n_folds < 2:
        raise VPatientError(f"n_folds = {n_folds}: cross-fitting needs at least 2 folds")
    if n_samples < 1:
        raise VPatientError(f"n_samples = {n_samples}: at least 1 posterior draw per patient is needed")
    baseline_arms(cohort.records)
    return event, lab


def _lab_label(config: DatasetConfig, lab: str, at: float) -> str:
    transform = config.variable(lab).transform
    name = lab if transform == Transform.NONE else f"{transform.value}({lab})"
    return f"{name} at {at:g} {config.time_unit.value}"
