"""``vpatient benchmark test-selection``: does the EIG policy of :mod:`vpatient.policy` pick useful tests?

Protocol (one held-out patient at a time, fold models of the forecasting protocol's split):

- The landmark s is the ceil(n/2)-th visit (:func:`vpatient.evaluate.protocol.landmark_split`).
  Every test of that visit is hidden: the history is the record truncated at s with the
  measurements at s removed. The tests with at least one variable measured at s are the
  *available* tests (their true results exist); a patient needs >= 2 of them, an outcome for
  the target (the event by s + horizon observed, or follow-up past s + horizon without it;
  patients censored before the horizon are left out) and no target event before s.
- The model's belief about the target is the shared pool of :mod:`vpatient.policy`: S
  posterior draws of z0 given the hidden history, weighted by being event-free up to s.
  Revealing a test reweights the pool by the decoder likelihood of the test's TRUE values
  (the variables actually measured), the same update rule the EIG estimator uses for
  hypothetical results. The error after a set of revealed tests is the log-loss of the
  observed outcome under the pool's risk. All 2^K subsets of the K available tests are
  scored once, so every policy below is a walk through the same table.
- Policies reveal the available tests one at a time (x axis = step, not cost; every
  policy picks by gain per step, not per cost):
  (a) ``eig``: adaptive greedy, at each step the test of largest EIG about the target given
  the tests revealed so far (pool reweighted by their true values; the :mod:`vpatient.policy`
  estimator with fresh outer draws); (b) ``random``: mean over random orders; (c) ``fixed``:
  one global order, greedy on mean log-loss over a sample of the fold's *training*
  patients; (d) ``oracle``: greedy on the realised log-loss of this patient.
  Curves are padded with their final value (all available tests revealed) to the longest
  patient; the area is the mean of the mean curve over steps 0..K_max (trapezoid / K_max).
  Target: the EIG policy closes >= 50% of the area gap between random and oracle, and beats
  the fixed order.
- Calibration: at step 0, for every available test, the predicted EIG (of the variables
  actually measured) against the realised information, the drop in the target's entropy
  once its true values reweight the pool; binned by predicted EIG. Target: mean realised
  within 20% of mean predicted.
- Latency: :func:`vpatient.policy.recommend` (every test ranked, plus its greedy sequence)
  for PBC patients at their hidden landmark, 256 samples, one torch thread; target median
  < 250 ms (machine load reported).
- Against the truth (synthetic): the true EIG of each test about the same target under the
  generator (z0 from its prior, importance-weighted by the likelihood of the patient's
  hidden history and of being event-free up to s under the true dynamics, observation
  model and noise; nested Monte Carlo with the outer results drawn from the generator),
  against the model's EIG from ``recommend``; Spearman over the tests, averaged over
  patients. Target >= 0.9. (Visit scheduling, which depends on the state, is ignored by
  both the truth's and the model's likelihood.)
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import os
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import Field
from tqdm.auto import tqdm

from vpatient.benchmarks.base import StrictModel, VersionedBenchmarkResult, targets_table
from vpatient.evaluate.fold_models import DEFAULT_CACHE
from vpatient.tables import markdown_table

if TYPE_CHECKING:  # torch-backed: imported when the benchmark runs, not when the CLI starts
    from vpatient.train import TrainSettings

__all__ = [
    "NextTestSelectionSettings",
    "RevealCase",
    "TestSelectionBenchmarkResult",
    "curve_area",
    "eig_order",
    "loss_curve",
    "oracle_order",
    "pad_curve",
    "reveal_case",
    "run_test_selection_benchmark",
]

log = logging.getLogger(__name__)


METHODS = ("eig", "random", "fixed", "oracle")
DEFAULT_TARGETS = {"pbc2": "risk:death:3", "synthetic": "risk:progression:2"}


# --------------------------------------------------------------------------- result model


class CurveSummary(StrictModel):
    """Information curves of one dataset: mean target error after each reveal, per policy."""

    data: str
    target: str
    error: str = "log-loss of the observed outcome (nats)"
    n_folds: int
    n_patients: int
    n_candidates: int = Field(description="Held-out patients looked at before the eligibility rules.")
    tests: list[str]
    mean_available_tests: float
    steps: list[int]
    curves: dict[str, list[float]] = Field(description="method -> mean error at step 0..K_max (x = step).")
    areas: dict[str, float] = Field(description="method -> mean of the mean curve over steps (trapezoid / K_max).")
    gap_closed: float | None = Field(description="(area random - area eig) / (area random - area oracle).")
    fixed_orders: list[list[str]] = Field(description="The global order of each fold (from training patients).")
    eig_first_choice: dict[str, int] = Field(description="How often each test was the EIG policy's first pick.")
    mean_pool_ess: float


class CalibrationBin(StrictModel):
    lo: float
    hi: float
    n: int
    mean_predicted: float
    mean_realised: float


class CalibrationSummary(StrictModel):
    data: str
    target: str
    n_pairs: int
    mean_predicted: float
    mean_realised: float
    se_realised: float = Field(description="Standard error of the mean realised information over pairs.")
    ratio: float | None
    bins: list[CalibrationBin]


class LatencySummary(StrictModel):
    data: str
    target: str
    n_patients: int
    n_samples: int
    n_tests: int
    median_ms: float
    p95_ms: float
    torch_threads: int
    load_average: list[float]


class TruthSummary(StrictModel):
    data: str
    target: str
    n_patients: int
    n_model_samples: int
    n_true_samples: int
    mean_spearman: float | None
    se_spearman: float | None = Field(description="Standard error of the mean Spearman over patients.")
    per_test: dict[str, dict[str, float]] = Field(description="test -> mean model EIG, mean true EIG (nats).")
    mean_true_ess: float
    method: str


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
    n_random_orders: int
    n_train_patients: int
    seconds: float
    cpu_count: int
    torch_threads: int
    machine: str
    curves: list[CurveSummary]
    calibration: list[CalibrationSummary]
    latency: LatencySummary | None
    truth: TruthSummary | None
    targets: list[TargetCheck]
    notes: list[str] = Field(default_factory=list)

    def plot(self, path: Path) -> Path:
        """The result's figure, drawn by :func:`plot_test_selection`."""
        return plot_test_selection(self, path)

    def to_markdown(self) -> str:
        out = [
            "# Test-selection benchmark",
            "",
            f"vpatient {self.vpatient_version}, seed {self.seed}, {self.n_samples} pool samples, "
            f"{self.n_random_orders} random orders, fixed order from {self.n_train_patients} training patients per fold; "
            f"{self.seconds:.0f} s on {self.machine} ({self.cpu_count} cores, {self.torch_threads} torch thread(s)).",
            "",
            "## Targets",
            "",
            targets_table(
                ((t.name, t.value, t.goal, t.passed) for t in self.targets), ("check", "value", "goal", "result"), "MISS"
            ),
            "",
            "## Information curves (x = step; mean log-loss of the target after each reveal)",
            "",
        ]
        for c in self.curves:
            out += [
                f"### {c.data}: {c.target}",
                "",
                f"{c.n_patients} held-out patients ({c.n_candidates} looked at, {c.n_folds} folds), "
                f"{c.mean_available_tests:.2f} available tests on average; mean pool ESS {c.mean_pool_ess:.0f}. "
                f"Gap closed by EIG: {_fmt(c.gap_closed)}.",
                "",
            ]
            frame = pd.DataFrame({m: c.curves[m] for m in METHODS}, index=pd.Index(c.steps, name="step"))
            frame.loc["area"] = [c.areas[m] for m in METHODS]
            out += [markdown_table(frame, digits=4), ""]
            out += [
                "Fixed orders per fold: " + "; ".join(" > ".join(o) for o in c.fixed_orders) + ".",
                "",
                "EIG first picks: " + ", ".join(f"{k} {v}" for k, v in sorted(c.eig_first_choice.items())) + ".",
                "",
            ]
        out += ["## Calibration of the gain (step 0, predicted EIG vs realised entropy drop, nats)", ""]
        for cal in self.calibration:
            out += [
                f"### {cal.data}: {cal.target}",
                "",
                f"{cal.n_pairs} (patient, test) pairs; mean predicted {cal.mean_predicted:.4f}, "
                f"mean realised {cal.mean_realised:.4f} (standard error {cal.se_realised:.4f}), ratio {_fmt(cal.ratio)}.",
                "",
                markdown_table(pd.DataFrame([b.model_dump() for b in cal.bins]), index=False, digits=4),
                "",
            ]
        if self.latency is not None:
            lat = self.latency
            out += [
                "## Latency of recommend()",
                "",
                markdown_table(
                    pd.DataFrame(
                        {
                            "value": {
                                "patients": lat.n_patients,
                                "samples": lat.n_samples,
                                "tests ranked": lat.n_tests,
                                "median ms": round(lat.median_ms, 1),
                                "p95 ms": round(lat.p95_ms, 1),
                                "torch threads": lat.torch_threads,
                                "load average (1, 5, 15 min)": ", ".join(f"{x:.2f}" for x in lat.load_average),
                            }
                        }
                    ).rename_axis("quantity")
                ),
                "",
            ]
        if self.truth is not None:
            tr = self.truth
            out += [
                f"## Against the truth ({tr.data}: {tr.target})",
                "",
                f"{tr.n_patients} patients; model {tr.n_model_samples} samples, truth {tr.n_true_samples} samples "
                f"(mean importance ESS {tr.mean_true_ess:.0f}); mean Spearman {_fmt(tr.mean_spearman)} "
                f"(standard error {_fmt(tr.se_spearman)}). {tr.method}",
                "",
                markdown_table(pd.DataFrame(tr.per_test).T.rename_axis("test"), digits=4),
                "",
            ]
        if self.notes:
            out += ["## Notes and cuts", "", *[f"- {n}" for n in self.notes], ""]
        return "\n".join(out)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.3f}"


