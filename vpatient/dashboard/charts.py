"""Interactive charts of a forecast, a what-if and an in-silico trial for the dashboard: Vega-Lite specifications.

One chart per lab: the patient's measurements, the forecast median and its 50% and 90%
bands (one median and band pair per plan in a what-if), treatment periods shaded, the
reference range, the forecast (decision) time, tooltips with the values, and zoom along time. One chart of
event-free probability for all event kinds (a forecast) or per event kind (a what-if, one
curve per plan). Kaplan-Meier curves of a trial's arms, as steps with their 95% intervals.
One legend names every element; plans differ in colour and in dash, so two
identical plans are both seen. The charts are drawn from the library's own result tables
(``Forecast.summary`` / ``survival_summary``, ``WhatIfResult.trajectories`` / ``survival``).

Each chart is a Vega-Lite specification (a dict) whose data are DataFrames under
``datasets``: ``st.vega_lite_chart(spec=...)`` draws it, sending the data as Arrow.

Why Vega-Lite written directly, rather than through Altair or with Plotly: measured redraw
time (building the charts and Streamlit turning them into its message), on the tiny PBC test
model, patient 5, 200 sample paths, 5-year horizon, seven lab charts and the survival chart,
medians of 9 runs on 2 CPU cores busy with a benchmark (two sessions, hence the ranges), the
library's summaries computed beforehand: these specifications through ``st.vega_lite_chart``
0.03-0.07 s (what-if, nine charts: 0.03-0.08 s); the same charts in Altair through
Streamlit's converter 0.8 s (what-if 1.0 s), nearly all of it Altair validating every layer
against the Vega-Lite JSON schema, on every rerun; Plotly 7.1 figures with fewer elements
(no tooltips set, no treatment periods) through ``st.plotly_chart`` 0.07-0.18 s; today's
matplotlib PNGs 1.4-2.3 s. Vega-Lite ships with Streamlit: no dependency is added.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from vpatient.schemas import DatasetConfig, PatientRecord, TreatmentExposure, VariableKind

__all__ = [
    "BAND_LABELS",
    "DEFAULT_LAB_COUNT",
    "TRIAL_CAPTION",
    "band_caption",
    "default_labs",
    "forecast_lab_charts",
    "forecast_survival_chart",
    "plan_styles",
    "survival_caption",
    "trial_survival_chart",
    "whatif_lab_charts",
    "whatif_survival_charts",
]

Spec = dict[str, Any]

#: How many labs the picker shows at first: the config's first continuous variables.
DEFAULT_LAB_COUNT = 4

#: The predictive bands drawn, by legend label: their lower and upper quantile columns and their opacity.
BAND_LABELS = {"90% band": ("q05", "q95", 0.15), "50% band": ("q25", "q75", 0.35)}

PLAN_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b")
# solid, dashed, dotted, dash-dot, long dash: two plans with identical forecasts still show two lines
PLAN_DASHES = ((1, 0), (7, 3), (2, 2), (9, 3, 2, 3), (12, 4))
TREATMENT_COLOURS = ("#e377c2", "#bcbd22", "#17becf", "#7f7f7f")
MEDIAN = "median forecast"
OBSERVED, HELD_OUT, REFERENCE, FORECAST_TIME = "observed", "later (held out)", "reference range", "forecast time"
CONTEXT_COLOURS = {OBSERVED: "black", HELD_OUT: "crimson", REFERENCE: "green", FORECAST_TIME: "grey"}
VALUE_FORMAT = ".3~r"  # three significant digits, never an exponent (d3-format)
CHART_HEIGHT = 230
# the elements' legend shows each as a short line in its colour and dash: the plans' dashes tell identical plans apart
LINE_SYMBOLS = {"symbolType": "stroke", "symbolStrokeWidth": 3, "symbolSize": 300, "symbolOpacity": 1}
SCHEMA = "https://vega.github.io/schema/vega-lite/v6.json"
LAB_COLUMNS = ["time", "series", "median", "q05", "q25", "q75", "q95"]  # what a lab chart carries of a summary
SURVIVAL_COLUMNS = ["time", "series", "survival", "survival_q05", "survival_q95"]
#: A survival chart's band: its legend label and the tooltip titles of its lower and upper bounds.
PREDICTIVE_BAND = ("90% band", "5%", "95%")
KAPLAN_MEIER_BAND = ("95% interval", "95% interval from", "to")
BAND_OPACITY = 0.15  # of a band not in BAND_LABELS
#: The line under a trial's Kaplan-Meier chart.
TRIAL_CAPTION = (
    "Steps: the Kaplan-Meier estimate of each arm's virtual patients (another event ends a patient's follow-up for the "
    "primary one); band: its 95% interval. The same virtual patients are in every arm."
)


def default_labs(config: DatasetConfig, count: int = DEFAULT_LAB_COUNT) -> list[str]:
    """The labs the picker starts with: the config's first ``count`` continuous variables."""
    return config.names(VariableKind.CONTINUOUS)[:count]


