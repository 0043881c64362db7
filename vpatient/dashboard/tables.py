"""What the dashboard shows, prepared as data: tables of forecasts, effects and ranked tests, plain-word
explanations, the model card, and a precomputed trial adjustment.

Each function takes the library's own results and returns DataFrames or text (numbers
unrounded; :func:`styled` formats them for display), so the app only draws.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from vpatient.errors import Problem, VPatientError
from vpatient.formatting import INFORMATION_UNIT, number, span, value
from vpatient.plots import target_in_words
from vpatient.policy import TargetKind
from vpatient.schemas import DatasetConfig, TimeUnit, VariableKind

__all__ = [
    "GAIN_COLUMN",
    "MC_ERRORS",
    "AdjustmentView",
    "dose_hint",
    "effect_table",
    "forecast_table",
    "forecast_target_horizon",
    "forecast_time",
    "model_caption",
    "model_card",
    "plain_markdown",
    "problems_table",
    "recommendation_table",
    "styled",
    "target_horizon_bounds",
    "target_kinds",
    "test_explanation",
    "trial_adjustment_view",
    "within_mc_error",
]

#: Characters that would format, link or open HTML in Streamlit markdown when a user's text (a subject id, a plan
#: or file name) is put in it: backslash-escaped, they show as themselves ($ opens LaTeX, : with [ a colour directive).
MARKDOWN_SPECIALS = frozenset("\\`*_[]<>~|$")


def plain_markdown(text: object) -> str:
    """``text`` escaped for Streamlit markdown, so a hostile id such as ``<script>`` shows as written and never as markup."""
    return "".join(f"\\{c}" if c in MARKDOWN_SPECIALS else c for c in str(text))


#: Benchmark results beside a source checkout (absent from an installed package: the card says so).
RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def problems_table(problems: Sequence[Problem]) -> pd.DataFrame:
    """Validation problems as rows a clinician can read: subject, field, value, message."""
    return pd.DataFrame(
        [
            {
                "severity": p.severity,
                "subject": p.subject_id if p.subject_id is not None else (p.owner or ""),
                "field": p.field,
                "value": str(p.value),
                "message": p.message,
            }
            for p in problems
        ],
        columns=["severity", "subject", "field", "value", "message"],
    )


# --------------------------------------------------------------------------- renderers' data


def effect_table(result, kinds: Sequence[str] = ("probability", "time")) -> pd.DataFrame:
    """The what-if's effects against the reference plan, for display.

    ``kinds``: ``probability`` (difference in the chance of being event-free at each effect horizon, in
    percentage points), ``time`` (difference in mean event-free time within the horizon, the RMST), ``lab``
    (typical lab values, natural units). Times are in the data's unit. Numbers are the library's own
    (``WhatIfResult.effects``, probabilities times 100), unrounded; the CSV download keeps them as the library gives them.
    """
    effects = result.effects()
    part = effects[effects["kind"].isin(kinds)]
    unit = next(iter(result.forecasts.values())).config.time_unit.value
    chance = (part["kind"] == "probability").to_numpy()
    scale = np.where(chance, 100.0, 1.0)
    table = pd.DataFrame(
        {
            "plan": part["plan"],
            "vs": part["reference"],
            "quantity": part["quantity"]
            .str.replace(r"^survival:(.*)$", r"chance free of \1", regex=True)
            .str.replace(r"^rmst:(.*)$", rf"{unit} free of \1 (mean within the horizon)", regex=True),
            f"horizon ({unit})": part["horizon"],
            "difference": part["difference"] * scale,
            "90% lower": part["lower"] * scale,
            "90% upper": part["upper"] * scale,
            "unit": np.where(chance, "percentage points", part["unit"]),
        }
    )
    return table.reset_index(drop=True)


def forecast_time(forecast, ahead: float | None = None) -> float:
    """The time of the forecast's grid nearest ``ahead`` (data's time unit) after the forecast time; default: its horizon."""
    times = forecast.times
    wanted = forecast.until + (ahead if ahead is not None else float(times.max()) - forecast.until)
    return float(times[np.argmin(np.abs(times - wanted))])


def forecast_table(forecast, ahead: float | None = None) -> pd.DataFrame:
    """Each lab's forecast ``ahead`` (data's time unit) after the forecast time (default: the horizon): median, 50% and 90% ranges."""
    summary = forecast.summary()
    t = forecast_time(forecast, ahead)
    part = summary[np.isclose(summary["time"], t)]
    units = {v.name: v.unit or "" for v in forecast.config.variables}
    return pd.DataFrame(
        {
            "variable": part["variable"].to_numpy(),
            "at t": t,
            "median": part["median"].to_numpy(),
            "50% range": [span(a, b) for a, b in zip(part["q25"], part["q75"], strict=True)],
            "90% range": [span(a, b) for a, b in zip(part["q05"], part["q95"], strict=True)],
            "unit": [units[v] for v in part["variable"]],
        }
    )


def styled(table: pd.DataFrame, digits: int = 3):
    """A Styler showing every cell as people read it (:func:`vpatient.formatting.value`: ``digits`` significant
    digits, never scientific notation, whole numbers whole, yes/no for booleans); the data stay unrounded."""
    return table.style.format(lambda cell: value(cell, digits)).hide(axis="index")


#: The column of a ranked test's expected information gain, in the one unit every surface uses.
GAIN_COLUMN = f"expected gain ({INFORMATION_UNIT})"


def recommendation_table(recommendation) -> pd.DataFrame:
    """The ranked tests (best expected information gain per cost first), gains in nats as everywhere else."""
    table = recommendation.table()
    return pd.DataFrame(
        {
            "test": table["test"],
            GAIN_COLUMN: table["eig"],
            "± MC error": table["mc_error"],
            "cost": table["cost"],
            "gain per cost": table["eig_per_cost"],
            "beyond Monte Carlo error": [not (g.done or within_mc_error(g)) for g in recommendation.gains],
            "done at t": table["done_at_t"],
            "predicted results (5-95%)": table["predicted_results"],
        }
    )


def dose_hint(config: DatasetConfig, treatment: str | None) -> str:
    """What the dose box's label adds: the treatment's unit and allowed range (`` (mg, 0-2 allowed)``), or nothing."""
    if not treatment:
        return ""
    spec = config.variable(treatment)
    unit = spec.unit or "relative dose"  # a config without a dose unit states doses relative to the default dose, 1
    allowed = f", {span(*spec.plausible_range)} allowed" if spec.plausible_range else ""
    return f" ({unit}{allowed})"


#: A gain within this many Monte Carlo standard errors of zero cannot be told from no gain (about 95% one-sided).
MC_ERRORS = 2.0


def within_mc_error(gain) -> bool:
    """Whether a test's expected gain is too small for its Monte Carlo estimate to tell from zero (or negative)."""
    return not gain.done and gain.eig <= MC_ERRORS * gain.mc_error