# --------------------------------------------------------------------------- one patient


def _derived(seed: int, *keys: int) -> int:
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0] % (2**31 - 1))


def _outcome(record, s: float, target) -> int | None:
    """1/0 for the target event in (s, s + horizon]; None when censored before the horizon or the event came first."""
    hits = sorted(e.time for e in record.events if e.kind == target.event)
    if any(t <= s for t in hits):
        return None
    if hits and hits[0] <= s + target.horizon:
        return 1
    return 0 if record.end_of_followup >= s + target.horizon else None


def _hidden(record, s: float):
    from vpatient.data.timeline import truncate_record

    cut = truncate_record(record, s)
    hidden = cut.model_copy(
        update={
            "observations": [o for o in cut.observations if o.time < s],
            "imaging": [i for i in cut.imaging if i.time < s],
        }
    )
    return cut, hidden


def _no_grad(fn):
    """Run ``fn`` under torch.no_grad (imported lazily): the decoder's noise scales are parameters."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)

    return wrapper


@dataclass
class RevealCase:
    """One patient at its hidden landmark: the pool, the realised factors, and the error of every subset."""

    subject_id: str
    at: float
    history: object  # hidden PatientRecord
    available: list[str]
    outcome: int
    pool: object
    predictive: object
    realised: dict  # test -> (S,) log factor of its true values
    groups: dict  # test -> ExpertGroup of the variables measured at the landmark
    errors: dict  # frozenset -> log-loss
    ess: float


def _landmark(record):
    from vpatient.evaluate.protocol import n_observed_visits

    visits = record.visit_times()
    if len(visits) < 2:
        return None
    return visits[n_observed_visits(len(visits)) - 1]


@_no_grad
def reveal_case(model, record, target, n_samples: int, seed: int) -> RevealCase | None:
    """The patient's case, or None when not eligible (module docstring)."""
    import torch

    from vpatient.data.batching import make_batch
    from vpatient.model.batch import ExpertGroup
    from vpatient.policy import HypotheticalResults, likelihood_log_factor, posterior_pool, predictive_at

    s = _landmark(record)
    if s is None:
        return None
    y = _outcome(record, s, target)
    if y is None:
        return None
    cut, hidden = _hidden(record, s)
    layout = model.layout
    full = make_batch([cut], model.config, model.scalers)
    i = int(torch.nonzero(torch.isclose(full.times[0], torch.tensor(float(s)))).max())
    groups = {}
    for test in model.config.tests:
        g = layout.group(test.name)
        measured = ExpertGroup(
            g.name,
            tuple(j for j in g.continuous if full.continuous_mask[0, i, j] > 0),
            tuple(j for j in g.binary if full.binary_mask[0, i, j] > 0),
            tuple(j for j in g.ordinal if full.ordinal_mask[0, i, j] > 0),
            tuple(j for j in g.imaging if full.imaging_mask[0, i, j] > 0),
        )
        if measured.continuous or measured.binary or measured.ordinal or measured.imaging:
            groups[test.name] = measured
    if len(groups) < 2:
        return None
    generator = torch.Generator().manual_seed(seed)
    pool = posterior_pool(model, hidden, s, target, n_samples, generator)
    predictive = predictive_at(model, pool, s)
    truth = HypotheticalResults(
        continuous=full.continuous[:, i : i + 1],
        binary=full.binary[:, i : i + 1],
        ordinal=[full.ordinal[:, i, j : j + 1] for j in range(full.ordinal.shape[-1])],
        imaging=full.imaging[:, i : i + 1],
    )
    realised = {name: likelihood_log_factor(model, g, truth, predictive)[0].double() for name, g in groups.items()}
    base = pool.log_w.double()
    values = pool.target.double()
    names = list(groups)
    errors = {}
    for k in range(len(names) + 1):
        for subset in itertools.combinations(names, k):
            log_w = base + sum((realised[n] for n in subset), torch.zeros_like(base))
            p = float((torch.softmax(log_w, 0) * values).sum().clamp(1e-6, 1 - 1e-6))
            errors[frozenset(subset)] = -(y * math.log(p) + (1 - y) * math.log1p(-p))
    w = torch.softmax(base, 0)
    return RevealCase(record.subject_id, s, hidden, names, y, pool, predictive, realised, groups, errors, float(1 / (w**2).sum()))


