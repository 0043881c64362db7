"""``vpatient benchmark test-selection``: does ordering tests by expected information per cost help?

Protocol (held-out patients of the forecasting protocol's folds, each fold's own model;
the cases, scenarios and losses are those of :mod:`vpatient.evaluate.test_selection`):

- **Scenarios**: ``first_visit`` (a new patient, static covariates and history codes
  only), ``after_gap`` (the last measurements at least a year old) and ``follow_up`` (a
  routine visit, everything before it known). The tests are those done at the decision
  visit: their true results exist, so every order of them can be scored.
- **Targets**: for each dataset, the risk of an event within a horizon (death within 3
  years where the data have a death event) and the forecast of a lab at a horizon (the
  first continuous variable, or the one named; PBC and synthetic: bilirubin at 2 years).
  Loss: log-loss of the observed outcome (risk), negative log predictive density of the
  observed value on the model's standardised scale (forecast).
- **Cost-aware curves**: the x axis is the cumulative cost (the catalogue's costs); the
  score of an order is the area under the loss-versus-cost step curve up to the budget
  (the whole catalogue's cost), divided by the budget: a mean loss, lower is better.
- **Policies**, on the same patients in the same run: ``eig`` (adaptive greedy on expected
  information per cost, given the true results bought so far); ``static_eig`` (the same
  greedy on a belief from the static covariates and history codes alone, at time 0: what a
  feature-acquisition method for static data does, EDDI-style); ``fixed`` (the one
  catalogue order with the least mean area over up to ``n_train_patients`` training
  patients of the fold, same scenario and target); ``cheapest`` (cheapest first);
  ``random`` (the mean over every order); ``clairvoyant`` (the least area of any order,
  chosen knowing the outcome: context only, no honest policy can reach it).
- **Paired differences** of area, comparator minus EIG (positive: EIG better), with 95%
  percentile bootstrap intervals over patients.
- **Calibration**: before any test, for each test done at the visit, the predicted EIG of
  its measured variables against the realised information, the drop in the target's
  entropy once its true results reweight the pool; by decile of predicted gain, and the
  ratio of sums with a bootstrap interval over patients.
- **Latency**: :func:`vpatient.policy.recommend` (every test ranked, its greedy sequence
  and cost curves) for PBC patients at their follow-up decision point, 256 samples, as a
  ratio to one :meth:`VirtualPatientModel.forecast` of the same patient in the same run.
- **Against the truth** (synthetic): each test's true EIG under the generator (z0 from its
  prior, importance-weighted by the likelihood of what is known and of being event-free up
  to s under the true dynamics and observation model; the same nested estimator with the
  true model in place of the learned one, many more draws), against ``recommend``'s;
  Spearman over the tests of each patient, averaged, and pooled over (patient, test) pairs.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import Field
from tqdm.auto import tqdm

from vpatient.benchmarks.base import StrictModel, VersionedBenchmarkResult, derived_seed, targets_table
from vpatient.errors import VPatientError
from vpatient.evaluate.fold_models import DEFAULT_CACHE
from vpatient.tables import markdown_table

if TYPE_CHECKING:  # torch-backed: imported when the benchmark runs, not when the CLI starts
    from vpatient.train import TrainSettings

__all__ = [
    "NextTestSelectionSettings",
    "TestSelectionBenchmarkResult",
    "default_targets",
    "run_test_selection_benchmark",
]

log = logging.getLogger(__name__)

POLICIES = ("eig", "static_eig", "fixed", "cheapest", "random", "clairvoyant")
COMPARATORS = ("random", "fixed", "static_eig", "cheapest")
SCENARIOS = ("first_visit", "after_gap", "follow_up")


# --------------------------------------------------------------------------- result model


class PairedDifference(StrictModel):
    """Mean area of a comparator minus the EIG order's, per patient; positive means the EIG order is better."""

    comparator: str
    difference: float
    lower: float = Field(description="2.5% bootstrap quantile over patients.")
    upper: float = Field(description="97.5% bootstrap quantile over patients.")


class CalibrationBin(StrictModel):
    lo: float
    hi: float
    n: int
    mean_predicted: float
    mean_realised: float
    lower: float | None = Field(description="Mean realised - 1.96 standard errors (None: one pair).")
    upper: float | None = Field(description="Mean realised + 1.96 standard errors.")


class CalibrationSummary(StrictModel):
    n_pairs: int
    mean_predicted: float
    mean_realised: float
    ratio: float | None = Field(description="Sum of realised / sum of predicted information.")
    lower: float | None = Field(description="2.5% bootstrap quantile of the ratio (patients resampled).")
    upper: float | None
    bins: list[CalibrationBin] = Field(description="By decile of predicted gain.")