def band_caption(n_members: int) -> str:
    """One line under the lab charts: what their bands include (an ensemble's members add the model's own uncertainty)."""
    model = (
        f"and the disagreement of the model's {n_members} ensemble members (the model's own uncertainty)"
        if n_members > 1
        else "but not the model's own uncertainty (a single trained model)"
    )
    return (
        "Bands: where 50% and 90% of new measurements would fall, counting the patient's uncertain disease state "
        f"and measurement noise, {model}."
    )


def survival_caption(n_members: int) -> str:
    """One line under a survival chart: what its line and band are."""
    model = (
        f"and the model's {n_members} ensemble members" if n_members > 1 else "(a single trained model: not its own uncertainty)"
    )
    return (
        "Line: probability of being free of the event, averaged over the patient's possible disease states; "
        f"band: its 90% range over those states {model}."
    )


def plan_styles(plans: Sequence[str]) -> tuple[list[str], list[list[int]]]:
    """A colour and a dash pattern per plan, in order: each plan differs from every other in both."""
    colours = [PLAN_COLOURS[k % len(PLAN_COLOURS)] for k in range(len(plans))]
    dashes = [list(PLAN_DASHES[k % len(PLAN_DASHES)]) for k in range(len(plans))]
    return colours, dashes


# --------------------------------------------------------------------------- lab charts


def forecast_lab_charts(forecast, record: PatientRecord | None, labs: Sequence[str]) -> list[Spec]:
    """One chart per lab in ``labs`` of a :class:`~vpatient.virtual_patient.Forecast`, with ``record``'s measurements."""
    summary = forecast.summary(scale="natural").assign(series=MEDIAN)
    recorded = [(e, "as recorded") for e in record.treatments] if record is not None else []
    periods = _periods(recorded, float(summary["time"].max()))
    return [_lab_chart(forecast.config, name, summary, [MEDIAN], record, forecast.until, periods) for name in labs]


def whatif_lab_charts(result, record: PatientRecord | None, labs: Sequence[str]) -> list[Spec]:
    """One chart per lab of a :class:`~vpatient.simulation.whatif.WhatIfResult`: the history, then each plan from its time."""
    plans = [p.name for p in result.plans]
    # the plans from the decision time, of the labs drawn: nothing else is computed
    future = result.trajectories(since=result.at, variables=labs).rename(columns={"plan": "series"})
    end = float(future["time"].max())
    # before the decision time the record's treatments were given; from it, each plan's
    before = [(e.model_copy(update={"stop": min(e.stop, result.at) if e.stop is not None else result.at}), "as recorded")
              for e in (record.treatments if record is not None else [])]  # fmt: skip
    planned = [(e, f"plan {p.name}") for p in result.plans for e in p.exposures]
    periods = _periods([*before, *planned], end)
    config = next(iter(result.forecasts.values())).config
    return [_lab_chart(config, name, future, plans, record, result.at, periods) for name in labs]