def loss_curve(case: RevealCase, order: Sequence[str]) -> list[float]:
    """Log-loss of the target after revealing the tests in ``order``, one at a time (first entry: none revealed)."""
    revealed: set[str] = set()
    out = [case.errors[frozenset()]]
    for name in order:
        revealed.add(name)
        out.append(case.errors[frozenset(revealed)])
    return out


def oracle_order(case: RevealCase) -> list[str]:
    """The greedy order that knows the results: each step reveals the test that lowers the realised loss most."""
    order: list[str] = []
    remaining = list(case.available)
    while remaining:
        best = min(remaining, key=lambda n: (case.errors[frozenset([*order, n])], n))
        order.append(best)
        remaining.remove(best)
    return order


@_no_grad
def eig_order(model, case: RevealCase, seed: int) -> list[str]:
    """Adaptive greedy on EIG: the pool reweighted by the tests revealed so far, fresh outer draws each step."""
    import torch

    from vpatient.policy import draw_results, eig_from_pool, likelihood_log_factor, systematic_resample

    generator = torch.Generator().manual_seed(seed)
    order: list[str] = []
    remaining = list(case.available)
    base = case.pool.log_w.double()
    while len(remaining) > 1:
        log_w = base + sum((case.realised[n] for n in order), torch.zeros_like(base))
        outer = systematic_resample(torch.softmax(log_w, 0).float(), generator)
        results = draw_results(model, case.predictive, outer, generator)
        gains = {}
        for name in remaining:
            factor = likelihood_log_factor(model, model.layout.group(name), results, case.predictive)
            gains[name], _ = eig_from_pool(case.pool.target, log_w, factor, outer, case.pool.target_kind, case.pool.noise_var)
        best = max(remaining, key=lambda n: (gains[n], n))
        order.append(best)
        remaining.remove(best)
    return order + remaining


