"""Evaluating next-test policies on held-out patients: scenarios, beliefs, orders, cost-aware areas.

A *case* is one patient at a decision time s whose tests at s were really done: their
true results exist, so every order of them can be scored. What is known before the
tests depends on the *scenario*:

- ``first_visit``: a new patient; only the static covariates and history codes (and
  treatments started by s) are known. s is the first visit.
- ``after_gap``: the last measurements are at least ``gap`` old. s is the first visit from
  the forecast landmark (the ceil(n/2)-th) on with an earlier visit at least ``gap``
  before it; the visits in between are dropped from the history, as if they never happened.
- ``follow_up``: a routine follow-up; everything before s is known. s is the landmark.

The model's *belief* about the target is the shared pool of :mod:`vpatient.policy`
(posterior draws given what is known, weighted by being event-free up to s). Revealing a
test reweights the pool by the decoder likelihood of its true results. The *loss* after a
set of revealed tests is the log-loss of the observed outcome (risk targets) or the
negative log predictive density of the observed value (forecast targets; on the model's
standardised scale, the same for every policy). Every subset's loss is tabulated once, so
each policy is a walk through the same table, scored by the area under its loss-versus-
cost curve up to a budget (:func:`vpatient.cost_curves.step_area`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import torch

from vpatient import transforms
from vpatient.cost_curves import MAX_ORDERS, bought, step_area
from vpatient.data.batching import make_batch
from vpatient.data.timeline import truncate_record
from vpatient.evaluate.protocol import n_observed_visits
from vpatient.model.batch import ExpertGroup
from vpatient.policy import (
    HypotheticalResults,
    Pool,
    Predictive,
    Target,
    TargetKind,
    draw_results,
    eig_from_pool,
    likelihood_log_factor,
    pool_entropy,
    posterior_pool,
    predictive_at,
    systematic_resample,
)
from vpatient.schemas import PatientRecord
from vpatient.virtual_patient import VirtualPatientModel

__all__ = [
    "Belief",
    "Case",
    "Scenario",
    "belief_of",
    "best_fixed_order",
    "bootstrap_ratio",
    "build_case",
    "cheapest_order",
    "clairvoyant_order",
    "decision_point",
    "eig_order",
    "order_area",
    "paired_difference",
    "predicted_gains",
    "static_record",
]


class Scenario(StrEnum):
    """What is known when the tests are chosen (module docstring)."""

    FIRST_VISIT = "first_visit"
    AFTER_GAP = "after_gap"
    FOLLOW_UP = "follow_up"


# --------------------------------------------------------------------------- decision points


def _without_measurements(record: PatientRecord, before: float) -> PatientRecord:
    return record.model_copy(
        update={
            "observations": [o for o in record.observations if o.time < before],
            "imaging": [i for i in record.imaging if i.time < before],
        }
    )


def decision_point(record: PatientRecord, scenario: Scenario | str, gap: float) -> tuple[float, PatientRecord] | None:
    """(s, what is known before the tests at s) of ``record`` under ``scenario``, or None when it has no such point.

    ``gap`` is the ``after_gap`` scenario's least age of the last measurement, in the data's time unit.
    """
    scenario = Scenario(scenario)
    visits = record.visit_times()
    if scenario == Scenario.FIRST_VISIT:
        if not visits:
            return None
        s = visits[0]
        return s, _without_measurements(truncate_record(record, s), -math.inf)
    if len(visits) < 2:
        return None
    landmark = n_observed_visits(len(visits)) - 1
    if scenario == Scenario.FOLLOW_UP:
        s = visits[landmark]
        return s, _without_measurements(truncate_record(record, s), s)
    for s in visits[max(landmark, 1) :]:
        if visits[0] <= s - gap:
            known = truncate_record(record, s)
            known = known.model_copy(
                update={
                    "observations": [o for o in known.observations if o.time <= s - gap],
                    "imaging": [i for i in known.imaging if i.time <= s - gap],
                }
            )
            return s, known
    return None


def static_record(record: PatientRecord) -> PatientRecord:
    """What a method for static data sees of a patient: static covariates and history codes, at time 0.

    Measurements, treatments and events are dropped and every history code is moved to time
    0, so two patients with the same covariates and codes look the same, whatever their
    course: the comparator that ignores the patient's own history and time.
    """
    return record.model_copy(
        update={
            "observations": [],
            "imaging": [],
            "treatments": [],
            "events": [],
            "history": [h.model_copy(update={"time": 0.0}) for h in record.history],
            "end_of_followup": 0.0,
        }
    )


def observed_outcome(record: PatientRecord, s: float, target: Target, model: VirtualPatientModel) -> float | None:
    """The target's observed outcome after s: 1/0 for a risk target, the standardised value for a forecast; None if unknown.

    Risk: the event in (s, s + horizon], or follow-up past s + horizon without it (None when
    censored before the horizon or the event came first). Forecast: the value measured at
    the visit nearest s + horizon within a quarter of the horizon, on the model's scale.
    """
    if target.kind == TargetKind.RISK:
        hits = sorted(e.time for e in record.events if e.kind == target.event)
        if any(t <= s for t in hits):
            return None
        if hits and hits[0] <= s + target.horizon:
            return 1.0
        return 0.0 if record.end_of_followup >= s + target.horizon else None
    if target.kind == TargetKind.FORECAST:
        goal = s + target.horizon
        values = [(abs(o.time - goal), o.value) for o in record.observations if o.variable == target.variable and o.time > s]
        values = [v for v in values if v[0] <= target.horizon / 4]
        if not values:
            return None
        value = min(values)[1]
        j = model.layout.continuous.index(target.variable)
        scaled = transforms.forward(np.asarray([value]), model.config.variable(target.variable).transform)[0]
        return float((scaled - model.scalers.continuous_mean[j]) / model.scalers.continuous_std[j])
    return None


# --------------------------------------------------------------------------- beliefs and cases


@dataclass
class Belief:
    """A pool of posterior draws about the target, its predictive at s, and each test's true-result factor."""

    pool: Pool
    predictive: Predictive
    at: float
    realised: dict[str, torch.Tensor]  # test -> (S,) log likelihood of its true results at each draw

    def log_weights(self, revealed: Sequence[str]) -> torch.Tensor:
        """The pool's log weights once the true results of ``revealed`` are known."""
        base = self.pool.log_w.double()
        return base + sum((self.realised[name] for name in revealed), torch.zeros_like(base))

    def loss(self, revealed: Sequence[str], outcome: float) -> float:
        """Log-loss (risk) or negative log predictive density (forecast) of the outcome after ``revealed``."""
        weights = torch.softmax(self.log_weights(revealed), 0)
        values = self.pool.target.double()
        if self.pool.target.dim() == 1:  # event probabilities
            p = float((weights * values).sum().clamp(1e-6, 1 - 1e-6))
            return -(outcome * math.log(p) + (1 - outcome) * math.log1p(-p))
        var = self.pool.noise_var
        var = var.double() if isinstance(var, torch.Tensor) else torch.full_like(weights, float(var))
        log_density = -0.5 * ((outcome - values[:, 0]) ** 2 / var + torch.log(2 * math.pi * var))
        return -float(torch.logsumexp(torch.log(weights.clamp_min(1e-300)) + log_density, 0))

    def gains(
        self, model: VirtualPatientModel, groups: Mapping[str, ExpertGroup], revealed: Sequence[str], generator: torch.Generator
    ) -> dict[str, float]:
        """EIG (nats) about the target of each group's variables, once the true results of ``revealed`` are known.

        One draw of hypothetical results serves every group (common random numbers).
        """
        log_w = self.log_weights(revealed)
        outer = systematic_resample(torch.softmax(log_w, 0).float(), generator)
        results = draw_results(model, self.predictive, outer, generator)
        pool = self.pool
        return {
            name: eig_from_pool(
                pool.target,
                log_w,
                likelihood_log_factor(model, group, results, self.predictive),
                outer,
                pool.target_kind,
                pool.noise_var,
            )[0]
            for name, group in groups.items()
        }

    def entropy(self, revealed: Sequence[str] = ()) -> float:
        """The target's entropy (nats) once ``revealed`` are known."""
        return pool_entropy(self.pool, self.log_weights(revealed))


