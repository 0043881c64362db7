"""The answer each dashboard tab opens with, in words and numbers a clinician reads at a glance.

Pure functions of the library's results (a :class:`~vpatient.virtual_patient.Forecast`, a
:class:`~vpatient.simulation.whatif.WhatIfResult`, a :class:`~vpatient.policy.Recommendation`, a
:class:`~vpatient.simulation.trial.TrialResult`):
the app shows each :class:`Headline` as an ``st.metric``, and a test computes the same
headlines from the library's own call with the same seed. Every number goes through
:mod:`vpatient.formatting`: percentages for probabilities, natural units for labs, no
scientific notation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from vpatient.dashboard.tables import forecast_time, within_mc_error
from vpatient.formatting import INFORMATION_UNIT, number, percent, percentage_points, span, with_unit
from vpatient.schemas import TimeUnit

__all__ = [
    "NO_DIFFERENCE",
    "Headline",
    "NextTestHeadlines",
    "TrialHeadlines",
    "WhatIfHeadlines",
    "by_interval",
    "forecast_headlines",
    "horizon_words",
    "next_test_headlines",
    "risk_range",
    "target_phrase",
    "trial_headlines",
    "verdict",
    "whatif_headlines",
]


@dataclass(frozen=True)
class Headline:
    """One headline number as ``st.metric`` shows it.

    ``delta`` carries the interval or the comparison under the value; ``tone`` is the
    metric's ``delta_color``: ``"normal"`` (green up, red down) only for a difference the
    model can tell apart from none, else ``"off"`` (grey), so an interval never reads as good or bad news.
    """

    label: str
    value: str
    delta: str | None = None
    tone: str = "off"


def horizon_words(horizon: float, time_unit: TimeUnit) -> str:
    """A time ahead as a clinician says it: in years from a year on (``5 years``), else in the data's unit (``30 days``)."""
    years = horizon * time_unit.days / TimeUnit.YEARS.days
    if years >= 0.995 or time_unit == TimeUnit.YEARS:
        shown = number(years, 2)
        return f"{shown} year" if shown == "1" else f"{shown} years"
    return f"{number(horizon, 2)} {time_unit.value}"


# --------------------------------------------------------------------------- forecast


def forecast_headlines(forecast, labs: Sequence[str], ahead: float | None = None) -> list[Headline]:
    """Each of ``labs``' median ``ahead`` (default: the horizon) with its 90% range, then each event's survival with its interval.

    The dashboard passes the labs its charts show (the user's pick), so headline and chart agree.
    """
    config = forecast.config
    t = forecast_time(forecast, ahead)
    when = horizon_words(t - forecast.until, config.time_unit)
    summary = forecast.summary()
    at_t = summary[np.isclose(summary["time"], t)].set_index("variable")
    headlines = []
    for lab in labs:
        row = at_t.loc[lab]
        unit = config.variable(lab).unit
        headlines.append(
            Headline(
                f"{lab} in {when}",
                with_unit(number(row["median"]), unit),
                f"90% range {with_unit(span(row['q05'], row['q95']), unit)}",
            )
        )
    survival = forecast.survival_summary()
    for _, row in survival[np.isclose(survival["time"], t)].iterrows():
        headlines.append(
            Headline(
                f"free of {row['event']} in {when}",
                percent(row["survival"]),
                f"90% interval {span(row['survival_q05'], row['survival_q95'], percent)}",
            )
        )
    return headlines


# --------------------------------------------------------------------------- what-if


@dataclass
class WhatIfHeadlines:
    """Per event: one row of :class:`Headline` per effect horizon (one per plan), and a verdict per plan compared.

    ``by_event[event][i]`` are the plans' headlines at ``horizons[i]`` (words such as ``5 years``).
    """

    reference: str
    horizons: list[str]
    by_event: dict[str, list[list[Headline]]] = field(default_factory=dict)
    verdicts: dict[str, list[str]] = field(default_factory=dict)


#: What a verdict says of an effect whose interval holds "no effect".
NO_DIFFERENCE = "no difference the model can tell apart"


def by_interval(lower: float, upper: float, above: str, below: str, neither: str, null: float = 0.0) -> str:
    """The sentence an effect's interval supports: ``above`` when it lies wholly above ``null`` (no effect), ``below``
    when wholly below, else ``neither`` (a missing bound too: an interval not known excludes nothing)."""
    if lower > null:
        return above
    if upper < null:
        return below
    return neither


def verdict(plan: str, reference: str, event: str, when: str, difference: float, lower: float, upper: float) -> str:
    """One sentence on a plan's effect on staying free of ``event``, worded by its 90% interval."""
    interval = (
        f"{percentage_points(difference)}, 90% interval {span(lower, upper, lambda d: percentage_points(d, unit=False))} pp"
    )
    return by_interval(
        lower,
        upper,
        f"{plan}: a higher chance than {reference} of being free of {event} in {when} ({interval}).",
        f"{plan}: a lower chance than {reference} of being free of {event} in {when} ({interval}).",
        f"{plan} against {reference}, free of {event} in {when}: {NO_DIFFERENCE} ({interval}).",
    )