@_no_grad
def _calibration_pairs(model, case: RevealCase, seed: int) -> list[tuple[float, float]]:
    """(predicted EIG, realised entropy drop) at step 0 for every available test (its measured variables)."""
    import torch

    from vpatient.policy import draw_results, eig_from_pool, likelihood_log_factor, systematic_resample

    generator = torch.Generator().manual_seed(seed)
    base = case.pool.log_w.double()
    values = case.pool.target.double()
    outer = systematic_resample(torch.softmax(base, 0).float(), generator)
    results = draw_results(model, case.predictive, outer, generator)

    def entropy(log_w: torch.Tensor) -> float:
        p = float((torch.softmax(log_w, 0) * values).sum().clamp(1e-9, 1 - 1e-9))
        return -(p * math.log(p) + (1 - p) * math.log1p(-p))

    prior = entropy(base)
    out = []
    for name in case.available:
        group = case.groups[name]
        factor = likelihood_log_factor(model, group, results, case.predictive)
        predicted, _ = eig_from_pool(values, base, factor, outer, "bernoulli")
        out.append((predicted, prior - entropy(base + case.realised[name])))
    return out


# --------------------------------------------------------------------------- one dataset


def _fixed_order(cases: Sequence[RevealCase], tests: Sequence[str]) -> list[str]:
    order: list[str] = []
    remaining = list(tests)
    while remaining:

        def score(name: str) -> float:
            vals = [c.errors[frozenset(t for t in (*order, name) if t in c.available)] for c in cases]
            return float(np.mean(vals)) if vals else 0.0

        best = min(remaining, key=lambda n: (score(n), n))
        order.append(best)
        remaining.remove(best)
    return order


def pad_curve(curve: list[float], length: int) -> list[float]:
    """``curve`` extended to ``length`` with its last value (a patient with fewer tests stays where it ended)."""
    return curve + [curve[-1]] * (length - len(curve))


def curve_area(curve: Sequence[float]) -> float:
    """Mean of a curve by the trapezoid rule over its steps (lower is better for a loss curve)."""
    y = np.asarray(curve, dtype=float)
    if len(y) < 2:
        return float(y[0]) if len(y) else math.nan
    return float(((y[:-1] + y[1:]) / 2).sum() / (len(y) - 1))