@torch.no_grad()
def belief_of(
    model: VirtualPatientModel,
    known: PatientRecord,
    at: float,
    target: Target,
    truth: HypotheticalResults,
    groups: Mapping[str, ExpertGroup],
    n_samples: int,
    seed: int,
) -> Belief:
    """The model's belief about ``target`` given ``known`` at ``at``, with the factors of the true results ``truth``."""
    generator = torch.Generator().manual_seed(seed)
    pool = posterior_pool(model, known, at, target, n_samples, generator)
    predictive = predictive_at(model, pool, at)
    realised = {name: likelihood_log_factor(model, group, truth, predictive)[0].double() for name, group in groups.items()}
    return Belief(pool, predictive, at, realised)


@dataclass
class Case:
    """One patient at a decision point: the tests done there, the outcome, the belief, and the loss of every subset."""

    subject_id: str
    scenario: Scenario
    at: float
    available: list[str]
    groups: dict[str, ExpertGroup]  # test -> the variables actually measured at s
    outcome: float
    belief: Belief
    losses: dict[frozenset[str], float]
    truth: HypotheticalResults  # the true results at s (standardised scales)

    def loss_points(self, order: Sequence[str], costs: Mapping[str, float]) -> list[tuple[float, float]]:
        """(cumulative cost, loss) after each test of ``order`` is bought (first point: nothing bought)."""
        points = [(0.0, self.losses[frozenset()])]
        revealed: list[str] = []
        for name, spent in bought([t for t in order if t in self.available], costs, None):
            revealed.append(name)
            points.append((spent, self.losses[frozenset(revealed)]))
        return points


