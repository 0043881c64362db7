"""Figures of patients, forecasts, what-ifs and trials.

A one-panel plot takes ``ax=None`` and returns the axes it drew on; a figure of small
multiples takes ``fig=None`` and returns the figure (a new one when none is given).
Importing this module leaves matplotlib's backend alone: an interactive session or a
notebook keeps its own, and matplotlib falls back to Agg where there is no display.
Code that only writes image files from worker threads (the dashboard's server) calls
:func:`select_agg_backend` first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from lifelines import KaplanMeierFitter
from matplotlib.ticker import ScalarFormatter

from vpatient.data.cohort import Cohort, arm_of
from vpatient.schemas import DatasetConfig, PatientRecord, VariableKind

if TYPE_CHECKING:
    from vpatient.policy import Recommendation, Target
    from vpatient.simulation.trial import TrialResult
    from vpatient.simulation.whatif import WhatIfResult
    from vpatient.virtual_patient import Forecast

__all__ = [
    "COST_CURVE_CAPTION",
    "COST_CURVE_ORDERS",
    "kaplan_meier_by_arm",
    "panels",
    "plot_cost_curve",
    "plot_forecast",
    "plot_km_by_arm",
    "plot_timeline",
    "plot_trial",
    "plot_whatif",
    "select_agg_backend",
    "survival_table",
    "target_in_words",
]


#: Legend label of a lab's reference range, shaded in its panels.
REFERENCE_LABEL = "reference range"
#: Line styles of plans in turn: plans differ in style as well as colour, so identical plans are both seen.
PLAN_LINE_STYLES = ("-", "--", ":", "-.")
LEGEND_RIGHT = 0.84  # the panels' share of a figure's width when its legend sits to their right


def select_agg_backend() -> None:
    """Select matplotlib's Agg backend unless one was chosen already (``MPLBACKEND``, matplotlibrc, ``matplotlib.use``).

    For code that draws only to files or bytes: an interactive backend picked by default
    on a desktop would need the main thread, which a server's script threads are not.
    """
    try:
        chosen = matplotlib.get_backend(auto_select=False)
    except TypeError:  # matplotlib < 3.10 cannot tell a default from a choice: its own headless fallback applies
        return
    if chosen is None:
        matplotlib.use("Agg")


def survival_table(cohort: Cohort, event: str = "death") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per subject: time to ``event`` or censoring, whether it happened, and the arm.

    Other event kinds (competing risks such as transplant) censor at their time.
    """
    if event not in cohort.config.event_kinds:
        raise ValueError(f"unknown event {event!r}; the config has {', '.join(cohort.config.event_kinds)}")
    durations, observed, arms = [], [], []
    for r in cohort.records:
        times = [e.time for e in r.events if e.kind == event]
        others = [e.time for e in r.events if e.kind != event]
        if times:
            durations.append(min(times))
            observed.append(True)
        else:
            durations.append(min([r.end_of_followup, *others]))
            observed.append(False)
        arms.append(arm_of(r))
    return np.asarray(durations), np.asarray(observed), arms