def _run_dataset(
    cohort,
    target_spec: str,
    n_folds: int,
    seed: int,
    n_samples: int,
    n_random: int,
    n_train_patients: int,
    max_patients_per_fold: int | None,
    train_settings,
    cache_dir,
    progress: bool,
    fold_limit: int | None = None,
):
    """Curves and calibration pairs of one dataset; also returns (fold model, cases) for later parts."""
    from vpatient.evaluate.fold_models import TrainingRun, fold_model
    from vpatient.evaluate.protocol import forecast_folds
    from vpatient.policy import Target

    config = cohort.config
    target = Target.parse(target_spec, config)
    tests = [t.name for t in config.tests]
    folds = forecast_folds(cohort, n_folds, seed)[: fold_limit or n_folds]
    run = TrainingRun(seed, cache_dir, train_settings)
    curves: dict[str, list[list[float]]] = {m: [] for m in METHODS}
    fixed_orders, first_choice, pairs, esses = [], {}, [], []
    n_candidates = 0
    n_avail = []
    models = []
    for fold in folds:
        t0 = time.perf_counter()
        model = fold_model(cohort, fold.index, n_folds, fold.train, run)
        models.append((fold, model))
        rng = np.random.default_rng(_derived(seed, fold.index, 7))
        train_pick = rng.permutation(len(fold.train))
        train_cases = []
        for j in train_pick:
            if len(train_cases) >= n_train_patients:
                break
            c = reveal_case(model, fold.train[j], target, n_samples, _derived(seed, fold.index, 1, int(j)))
            if c is not None:
                train_cases.append(c)
        order = _fixed_order(train_cases, tests)
        fixed_orders.append(order)
        test_records = fold.test
        if max_patients_per_fold is not None:
            test_records = [test_records[j] for j in sorted(rng.permutation(len(test_records))[:max_patients_per_fold])]
        for j, record in enumerate(test_records):
            n_candidates += 1
            case = reveal_case(model, record, target, n_samples, _derived(seed, fold.index, 2, j))
            if case is None:
                continue
            esses.append(case.ess)
            n_avail.append(len(case.available))
            eig = eig_order(model, case, _derived(seed, fold.index, 3, j))
            first_choice[eig[0]] = first_choice.get(eig[0], 0) + 1
            curves["eig"].append(loss_curve(case, eig))
            curves["oracle"].append(loss_curve(case, oracle_order(case)))
            curves["fixed"].append(loss_curve(case, [t for t in order if t in case.available]))
            prng = np.random.default_rng(_derived(seed, fold.index, 4, j))
            randoms = [loss_curve(case, list(prng.permutation(case.available))) for _ in range(n_random)]
            curves["random"].append(list(np.mean(randoms, axis=0)))
            pairs += [(*p, record.subject_id) for p in _calibration_pairs(model, case, _derived(seed, fold.index, 5, j))]
        if progress:
            tqdm.write(
                f"[test-selection] {cohort.name} fold {fold.index}: {len(curves['eig'])} patients so far, "
                f"{time.perf_counter() - t0:.0f} s",
                file=sys.stderr,
            )
    k_max = max((len(c) for c in curves["eig"]), default=1)
    mean_curves = {
        m: [float(x) for x in np.mean([pad_curve(c, k_max) for c in cs], axis=0)] if cs else [] for m, cs in curves.items()
    }
    areas = {m: curve_area(c) if c else math.nan for m, c in mean_curves.items()}
    denom = areas["random"] - areas["oracle"]
    gap = (areas["random"] - areas["eig"]) / denom if curves["eig"] and denom > 1e-12 else None
    summary = CurveSummary(
        data=cohort.name,
        target=str(target),
        n_folds=n_folds,
        n_patients=len(curves["eig"]),
        n_candidates=n_candidates,
        tests=tests,
        mean_available_tests=float(np.mean(n_avail)) if n_avail else 0.0,
        steps=list(range(k_max)),
        curves=mean_curves,
        areas=areas,
        gap_closed=gap,
        fixed_orders=fixed_orders,
        eig_first_choice=first_choice,
        mean_pool_ess=float(np.mean(esses)) if esses else math.nan,
    )
    calibration = _calibration_summary(cohort.name, str(target), pairs)
    return summary, calibration, models


def _calibration_summary(data: str, target: str, pairs, n_bins: int = 5) -> CalibrationSummary:
    pred = np.array([p[0] for p in pairs], dtype=float)
    real = np.array([p[1] for p in pairs], dtype=float)
    bins = []
    if len(pred):
        edges = np.unique(np.quantile(pred, np.linspace(0, 1, n_bins + 1)))
        which = np.clip(np.searchsorted(edges, pred, side="right") - 1, 0, max(len(edges) - 2, 0))
        for b in range(max(len(edges) - 1, 1)):
            m = which == b
            if m.any():
                bins.append(
                    CalibrationBin(
                        lo=float(edges[b]),
                        hi=float(edges[min(b + 1, len(edges) - 1)]),
                        n=int(m.sum()),
                        mean_predicted=float(pred[m].mean()),
                        mean_realised=float(real[m].mean()),
                    )
                )
    mp = float(pred.mean()) if len(pred) else math.nan
    mr = float(real.mean()) if len(real) else math.nan
    return CalibrationSummary(
        data=data,
        target=target,
        n_pairs=len(pred),
        mean_predicted=mp,
        mean_realised=mr,
        se_realised=float(real.std(ddof=1) / math.sqrt(len(real))) if len(real) > 1 else math.nan,
        ratio=mr / mp if len(pred) and mp > 1e-12 else None,
        bins=bins,
    )