def _lab_chart(
    config: DatasetConfig,
    name: str,
    summary: pd.DataFrame,
    plans: list[str],
    record: PatientRecord | None,
    at: float,
    periods: pd.DataFrame,
) -> Spec:
    """One lab's chart from a summary table (time, series, median, q05-q95) of one or more plans."""
    spec = config.variable(name)
    unit = config.time_unit.value
    title = f"{name} ({spec.unit})" if spec.unit else name
    part = summary.loc[summary["variable"] == name, LAB_COLUMNS].reset_index(drop=True)
    history = _history(record, name, at)
    reference = [REFERENCE] if spec.reference_range else []
    colour, dash = _series_scales([*plans, *history["series"], *reference, FORECAST_TIME, *periods["series"]], plans)
    y = {"type": "quantitative", "title": title, "scale": {"zero": False}}
    datasets: dict[str, pd.DataFrame] = {"line": part, "bands": _bands(part)}
    layers = []
    if len(periods):
        datasets["periods"] = periods
        layers.append(_periods_layer(colour, unit))
    if spec.reference_range:
        low, high = spec.reference_range
        datasets["reference"] = pd.DataFrame({"low": [low], "high": [high], "series": [REFERENCE]})
        layers.append(
            {
                "data": {"name": "reference"},
                "mark": {"type": "rect", "opacity": 0.08},
                "encoding": {
                    "y": {"field": "low", **y},
                    "y2": {"field": "high"},
                    "color": colour,
                    "tooltip": [_tip("low", "reference range from"), _tip("high", "to")],
                },
            }
        )
    band_opacity = {
        "field": "band",
        "type": "nominal",
        "scale": _opacity_scale(list(BAND_LABELS)),
        "legend": _legend(orient="top"),
    }
    line_tooltip = [
        {"field": "series", "type": "nominal", "title": "line"},
        _tip("time", unit, ".2f"),
        _tip("median", "median"),
        *[_tip(q, f"{q[1:].lstrip('0')}%") for q in ("q05", "q25", "q75", "q95")],
    ]
    layers += _band_and_line(("bands", "lower", "upper"), ("line", "median"), unit, y, (colour, dash, band_opacity), line_tooltip)
    if len(history):
        datasets["history"] = history
        layers.append(
            {
                "data": {"name": "history"},
                "mark": {"type": "point", "filled": True, "size": 28},
                "encoding": {
                    "x": _x(unit),
                    "y": {"field": "value", **y},
                    "color": colour,
                    "tooltip": [
                        _tip("time", unit, ".2f"),
                        _tip("value", title),
                        {"field": "series", "type": "nominal", "title": "measurement"},
                    ],
                },
            }
        )
    datasets["forecast_time"] = pd.DataFrame({"time": [at], "series": [FORECAST_TIME]})
    layers.append(_time_rule(colour, unit))
    return _chart(title, layers, datasets)


def _bands(part: pd.DataFrame) -> pd.DataFrame:
    """The 90% and 50% bands of a summary, one row per band, series and time (``lower``, ``upper``), wide band first."""
    return pd.concat(
        [
            part[["time", "series"]].assign(band=band, lower=part[low].to_numpy(), upper=part[high].to_numpy())
            for band, (low, high, _) in BAND_LABELS.items()
        ],
        ignore_index=True,
    )


def _history(record: PatientRecord | None, name: str, at: float) -> pd.DataFrame:
    """The record's measurements of ``name``: those known at ``at`` as observed, later ones as held out."""
    seen = sorted((o.time, o.value) for o in record.observations if o.variable == name) if record is not None else []
    frame = pd.DataFrame(seen, columns=["time", "value"], dtype=float)
    return frame.assign(series=[OBSERVED if t <= at + 1e-9 else HELD_OUT for t in frame["time"]])


def _periods(exposures: list[tuple[TreatmentExposure, str]], end: float) -> pd.DataFrame:
    """Treatment exposures, each with who gives it, as shaded periods (an open one runs to ``end``) named by treatment."""
    rows = []
    for e, whose in exposures:
        stop = min(e.stop, end) if e.stop is not None else end
        if stop > e.start:
            rows.append({"start": e.start, "stop": stop, "series": f"{e.treatment} (treatment)", "label": f"{e.treatment} at dose {e.dose:g} ({whose})"})  # fmt: skip
    return pd.DataFrame(rows, columns=["start", "stop", "series", "label"])


# --------------------------------------------------------------------------- survival charts