class ScenarioResult(StrictModel):
    """One dataset, scenario and target: the policies' areas, paired differences, curves and calibration."""

    data: str
    scenario: str
    target: str
    loss: str
    n_folds: int
    n_patients: int
    n_candidates: int = Field(description="Held-out patients looked at before the eligibility rules.")
    tests: list[str]
    costs: dict[str, float]
    budget: float
    mean_available_tests: float
    areas: dict[str, float] = Field(description="policy -> mean area under the loss-versus-cost curve / budget.")
    differences: list[PairedDifference]
    cost_grid: list[float]
    curves: dict[str, list[float]] = Field(description="policy -> mean loss at each cost of cost_grid.")
    fixed_orders: list[list[str]] = Field(description="The best fixed order of each fold (training patients).")
    eig_first_choice: dict[str, int]
    mean_pool_ess: float
    calibration: CalibrationSummary

    def difference(self, comparator: str) -> PairedDifference:
        return next(d for d in self.differences if d.comparator == comparator)


class LatencySummary(StrictModel):
    data: str
    target: str
    n_patients: int
    n_samples: int
    n_tests: int
    median_ms: float
    p95_ms: float
    forecast_median_ms: float = Field(description="One VirtualPatientModel.forecast of the same patients, same run.")
    ratio_to_forecast: float
    torch_threads: int
    load_average: list[float]


class TruthSummary(StrictModel):
    data: str
    scenario: str
    target: str
    n_patients: int
    n_model_samples: int
    n_true_samples: int
    spearman: float | None = Field(description="Spearman over each patient's tests, model vs true EIG, averaged.")
    spearman_se: float | None
    pooled_spearman: float | None = Field(description="Spearman over all (patient, test) pairs.")
    per_test: dict[str, dict[str, float]] = Field(description="test -> mean model EIG, its MC error, mean true EIG (nats).")
    mean_true_ess: float


class TargetCheck(StrictModel):
    name: str
    value: float | None
    goal: str
    passed: bool


class TestSelectionBenchmarkResult(VersionedBenchmarkResult):
    """The test-selection benchmark (module docstring)."""

    __test__: ClassVar[bool] = False  # not a pytest test class despite its name

    benchmark: Literal["test-selection"] = "test-selection"
    seed: int
    n_samples: int
    n_train_patients: int
    seconds: float
    cpu_count: int
    torch_threads: int
    machine: str
    scenarios: list[ScenarioResult]
    latency: LatencySummary | None
    truth: list[TruthSummary]
    targets: list[TargetCheck]
    notes: list[str] = Field(default_factory=list)

    def plot(self, path: Path) -> Path:
        """The cost-aware curves of every dataset, scenario and target (:func:`plot_test_selection`)."""
        return plot_test_selection(self, path)

    def to_markdown(self) -> str:
        out = [
            "# Test-selection benchmark",
            "",
            f"vpatient {self.vpatient_version}, seed {self.seed}, {self.n_samples} pool samples, best fixed order from up "
            f"to {self.n_train_patients} training patients per fold; {self.seconds:.0f} s on {self.machine} "
            f"({self.cpu_count} cores, {self.torch_threads} torch thread(s)).",
            "",
            "## Targets",
            "",
            targets_table(
                ((t.name, t.value, t.goal, t.passed) for t in self.targets), ("check", "value", "goal", "result"), "MISS"
            ),
            "",
            "## Areas under the loss-versus-cost curves (mean loss over the budget; lower is better)",
            "",
            "Paired differences are comparator minus EIG (positive: EIG better), mean over patients [95% bootstrap interval].",
            "",
        ]
        rows = []
        for r in self.scenarios:
            row = {"data": r.data, "scenario": r.scenario, "target": r.target, "patients": r.n_patients}
            row |= {p: r.areas[p] for p in POLICIES}
            row |= {f"vs {d.comparator}": f"{d.difference:+.4f} [{d.lower:+.4f}, {d.upper:+.4f}]" for d in r.differences}
            rows.append(row)
        out += [markdown_table(pd.DataFrame(rows), index=False, digits=4), ""]
        out += ["## Calibration of the gain (predicted EIG vs realised entropy drop, nats)", ""]
        rows = [
            {
                "data": r.data,
                "scenario": r.scenario,
                "target": r.target,
                "pairs": r.calibration.n_pairs,
                "mean predicted": r.calibration.mean_predicted,
                "mean realised": r.calibration.mean_realised,
                "realised / predicted": _interval(r.calibration.ratio, r.calibration.lower, r.calibration.upper),
            }
            for r in self.scenarios
        ]
        out += [markdown_table(pd.DataFrame(rows), index=False, digits=4), ""]
        if self.truth:
            out += ["## Against the truth (synthetic generator)", ""]
            rows = [
                {
                    "data": t.data,
                    "scenario": t.scenario,
                    "target": t.target,
                    "patients": t.n_patients,
                    "spearman (per patient, mean)": _interval(
                        t.spearman,
                        None if t.spearman is None or t.spearman_se is None else t.spearman - 1.96 * t.spearman_se,
                        None if t.spearman is None or t.spearman_se is None else t.spearman + 1.96 * t.spearman_se,
                    ),
                    "spearman (pooled pairs)": _fmt(t.pooled_spearman),
                    "true ESS": round(t.mean_true_ess),
                }
                for t in self.truth
            ]
            out += [markdown_table(pd.DataFrame(rows), index=False, digits=3), ""]
        if self.latency is not None:
            lat = self.latency
            out += [
                "## Latency of recommend()",
                "",
                f"{lat.data}, {lat.target}: median {lat.median_ms:.0f} ms (95th percentile {lat.p95_ms:.0f} ms) over "
                f"{lat.n_patients} patients, {lat.n_tests} tests, {lat.n_samples} samples; one forecast of the same patients "
                f"{lat.forecast_median_ms:.0f} ms, ratio {lat.ratio_to_forecast:.2f}; {lat.torch_threads} torch thread(s), "
                f"load average {', '.join(f'{x:.2f}' for x in lat.load_average)}.",
                "",
            ]
        out += ["## Details per scenario", ""]
        for r in self.scenarios:
            out += [
                f"### {r.data}, {r.scenario}: {r.target}",
                "",
                f"{r.n_patients} held-out patients ({r.n_candidates} looked at, {r.n_folds} folds), "
                f"{r.mean_available_tests:.2f} tests done at the visit on average, budget {r.budget:g}; "
                f"mean pool ESS {r.mean_pool_ess:.0f}. Loss: {r.loss}.",
                "",
                "Fixed orders per fold: " + "; ".join(" > ".join(o) for o in r.fixed_orders) + ".",
                "",
                "EIG first picks: " + ", ".join(f"{k} {v}" for k, v in sorted(r.eig_first_choice.items())) + ".",
                "",
            ]
            cal = pd.DataFrame([b.model_dump() for b in r.calibration.bins])
            if len(cal):
                out += ["Calibration by decile of predicted gain:", "", markdown_table(cal, index=False, digits=4), ""]
        if self.notes:
            out += ["## Notes and cuts", "", *[f"- {n}" for n in self.notes], ""]
        return "\n".join(out)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.3f}"