# --------------------------------------------------------------------------- latency


def _latency(model, records, target_spec: str, n_patients: int, n_samples: int, seed: int, data: str) -> LatencySummary:
    import torch

    from vpatient.policy import recommend

    times = []
    for j, record in enumerate(records):
        if len(times) >= n_patients:
            break
        s = _landmark(record)
        if s is None:
            continue
        _, hidden = _hidden(record, s)
        if j == 0:  # warm-up
            recommend(model, hidden, target_spec, at=s, n_samples=n_samples, seed=seed)
        t0 = time.perf_counter()
        recommend(model, hidden, target_spec, at=s, n_samples=n_samples, seed=_derived(seed, 9, j))
        times.append(1000 * (time.perf_counter() - t0))
    arr = np.asarray(times)
    return LatencySummary(
        data=data,
        target=target_spec,
        n_patients=len(arr),
        n_samples=n_samples,
        n_tests=len(model.config.tests),
        median_ms=float(np.median(arr)),
        p95_ms=float(np.quantile(arr, 0.95)),
        torch_threads=torch.get_num_threads(),
        load_average=[float(x) for x in os.getloadavg()],
    )


# --------------------------------------------------------------------------- against the truth (synthetic)


def _true_eig(truth, record, s: float, target, tests, n_true: int, seed: int) -> tuple[dict[str, float], float]:
    """True EIG of each test about ``target`` under the generator, given the hidden history (module docstring)."""
    import torch

    from vpatient import transforms
    from vpatient.data.synthetic import CONTINUOUS_LABS
    from vpatient.policy import eig_from_pool, systematic_resample

    config = truth.config
    rng = np.random.default_rng(seed)
    sid = record.subject_id
    mean, cov = truth.prior(sid)
    z0 = rng.multivariate_normal(mean, cov, size=n_true)
    _, hidden = _hidden(record, s)
    visits = sorted({o.time for o in hidden.observations} | {i.time for i in hidden.imaging})
    states = truth.states_from(sid, z0, np.asarray([*visits, s, s + target.horizon], dtype=float))

    # the hidden history's likelihood
    log_w = -(states[:, len(visits), 2] + states[:, len(visits), 3])  # event-free (death and progression) up to s
    for k, t in enumerate(visits):
        z = states[:, k, :2]
        for o in hidden.observations:
            if o.time != t or not truth.observes(o.variable):
                continue
            value = o.value
            if o.variable in CONTINUOUS_LABS:  # on the modelling scale, as the generator draws them
                value = float(transforms.forward(o.value, config.variable(o.variable).transform))
            log_w += truth.log_likelihood(z, o.variable, value)
        for study in hidden.imaging:
            if study.time == t:
                log_w += truth.log_likelihood(z, "ct", np.asarray(study.embedding))
    H = states[:, :, 3] if target.event == "progression" else states[:, :, 2]
    values = 1.0 - np.exp(-np.clip(H[:, -1] - H[:, -2], 0, None))
    z_now = states[:, len(visits), :2]
    lw = torch.as_tensor(log_w, dtype=torch.float64)
    w = torch.softmax(lw, 0)
    ess = float(1 / (w**2).sum())
    generator = torch.Generator().manual_seed(seed)
    outer = systematic_resample(w.float(), generator).numpy()
    out = {}
    for test in tests:
        spec = config.tests[[t.name for t in config.tests].index(test)]
        factor = np.zeros((len(outer), n_true))
        for v, y in truth.draw_results(z_now[outer], spec.variables, rng).items():
            factor += truth.log_likelihood(z_now, v, y)
        eig, _ = eig_from_pool(torch.as_tensor(values), lw, torch.as_tensor(factor), torch.as_tensor(outer), "bernoulli")
        out[test] = eig
    return out, ess