#: Forecast targets look two years ahead by default: a usual span between a lab and the decision it informs.
FORECAST_TARGET_YEARS = 2.0


def target_kinds(config: DatasetConfig) -> dict[str, TargetKind]:
    """The kinds of next-test target ``config`` allows, by the label the panel shows them with.

    A risk needs an event and a forecast a continuous variable; the latent disease state is always there.
    """
    kinds = {}
    if config.event_kinds:
        kinds["risk of an event"] = TargetKind.RISK
    if config.names(VariableKind.CONTINUOUS):
        kinds["forecast of a variable"] = TargetKind.FORECAST
    kinds["latent disease state"] = TargetKind.LATENT
    return kinds


def target_horizon_bounds(default_horizon: float) -> tuple[float, float, float]:
    """Least, most and step of the panel's target horizon (data's time unit), scaled to the model's default horizon."""
    return default_horizon / 10, default_horizon * 4, default_horizon / 10


def forecast_target_horizon(time_unit: TimeUnit, default_horizon: float) -> float:
    """A forecast target's default horizon: two years in the data's unit where the panel's input reaches it, else the model's default.

    A model of days followed for weeks has a default horizon far below two years: it keeps its own.
    """
    least, most, _ = target_horizon_bounds(default_horizon)
    years = time_unit.from_years(FORECAST_TARGET_YEARS)
    return years if least <= years <= most else default_horizon