def forecast_survival_chart(forecast) -> Spec | None:
    """Event-free probability from the forecast time, one line and 90% band per event kind (None without events)."""
    survival = forecast.survival_summary()
    if not len(survival):
        return None
    future = survival[survival["time"] >= forecast.until - 1e-9]
    future = future.assign(series=[f"free of {kind}" for kind in future["event"]])
    kinds = list(dict.fromkeys(future["series"]))
    return _survival_chart(future, kinds, forecast.until, forecast.config.time_unit.value, "survival from the forecast time")


def whatif_survival_charts(result) -> list[Spec]:
    """Event-free probability per plan from the decision time: one chart per event kind."""
    plans = [p.name for p in result.plans]
    survival = result.survival().rename(columns={"plan": "series"})
    future = survival[survival["time"] >= result.at - 1e-9]
    unit = next(iter(result.forecasts.values())).config.time_unit.value
    return [
        _survival_chart(future[future["event"] == kind], plans, result.at, unit, f"free of {kind}")
        for kind in dict.fromkeys(future["event"])
    ]


def trial_survival_chart(result) -> Spec:
    """Kaplan-Meier curves of a :class:`~vpatient.simulation.trial.TrialResult`'s primary event, one step curve and 95%
    band per arm (each arm in its own colour and dash, as a what-if's plans), from enrolment."""
    km = result.kaplan_meier.rename(columns={"arm": "series", "lower": "survival_q05", "upper": "survival_q95"})
    return _survival_chart(
        km,
        list(result.arms),
        None,
        result.time_unit.value,
        f"free of {result.event} (Kaplan-Meier)",
        KAPLAN_MEIER_BAND,
        step=True,
    )


def _survival_chart(
    survival: pd.DataFrame,
    series: list[str],
    at: float | None,
    unit: str,
    title: str,
    band: tuple[str, str, str] = PREDICTIVE_BAND,
    step: bool = False,
) -> Spec:
    """Event-free probability per series with its band (``band``: legend label, bound titles); the forecast time at
    ``at`` (None: no rule); ``step``: drawn as steps (Kaplan-Meier), else joined by lines."""
    label, low_title, high_title = band
    colour, dash = _series_scales([*series, *([FORECAST_TIME] if at is not None else [])], series)
    line = survival[SURVIVAL_COLUMNS].reset_index(drop=True)
    y = {"type": "quantitative", "title": "probability free of the event", "scale": {"domain": [0, 1]}, "axis": {"format": "%"}}
    opacity = {"field": "band", "type": "nominal", "scale": _opacity_scale([label]), "legend": _legend(orient="top")}
    tooltip = [
        {"field": "series", "type": "nominal", "title": "line"},
        _tip("time", unit, ".2f"),
        _tip("survival", "event-free", ".0%"),
        _tip("survival_q05", low_title, ".0%"),
        _tip("survival_q95", high_title, ".0%"),
    ]
    layers = _band_and_line(
        ("line", "survival_q05", "survival_q95"), ("line", "survival"), unit, y, (colour, dash, opacity), tooltip
    )
    if step:
        for layer in layers[:2]:  # the band and the line: a Kaplan-Meier estimate holds until the next event
            layer["mark"]["interpolate"] = "step-after"
    datasets = {"line": line.assign(band=label)}
    if at is not None:
        layers.append(_time_rule(colour, unit))
        datasets["forecast_time"] = pd.DataFrame({"time": [at], "series": [FORECAST_TIME]})
    return _chart(title, layers, datasets)


# --------------------------------------------------------------------------- shared pieces


def _chart(title: str, layers: list[Spec], datasets: dict[str, pd.DataFrame]) -> Spec:
    # fit-x: the chart takes the column's width, and its height is the plot's, legend below it (Streamlit's default, fit,
    # would squeeze the plot to make room for the legend)
    autosize = {"type": "fit-x", "contains": "padding"}
    for layer in layers:
        layer["mark"]["clip"] = True  # zoomed in, nothing is drawn outside the plot
    return {
        "$schema": SCHEMA,
        "title": title,
        "height": CHART_HEIGHT,
        "autosize": autosize,
        "datasets": datasets,
        "layer": layers,
    }