@torch.no_grad()
def build_case(
    model: VirtualPatientModel,
    record: PatientRecord,
    scenario: Scenario | str,
    target: Target,
    gap: float,
    n_samples: int,
    seed: int,
) -> Case | None:
    """The patient's case under ``scenario``, or None when not eligible.

    Eligible: a decision point, at least two tests with a variable measured at s, an
    observed outcome, and no target event before s.
    """
    point = decision_point(record, scenario, gap)
    if point is None:
        return None
    s, known = point
    outcome = observed_outcome(record, s, target, model)
    if outcome is None:
        return None
    full = make_batch([truncate_record(record, s)], model.config, model.scalers)
    i = int(torch.nonzero(torch.isclose(full.times[0], torch.tensor(float(s)))).max())
    groups = {}
    for test in model.config.tests:
        g = model.layout.group(test.name)
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
    truth = HypotheticalResults(
        continuous=full.continuous[:, i : i + 1],
        binary=full.binary[:, i : i + 1],
        ordinal=[full.ordinal[:, i, j : j + 1] for j in range(full.ordinal.shape[-1])],
        imaging=full.imaging[:, i : i + 1],
    )
    belief = belief_of(model, known, s, target, truth, groups, n_samples, seed)
    names = list(groups)
    losses = {
        frozenset(subset): belief.loss(subset, outcome)
        for k in range(len(names) + 1)
        for subset in itertools.combinations(names, k)
    }
    return Case(record.subject_id, Scenario(scenario), s, names, groups, outcome, belief, losses, truth)


# --------------------------------------------------------------------------- orders and their areas


def order_area(case: Case, order: Sequence[str], costs: Mapping[str, float], budget: float) -> float:
    """Area under ``case``'s loss-versus-cost curve for ``order`` (tests not done at s skipped), divided by the budget."""
    return step_area(case.loss_points(order, costs), budget)


def _orders(tests: Sequence[str]) -> list[tuple[str, ...]]:
    return list(itertools.permutations(tests))