def _interval(x: float | None, lo: float | None, hi: float | None) -> str:
    return f"{_fmt(x)} [{_fmt(lo)}, {_fmt(hi)}]"


# --------------------------------------------------------------------------- targets of a dataset


def default_targets(config) -> list[str]:
    """Death (or the first event) within 3 years, and the first continuous variable (bilirubin where present) at 2 years.

    Horizons are converted into the config's time unit.
    """
    unit = config.time_unit
    events = list(config.event_kinds)
    continuous = [v.name for v in config.variables if v.kind.value == "continuous"]
    out = []
    if events:
        event = "death" if "death" in events else events[0]
        out.append(f"risk:{event}:{unit.from_years(3):g}")
    if continuous:
        variable = "bilirubin" if "bilirubin" in continuous else continuous[0]
        out.append(f"forecast:{variable}:{unit.from_years(2):g}")
    return out


# --------------------------------------------------------------------------- one fold


@dataclass
class _Tally:
    """Per-patient results of one (scenario, target), gathered over folds."""

    areas: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in POLICIES})
    curves: dict[str, list[np.ndarray]] = field(default_factory=lambda: {p: [] for p in POLICIES})
    fixed_orders: list[list[str]] = field(default_factory=list)
    first_choice: dict[str, int] = field(default_factory=dict)
    pairs: list[tuple[float, float, str]] = field(default_factory=list)
    ess: list[float] = field(default_factory=list)
    available: list[int] = field(default_factory=list)
    candidates: int = 0


def _fold_cases(model, records, scenario, target, gap, n_samples, seed, keys, limit=None):
    from vpatient.evaluate.test_selection import build_case

    cases = []
    looked = 0
    for j, record in enumerate(records):
        if limit is not None and len(cases) >= limit:
            break
        looked += 1
        case = build_case(model, record, scenario, target, gap, n_samples, derived_seed(seed, *keys, j))
        if case is not None:
            cases.append((record, case))
    return cases, looked


