"""The patient report: one patient's history, forecasts under each plan, effects, next tests, limits."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from vpatient.data.cohort import Cohort
from vpatient.errors import VPatientError
from vpatient.report.render import figure_png, model_version, render, write_outputs
from vpatient.schemas import PatientRecord, TreatmentPlan

if TYPE_CHECKING:  # the policy brings in torch: imported where a report is made
    from vpatient.policy import Target

__all__ = ["PatientReport", "next_test_target", "next_visit_gap", "patient_report", "training_cohort"]

log = logging.getLogger(__name__)


@dataclass
class PatientReport:
    """What a patient report shows, as the library computed it, and its HTML."""

    html: str
    whatif: object  # WhatIfResult
    recommendation: object | None  # Recommendation
    flags: list[dict] = field(default_factory=list)

    def write(self, out: str | Path | None, pdf: str | Path | None = None) -> list[Path]:
        return write_outputs(self.html, out, pdf)


def training_cohort(model) -> Cohort | None:
    """The cohort the model was trained on, when it can be loaded (embedded dataset or path)."""
    from vpatient.datasets import load_dataset

    source = model.data_source
    if not source:
        return None
    try:
        return load_dataset(source)
    except Exception as exc:
        log.warning("training data %s could not be loaded: %s", source, exc)
        return None


def patient_report(
    sim,
    record: PatientRecord,
    plans: Sequence[TreatmentPlan],
    *,
    horizon: float | None = None,
    n_samples: int = 200,
    seed: int = 0,
    at: float | None = None,
    next_visit: float = 0.5,
    recommend_samples: int = 256,
    training: Cohort | bool | None = True,
    card_link: str | None = None,
    command: str | None = None,
    test_target: Target | str | None = None,
) -> PatientReport:
    """Render the patient report of ``record`` under ``plans`` (the first is the reference).

    ``training`` is the training cohort for the automatic limits (True: load the model's
    own data source; None/False: skip those checks and say so). The recommended tests are
    those for the next visit, ``next_visit`` after the decision time (at the decision
    time itself every test has just been done). Times are in the data's unit; ``horizon``
    defaults to the model's default horizon. ``test_target`` is what the tests are ranked by
    (a Target, or its text such as ``forecast:bilirubin:2``); by default the risk of the
    config's first event within the horizon (capped at the model's default), else the latent state.
    """
    from vpatient.plots import COST_CURVE_CAPTION, plot_cost_curve, plot_forecast, plot_whatif, target_in_words
    from vpatient.policy import recommend

    model = sim.model
    plans = list(plans)
    if len(plans) < 1:
        raise VPatientError("a patient report needs at least one treatment plan (two to compare)")
    target = next_test_target(model, test_target, horizon) if model.config.tests else None  # a bad one is refused before any work
    result = sim.whatif(record, plans, horizon=horizon, n_samples=n_samples, seed=seed, at=at)
    horizon, unit = result.horizon, model.time_unit
    cohort = training_cohort(model) if training is True else (training or None)
    events = list(model.layout.events)

    # -- tables -----------------------------------------------------------------
    effects = result.effects()
    effect_rows = effects.to_dict(orient="records")
    survival = result.survival()
    surv_rows = []
    for plan in plans:
        for kind in events:
            part = survival[(survival["plan"] == plan.name) & (survival["event"] == kind)]
            for h in result.effect_horizons:
                i = int(np.argmin(np.abs(part["time"].to_numpy() - (result.at + h))))
                row = part.iloc[i]
                surv_rows.append(
                    {
                        "plan": plan.name,
                        "event": kind,
                        "horizon": h,
                        "survival": row["survival"],
                        "lower": row["survival_q05"],
                        "upper": row["survival_q95"],
                    }
                )
    recommendation, test_rows, test_note, target_words, cost_curve = None, [], "", "", None
    if target is not None:
        test_at = result.at + next_visit
        recommendation = recommend(model, record, target=target, at=test_at, n_samples=recommend_samples, seed=seed)
        test_rows = recommendation.table().to_dict(orient="records")
        target_words = target_in_words(target, unit)
        test_note = (
            f"Tests for the next visit at t = {test_at:.2f} {unit} ({next_visit:g} {unit} after the decision time), "
            f"ranked by expected information gain (nats) per cost about {target_words} (target {target}); "
            f"{recommend_samples} posterior samples, seed {seed}."
        )
        cost_curve = figure_png(plot_cost_curve(recommendation, unit=unit).figure)
    else:
        test_note = "The model's config declares no diagnostic tests: no test recommendation."

    # -- figures -----------------------------------------------------------------
    reference = result.forecasts[result.reference]
    figures = {
        "history": figure_png(plot_forecast(reference, record)),
        "whatif": figure_png(plot_whatif(result, record=record)),
        "cost_curve": cost_curve,
    }

    flags = assumptions(model, record, plans, result, cohort)
    summary = _summary(model, record, result)
    html = render(
        "patient.html.j2",
        title=f"Patient report: subject {record.subject_id}",
        subject_id=record.subject_id,
        summary=summary,
        plans=[{"name": p.name, "description": p.description, "exposures": _exposures(p)} for p in plans],
        reference=result.reference,
        effects=effect_rows,
        survival_rows=surv_rows,
        tests=test_rows,
        test_note=test_note,
        target_words=target_words,
        cost_curve_caption=COST_CURVE_CAPTION,
        figures=figures,
        flags=flags,
        result=result,
        unit=unit,
        settings={
            "seed": seed,
            "n_samples": n_samples,
            "horizon": horizon,
            "at": result.at,
            "effect_horizons": ", ".join(f"{h:g}" for h in result.effect_horizons),
            "next_visit": next_visit,
            "recommend_samples": recommend_samples,
        },
        version=model_version(sim.model_dir),
        command=command,
        card_link=card_link,
        uncertainty_note=model.uncertainty_note(),
    )
    return PatientReport(html, result, recommendation, flags)


def next_visit_gap(model) -> float:
    """How long after the decision time the visit the tests are for comes, by default: half the typical visit gap.

    At the decision time itself every test was usually just done, which leaves nothing to rank.
    """
    return model.scalers.time_scale / 2


def next_test_target(model, target: Target | str | None, horizon: float | None = None) -> Target:
    """The target a patient report ranks tests by: ``target`` checked against the model's config, or the default.

    The default is the risk of the config's first event within the forecast horizon (the
    model's default horizon at most), else, for data without events, the latent disease state.
    """
    from vpatient.policy import Target

    if target is None:
        events = model.config.event_kinds
        if not events:
            return Target.latent()
        horizon = model.default_horizon if horizon is None else horizon
        return Target.risk(events[0], min(horizon, model.default_horizon))
    return target.check(model.config) if isinstance(target, Target) else Target.parse(target, model.config)


def _exposures(plan: TreatmentPlan) -> str:
    if not plan.exposures:
        return "no treatment"
    parts = []
    for e in plan.exposures:
        stop = f" to {e.stop:g}" if e.stop is not None else " on"
        parts.append(f"{e.treatment} dose {e.dose:g} from {e.start:g}{stop}")
    return "; ".join(parts)


def _summary(model, record: PatientRecord, result) -> list[tuple[str, str]]:
    config = model.config
    rows = [("subject", record.subject_id)]
    for name, value in record.static.items():
        spec = config.variable(name) if name in {v.name for v in config.variables} else None
        if spec is not None and spec.categories:
            label = next((k for k, v in spec.categories.items() if v == value), value)
            rows.append((name, str(label)))
        else:
            unit = f" {spec.unit}" if spec is not None and spec.unit else ""
            rows.append((name, f"{value:.4g}{unit}" if isinstance(value, float) else f"{value}{unit}"))
    visits = record.visit_times()
    rows.append(("visits", f"{len(visits)} (t = {min(visits, default=0):.2f} to {max(visits, default=0):.2f} {model.time_unit})"))
    rows.append(("follow-up", f"{record.end_of_followup:.2f} {model.time_unit}"))
    rows.append(("events", ", ".join(f"{e.kind} at {e.time:.2f}" for e in record.events) or "none recorded"))
    rows.append(
        (
            "treatments as recorded",
            "; ".join(
                f"{e.treatment} dose {e.dose:g} from {e.start:g}" + (f" to {e.stop:g}" if e.stop is not None else "")
                for e in record.treatments
            )
            or "none",
        )
    )
    rows.append(("decision time", f"t = {result.at:.2f} {model.time_unit} (plans take over from here)"))
    last = {}
    for o in record.observations:
        if o.time <= result.at + 1e-9:
            last[o.variable] = o
    for name in model.layout.continuous:
        if name in last:
            spec = config.variable(name)
            rows.append((f"last {name}", f"{last[name].value:.4g} {spec.unit or ''} (t = {last[name].time:.2f})"))
    return rows


def assumptions(model, record: PatientRecord, plans, result, cohort: Cohort | None) -> list[dict]:
    """Limits of this report; ``flag`` is True for those that apply to this patient and these plans."""
    items = [
        {
            "flag": False,
            "text": "Effects are the model's counterfactual predictions: they assume the treatment "
            "effect learned from the training data (a randomised trial for PBC) applies to this patient, with no "
            "unmeasured confounding and no interaction it could not learn.",
        },
        {
            "flag": False,
            "text": "Intervals (90%) describe the posterior uncertainty about this patient under this "
            "model; they do not include the uncertainty of the model itself (its training sample, its structure).",
        },
        {
            "flag": False,
            "text": "Lab effects compare typical values (decoder means, without measurement noise); "
            "lab forecasts assume the patient stays event-free.",
        },
    ]
    if cohort is None:
        items.append(
            {
                "flag": True,
                "text": "The training data could not be loaded: treatments, follow-up and "
                "covariate ranges of this patient and these plans were not checked against it.",
            }
        )
        return items
    seen: dict[str, set[float]] = {}
    for r in cohort.records:
        for e in r.treatments:
            seen.setdefault(e.treatment, set()).add(round(float(e.dose), 6))
    for plan in plans:
        for e in plan.exposures:
            if e.treatment not in seen:
                items.append(
                    {
                        "flag": True,
                        "text": f"Plan {plan.name!r} gives {e.treatment}, a treatment no training "
                        "patient received: its effect is not identified from data.",
                    }
                )
            elif round(float(e.dose), 6) not in seen[e.treatment]:
                doses = ", ".join(f"{d:g}" for d in sorted(seen[e.treatment]))
                items.append(
                    {
                        "flag": True,
                        "text": f"Plan {plan.name!r} gives {e.treatment} at dose {e.dose:g}; the "
                        f"training data hold only dose(s) {doses}: the effect at this dose is extrapolated.",
                    }
                )
    warning = model.followup_warning(result.at + result.horizon, cohort)
    if warning:
        items.append({"flag": True, "text": warning})
    for name, value in record.static.items():
        values = [r.static[name] for r in cohort.records if name in r.static]
        if values and isinstance(value, int | float) and not (min(values) <= value <= max(values)):
            items.append(
                {
                    "flag": True,
                    "text": f"{name} = {value:g} lies outside the training range ({min(values):g} to {max(values):g}).",
                }
            )
    if len(record.visit_times()) < 2:
        items.append({"flag": True, "text": "Only one visit is known: the forecast rests mostly on the population."})
    ess = [float(f.paths.effective_sample_size[0]) for f in result.forecasts.values()]
    if ess and min(ess) < 0.1 * result.n_samples:
        items.append(
            {
                "flag": True,
                "text": f"The posterior's effective sample size is low ({min(ess):.0f} of "
                f"{result.n_samples}): intervals may be unreliable.",
            }
        )
    if not any(i["flag"] for i in items):
        items.append(
            {
                "flag": False,
                "text": "No automatic check flagged this patient or these plans: treatments and "
                "doses were seen in training, the horizon is within the training follow-up, covariates lie in "
                "the training range.",
            }
        )
    return items


def effects_frame(result) -> pd.DataFrame:
    """The effect table exactly as the report shows it (for tests and exports)."""
    return result.effects()


def _finite(x) -> bool:
    return x is not None and math.isfinite(float(x))