def clairvoyant_order(case: Case, costs: Mapping[str, float], budget: float) -> list[str]:
    """The order of least area, chosen knowing the outcome (every order up to 720; else greedy on realised loss per cost)."""
    if math.factorial(len(case.available)) <= MAX_ORDERS:
        return list(min(_orders(case.available), key=lambda o: (order_area(case, o, costs, budget), o)))
    order: list[str] = []
    remaining = list(case.available)
    while remaining:
        now = case.losses[frozenset(order)]
        best = max(remaining, key=lambda n: ((now - case.losses[frozenset([*order, n])]) / costs[n], n))
        order.append(best)
        remaining.remove(best)
    return order


def cheapest_order(tests: Sequence[str], costs: Mapping[str, float]) -> list[str]:
    """The tests from cheapest to dearest (ties by name)."""
    return sorted(tests, key=lambda n: (costs[n], n))


def best_fixed_order(cases: Sequence[Case], tests: Sequence[str], costs: Mapping[str, float], budget: float) -> list[str]:
    """The one order of the catalogue with the least mean area over ``cases`` (training patients).

    Every order when there are at most 720; else built greedily, one test at a time.
    """
    if not cases:
        return cheapest_order(tests, costs)

    def mean_area(order: Sequence[str]) -> float:
        return float(np.mean([order_area(c, order, costs, budget) for c in cases]))

    if math.factorial(len(tests)) <= MAX_ORDERS:
        return list(min(_orders(tests), key=lambda o: (mean_area(o), o)))
    order: list[str] = []
    remaining = list(tests)
    while remaining:
        best = min(remaining, key=lambda n: (mean_area([*order, n]), n))
        order.append(best)
        remaining.remove(best)
    return order


@torch.no_grad()
def eig_order(
    model: VirtualPatientModel, belief: Belief, tests: Sequence[str], costs: Mapping[str, float], seed: int
) -> list[str]:
    """Adaptive greedy on expected information per cost: each step buys the test with the largest EIG / cost
    given the true results of the tests bought so far (the pool reweighted by them; fresh
    hypothetical results of every test's full variables, shared between the candidates).
    """
    generator = torch.Generator().manual_seed(seed)
    order: list[str] = []
    remaining = list(tests)
    while len(remaining) > 1:
        gains = belief.gains(model, {name: model.layout.group(name) for name in remaining}, order, generator)
        best = max(remaining, key=lambda n: (gains[n] / costs[n], n))
        order.append(best)
        remaining.remove(best)
    return order + remaining


@torch.no_grad()
def predicted_gains(model: VirtualPatientModel, belief: Belief, groups: Mapping[str, ExpertGroup], seed: int) -> dict[str, float]:
    """EIG (nats) about the target of each group's variables, before any test is revealed."""
    return belief.gains(model, groups, (), torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- paired comparisons


def paired_difference(
    comparator: Sequence[float], policy: Sequence[float], n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of comparator - policy over patients, with a 95% percentile bootstrap interval (patients resampled).

    For areas under loss curves, positive means the policy is better.
    """
    d = np.asarray(comparator, dtype=float) - np.asarray(policy, dtype=float)
    if len(d) == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(d.mean()), float(lo), float(hi)


def bootstrap_ratio(
    numerators: Sequence[float], denominators: Sequence[float], clusters: Sequence[str], n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """sum(numerators) / sum(denominators), with a 95% bootstrap interval resampling whole clusters (patients)."""
    num = np.asarray(numerators, dtype=float)
    den = np.asarray(denominators, dtype=float)
    if len(num) == 0 or den.sum() <= 0:
        return math.nan, math.nan, math.nan
    keys = sorted(set(clusters))
    index = {k: i for i, k in enumerate(keys)}
    which = np.asarray([index[c] for c in clusters])
    per_num = np.bincount(which, num, len(keys))
    per_den = np.bincount(which, den, len(keys))
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(keys), size=(n_boot, len(keys)))
    ratios = per_num[picks].sum(axis=1) / np.maximum(per_den[picks].sum(axis=1), 1e-300)
    lo, hi = np.quantile(ratios, [0.025, 0.975])
    return float(num.sum() / den.sum()), float(lo), float(hi)