def test_explanation(recommendation, test: str, unit: str = "years") -> str:
    """Plain words on how one test's result would shrink the target's uncertainty; ``unit`` is the data's time unit."""
    gain = next(g for g in recommendation.gains if g.test == test)
    what = target_in_words(recommendation.target, unit)
    if gain.done:
        return f"{test} was already done at t = {recommendation.at:.2f}: a repeat tells nothing new about {what}."
    ranges = "; ".join(f"{k}: {v}" for k, v in gain.predicted.items()) or "no prediction"
    if within_mc_error(gain):
        expected = (
            f"is not expected to reduce the uncertainty about {what} by more than the estimate's Monte Carlo error "
            f"(± {number(gain.mc_error, 2)} {INFORMATION_UNIT}) can tell apart"
        )
    else:
        expected = (
            f"is expected to reduce the uncertainty about {what} by {number(gain.eig, 2)} {INFORMATION_UNIT} "
            f"(Monte Carlo error ± {number(gain.mc_error, 2)})"
        )
    return (
        f"Ordering {test} (cost {number(gain.cost)}) {expected}. "
        f"Its results are predicted to fall in: {ranges}. A wide predicted range that the model "
        "would read differently at each end is what makes a test informative."
    )


def model_caption(model) -> str:
    """The line under the dashboard's title: the model's name and versions, and the vpatient serving it; no server path."""
    from vpatient.report.card import model_identity
    from vpatient.version import __version__

    return f"{model_identity(model)} · dashboard: vpatient {__version__}"


def model_card(model, results_dir: Path | None = None) -> dict:
    """What the model is, in plain words: how this checkpoint was trained, benchmark figures marked by the recipe they measure, use and limits.

    The training facts and the recipe note are the HTML/PDF card's own (:mod:`vpatient.report.card`).
    """
    from vpatient.report.card import data_name, recipe_note, training_facts

    history = model.history
    source = model.dataset_name  # names the benchmark files; data_name(model) is what the page shows
    shown = data_name(model)
    training = training_facts(model) | {
        "latent state dimension": str(model.network.settings.latent_dim),
        "variables": ", ".join(model.config.names(VariableKind.CONTINUOUS, VariableKind.BINARY, VariableKind.ORDINAL)),
        "treatments": ", ".join(model.config.treatments) or "none",
        "events": ", ".join(model.config.event_kinds) or "none",
    }
    results_dir = results_dir or RESULTS_DIR
    benchmarks: list[dict] = []
    notes: list[str] = []
    recipe = None
    path = results_dir / f"forecast-{source}.json"
    if path.is_file():
        data = json.loads(path.read_text())
        recipe = recipe_note(model)
        for row in data.get("forecast", []):
            benchmarks.append(
                {
                    "benchmark": f"forecast of later visits ({data.get('settings', {}).get('n_folds', '?')}-fold CV)",
                    "method": row["method"],
                    "MAE (SD units)": round(row["mae_mean"], 3),
                    "90% interval coverage": round(row["coverage_mean"], 3),
                }
            )
        c_index = [r for r in data.get("survival", []) if r["method"] == "vpatient" and r.get("c_index_mean") is not None]
        for row in c_index:
            notes.append(
                f"death within {row['window']:g} y of landmark {row['landmark']:g} y: C-index {row['c_index_mean']:.3f}"
                f" ± {row['c_index_std']:.3f}"
            )
        notes.append(f"Benchmark run with vpatient {data.get('vpatient_version')}.")
    else:
        notes.append(f"No benchmark results for {shown} found beside this installation (benchmarks/results).")
    intended = (
        "Intended use: exploring how a patient's labs and event risks might evolve, and how treatment plans and "
        "diagnostic tests compare, for research and teaching. It is a model of the training cohort, not a validated "
        "clinical decision tool."
    )
    limits = (
        "Limits: it learned from "
        f"{history.n_train + history.n_validation if history else 'an unknown number of'} patients of {shown}; "
        "predictions for patients unlike them (other diseases, eras, treatments, doses outside the trained range) "
        "are extrapolations. What-if effects assume the treatment effect the model learned from the data is causal "
        "(true for a randomised trial such as PBC, not in general). Intervals are the model's uncertainty given its "
        "assumptions, not guarantees."
    )
    return {
        "training": training,
        "recipe": recipe,  # a RecipeNote when there are benchmark figures: whose training they measure
        "benchmarks": pd.DataFrame(benchmarks),
        "notes": notes,
        "intended_use": intended,
        "limits": limits,
    }