def _score_fold(model, fold, scenario, target, settings, costs, budget, grid, tally: _Tally) -> None:
    """Every policy's area and curve for the fold's held-out patients (module docstring), added to ``tally``."""
    import torch

    from vpatient.cost_curves import random_orders, step_curve
    from vpatient.evaluate.test_selection import (
        belief_of,
        best_fixed_order,
        cheapest_order,
        clairvoyant_order,
        eig_order,
        order_area,
        predicted_gains,
        static_record,
    )

    seed = settings.seed
    gap = model.config.time_unit.from_years(1)
    index = SCENARIOS.index(scenario)
    rng = np.random.default_rng(derived_seed(seed, fold.index, index, 7))
    train = [fold.train[j] for j in rng.permutation(len(fold.train))]
    train_cases, _ = _fold_cases(
        model, train, scenario, target, gap, settings.n_samples, seed, (fold.index, index, 1), settings.n_train_patients
    )
    tests = list(costs)
    fixed = best_fixed_order([c for _, c in train_cases], tests, costs, budget)
    tally.fixed_orders.append(fixed)
    held_out = fold.test
    if settings.max_patients_per_fold is not None:
        held_out = [held_out[j] for j in sorted(rng.permutation(len(held_out))[: settings.max_patients_per_fold])]
    cases, looked = _fold_cases(model, held_out, scenario, target, gap, settings.n_samples, seed, (fold.index, index, 2))
    tally.candidates += looked
    for j, (record, case) in enumerate(cases):
        key = (fold.index, index, j)
        static = belief_of(
            model, static_record(record), 0.0, target, case.truth, case.groups, settings.n_samples, derived_seed(seed, *key, 3)
        )
        orders = {
            "eig": eig_order(model, case.belief, case.available, costs, derived_seed(seed, *key, 4)),
            "static_eig": eig_order(model, static, case.available, costs, derived_seed(seed, *key, 4)),
            "fixed": [t for t in fixed if t in case.available],
            "cheapest": cheapest_order(case.available, costs),
        }
        orders["clairvoyant"] = clairvoyant_order(case, costs, budget)
        for name, order in orders.items():
            tally.areas[name].append(order_area(case, order, costs, budget))
            tally.curves[name].append(step_curve(case.loss_points(order, costs), grid))
        shuffled = random_orders(case.available, torch.Generator().manual_seed(derived_seed(seed, *key, 6)))
        tally.areas["random"].append(float(np.mean([order_area(case, o, costs, budget) for o in shuffled])))
        tally.curves["random"].append(np.mean([step_curve(case.loss_points(o, costs), grid) for o in shuffled], axis=0))
        first = orders["eig"][0]
        tally.first_choice[first] = tally.first_choice.get(first, 0) + 1
        weights = torch.softmax(case.belief.pool.log_w.double(), 0)
        tally.ess.append(float(1 / (weights**2).sum()))
        tally.available.append(len(case.available))
        prior = case.belief.entropy()
        predicted = predicted_gains(model, case.belief, case.groups, derived_seed(seed, *key, 5))
        for name in case.groups:
            tally.pairs.append((predicted[name], prior - case.belief.entropy([name]), f"{fold.index}:{case.subject_id}"))


def _calibration(pairs, seed: int) -> CalibrationSummary:
    from vpatient.evaluate.test_selection import bootstrap_ratio

    pred = np.array([p[0] for p in pairs], dtype=float)
    real = np.array([p[1] for p in pairs], dtype=float)
    bins = []
    if len(pred):
        edges = np.unique(np.quantile(pred, np.linspace(0, 1, 11)))
        which = np.clip(np.searchsorted(edges, pred, side="right") - 1, 0, max(len(edges) - 2, 0))
        for b in range(max(len(edges) - 1, 1)):
            m = which == b
            if m.any():
                se = float(real[m].std(ddof=1) / math.sqrt(m.sum())) if m.sum() > 1 else math.nan
                bins.append(
                    CalibrationBin(
                        lo=float(edges[b]),
                        hi=float(edges[min(b + 1, len(edges) - 1)]),
                        n=int(m.sum()),
                        mean_predicted=float(pred[m].mean()),
                        mean_realised=float(real[m].mean()),
                        lower=float(real[m].mean() - 1.96 * se) if math.isfinite(se) else None,
                        upper=float(real[m].mean() + 1.96 * se) if math.isfinite(se) else None,
                    )
                )
    ratio, lo, hi = bootstrap_ratio(real, pred, [p[2] for p in pairs], seed=seed)
    finite = [x if math.isfinite(x) else None for x in (ratio, lo, hi)]
    return CalibrationSummary(
        n_pairs=len(pred),
        mean_predicted=float(pred.mean()) if len(pred) else math.nan,
        mean_realised=float(real.mean()) if len(real) else math.nan,
        ratio=finite[0],
        lower=finite[1],
        upper=finite[2],
        bins=bins,
    )