def _against_truth(cohort, fold_models_list, target_spec, n_patients, n_samples, n_true, seed) -> TruthSummary:
    from scipy.stats import spearmanr

    from vpatient.policy import Target, recommend

    truth = cohort.truth
    target = Target.parse(target_spec, cohort.config)
    tests = [t.name for t in cohort.config.tests]
    rhos, model_eigs, true_eigs, esses, errs = [], [], [], [], []
    per_fold = math.ceil(n_patients / max(len(fold_models_list), 1))
    for fold, model in fold_models_list:
        taken = 0
        for j, record in enumerate(fold.test):
            if taken >= per_fold or len(model_eigs) >= n_patients:
                break
            s = _landmark(record)
            if s is None or any(e.kind == target.event and e.time <= s for e in record.events):
                continue
            _, hidden = _hidden(record, s)
            rec = recommend(model, hidden, target, at=s, n_samples=n_samples, seed=_derived(seed, fold.index, 6, j))
            est = {g.test: g.eig for g in rec.gains}
            errs.append([{g.test: g.mc_error for g in rec.gains}[t] for t in tests])
            true, ess = _true_eig(truth, record, s, target, tests, n_true, _derived(seed, fold.index, 8, j))
            a, b = [est[t] for t in tests], [true[t] for t in tests]
            rho = spearmanr(a, b).statistic if np.std(a) > 0 and np.std(b) > 0 else math.nan
            if math.isfinite(rho):
                rhos.append(float(rho))
            model_eigs.append(a)
            true_eigs.append(b)
            esses.append(ess)
            taken += 1
    me, te = np.asarray(model_eigs), np.asarray(true_eigs)
    per_test = (
        {
            t: {
                "model_eig": float(me[:, k].mean()),
                "model_mc_error": float(np.mean(errs, axis=0)[k]),
                "true_eig": float(te[:, k].mean()),
            }
            for k, t in enumerate(tests)
        }
        if len(me)
        else {}
    )
    return TruthSummary(
        data=cohort.name,
        target=str(target),
        n_patients=len(me),
        n_model_samples=n_samples,
        n_true_samples=n_true,
        mean_spearman=float(np.mean(rhos)) if rhos else None,
        se_spearman=float(np.std(rhos, ddof=1) / math.sqrt(len(rhos))) if len(rhos) > 1 else None,
        per_test=per_test,
        mean_true_ess=float(np.mean(esses)) if esses else math.nan,
        method=(
            "True EIG: z0 from the generator's prior, self-normalised importance weights from the likelihood of the hidden "
            "history (labs, ascites, stage, CT under the true observation model and noise) and of being event-free up to s "
            "under the true dynamics; outer results drawn from the generator at s, inner leave-one-out reweighting "
            "(the same nested estimator as the model's, with the true model in place of the learned one). "
            "Spearman over the 4 tests per patient (patients with tied EIGs skipped), averaged."
        ),
    )


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class NextTestSelectionSettings:
    """What ``run_test_selection_benchmark`` runs: datasets, folds, sample sizes and the parts it times or checks."""

    seed: int = 0
    n_folds: int = 5
    datasets: Sequence[str] = ("pbc2", "synthetic")
    synthetic_n: int = 200
    synthetic_folds: int = 2
    #: dataset -> target spec; unset datasets take :data:`DEFAULT_TARGETS`.
    targets: Mapping[str, str] | None = None
    n_samples: int = 128
    n_random: int = 20
    n_train_patients: int = 30
    max_patients_per_fold: int | None = None
    latency_patients: int = 30
    latency_samples: int = 256
    truth_patients: int = 20
    truth_samples: int = 2000
    truth_model_samples: int = 1024
    #: None: each fold model trains with the default TrainSettings (and is cached as such).
    train_settings: TrainSettings | None = None
    cache_dir: str | Path | None = DEFAULT_CACHE
    progress: bool = True


def _check(name: str, value: float | None, goal: str, passed: bool) -> TargetCheck:
    return TargetCheck(name=name, value=value, goal=goal, passed=passed)