def _band_and_line(
    band: tuple[str, str, str], line: tuple[str, str], unit: str, y: Spec, scales: tuple[Spec, Spec, Spec], tooltip: list[Spec]
) -> list[Spec]:
    """A band (area from ``(dataset, lower, upper)``), its centre line (``(dataset, field)``) and hover points with values.

    ``scales``: the colour, dash and band-opacity encodings.
    """
    (band_data, lower, upper), (line_data, centre) = band, line
    colour, dash, opacity = scales
    unit_x = _x(unit)
    return [
        {
            "data": {"name": band_data},
            "mark": {"type": "area"},
            "encoding": {"x": unit_x, "y": {"field": lower, **y}, "y2": {"field": upper}, "color": colour, "opacity": opacity},
        },
        {
            "data": {"name": line_data},
            "mark": {"type": "line", "strokeWidth": 2},
            "encoding": {"x": unit_x, "y": {"field": centre, **y}, "color": colour, "strokeDash": dash},
        },
        # invisible points along the line: hovering near it shows the values at that time; dragging or scrolling
        # pans and zooms the time axis (a double click resets it)
        {
            "data": {"name": line_data},
            "mark": {"type": "circle", "size": 80, "opacity": 0},
            "encoding": {"x": unit_x, "y": {"field": centre, **y}, "tooltip": tooltip},
            "params": [{"name": "zoom", "select": {"type": "interval", "encodings": ["x"]}, "bind": "scales"}],
        },
    ]


def _periods_layer(colour: Spec, unit: str) -> Spec:
    """Treatment periods, shaded across the chart's height."""
    return {
        "data": {"name": "periods"},
        "mark": {"type": "rect", "opacity": 0.12},
        "encoding": {
            "x": {**_x(unit), "field": "start"},
            "x2": {"field": "stop"},
            "color": colour,
            "tooltip": [
                {"field": "label", "type": "nominal", "title": "treatment"},
                _tip("start", f"from ({unit})", ".2f"),
                _tip("stop", "to", ".2f"),
            ],
        },
    }


def _time_rule(colour: Spec, unit: str) -> Spec:
    """The forecast (decision) time: what was known then is all the forecast uses."""
    return {
        "data": {"name": "forecast_time"},
        "mark": {"type": "rule", "strokeDash": [4, 3]},
        "encoding": {"x": _x(unit), "color": colour, "tooltip": [_tip("time", f"forecast time ({unit})", ".2f")]},
    }


def _series_scales(series: list[str], plans: list[str]) -> tuple[Spec, Spec]:
    """Colour and dash encodings over every named element of a chart (plans first, each in its own colour and dash).

    Both share one domain, so Vega-Lite merges them into one legend naming every element.
    """
    others = [s for s in dict.fromkeys(series) if s not in plans]
    treatments = [s for s in others if s not in CONTEXT_COLOURS]
    plan_colours, plan_dashes = plan_styles(plans)
    colours = [*plan_colours, *[CONTEXT_COLOURS.get(s) or TREATMENT_COLOURS[treatments.index(s) % len(TREATMENT_COLOURS)] for s in others]]  # fmt: skip
    domain = [*plans, *others]
    dashes = [*plan_dashes, *[[1, 0]] * len(others)]
    return (
        {"field": "series", "type": "nominal", "scale": {"domain": domain, "range": colours}, "legend": _legend(**LINE_SYMBOLS)},
        {"field": "series", "type": "nominal", "scale": {"domain": domain, "range": dashes}, "legend": _legend(**LINE_SYMBOLS)},
    )


def _opacity_scale(bands: list[str]) -> Spec:
    # ordinal: each band its own opacity (opacity's default scale for a nominal field spreads over a range instead)
    return {"type": "ordinal", "domain": bands, "range": [BAND_LABELS[b][2] if b in BAND_LABELS else BAND_OPACITY for b in bands]}


def _legend(**settings: Any) -> Spec:
    """A legend below the plot (``orient`` to move it), in columns, without a title (its entries name themselves)."""
    return {"title": "", "orient": "bottom", "columns": 2, "labelLimit": 220, **settings}


def _x(unit: str) -> Spec:
    return {"field": "time", "type": "quantitative", "title": f"{unit} since index", "scale": {"zero": False, "nice": False}}


def _tip(field: str, title: str, fmt: str = VALUE_FORMAT) -> Spec:
    return {"field": field, "type": "quantitative", "title": title, "format": fmt}