def _summarise(data, scenario, target, n_folds, costs, budget, grid, tally: _Tally, seed: int) -> ScenarioResult:
    from vpatient.evaluate.test_selection import paired_difference

    n = len(tally.areas["eig"])
    differences = []
    for k, comparator in enumerate(COMPARATORS):
        d, lo, hi = paired_difference(tally.areas[comparator], tally.areas["eig"], seed=derived_seed(seed, 11, k))
        differences.append(PairedDifference(comparator=comparator, difference=d, lower=lo, upper=hi))
    loss = (
        "log-loss of the observed outcome (nats)"
        if target.kind == "risk"
        else "negative log predictive density of the observed value, on the model's standardised scale (nats)"
    )
    return ScenarioResult(
        data=data,
        scenario=scenario,
        target=str(target),
        loss=loss,
        n_folds=n_folds,
        n_patients=n,
        n_candidates=tally.candidates,
        tests=list(costs),
        costs=dict(costs),
        budget=budget,
        mean_available_tests=float(np.mean(tally.available)) if tally.available else 0.0,
        areas={p: float(np.mean(v)) if v else math.nan for p, v in tally.areas.items()},
        differences=differences,
        cost_grid=list(grid),
        curves={p: [float(x) for x in np.mean(v, axis=0)] if v else [] for p, v in tally.curves.items()},
        fixed_orders=tally.fixed_orders,
        eig_first_choice=tally.first_choice,
        mean_pool_ess=float(np.mean(tally.ess)) if tally.ess else math.nan,
        calibration=_calibration(tally.pairs, derived_seed(seed, 12)),
    )


# --------------------------------------------------------------------------- latency


def _latency(model, records, target_spec: str, n_patients: int, n_samples: int, seed: int, data: str) -> LatencySummary:
    import torch

    from vpatient.evaluate.test_selection import decision_point
    from vpatient.policy import recommend

    times, forecasts = [], []
    for j, record in enumerate(records):
        if len(times) >= n_patients:
            break
        point = decision_point(record, "follow_up", 0.0)
        if point is None:
            continue
        s, known = point
        if not times:  # warm-up
            recommend(model, known, target_spec, at=s, n_samples=n_samples, seed=seed)
            model.forecast(known, until=s, seed=seed)
        t0 = time.perf_counter()
        recommend(model, known, target_spec, at=s, n_samples=n_samples, seed=derived_seed(seed, 9, j))
        times.append(1000 * (time.perf_counter() - t0))
        t0 = time.perf_counter()
        model.forecast(known, until=s, seed=derived_seed(seed, 9, j))
        forecasts.append(1000 * (time.perf_counter() - t0))
    arr = np.asarray(times)
    return LatencySummary(
        data=data,
        target=target_spec,
        n_patients=len(arr),
        n_samples=n_samples,
        n_tests=len(model.config.tests),
        median_ms=float(np.median(arr)),
        p95_ms=float(np.quantile(arr, 0.95)),
        forecast_median_ms=float(np.median(forecasts)),
        ratio_to_forecast=float(np.median(arr) / np.median(forecasts)),
        torch_threads=torch.get_num_threads(),
        load_average=[float(x) for x in os.getloadavg()],
    )


# --------------------------------------------------------------------------- against the truth (synthetic)


def _true_eig(truth, known, s: float, target, tests, n_true: int, seed: int) -> tuple[dict[str, float], float]:
    """True EIG of each test about ``target`` under the generator, given what is ``known`` (module docstring)."""
    import torch

    from vpatient import transforms
    from vpatient.policy import eig_from_pool, systematic_resample
    from vpatient.quasirandom import sobol_normal

    config = truth.config
    sid = known.subject_id
    mean, cov = truth.prior(sid)
    generator = torch.Generator().manual_seed(seed)
    z0 = mean + sobol_normal(n_true, 2, generator, torch.float64).numpy() @ np.linalg.cholesky(cov).T
    visits = sorted({o.time for o in known.observations} | {i.time for i in known.imaging})
    states = truth.states_from(sid, z0, np.asarray([*visits, s, s + target.horizon], dtype=float))
    now = len(visits)
    log_w = -sum(states[:, now, truth.hazard_column(e)] for e in truth.events)  # event-free up to s
    for k, t in enumerate(visits):
        z = states[:, k, :2]
        for o in known.observations:
            if o.time != t or not truth.observes(o.variable):
                continue
            value = o.value
            if o.variable in truth.labs:  # on the modelling scale, as the generator draws them
                value = float(transforms.forward(o.value, config.variable(o.variable).transform))
            log_w = log_w + truth.log_likelihood(z, o.variable, value)
        for study in known.imaging:
            if study.time == t:
                log_w = log_w + truth.log_likelihood(z, "ct", np.asarray(study.embedding))
    if target.kind == "risk":
        column = truth.hazard_column(target.event)
        values = 1.0 - np.exp(-np.clip(states[:, -1, column] - states[:, -2, column], 0, None))
        kind, noise = "bernoulli", 0.0
    else:
        j = truth.labs.index(target.variable)
        values = truth.lab_means(states[:, -1, :2])[:, j : j + 1]
        kind, noise = "gaussian", truth.lab_sd[j] ** 2
    z_now = states[:, now, :2]
    lw = torch.as_tensor(log_w, dtype=torch.float64)
    w = torch.softmax(lw, 0)
    outer = systematic_resample(w.float(), generator).numpy()
    rng = np.random.default_rng(seed)
    out = {}
    draws = truth.draw_results(z_now[outer], [v for t in config.tests for v in t.variables], rng)  # shared by the tests
    for test in tests:
        spec = next(t for t in config.tests if t.name == test)
        factor = np.zeros((len(outer), n_true))
        for v in spec.variables:
            if v in draws:
                factor += truth.log_likelihood(z_now, v, draws[v])
        eig, _ = eig_from_pool(torch.as_tensor(values), lw, torch.as_tensor(factor), torch.as_tensor(outer), kind, noise)
        out[test] = eig
    return out, float(1 / (w**2).sum())