def panels(n_panels: int, fig: plt.Figure | None = None, height: float = 2.9, cols: int = 3) -> tuple[plt.Figure, np.ndarray]:
    """A figure of small multiples, ``cols`` to a row, and its axes (flat); ``fig`` is filled when given.

    There are ``cols`` x rows axes; those beyond ``n_panels`` are hidden, so no empty panel shows.
    """
    rows = int(np.ceil(n_panels / cols))
    if fig is None:
        fig = plt.figure(figsize=(4.2 * cols, height * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes


def kaplan_meier_by_arm(cohort: Cohort, event: str = "death") -> dict[str, KaplanMeierFitter]:
    """A fitted Kaplan-Meier estimate of ``event`` per baseline treatment arm (sorted by arm).

    Each fitter carries its arm's size and event count in ``durations`` / ``event_observed``.
    """
    durations, observed, arms = survival_table(cohort, event)
    arm_array = np.asarray(arms)
    fitters = {}
    for arm in sorted(set(arms)):
        mask = arm_array == arm
        label = f"{arm} (n={mask.sum()}, {observed[mask].sum()} {event}s)"
        fitters[arm] = KaplanMeierFitter(label=label).fit(durations[mask], observed[mask])
    return fitters


def plot_km_by_arm(cohort: Cohort, event: str = "death", ax: plt.Axes | None = None) -> plt.Axes:
    """Kaplan-Meier curves of ``event`` per baseline treatment arm, with 95% bands."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.5))
    for fitter in kaplan_meier_by_arm(cohort, event).values():
        fitter.plot_survival_function(ax=ax, ci_show=True)
    unit = cohort.config.time_unit.value
    ax.set_xlabel(f"{unit} since index")
    ax.set_ylabel(f"probability free of {event}")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{cohort.name}: Kaplan-Meier estimate of {event} by arm")
    ax.grid(alpha=0.3)
    return ax


def plot_timeline(record: PatientRecord, config: DatasetConfig, fig: plt.Figure | None = None) -> plt.Figure:
    """Small multiples of one patient's record: labs (units, reference ranges), signs, treatments, events."""
    labs = [v for v in config.of_kind(VariableKind.CONTINUOUS)]
    signs = [v for v in config.of_kind(VariableKind.BINARY, VariableKind.ORDINAL)]
    n_panels = len(labs) + (1 if signs else 0)
    fig, axes = panels(max(n_panels, 1), fig, height=2.4)
    end = max([record.end_of_followup, *[o.time for o in record.observations]], default=1.0)

    def context(ax) -> None:
        for k, exp in enumerate(record.treatments):
            stop = exp.stop if exp.stop is not None else end
            ax.axvspan(exp.start, stop, color=f"C{k + 1}", alpha=0.08, label=f"{exp.treatment} (dose {exp.dose:g}) period")
        for event in record.events:
            ax.axvline(event.time, color="crimson", ls="-", lw=1.5, label=event.kind)
        ax.set_xlim(min(0.0, *[o.time for o in record.observations]) - 0.1, end + 0.1)
        ax.grid(alpha=0.3)

    for ax, spec in zip(axes, labs, strict=False):
        seen = sorted((o.time, o.value) for o in record.observations if o.variable == spec.name)
        if seen:
            t, v = zip(*seen, strict=True)
            ax.plot(t, v, "o-", color="black", ms=3.5, lw=1, label="measured")
        else:
            ax.text(0.5, 0.5, "not measured", transform=ax.transAxes, ha="center", color="grey")
        if spec.reference_range:
            ax.axhspan(*spec.reference_range, color="green", alpha=0.08, label=REFERENCE_LABEL)
        ax.set_title(f"{spec.name} ({spec.unit})" if spec.unit else spec.name, fontsize=10)
        context(ax)
    if signs:
        ax = axes[len(labs)]
        for row, spec in enumerate(signs):
            seen = [(o.time, o.value) for o in record.observations if o.variable == spec.name]
            if not seen:
                continue
            t, v = (np.asarray(x) for x in zip(*seen, strict=True))
            top = max(spec.levels) if spec.levels else 1.0
            low = min(spec.levels) if spec.levels else 0.0
            shade = (v - low) / (top - low) if top > low else v
            ax.scatter(t, np.full(len(t), row), c=shade, cmap="Reds", vmin=-0.2, vmax=1, edgecolors="black", s=30, zorder=3)
        ax.set_yticks(range(len(signs)), [s.name for s in signs], fontsize=8)
        ax.set_ylim(-0.7, len(signs) - 0.3)
        ax.set_title("clinical signs (darker: present / worse)", fontsize=10)
        context(ax)
    _label_time(axes[:n_panels], config.time_unit.value)
    fig.suptitle(f"subject {record.subject_id}: record up to t = {record.end_of_followup:.2f} {config.time_unit.value}")
    _figure_legend(fig, axes[:n_panels])
    return fig


def plot_forecast(
    forecast: Forecast, record: PatientRecord | None = None, variables: list[str] | None = None, fig: plt.Figure | None = None
) -> plt.Figure:
    """Small multiples of one patient's forecast: observed values, median, 50% and 90% bands.

    One panel per continuous variable (natural units, with reference ranges when the
    config has them) and one of survival per event kind. Returns the figure.
    """
    summary = forecast.summary(scale="natural")
    survival = forecast.survival_summary()
    names = variables or list(forecast.layout.continuous)
    n_panels = len(names) + (1 if len(survival) else 0)
    fig, axes = panels(n_panels, fig)
    for ax, name in zip(axes, names, strict=False):
        spec = forecast.config.variable(name)
        part = summary[summary["variable"] == name]
        ax.fill_between(part["time"], part["q05"], part["q95"], color="C0", alpha=0.18, label="90% band")
        ax.fill_between(part["time"], part["q25"], part["q75"], color="C0", alpha=0.35, label="50% band")
        ax.plot(part["time"], part["median"], color="C0", lw=1.5, label="median forecast")
        _measurements(ax, record, name, forecast.until)
        if spec.reference_range:
            ax.axhspan(*spec.reference_range, color="green", alpha=0.07, label=REFERENCE_LABEL)
        ax.axvline(forecast.until, color="grey", ls="--", lw=1, label="forecast time")
        ax.set_title(f"{name} ({spec.unit})" if spec.unit else name, fontsize=10)
        ax.grid(alpha=0.3)
    if len(survival):
        ax = axes[len(names)]
        future = survival[survival["time"] >= forecast.until]
        for k, (kind, part) in enumerate(future.groupby("event", sort=False)):
            ax.plot(part["time"], part["survival"], color=f"C{k + 1}", label=f"free of {kind}")
            band = f"free of {kind}: 90% band"
            ax.fill_between(part["time"], part["survival_q05"], part["survival_q95"], color=f"C{k + 1}", alpha=0.2, label=band)
        ax.set_ylim(0, 1.02)
        ax.set_title("survival from the forecast time", fontsize=10)
        ax.grid(alpha=0.3)
    _label_time(axes[:n_panels], forecast.config.time_unit.value)
    fig.suptitle(f"subject {forecast.subject_id}: forecast from t = {forecast.until:.2f} {forecast.config.time_unit.value}")
    _figure_legend(fig, axes[:n_panels])
    return fig


def plot_whatif(
    result: WhatIfResult, variables: list[str] | None = None, fig: plt.Figure | None = None, record: PatientRecord | None = None
) -> plt.Figure:
    """One panel per lab with each plan's median and 90% band from the decision time, and survival per plan.

    Plans differ in colour and in line style, so two plans with the same forecast are both seen.
    With ``record``, the patient's measurements are drawn too: those known at the decision time
    filled, later ones hollow.
    """
    trajectories = result.trajectories()
    survival = result.survival()
    layout = next(iter(result.forecasts.values())).layout
    config = next(iter(result.forecasts.values())).config
    names = variables or list(layout.continuous)
    n_panels = len(names) + len(layout.events)
    fig, axes = panels(n_panels, fig)
    future = trajectories[trajectories["time"] >= result.at - 1e-9]
    styles = [PLAN_LINE_STYLES[k % len(PLAN_LINE_STYLES)] for k in range(len(result.plans))]
    for ax, name in zip(axes, names, strict=False):
        spec = config.variable(name)
        for k, plan in enumerate(result.plans):
            part = future[(future["variable"] == name) & (future["plan"] == plan.name)]
            ax.fill_between(part["time"], part["q05"], part["q95"], color=f"C{k}", alpha=0.15, label=f"{plan.name}: 90% band")
            ax.plot(part["time"], part["median"], color=f"C{k}", ls=styles[k], lw=1.5, label=plan.name)
        _measurements(ax, record, name, result.at)
        if spec.reference_range:
            ax.axhspan(*spec.reference_range, color="green", alpha=0.07, label=REFERENCE_LABEL)
        ax.axvline(result.at, color="grey", ls="--", lw=1, label="decision time")
        ax.set_title(f"{name} ({spec.unit})" if spec.unit else name, fontsize=10)
        ax.grid(alpha=0.3)
    for i, kind in enumerate(layout.events):
        ax = axes[len(names) + i]
        for k, plan in enumerate(result.plans):
            part = survival[
                (survival["event"] == kind) & (survival["plan"] == plan.name) & (survival["time"] >= result.at - 1e-9)
            ]
            ax.plot(part["time"], part["survival"], color=f"C{k}", ls=styles[k], label=plan.name)
            ax.fill_between(
                part["time"],
                part["survival_q05"],
                part["survival_q95"],
                color=f"C{k}",
                alpha=0.15,
                label=f"{plan.name}: 90% band",
            )
        ax.set_ylim(0, 1.02)
        ax.set_title(f"free of {kind}", fontsize=10)
        ax.grid(alpha=0.3)
    unit = config.time_unit.value
    _label_time(axes[:n_panels], unit)
    fig.suptitle(f"subject {result.subject_id}: what-if from t = {result.at:.2f} {unit} (median and 90% band per plan)")
    _figure_legend(fig, axes[:n_panels])
    return fig


def _measurements(ax: plt.Axes, record: PatientRecord | None, name: str, until: float) -> None:
    """The record's measurements of ``name``: those known at ``until`` filled black, later ones hollow red."""
    seen = [(o.time, o.value) for o in record.observations if o.variable == name] if record is not None else []
    if not seen:
        return
    t, v = (np.asarray(x) for x in zip(*seen, strict=True))
    past = t <= until
    ax.scatter(t[past], v[past], s=14, color="black", zorder=3, label="observed")
    if (~past).any():
        ax.scatter(t[~past], v[~past], s=16, facecolors="none", edgecolors="crimson", zorder=3, label="later (held out)")


def _label_time(axes, unit: str) -> None:
    """Name the data's time unit under every panel in use, and write its ticks as plain numbers."""
    for ax in axes:
        ax.set_xlabel(f"{unit} since index", fontsize=8)
        _plain_ticks(ax)


def _plain_ticks(ax: plt.Axes) -> None:
    """Ticks as plain numbers on linear axes: no offset ("+1e3") and no scientific notation ("1.25 x 10^1")."""
    for axis in (ax.xaxis, ax.yaxis):
        formatter = axis.get_major_formatter()
        if isinstance(formatter, ScalarFormatter):  # not named ticks (a panel of clinical signs)
            formatter.set_useOffset(False)
            formatter.set_scientific(False)


def _figure_legend(fig: plt.Figure, axes) -> None:
    """One legend for the figure, right of the panels, naming every line, band, point set and shaded range drawn once."""
    named: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            named.setdefault(label, handle)
    right = 0.98
    if named:
        fig.legend(list(named.values()), list(named), loc="center right", fontsize=8, frameon=False)
        right = LEGEND_RIGHT
    fig.tight_layout(rect=(0, 0, right, 0.97))


def plot_trial(result: TrialResult, path=None, fig: plt.Figure | None = None) -> plt.Figure:
    """Kaplan-Meier curves per arm (with the model's mean curves dashed) and mean lab trajectories per arm."""
    labs = list(result.trajectories["variable"].unique())
    fig, axes = panels(1 + len(labs), fig, height=3.0)
    ax = axes[0]
    for k, arm in enumerate(result.arms):
        km = result.kaplan_meier[result.kaplan_meier["arm"] == arm]
        ax.step(km["time"], km["survival"], where="post", color=f"C{k}", label=f"{arm} (Kaplan-Meier)")
        ax.fill_between(km["time"], km["lower"], km["upper"], step="post", color=f"C{k}", alpha=0.15)
        model = result.model_survival[result.model_survival["arm"] == arm]
        ax.plot(model["time"], model["survival"], color=f"C{k}", ls="--", lw=1, label=f"{arm} (model mean)")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"free of {result.event}", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    for ax, name in zip(axes[1:], labs, strict=False):
        for k, arm in enumerate(result.arms):
            part = result.trajectories[(result.trajectories["variable"] == name) & (result.trajectories["arm"] == arm)]
            ax.plot(part["time"], part["mean"], color=f"C{k}", label=arm)
            ax.fill_between(part["time"], part["lower"], part["upper"], color=f"C{k}", alpha=0.2)
        ax.set_title(f"mean {name}", fontsize=10)
        ax.grid(alpha=0.3)
    _label_time(axes[: 1 + len(labs)], result.time_unit.value)
    fig.suptitle(f"in-silico trial, {result.n_patients} patients per arm")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
    return fig


def target_in_words(target: Target, unit: str | None = None) -> str:
    """A next-test target as a sentence says it ("whether death happens within 5 years"); ``unit`` is the data's time unit."""
    unit = unit or "time units"
    if target.kind == "risk":
        return f"whether {target.event} happens within {target.horizon:g} {unit}"
    if target.kind == "forecast":
        return f"{target.variable} in {target.horizon:g} {unit}"
    return "the latent disease state"


#: What :func:`plot_cost_curve` shows, in one line: the caption the dashboard and the patient report put under it.
COST_CURVE_CAPTION = (
    "Expected information bought as the cost adds up: the recommended order (greedy by information per cost) "
    "against the average random order."
)

#: The cost-aware curves a recommendation carries, with their legend labels, in drawing order.
COST_CURVE_ORDERS = {
    "recommended": "recommended order (greedy by information per cost)",
    "random": "random order (mean over orders)",
}


def plot_cost_curve(recommendation: Recommendation, ax: plt.Axes | None = None, unit: str | None = None) -> plt.Axes:
    """Expected information bought as the cost adds up: the recommended order beside the mean random order.

    Both are step functions of the cumulative cost (a test's information counts once it is
    paid for), drawn to the cost where the longer one ends, the shorter holding its last
    value. Each test the recommended order buys is marked, and named where the name has room.
    ``unit`` is the data's time unit, for the target's horizon in the y label. A patient
    whose tests were all done already has nothing to buy: both curves are a point at cost 0.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 4))
    curve = recommendation.cost_curve()
    right = float(curve["cost"].max()) if len(curve) else 0.0
    for k, (order, label) in enumerate(COST_CURVE_ORDERS.items()):
        part = curve[curve["order"] == order]
        if part.empty:
            continue
        costs, information = [*part["cost"], right], [*part["information"], part["information"].iloc[-1]]
        ax.plot(costs, information, drawstyle="steps-post", color=f"C{k}", lw=1.8, label=label)
    bought = [(step["test"], step["cumulative_cost"], step["cumulative_eig"]) for step in recommendation.sequence]
    points = [(cost, gain) for _, cost, gain in bought] or [(0.0, 0.0)]
    ax.plot(*zip(*points, strict=True), "o", color="C0", ms=4, zorder=3)
    ax.set_xlabel("cumulative cost (relative units)")
    ax.set_ylabel(f"expected information about\n{target_in_words(recommendation.target, unit)} (nats)")
    ax.set_xlim(left=0.0, right=right * 1.08 if right > 0 else 1.0)
    ax.set_ylim(bottom=min(0.0, float(curve["information"].min()) if len(curve) else 0.0))
    ax.set_title(f"subject {recommendation.subject_id}: tests at t = {recommendation.at:.2f}", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    _name_points(ax, bought)
    return ax


def _name_points(ax: plt.Axes, named: list[tuple[str, float, float]]) -> None:
    """Write each (name, x, y) beside its point where it covers no name already written, else leave it out.

    A step curve leaves room under each corner's level to its right, and above it: a name
    goes below first, then above. Cheap tests bought one after another sit close together
    on the cost axis, so some names may find no room. Call it once the axes' limits are
    set: the overlap is measured on the canvas.
    """
    placed = []
    for name, x, y in named:
        short = name if len(name) <= 14 else name[:13] + "…"
        for offset in ((4, -11), (4, 5)):
            text = ax.annotate(short, (x, y), xytext=offset, textcoords="offset points", fontsize=7)
            box = text.get_window_extent()
            if not any(box.overlaps(other) for other in placed):
                placed.append(box)
                break
            text.remove()
