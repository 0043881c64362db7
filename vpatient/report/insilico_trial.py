"""The trial report: an in-silico trial's survival, effects, subgroups and labs, beside observed arms."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from vpatient.data.cohort import Cohort
from vpatient.errors import VPatientError
from vpatient.report.patient import training_cohort
from vpatient.report.render import figure_png, model_version, render, write_outputs
from vpatient.schemas import PatientRecord, TreatmentPlan

if TYPE_CHECKING:
    from vpatient.benchmarks.trial_adjustment import TrialAdjustmentResult

__all__ = ["TrialReport", "adjustment_section", "subgroup_effects", "trial_report"]

log = logging.getLogger(__name__)

MARK_TIMES = (1.0, 2.0, 5.0, 10.0)


@dataclass
class TrialReport:
    html: str
    trial: object  # TrialResult
    subgroups: pd.DataFrame
    subgroup_trial: object | None = None  # TrialResult on the training records, for subgroups
    observed: pd.DataFrame = field(default_factory=pd.DataFrame)

    def write(self, out: str | Path | None, pdf: str | Path | None = None) -> list[Path]:
        return write_outputs(self.html, out, pdf)


def trial_report(
    sim,
    arms: Mapping[str, TreatmentPlan],
    *,
    n: int = 1000,
    seed: int = 0,
    years: float = 5.0,
    event: str | None = None,
    training: Cohort | bool | None = True,
    draws_per_record: int = 4,
    card_link: str | None = None,
    command: str | None = None,
    adjustment: TrialAdjustmentResult | str | Path | None = None,
) -> TrialReport:
    """Run the in-silico trial of ``arms`` on ``n`` virtual patients and render its report.

    Subgroup effects need each patient's covariates, which the virtual trial's per-patient
    table does not carry; they come from the same arms simulated on the training patients
    at enrolment (``draws_per_record`` posterior draws each), whose covariates are known.
    Where the training data have treatment arms (the PBC trial), their observed
    Kaplan-Meier curves are shown beside the simulated ones.

    ``adjustment``: the real trial's prognostic-score adjustment (a result, or the path of
    the ``trial-adjustment.json`` that ``vpatient trial adjust`` writes); when given, the
    report has a section on it. A path is read before anything is simulated, so a wrong
    file is refused at once.
    """
    from vpatient.plots import plot_trial
    from vpatient.report.procova import load_adjustment

    source = "a result passed in Python"
    if isinstance(adjustment, str | Path):
        source, adjustment = str(adjustment), load_adjustment(adjustment)
    result = sim.trial(dict(arms), n=n, seed=seed, years=years, event=event, progress=False)
    cohort = training_cohort(sim.model) if training is True else (training or None)
    in_unit = [result.time_unit.from_years(t) for t in MARK_TIMES]  # MARK_TIMES are years
    marks = sorted({t for t in in_unit if t <= years + 1e-9} | {years})

    subgroups, sub_trial, sub_note = pd.DataFrame(), None, ""
    if cohort is not None and cohort.records:
        sub_trial = sim.trial(
            dict(arms),
            seed=seed,
            years=years,
            event=result.event,
            population=cohort.records,
            draws_per_record=draws_per_record,
            progress=False,
        )
        covariates = record_covariates(sim.model, cohort.records)
        subgroups = subgroup_effects(sub_trial, covariates, draws_per_record)
        sub_note = (
            f"Subgroups: the same arms simulated on the {len(cohort.records)} training patients of "
            f"{cohort.name} at enrolment ({draws_per_record} posterior draws each, seed {seed}), whose "
            "covariates are known; Cox hazard ratio of each arm against the reference within each subgroup "
            "(95% CI; draws of one patient are counted as separate patients, so the CIs are too narrow by "
            f"about a factor sqrt({draws_per_record}))."
        )
    else:
        sub_note = (
            "Subgroup effects were not computed: the virtual trial's per-patient table carries no "
            "covariates and the training records (whose covariates are known) could not be loaded."
        )

    observed = observed_arms(cohort, result.event, marks) if cohort is not None else pd.DataFrame()
    km_fig = _km_figure(result, cohort)
    figures = {"km": km_fig, "trial": figure_png(plot_trial(result))}
    simulated = result.survival_at(marks).to_dict(orient="records")
    html = render(
        "trial.html.j2",
        title=f"In-silico trial: {' vs '.join(result.arms)}",
        trial=result,
        arms=[{"name": k, "exposures": _plan_text(v)} for k, v in arms.items()],
        hazard_ratios=result.hazard_ratios.to_dict(orient="records"),
        rmst=result.rmst.to_dict(orient="records"),
        simulated=simulated,
        subgroups=subgroups.to_dict(orient="records"),
        subgroup_note=sub_note,
        subgroup_overall=(sub_trial.hazard_ratios.to_dict(orient="records") if sub_trial is not None else []),
        observed=observed.to_dict(orient="records"),
        observed_name=cohort.name if cohort is not None else None,
        figures=figures,
        settings={"seed": seed, "n": n, "years": years, "event": result.event, "draws_per_record": draws_per_record},
        version=model_version(sim.model_dir),
        command=command,
        card_link=card_link,
        uncertainty_note=sim.model.uncertainty_note(trial=True),
        adjustment=adjustment_section(adjustment, source) if adjustment is not None else None,
    )
    return TrialReport(html, result, subgroups, sub_trial, observed)


def adjustment_section(result: TrialAdjustmentResult, source: str) -> dict:
    """What the report's section on the real trial's prognostic-score adjustment shows (template: trial.html.j2)."""
    from vpatient.report.procova import (
        NON_COLLAPSIBLE_NOTE,
        SECTION_TITLE,
        adjusted_effects,
        effect_sentence,
        percent,
        precision_sentence,
        scoring_sentence,
    )

    effects, precision, sentences = [], [], []
    for effect in adjusted_effects(result):
        cox = effect.analysis == "cox"
        base = ["treatment", *effect.unadjusted_covariates]
        for name, est, covariates in (
            ("without the score", effect.unadjusted, base),
            ("with the score", effect.adjusted, [*base, "prognostic score"]),
        ):
            effects.append(
                {
                    "outcome": effect.outcome,
                    "analysis": name,
                    "covariates": " + ".join(covariates),
                    "effect": "hazard ratio" if cox else effect.effect,
                    # a hazard ratio is shown as a ratio; its SE stays on the log scale, where the model estimates it
                    "estimate": est.hazard_ratio if cox else est.estimate,
                    "lower": est.hazard_ratio_lower if cox else est.lower,
                    "upper": est.hazard_ratio_upper if cox else est.upper,
                    "se": est.se,
                    "p": est.p,
                }
            )
        precision.append(
            {
                "outcome": effect.outcome,
                "model": "Cox" if cox else "ANCOVA",
                "n_patients": effect.n_patients,
                "se_of": effect.effect,
                "se_unadjusted": effect.unadjusted.se,
                "se_adjusted": effect.adjusted.se,
                "se_change": percent(-effect.se_reduction, signed=True),
                "saving": percent(effect.sample_size_saving, signed=True),
                "measure": effect.correlation_measure,
                "correlation": effect.score_correlation,
            }
        )
        sentences.append(f"{effect_sentence(result, effect)} {precision_sentence(effect)}")
    lab_note = ""
    if result.lab_effect is not None:
        lab_note = (
            f"The lab outcome is the value at the visit nearest {result.lab_at:g} {result.time_unit} "
            f"(within ± {result.lab_window:g}); patients who died, dropped out or were not measured then are left out, "
            "so that analysis compares survivors with a measurement, which randomisation does not protect the way it "
            "protects the survival analysis."
        )
    return {
        "title": SECTION_TITLE,
        "result": result,
        "effects": effects,
        "precision": precision,
        "sentences": sentences,
        "scoring": scoring_sentence(result),
        "cox_note": NON_COLLAPSIBLE_NOTE,
        "lab_note": lab_note,
        "source": source,
    }


def _plan_text(plan: TreatmentPlan) -> str:
    if not plan.exposures:
        return "no treatment"
    return "; ".join(
        f"{e.treatment} dose {e.dose:g} from t = {e.start:g}" + (f" to {e.stop:g}" if e.stop is not None else "")
        for e in plan.exposures
    )


def record_covariates(model, records: list[PatientRecord]) -> pd.DataFrame:
    """Per record (in order): sex, age tertile and baseline-severity tertile (first lab of the layout at enrolment)."""
    config = model.config
    names = {v.name: v for v in config.variables}
    rows = []
    severity = model.layout.continuous[0] if model.layout.continuous else None
    for r in records:
        row = {}
        if "sex" in r.static:
            spec = names.get("sex")
            cats = (spec.categories or {}) if spec is not None else {}
            row["sex"] = next((k for k, v in cats.items() if v == r.static["sex"]), str(r.static["sex"]))
        if "age" in r.static:
            row["age"] = float(r.static["age"])
        if severity is not None:
            values = sorted((o.time, o.value) for o in r.observations if o.variable == severity)
            first = [v for t, v in values if t <= 1e-9] or [v for _, v in values[:1]]
            row[f"baseline {severity}"] = float(first[0]) if first else np.nan
        rows.append(row)
    frame = pd.DataFrame(rows)
    for column in [c for c in frame.columns if c != "sex"]:
        values = frame[column]
        if values.notna().sum() >= 3:
            cuts = np.nanquantile(values, [1 / 3, 2 / 3])
            labels = [f"{column} < {cuts[0]:.3g}", f"{column} {cuts[0]:.3g} to {cuts[1]:.3g}", f"{column} > {cuts[1]:.3g}"]
            group = np.where(values < cuts[0], labels[0], np.where(values <= cuts[1], labels[1], labels[2]))
            frame[f"{column} tertile"] = np.where(values.isna(), None, group)
    return frame


def subgroup_effects(trial, covariates: pd.DataFrame, draws_per_record: int) -> pd.DataFrame:
    """Cox HR (95% CI) of each arm against the reference within each subgroup of a records-population trial."""
    from vpatient.simulation.trial import hazard_ratio

    data = trial.patients.copy()
    data["record"] = data["subject_id"].to_numpy() // draws_per_record
    data["primary"] = (data["observed"] & (data["event"] == trial.event)).astype(int)
    by = [c for c in ("sex", "age tertile") if c in covariates] + [
        c for c in covariates if c.startswith("baseline") and c.endswith("tertile")
    ]
    rows = []
    for column in by:
        labels = covariates[column]
        data["group"] = labels.to_numpy()[data["record"].to_numpy()]
        order = sorted(g for g in data["group"].dropna().unique())
        if column.endswith("tertile"):  # low, middle, high in that order
            order = [g for g in order if "<" in g] + [g for g in order if " to " in g] + [g for g in order if ">" in g]
        for group in order:
            part = data[data["group"] == group]
            ref = part[part["trial_arm"] == trial.reference].set_index("subject_id")
            for arm in trial.arms[1:]:
                other = part[part["trial_arm"] == arm].set_index("subject_id")
                try:
                    cox = hazard_ratio(ref, other)
                except Exception as exc:
                    log.info("subgroup %s: Cox fit failed (%s)", group, exc)
                    cox = {"hazard_ratio": np.nan, "lower": np.nan, "upper": np.nan, "p": np.nan}
                rows.append(
                    {
                        "subgroup": column.removesuffix(" tertile"),
                        "level": group,
                        "arm": arm,
                        "reference": trial.reference,
                        "n_records": int(part["record"].nunique()),
                        "events_reference": int(ref["primary"].sum()),
                        "events_arm": int(other["primary"].sum()),
                        **cox,
                    }
                )
    return pd.DataFrame(
        rows,
        columns=[
            "subgroup",
            "level",
            "arm",
            "reference",
            "n_records",
            "events_reference",
            "events_arm",
            "hazard_ratio",
            "lower",
            "upper",
            "p",
        ],
    )


def observed_arms(cohort: Cohort, event: str, marks: list[float]) -> pd.DataFrame:
    """Kaplan-Meier survival of ``event`` per observed baseline arm at ``marks`` (empty with one arm)."""
    from vpatient.plots import kaplan_meier_by_arm

    try:
        fitters = kaplan_meier_by_arm(cohort, event)
    except ValueError:
        return pd.DataFrame()
    if len(fitters) < 2:
        return pd.DataFrame()
    rows = []
    for arm, km in fitters.items():
        ci = km.confidence_interval_survival_function_
        for t in marks:
            below = ci[ci.index <= t]
            rows.append(
                {
                    "arm": arm,
                    "n": len(km.durations),
                    "events": int(km.event_observed.sum()),
                    "time": t,
                    "survival": float(km.survival_function_at_times(t).iloc[0]),
                    "lower": float(below.iloc[-1, 0]) if len(below) else 1.0,
                    "upper": float(below.iloc[-1, 1]) if len(below) else 1.0,
                }
            )
    return pd.DataFrame(rows)


def _km_figure(result, cohort: Cohort | None) -> str:
    import matplotlib.pyplot as plt

    from vpatient.plots import kaplan_meier_by_arm

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for k, arm in enumerate(result.arms):
        km = result.kaplan_meier[result.kaplan_meier["arm"] == arm]
        ax.step(km["time"], km["survival"], where="post", color=f"C{k}", label=f"simulated: {arm}")
        ax.fill_between(km["time"], km["lower"], km["upper"], step="post", color=f"C{k}", alpha=0.15)
    fitters = {}
    if cohort is not None:
        try:
            fitters = kaplan_meier_by_arm(cohort, result.event)
        except ValueError:
            fitters = {}
    if len(fitters) >= 2:
        for j, (arm, km) in enumerate(fitters.items()):
            sf = km.survival_function_
            sf = sf[sf.index <= result.years]
            ax.step(
                sf.index,
                sf.iloc[:, 0],
                where="post",
                color=f"C{len(result.arms) + j}",
                ls=":",
                lw=1.8,
                label=f"observed ({cohort.name}): {arm}, n={len(km.durations)}",
            )
    ax.set_ylim(0, 1.02)
    ax.set_xlim(0, result.years)
    ax.set_xlabel(f"{result.time_unit.value} since enrolment")
    ax.set_ylabel(f"probability free of {result.event}")
    ax.set_title(f"Kaplan-Meier, {result.n_patients} virtual patients per arm (95% bands)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return figure_png(fig)


def check_arms(arms: Mapping[str, TreatmentPlan]) -> None:
    if len(arms) < 2:
        raise VPatientError(f"a trial report needs at least two arms, got {len(arms)}")