def run_test_selection_benchmark(
    settings: NextTestSelectionSettings | None = None, *, cohorts: dict | None = None
) -> TestSelectionBenchmarkResult:
    """Run the protocol of the module docstring under ``settings`` (default: the defaults of :class:`NextTestSelectionSettings`).

    ``cohorts`` (name -> Cohort) replaces loading (tests).
    """
    import torch

    settings = settings or NextTestSelectionSettings()
    started = time.perf_counter()
    targets = {**DEFAULT_TARGETS, **(settings.targets or {})}
    notes: list[str] = []
    curves, calibrations = [], []
    latency = truth = None
    for name in settings.datasets:
        if cohorts and name in cohorts:
            cohort = cohorts[name]
        elif name == "synthetic":
            from vpatient.data.synthetic import synthetic_cohort

            cohort = synthetic_cohort(settings.synthetic_n, settings.seed)
        else:
            from vpatient.datasets import load_dataset

            cohort = load_dataset(name)
        folds = settings.synthetic_folds if name == "synthetic" else settings.n_folds
        summary, cal, models = _run_dataset(
            cohort,
            targets[name],
            folds,
            settings.seed,
            settings.n_samples,
            settings.n_random,
            settings.n_train_patients,
            settings.max_patients_per_fold,
            settings.train_settings,  # the fold models' TrainingRun sets the seed
            settings.cache_dir,
            settings.progress,
        )
        curves.append(summary)
        calibrations.append(cal)
        if name != "synthetic" and latency is None and settings.latency_patients > 0:
            fold, model = models[0]
            latency = _latency(
                model, fold.test, targets[name], settings.latency_patients, settings.latency_samples, settings.seed, name
            )
        if name == "synthetic" and settings.truth_patients > 0 and getattr(cohort, "truth", None) is not None:
            truth = _against_truth(
                cohort,
                models,
                targets[name],
                settings.truth_patients,
                settings.truth_model_samples,
                settings.truth_samples,
                settings.seed,
            )
            if settings.progress:
                tqdm.write(f"[test-selection] truth done, {time.perf_counter() - started:.0f} s", file=sys.stderr)
        if name == "synthetic":
            notes.append(
                f"synthetic: a cohort of {len(cohort.records)} patients with {folds} folds (fold models trained with the "
                "default settings), smaller than the default 500 patients / 5 folds, to keep training within the time budget."
            )
    checks = []
    for c in curves:
        checks.append(
            _check(f"{c.data}: EIG closes the random-oracle area gap", c.gap_closed, ">= 0.5", (c.gap_closed or 0) >= 0.5)
        )
        eig_minus_fixed = c.areas["eig"] - c.areas["fixed"] if c.n_patients else None
        checks.append(
            _check(
                f"{c.data}: EIG area minus fixed-order area", eig_minus_fixed, "< 0", bool(c.n_patients and eig_minus_fixed < 0)
            )
        )
    for cal in calibrations:
        ratio_ok = cal.ratio is not None and abs(cal.ratio - 1) <= 0.2
        checks.append(_check(f"{cal.data}: mean realised / mean predicted information", cal.ratio, "0.8 to 1.2", ratio_ok))
    if latency is not None:
        checks.append(
            _check(f"{latency.data}: recommend() median latency (ms)", latency.median_ms, "< 250", latency.median_ms < 250)
        )
    if truth is not None:
        rho = truth.mean_spearman
        checks.append(_check(f"{truth.data}: Spearman of model vs true EIG ranking", rho, ">= 0.9", (rho or 0) >= 0.9))
    notes.append(
        "Curves use x = step (one test per step); every policy picks by gain per step, not per cost. "
        "The EIG policy uses the full test's variables for its hypothetical results; the realised update uses the "
        "variables actually measured at the landmark visit."
    )
    notes.append(
        "The oracle sees each patient's outcome and picks the reveal that moves the risk towards it (its curve can rise "
        "again once only unhelpful tests remain); it bounds what any outcome-blind policy can reach. The EIG policy "
        "maximises the expected entropy reduction of the target, not the log-loss of one outcome."
    )
    notes.append(
        "Calibration: one realised result per (patient, test), so the realised drop is noisy; read the ratio together "
        "with the standard error of the mean realised information."
    )
    notes.append(
        "Targets: "
        + ", ".join(f"{d} {targets[d]}" for d in settings.datasets)
        + " (the event by the horizon after the landmark)."
    )
    if settings.max_patients_per_fold is not None:
        notes.append(f"At most {settings.max_patients_per_fold} held-out patients per fold were looked at (time budget).")
    return TestSelectionBenchmarkResult(
        seed=settings.seed,
        n_samples=settings.n_samples,
        n_random_orders=settings.n_random,
        n_train_patients=settings.n_train_patients,
        seconds=time.perf_counter() - started,
        cpu_count=os.cpu_count() or 0,
        torch_threads=torch.get_num_threads(),
        machine=f"{platform.machine()} {platform.system()}",
        curves=curves,
        calibration=calibrations,
        latency=latency,
        truth=truth,
        targets=checks,
        notes=notes,
    )


# --------------------------------------------------------------------------- writing


def plot_test_selection(result: TestSelectionBenchmarkResult, path: str | Path) -> Path:
    # A bare Figure draws without pyplot, so no backend is selected behind the caller's back.
    from matplotlib.figure import Figure

    panels = len(result.curves) + len(result.calibration)
    fig = Figure(figsize=(4.2 * max(panels, 1), 3.4))
    axes = fig.subplots(1, max(panels, 1), squeeze=False)
    flat = axes.ravel()
    k = 0
    for c in result.curves:
        ax = flat[k]
        k += 1
        for i, m in enumerate(METHODS):
            if c.curves[m]:
                ax.plot(c.steps, c.curves[m], marker="o", color=f"C{i}", label=f"{m} (area {c.areas[m]:.3f})")
        ax.set_xlabel("tests revealed (step)")
        ax.set_ylabel("mean log-loss")
        ax.set_title(f"{c.data}: {c.target} (n={c.n_patients})", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    for cal in result.calibration:
        ax = flat[k]
        k += 1
        x = [b.mean_predicted for b in cal.bins]
        y = [b.mean_realised for b in cal.bins]
        ax.plot(x, y, marker="o", label="binned")
        hi = max([*x, *y, 1e-3])
        ax.plot([0, hi], [0, hi], "k--", lw=0.8, label="y = x")
        ax.set_xlabel("predicted EIG (nats)")
        ax.set_ylabel("realised entropy drop (nats)")
        ax.set_title(f"calibration {cal.data} (ratio {_fmt(cal.ratio)})", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path