def whatif_headlines(result) -> WhatIfHeadlines:
    """Per plan and event, the chance of being free of the event at each effect horizon (1, 2 and 5 years, in the data's
    unit, those within the horizon) with its 90% interval; each other plan's difference from the reference in
    percentage points, and a verdict at the longest horizon."""
    config = next(iter(result.forecasts.values())).config
    survival = result.survival()
    effects = result.effects()
    reference = result.reference
    words = [horizon_words(h, config.time_unit) for h in result.effect_horizons]
    out = WhatIfHeadlines(reference, words)
    for event in config.event_kinds:
        rows: list[list[Headline]] = []
        for h, when in zip(result.effect_horizons, words, strict=True):
            at_h = survival[(survival["event"] == event) & np.isclose(survival["time"], result.at + h)].set_index("plan")
            row = []
            for plan in result.forecasts:
                s = at_h.loc[plan]
                value = f"{percent(s['survival'])} ({span(s['survival_q05'], s['survival_q95'], percent)})"
                delta, tone = None, "off"
                if plan != reference:
                    e = _effect(effects, plan, f"survival:{event}", h)
                    delta = f"{percentage_points(e['difference'])} vs {reference}"
                    tone = "off" if e["lower"] <= 0 <= e["upper"] else "normal"
                row.append(Headline(f"{plan}: free of {event} in {when}", value, delta, tone))
            rows.append(row)
        out.by_event[event] = rows
        longest, when = result.effect_horizons[-1], words[-1]
        out.verdicts[event] = [
            verdict(plan, reference, event, when, *(float(e[k]) for k in ("difference", "lower", "upper")))
            for plan in result.forecasts
            if plan != reference
            for e in [_effect(effects, plan, f"survival:{event}", longest)]
        ]
    return out


def _effect(effects, plan: str, quantity: str, horizon: float):
    rows = effects[(effects["plan"] == plan) & (effects["quantity"] == quantity) & np.isclose(effects["horizon"], horizon)]
    return rows.iloc[0]


# --------------------------------------------------------------------------- in-silico trial


@dataclass
class TrialHeadlines:
    """An in-silico trial's answer: per arm its Kaplan-Meier event-free chance at the end of follow-up, per arm compared
    with the reference its hazard ratio and RMST difference (95% intervals), and a verdict on each. One arm (a virtual
    cohort under a plan): its event-free chance and median event-free time, and a line saying there is no comparison."""

    metrics: list[Headline]
    verdicts: list[str]


def trial_headlines(result) -> TrialHeadlines:
    """The answer of a :class:`~vpatient.simulation.trial.TrialResult` in headline numbers and sentences worded by their
    intervals (:func:`by_interval`): the hazard ratio against 1, the difference in restricted mean event-free time against 0."""
    event, reference, unit = result.event, result.reference, result.time_unit.value
    when = horizon_words(result.years, result.time_unit)
    metrics = [
        Headline(
            f"{row['arm']}: free of {event} in {when}",
            percent(row["survival"]),
            f"95% interval {span(row['lower'], row['upper'], percent)} (Kaplan-Meier)",
        )
        for _, row in result.survival_at([result.years]).iterrows()
    ]
    if len(result.arms) == 1:
        return TrialHeadlines(
            [*metrics, _median_headline(result, reference, when)],
            [f"One arm: a virtual cohort under {reference}, with no arm to compare (no hazard ratio, no RMST difference)."],
        )
    verdicts = []
    rmst = result.rmst.set_index("arm")
    for _, hr in result.hazard_ratios.iterrows():
        arm, gain = hr["arm"], rmst.loc[hr["arm"]]
        has_ratio = bool(np.isfinite(hr["hazard_ratio"]))  # not without events of the kind
        hr_interval = f"95% interval {span(hr['lower'], hr['upper'])}" if has_ratio else f"no {event} simulated"
        gain_interval = f"95% interval {span(gain['lower'], gain['upper'], _signed)}"
        metrics += [
            Headline(f"hazard ratio of {event}, {arm} vs {reference}", number(hr["hazard_ratio"]), hr_interval),
            Headline(
                f"{unit} free of {event} within {when} (RMST), {arm} vs {reference}",
                with_unit(_signed(gain["difference"]), unit),
                gain_interval,
            ),
        ]
        ratio = f"hazard ratio {number(hr['hazard_ratio'])}, {hr_interval}"
        verdicts.append(
            by_interval(
                hr["lower"],
                hr["upper"],
                f"{arm}: a higher hazard of {event} than {reference} ({ratio}).",
                f"{arm}: a lower hazard of {event} than {reference} ({ratio}).",
                f"{arm} against {reference}, hazard of {event}: {NO_DIFFERENCE} ({ratio}).",
                null=1.0,
            )
            if has_ratio
            else f"{arm} against {reference}: no {event} in the simulated trial, so no hazard ratio."
        )
        difference = f"{with_unit(_signed(gain['difference']), unit)} on average, {gain_interval}"
        verdicts.append(
            by_interval(
                gain["lower"],
                gain["upper"],
                f"{arm}: more time free of {event} within {when} than {reference} ({difference}).",
                f"{arm}: less time free of {event} within {when} than {reference} ({difference}).",
                f"{arm} against {reference}, time free of {event} within {when}: {NO_DIFFERENCE} ({difference}).",
            )
        )
    return TrialHeadlines(metrics, verdicts)