@dataclass(frozen=True)
class AdjustmentView:
    """What the model card shows of the real trial's prognostic-score adjustment (``trial-adjustment.json``).

    ``sentences`` and ``table`` are empty when there is no result to show; ``hint`` then
    says, in one line, how to produce it, and ``problem`` why a file found could not be read.
    """

    title: str
    sentences: list[str]
    table: pd.DataFrame
    hint: str = ""
    problem: str = ""


def trial_adjustment_view(model_dir: Path, data: str | None = None) -> AdjustmentView:
    """The adjustment saved in ``model_dir`` in plain words and one row per outcome, or a hint to compute it.

    Computing it cross-fits fold models (minutes), far too slow for a dashboard, so only a
    precomputed result is shown: ``vpatient trial adjust --out MODEL_DIR`` writes it.
    ``data`` names the trial in the hint (default: pbc2).
    """
    from vpatient.report.procova import (
        ADJUSTMENT_FILE,
        SECTION_TITLE,
        adjusted_effects,
        adjustment_sentences,
        estimate_text,
        load_adjustment,
        percent,
    )

    path = Path(model_dir) / ADJUSTMENT_FILE
    # MODEL_DIR (and DATA for data read from a folder), not paths: the page shows nothing of the server's file system
    data = "DATA" if data and ("/" in data or "\\" in data) else data or "pbc2"
    command = f"`vpatient trial adjust --data {data} --out MODEL_DIR` (it cross-fits 5 fold models: minutes)"
    if not path.is_file():
        hint = f"No {ADJUSTMENT_FILE} beside this model; to show the adjustment, run {command}."
        return AdjustmentView(SECTION_TITLE, [], pd.DataFrame(), hint=hint)
    try:
        result = load_adjustment(path, shown_as=f"{ADJUSTMENT_FILE} beside this model")
    except VPatientError as exc:
        return AdjustmentView(SECTION_TITLE, [], pd.DataFrame(), hint=f"To write it anew, run {command}.", problem=str(exc))
    effects = adjusted_effects(result)
    table = pd.DataFrame(
        {
            "outcome": [e.outcome for e in effects],
            "effect": ["hazard ratio" if e.analysis == "cox" else e.effect for e in effects],
            "without the score": [estimate_text(e, "unadjusted") for e in effects],
            "with the score": [estimate_text(e, "adjusted") for e in effects],
            "SE change": [percent(-e.se_reduction, signed=True) for e in effects],
            "sample-size saving": [percent(e.sample_size_saving, signed=True) for e in effects],
        }
    )
    return AdjustmentView(SECTION_TITLE, adjustment_sentences(result), table)