def _against_truth(cohort, fold_models_list, scenario, target, settings) -> TruthSummary:
    from scipy.stats import spearmanr

    from vpatient.evaluate.test_selection import decision_point
    from vpatient.policy import recommend

    truth = cohort.truth
    tests = [t.name for t in cohort.config.tests]
    gap = cohort.config.time_unit.from_years(1)
    rhos, model_eigs, true_eigs, errors, esses = [], [], [], [], []
    per_fold = math.ceil(settings.truth_patients / max(len(fold_models_list), 1))
    index = SCENARIOS.index(scenario)
    for fold, model in fold_models_list:
        taken = 0
        for j, record in enumerate(fold.test):
            if taken >= per_fold or len(model_eigs) >= settings.truth_patients:
                break
            point = decision_point(record, scenario, gap)
            if point is None or (target.kind == "risk" and any(e.time <= point[0] for e in record.events)):
                continue
            s, known = point
            rec = recommend(
                model, known, target, at=s, n_samples=settings.truth_model_samples, seed=derived_seed(settings.seed, 6, index, j)
            )
            est = {g.test: g.eig for g in rec.gains}
            errors.append([next(g.mc_error for g in rec.gains if g.test == t) for t in tests])
            true, ess = _true_eig(
                truth, known, s, target, tests, settings.truth_samples, derived_seed(settings.seed, 8, index, j)
            )
            a, b = [est[t] for t in tests], [true[t] for t in tests]
            rho = spearmanr(a, b).statistic if np.std(a) > 0 and np.std(b) > 0 else math.nan
            if math.isfinite(rho):
                rhos.append(float(rho))
            model_eigs.append(a)
            true_eigs.append(b)
            esses.append(ess)
            taken += 1
    me, te = np.asarray(model_eigs), np.asarray(true_eigs)
    pooled = spearmanr(me.ravel(), te.ravel()).statistic if me.size > 2 else math.nan
    return TruthSummary(
        data=cohort.name,
        scenario=scenario,
        target=str(target),
        n_patients=len(me),
        n_model_samples=settings.truth_model_samples,
        n_true_samples=settings.truth_samples,
        spearman=float(np.mean(rhos)) if rhos else None,
        spearman_se=float(np.std(rhos, ddof=1) / math.sqrt(len(rhos))) if len(rhos) > 1 else None,
        pooled_spearman=float(pooled) if math.isfinite(pooled) else None,
        per_test={
            t: {
                "model_eig": float(me[:, k].mean()),
                "model_mc_error": float(np.mean(errors, axis=0)[k]),
                "true_eig": float(te[:, k].mean()),
            }
            for k, t in enumerate(tests)
        }
        if len(me)
        else {},
        mean_true_ess=float(np.mean(esses)) if esses else math.nan,
    )


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class NextTestSelectionSettings:
    """What ``run_test_selection_benchmark`` runs: datasets, folds, sample sizes and the parts it times or checks."""

    seed: int = 0
    n_folds: int = 5
    datasets: Sequence[str] = ("pbc2", "synthetic")
    synthetic_n: int = 300
    synthetic_folds: int = 3
    #: dataset -> target specs; unset datasets take :func:`default_targets` of their config.
    targets: Mapping[str, Sequence[str]] | None = None
    scenarios: Sequence[str] = SCENARIOS
    n_samples: int = 256
    n_train_patients: int = 25
    max_patients_per_fold: int | None = None
    latency_patients: int = 30
    latency_samples: int = 256
    truth_patients: int = 20
    truth_samples: int = 4096
    truth_model_samples: int = 1024
    #: ensemble members of each fold's model (the default ``vpatient train`` makes)
    members: int = 5
    #: worker processes, each running whole datasets (one torch thread each); 1 runs them in turn
    jobs: int = 1
    #: None: each fold model trains with the default TrainSettings (and ``members``), cached as such.
    train_settings: TrainSettings | None = None
    cache_dir: str | Path | None = DEFAULT_CACHE
    progress: bool = True