def _median_headline(result, arm: str, when: str) -> Headline:
    """An arm's median time free of the trial's event with its 95% interval (:meth:`TrialResult.median_time`); "not
    reached" when more than half are still free of it at the end of follow-up."""
    unit = result.time_unit.value
    median, lower, upper = result.median_time(arm)

    def shown(t: float) -> str:
        return with_unit(number(t, 2), unit) if np.isfinite(t) else f"not reached in {when}"

    if not np.isfinite(lower):
        interval = f"95% interval: not reached in {when}"
    elif not np.isfinite(upper):
        interval = f"95% interval: from {shown(lower)}"
    else:
        interval = f"95% interval {span(lower, upper, lambda t: number(t, 2))} {unit}"
    return Headline(f"{arm}: median time free of {result.event}", shown(median), interval)


def _signed(difference: float) -> str:
    """A difference of times to two significant digits, signed: ``+0.25``."""
    return number(difference, 2, signed=True)


# --------------------------------------------------------------------------- next test


@dataclass
class NextTestHeadlines:
    """The ranking in one sentence, a metric per test that tells something, and notes on the rest."""

    sentence: str
    metrics: list[Headline]
    notes: list[str]


def target_phrase(target, time_unit: TimeUnit) -> str:
    """A next-test target as it follows "this patient's": ``risk of death within 5 years``, ``bilirubin in 2 years``."""
    if target.kind == "risk":
        return f"risk of {target.event} within {horizon_words(target.horizon, time_unit)}"
    if target.kind == "forecast":
        return f"{target.variable} in {horizon_words(target.horizon, time_unit)}"
    return "disease state"


def risk_range(lower: float, upper: float) -> str:
    """Where a risk could land after a result: ``21%-38%``, or ``stays at 29%`` when both ends read the same."""
    lo, hi = percent(lower), percent(upper)
    return f"stays at {lo}" if lo == hi else f"{lo}-{hi}"


def next_test_headlines(recommendation, time_unit: TimeUnit) -> NextTestHeadlines:
    """The most informative test per cost in words; per informative test how far its result could move the risk (a risk
    target) or its gain in nats (other targets); tests whose gain is within Monte Carlo error, or already done, named as such."""
    what = target_phrase(recommendation.target, time_unit)
    open_tests = [g for g in recommendation.gains if not g.done]
    informative = [g for g in open_tests if not within_mc_error(g)]
    unclear = [g.test for g in open_tests if within_mc_error(g)]
    done = [g.test for g in recommendation.gains if g.done]
    metrics = []
    if recommendation.target.kind == "risk":
        metrics.append(Headline(f"{what}, now", percent(recommendation.risk_now)))
    for g in informative:
        if g.updated_risk is not None:
            metrics.append(
                Headline(
                    f"{g.test} (cost {number(g.cost)}): the risk after its result",
                    risk_range(*g.updated_risk),
                    "5-95% of its results",
                )
            )
        else:
            gain = f"{number(g.eig, 2)} {INFORMATION_UNIT}"
            metrics.append(
                Headline(
                    f"{g.test} (cost {number(g.cost)}): expected information",
                    gain,
                    f"± {number(g.mc_error, 2)} Monte Carlo error",
                )
            )
    if informative:
        best = informative[0]
        sentence = f"{best.test} is the most informative test per cost for this patient's {what}."
        if best.predicted:
            results = "; ".join(f"{k} {v}" for k, v in best.predicted.items())
            sentence += f" Its result is predicted to fall in: {results} (5-95%)."
    else:
        sentence = (
            f"No test is expected to tell more about this patient's {what} than the Monte Carlo error of the estimate "
            f"({recommendation.n_samples} samples) can tell apart from nothing."
        )
    notes = []
    if unclear and informative:
        notes.append(f"Within Monte Carlo error, no gain the model can tell from none: {', '.join(unclear)}.")
    if done:
        notes.append(f"Already done at that visit, nothing new to tell: {', '.join(done)}.")
    return NextTestHeadlines(sentence, metrics, notes)