def _cohort(name: str, settings: NextTestSelectionSettings, cohorts: dict | None):
    if cohorts and name in cohorts:
        return cohorts[name]
    if name == "synthetic":
        from vpatient.data.synthetic import synthetic_cohort

        return synthetic_cohort(settings.synthetic_n, settings.seed)
    from vpatient.datasets import load_dataset

    return load_dataset(name)


def _checks(scenarios: list[ScenarioResult], truth: list[TruthSummary], latency: LatencySummary | None) -> list[TargetCheck]:
    checks = []
    for r in scenarios:
        if r.scenario == "follow_up":
            continue
        for comparator in ("random", "fixed"):
            d = r.difference(comparator)
            checks.append(
                TargetCheck(
                    name=f"{r.data} {r.scenario} {r.target}: area of {comparator} minus EIG, 95% interval",
                    value=d.difference,
                    goal="lower bound > 0",
                    passed=bool(math.isfinite(d.lower) and d.lower > 0),
                )
            )
    for r in scenarios:
        if r.data == "synthetic":
            cal = r.calibration
            checks.append(
                TargetCheck(
                    name=f"{r.data} {r.scenario} {r.target}: realised / predicted information "
                    f"[{_fmt(cal.lower)}, {_fmt(cal.upper)}]",
                    value=cal.ratio,
                    goal="interval within 0.8-1.2",
                    passed=bool(cal.lower is not None and cal.upper is not None and cal.lower >= 0.8 and cal.upper <= 1.2),
                )
            )
    for t in truth:
        checks.append(
            TargetCheck(
                name=f"{t.data} {t.scenario} {t.target}: Spearman of model vs true EIG (per patient, mean)",
                value=t.spearman,
                goal=">= 0.9",
                passed=(t.spearman or 0) >= 0.9,
            )
        )
    if latency is not None:
        checks.append(
            TargetCheck(
                name=f"{latency.data}: recommend() median latency (ms)",
                value=latency.median_ms,
                goal="< 250",
                passed=latency.median_ms < 250,
            )
        )
    return checks


def _dataset_part(
    name: str, settings: NextTestSelectionSettings, cohort=None
) -> tuple[list[ScenarioResult], list[TruthSummary], LatencySummary | None]:
    """One dataset's scenario results, truth comparisons and (for real data) latency."""
    from dataclasses import replace

    import torch

    from vpatient.cost_curves import cost_grid
    from vpatient.evaluate.fold_models import TrainingRun, fold_model
    from vpatient.evaluate.protocol import forecast_folds
    from vpatient.policy import Target
    from vpatient.train import TrainSettings

    if settings.jobs > 1:  # one core per worker process
        torch.set_num_threads(1)
    started = time.perf_counter()
    cohort = cohort if cohort is not None else _cohort(name, settings, None)
    config = cohort.config
    specs = (settings.targets or {}).get(name) or default_targets(config)
    targets = [Target.parse(spec, config) for spec in specs]
    if len(config.tests) < 2:
        raise VPatientError(
            f"{name}: its config {config.name!r} declares {len(config.tests)} diagnostic test(s); ordering tests needs two or more"
        )
    costs = {t.name: t.cost for t in config.tests}
    budget = float(sum(costs.values()))
    grid = cost_grid(costs, budget)
    n_folds = settings.synthetic_folds if name == "synthetic" else settings.n_folds
    folds = forecast_folds(cohort, n_folds, settings.seed)
    train_settings = replace(settings.train_settings or TrainSettings(), members=settings.members)
    run = TrainingRun(settings.seed, settings.cache_dir, train_settings)
    models = []
    tallies = {(sc, str(t)): _Tally() for sc in settings.scenarios for t in targets}
    for fold in folds:
        t0 = time.perf_counter()
        model = fold_model(cohort, fold.index, n_folds, fold.train, run)
        models.append((fold, model))
        for scenario in settings.scenarios:
            for target in targets:
                _score_fold(model, fold, scenario, target, settings, costs, budget, grid, tallies[(scenario, str(target))])
        if settings.progress:
            tqdm.write(f"[test-selection] {name} fold {fold.index}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    results = [
        _summarise(name, sc, t, n_folds, costs, budget, grid, tallies[(sc, str(t))], settings.seed)
        for sc in settings.scenarios
        for t in targets
    ]
    latency = None
    if getattr(cohort, "truth", None) is None and settings.latency_patients > 0:
        fold, model = models[0]
        latency = _latency(model, fold.test, specs[0], settings.latency_patients, settings.latency_samples, settings.seed, name)
    truths = []
    if settings.truth_patients > 0 and getattr(cohort, "truth", None) is not None:
        truths = [_against_truth(cohort, models, sc, t, settings) for sc in settings.scenarios for t in targets]
        if settings.progress:
            tqdm.write(f"[test-selection] {name} truth done, {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return results, truths, latency


def run_test_selection_benchmark(
    settings: NextTestSelectionSettings | None = None, *, cohorts: dict | None = None
) -> TestSelectionBenchmarkResult:
    """Run the protocol of the module docstring under ``settings`` (default: the defaults of :class:`NextTestSelectionSettings`).

    ``cohorts`` (name -> Cohort) replaces loading (tests). With ``settings.jobs`` > 1 the
    datasets run in that many worker processes, one torch thread each.
    """
    import torch

    settings = settings or NextTestSelectionSettings()
    started = time.perf_counter()
    names = list(settings.datasets)
    given = [(cohorts or {}).get(name) for name in names]
    jobs = min(settings.jobs, len(names))
    if jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            parts = list(pool.map(_dataset_part, names, [settings] * len(names), given))
    else:
        parts = [_dataset_part(name, settings, cohort) for name, cohort in zip(names, given, strict=True)]
    results = [r for part in parts for r in part[0]]
    truths = [t for part in parts for t in part[1]]
    latency = next((part[2] for part in parts if part[2] is not None), None)
    notes: list[str] = []
    notes += [
        "Budget: the whole catalogue's cost; a patient's curve holds its last loss once the tests done at the visit are "
        "all bought. Tests not done at the visit are skipped by every policy (their results do not exist).",
        "The EIG and static-EIG policies draw hypothetical results of every variable of a test; the realised update uses "
        "the variables actually measured at the visit.",
        "The clairvoyant order sees the outcome: context only.",
        "after_gap: the visits within a year before the decision visit are dropped from the history.",
        "Latent-state targets have no observed outcome to score, so the curves use risk and forecast targets; "
        "recommend() and the dashboard rank tests for the latent state too.",
    ]
    if settings.max_patients_per_fold is not None:
        notes.append(f"At most {settings.max_patients_per_fold} held-out patients per fold were looked at (time budget).")
    return TestSelectionBenchmarkResult(
        seed=settings.seed,
        n_samples=settings.n_samples,
        n_train_patients=settings.n_train_patients,
        seconds=time.perf_counter() - started,
        cpu_count=os.cpu_count() or 0,
        torch_threads=1 if jobs > 1 else torch.get_num_threads(),
        machine=f"{platform.machine()} {platform.system()}",
        scenarios=results,
        latency=latency,
        truth=truths,
        targets=_checks(results, truths, latency),
        notes=notes,
    )


# --------------------------------------------------------------------------- the figure


def plot_test_selection(result: TestSelectionBenchmarkResult, path: str | Path) -> Path:
    """Mean loss against cumulative cost per policy: one panel per dataset, scenario and target."""
    # A bare Figure draws without pyplot, so no backend is selected behind the caller's back.
    from matplotlib.figure import Figure

    panels = result.scenarios
    cols = min(3, max(len(panels), 1))
    rows = math.ceil(max(len(panels), 1) / cols)
    fig = Figure(figsize=(4.6 * cols, 3.6 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    styles = {"eig": ("C0", "-"), "static_eig": ("C4", "-."), "fixed": ("C2", "--"), "cheapest": ("C5", ":")}
    styles |= {"random": ("C1", "-"), "clairvoyant": ("0.5", ":")}
    for ax, r in zip(axes, panels, strict=False):
        for policy in POLICIES:
            if r.curves.get(policy):
                color, line = styles[policy]
                label = f"{policy} ({r.areas[policy]:.3f})"
                ax.step(r.cost_grid, r.curves[policy], where="post", color=color, linestyle=line, label=label)
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlabel("cumulative cost (catalogue units)")
        ax.set_ylabel("mean loss")
        ax.set_title(f"{r.data} {r.scenario}: {r.target} (n={r.n_patients})", fontsize=9)
        ax.legend(fontsize=6, title="policy (area)", title_fontsize=6)
        ax.grid(alpha=0.3)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path
