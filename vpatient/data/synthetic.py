r"""Synthetic multimodal cohorts with a known ground truth.

A mechanistic generator: every record is drawn from the model below, and
:class:`SyntheticTruth` answers, for any subject and any treatment exposures, what
the latent state, the noiseless observations and the event survival *really* are.
Later code measures counterfactual error and information gain against it exactly.

Generative model (time in years since index, ``t = 0``; ``sigma(x) = 1/(1+e^{-x})``,
``softplus(x) = log(1+e^x)``; one ``numpy.random.Generator`` drawn from ``seed``)

Covariates (static)::

    age ~ N(55, 10^2) clipped to [20, 90];  a = (age - 55) / 10
    sex ~ Bernoulli(0.5)                      (0 female, 1 male)
    subtype ~ Bernoulli(0.4)                  (1: strong responder to the drug)

History (comorbidities, recorded once at a time U(-10, -0.25) before index)::

    diabetes     ~ Bernoulli(sigma(-1.4 + 0.4 a))
    hypertension ~ Bernoulli(sigma(-0.7 + 0.5 a))

Latent state ``z = (z1, z2)``: z1 fibrosis / severity, z2 inflammatory activity.
Initial state prior (:func:`initial_state_prior`)::

    z0 ~ N(m(x), S),  m1 = 0.8 + 0.3 a + 0.4 diabetes + 0.2 hypertension
                      m2 = 0.0 + 0.2 sex + 0.2 hypertension
                      S  = [[0.6^2, 0.3*0.6*0.5], [0.3*0.6*0.5, 0.5^2]]

Dynamics, with the dose ``u(t)`` of "drug" piecewise constant (:func:`vpatient.plans.dose_at`),
lambda = ``params.nonlinearity`` (1: the model; 0: its linearisation, for solver tests)::

    r(x)   = r0 exp(0.15 a + 0.1 sex + 0.35 diabetes + 0.2 hypertension)   growth rate
    mu2(x) = 0.2 hypertension                                             activity set point
    E(u)   = Emax[subtype] u / (u + ED50),  Emax = (0.3, 0.8), ED50 = 0.5  (Emax effect)
    g(z2)  = lambda softplus(z2) + (1 - lambda) (log 2 + z2 / 2)
    h(z1)  = lambda tanh(z1)    + (1 - lambda) z1

    dz1/dt = r(x) (1 - E(u)) g(z2) (1 - lambda z1 / K)                     K = 6
    dz2/dt = kappa (mu2(x) - z2) + alpha h(z1) - delta E(u)                kappa = 1, alpha = 0.4, delta = 0.5

The system is cooperative (dz1/dt increases with z2, dz2/dt with z1, for z1 < K), so a
higher dose gives a lower path of both states; the drug works mostly for subtype 1.

Events: cause-specific hazards log-linear in the state, integrated with it::

    log h_death(t) = -4.2 + 0.3 a + 0.7 z1 + 0.3 z2
    log h_prog(t)  = -3.0         + 0.9 z1 + 0.3 z2
    H_k(t) = int_0^t h_k,  S_k(t) = exp(-H_k(t)),  T_k = H_k^{-1}(e_k),  e_k ~ Exp(1)

Death ends follow-up; progression is recorded once if it happens first; follow-up is
also cut by dropout ~ Exp(0.05 / year) and administrative censoring at ``years``.

Solver: the augmented state ``y = (z1, z2, H_death, H_prog)`` is integrated by classical
RK4 on the fixed grid ``t_k = k h`` (h = ``params.solver_step``, 1/120 year), vectorised
over subjects. A step that contains a dose change (:func:`vpatient.plans.control_breakpoints`)
is split there, so the dose is constant inside every RK4 stage. The state at a time
``tau`` between nodes is one more (split) RK4 step from the node below. Records and
:class:`SyntheticTruth` call the same solver, so the truth reproduces the generating path.

Visits: t = 0, then gaps ~ Gamma(shape 4, mean 0.5 y) until follow-up ends. At a visit
each test is ordered with probability ``sigma(c_test + 0.8 (z1(t) - 1))``, c = 1.0, -0.3,
0.2, -2.0 for panel_a, panel_b, exam, ct (sicker patients get more tests); the baseline visit gets all routine tests (panel_a, panel_b,
exam) and a CT with its usual probability. An ordered test measures all its variables.

Observations given ``z = z(t)`` (noise independent across variables and visits;
the noise sd is on the transformed scale, see ``SyntheticTruth.noise_sd``)::

    log bilirubin = log 0.8 + 0.5 z1 + 0.3 z2             + N(0, 0.25^2)   [mg/dL, log]
    log alt       = log 35  + 0.1 z1 + 0.5 z2             + N(0, 0.30^2)   [U/L, log]
    albumin       = 4.2 - 0.6 tanh(z1 / 2) - 0.1 z2       + N(0, 0.20^2)   [g/dL]
    log platelets = log 250 - 0.25 z1 - 0.05 z2           + N(0, 0.15^2)   [10^9/L, log]
    inr           = 1.0 + 0.2 softplus(z1 - 2)            + N(0, 0.06^2)
    ascites       ~ Bernoulli(sigma(-3 + 1.2 z1 + 0.4 z2))
    stage         = #{c in (0.5, 1.5, 2.5) : z1 + 0.25 L > c},  L ~ Logistic(0, 1)
                    (so P(stage >= j) = sigma((z1 - c_j) / 0.25))
    ct            = tanh(W z + b) + N(0, 0.1^2 I),  W ~ N(0, 1), b ~ N(0, 0.5^2)
                    drawn once from ``params.imaging_seed`` (fixed across cohorts)

Treatment (one drug, from t = 0, never stopped)::

    P(treated) = sigma(confounding * (z0_1 - mean z0_1) / sd z0_1)   (0: randomised 1:1)
    dose = 2 with probability 0.5, else 1

The daily world (:func:`daily_cohort`, dataset ``synthetic-daily``, :class:`DailyTruth`)
-------------------------------------------------------------------------------------

A second world on the same solver and truth machinery, in **days**, shaped like an
oncology cohort: 60 daily visits, two drugs given in start/stop runs, small noise.
Constants in :class:`DailyParams`; ``a = (age - 62) / 10``::

    age ~ N(62, 10^2) clipped to [25, 90];  sex ~ Bernoulli(0.5)
    r = 0.03 exp(0.1 a + 0.15 sex + 0.3 eta),  eta ~ N(0, 1)      growth rate (per day, unobserved)
    v0 ~ N(2 + 0.15 a, 0.5^2),  T0 ~ N(0, 0.1^2)                   log tumour volume, toxicity

State y = (v, T, A, B, H_death); A and B are the drugs' effect compartments, driven by
the doses u_A, u_B (piecewise constant, changing at whole days)::

    dv/dt = r (1 - v / 6) - 0.06 A - 0.05 B       A and B add up on the log-growth rate
    dT/dt = 0.2 (1.0 A + 0.6 B - T)
    dA/dt = 2.0 (u_A - A)                          fast: 86% of the effect within a day
    dB/dt = 0.3 (u_B - B)                          carry-over: half-life 2.3 days after B stops
    log h_death = -8.1 + 0.2 a + 0.8 v + 1.0 T,    T_death = H^{-1}(e), e ~ Exp(1)

The (v, T, A, B) system is linear in its inputs, so the effect of A+B on v is exactly the
sum of A's and B's. Follow-up ends at death, dropout ~ Exp(0.002 / day) or day 60.

Treatment runs, day by day (d = 0, 1, ...), confounded by the current tumour size::

    severity(d) = (v(d) - mean v0) / sd v0
    off a drug: start it with probability sigma(c_k + confounding * severity(d)), c = (-2.5, -2.8)
    on a drug:  stop it with probability 0.12 (mean run 8 days); a run keeps its dose,
                1 with probability 0.7, else 0.5

Visits every day of follow-up (each after day 0 missed with probability 0.05); every
visit measures all three labs (log scale, noise independent)::

    log volume      = v                        + N(0, 0.05^2)   [cm^3]
    log marker      = log 5 + 0.7 (v - 2)      + N(0, 0.15^2)   [ng/mL]
    log neutrophils = log 4 - 0.5 T            + N(0, 0.10^2)   [10^9/L]

Solver: RK4 with step 1/8 day (a power of 2, so dose changes fall on grid nodes).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Protocol

import numpy as np
import pandas as pd

from vpatient.data.cohort import Cohort
from vpatient.data.meds.codes import MEDS_DEATH
from vpatient.plans import control_breakpoints, dose_at
from vpatient.schemas import DatasetConfig, PatientRecord, TreatmentExposure, parse_records

__all__ = [
    "CONTINUOUS_LABS",
    "DAILY_LABS",
    "DAILY_TREATMENTS",
    "DRUG",
    "EVENTS",
    "LATENT_NAMES",
    "LOG_LABS",
    "DailyParams",
    "DailyTruth",
    "SyntheticCohort",
    "SyntheticParams",
    "SyntheticTruth",
    "daily_cohort",
    "daily_config",
    "initial_state_prior",
    "rk4_step",
    "synthetic_cohort",
    "synthetic_config",
    "synthetic_stream",
]

#: Names of the latent coordinates, in order.
LATENT_NAMES = ("fibrosis", "activity")
#: The one treatment of the synthetic world.
DRUG = "drug"
EVENTS = ("death", "progression")
HISTORY_CODES = ("diabetes", "hypertension")
CONTINUOUS_LABS = ("bilirubin", "alt", "albumin", "platelets", "inr")
LOG_LABS = frozenset({"bilirubin", "alt", "platelets"})
ROUTINE_TESTS = ("panel_a", "panel_b", "exam")
TESTS = (*ROUTINE_TESTS, "ct")
#: Covariate columns, in the order of the internal covariate matrix (n, 5).
COVARIATES = ("age", "sex", "subtype", *HISTORY_CODES)
_LN2 = math.log(2.0)


@dataclass(frozen=True)
class SyntheticParams:
    """Every constant of the generative model (see the module docstring for the maths)."""

    # solver
    solver_step: float = 1.0 / 120.0
    nonlinearity: float = 1.0
    # covariates and history
    age_mean: float = 55.0
    age_sd: float = 10.0
    p_male: float = 0.5
    p_subtype1: float = 0.4
    diabetes_logit: tuple[float, float] = (-1.4, 0.4)  # (intercept, per decade of age)
    hypertension_logit: tuple[float, float] = (-0.7, 0.5)
    # initial state prior
    z0_mean: tuple[float, float] = (0.8, 0.0)
    z0_age: float = 0.3
    z0_diabetes: float = 0.4
    z0_hypertension: tuple[float, float] = (0.2, 0.2)
    z0_sex: float = 0.2
    z0_sd: tuple[float, float] = (0.6, 0.5)
    z0_corr: float = 0.3
    # dynamics
    growth_rate: float = 0.25
    rate_age: float = 0.15
    rate_sex: float = 0.1
    rate_diabetes: float = 0.35
    rate_hypertension: float = 0.2
    capacity: float = 6.0
    kappa: float = 1.0
    activity_hypertension: float = 0.2
    feedback: float = 0.4
    emax: tuple[float, float] = (0.3, 0.8)  # by subtype
    ed50: float = 0.5
    anti_inflammatory: float = 0.5
    # hazards: (intercept, age per decade, z1, z2)
    death_hazard: tuple[float, float, float, float] = (-4.2, 0.3, 0.7, 0.3)
    progression_hazard: tuple[float, float, float, float] = (-3.0, 0.0, 0.9, 0.3)
    dropout_rate: float = 0.05
    # treatment assignment
    p_dose2: float = 0.5
    # visits and test ordering
    visit_gap_shape: float = 4.0
    visit_gap_mean: float = 0.5
    order_intercepts: tuple[float, float, float, float] = (1.0, -0.3, 0.2, -2.0)  # panel_a, panel_b, exam, ct
    order_slope: float = 0.8
    order_centre: float = 1.0
    # observation noise (sd on the transformed scale)
    lab_sd: tuple[float, float, float, float, float] = (0.25, 0.30, 0.20, 0.15, 0.06)
    stage_cuts: tuple[float, float, float] = (0.5, 1.5, 2.5)
    stage_scale: float = 0.25
    imaging_seed: int = 20_240_601
    imaging_sd: float = 0.1

    def __post_init__(self) -> None:
        if not self.solver_step > 0:
            raise ValueError(f"solver_step must be > 0, got {self.solver_step}")
        if not 0 <= self.nonlinearity <= 1:
            raise ValueError(f"nonlinearity must lie in [0, 1], got {self.nonlinearity}")


def initial_state_prior(
    static: Mapping[str, float], history: Iterable[str] = (), params: SyntheticParams | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Prior of the latent state at t=0 given statics and history codes: mean (2,), cov (2, 2)."""
    p = params or SyntheticParams()
    codes = set(history)
    row = np.array([[static["age"], static["sex"], static["subtype"], *(float(c in codes) for c in HISTORY_CODES)]])
    return _prior_mean(row, p)[0], _prior_cov(p)


def _prior_mean(x: np.ndarray, p: SyntheticParams) -> np.ndarray:
    """x (n, 5) covariates -> mean of z0 (n, 2)."""
    a = (x[:, 0] - 55.0) / 10.0
    m1 = p.z0_mean[0] + p.z0_age * a + p.z0_diabetes * x[:, 3] + p.z0_hypertension[0] * x[:, 4]
    m2 = p.z0_mean[1] + p.z0_sex * x[:, 1] + p.z0_hypertension[1] * x[:, 4]
    return np.stack([m1, m2], axis=1)


def _prior_cov(p: SyntheticParams) -> np.ndarray:
    s1, s2 = p.z0_sd
    c = p.z0_corr * s1 * s2
    return np.array([[s1 * s1, c], [c, s2 * s2]])


# --------------------------------------------------------------------------- dynamics


@dataclass(frozen=True)
class _Coef:
    """Per-subject (or per-query) coefficients of the vector field, each (m,)."""

    rate: np.ndarray
    mu2: np.ndarray
    emax: np.ndarray
    death0: np.ndarray
    prog0: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray, p: SyntheticParams) -> _Coef:
        a = (x[:, 0] - 55.0) / 10.0
        rate = p.growth_rate * np.exp(
            p.rate_age * a + p.rate_sex * x[:, 1] + p.rate_diabetes * x[:, 3] + p.rate_hypertension * x[:, 4]
        )
        emax = np.where(x[:, 2] > 0.5, p.emax[1], p.emax[0])
        return cls(
            rate=rate,
            mu2=p.activity_hypertension * x[:, 4],
            emax=emax,
            death0=p.death_hazard[0] + p.death_hazard[1] * a,
            prog0=p.progression_hazard[0] + p.progression_hazard[1] * a,
        )

    def take(self, rows: np.ndarray) -> _Coef:
        return _Coef(*(getattr(self, f.name)[rows] for f in fields(self)))

    def rhs(self, y: np.ndarray, u: np.ndarray, p: SyntheticParams) -> np.ndarray:
        """The vector field at doses u (m, 1) of the one drug."""
        return _rhs(y, u[:, 0], self, p)


def _rhs(y: np.ndarray, u: np.ndarray, c: _Coef, p: SyntheticParams) -> np.ndarray:
    """d/dt of the augmented state y (m, 4) = (z1, z2, H_death, H_prog) at dose u (m,)."""
    z1, z2 = y[:, 0], y[:, 1]
    lam = p.nonlinearity
    effect = c.emax * u / (u + p.ed50)
    g = lam * np.logaddexp(0.0, z2) + (1.0 - lam) * (_LN2 + 0.5 * z2)
    h = lam * np.tanh(z1) + (1.0 - lam) * z1
    out = np.empty_like(y)
    out[:, 0] = c.rate * (1.0 - effect) * g * (1.0 - lam * z1 / p.capacity)
    out[:, 1] = p.kappa * (c.mu2 - z2) + p.feedback * h - p.anti_inflammatory * effect
    out[:, 2] = np.exp(c.death0 + p.death_hazard[2] * z1 + p.death_hazard[3] * z2)
    out[:, 3] = np.exp(c.prog0 + p.progression_hazard[2] * z1 + p.progression_hazard[3] * z2)
    return out


def rk4_step(f: Callable[[np.ndarray], np.ndarray], y: np.ndarray, dt: np.ndarray) -> np.ndarray:
    """One classical RK4 step of an autonomous field ``f``: y (m, k), dt (m,) per row."""
    d = dt[:, None]
    k1 = f(y)
    k2 = f(y + 0.5 * d * k1)
    k3 = f(y + 0.5 * d * k2)
    k4 = f(y + d * k3)
    return y + (d / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


class _Params(Protocol):
    """What the solver needs of a world's constants."""

    @property
    def solver_step(self) -> float: ...


class _Field(Protocol):
    """A world's vector field with its per-subject coefficients (m rows)."""

    def take(self, rows: np.ndarray) -> _Field: ...

    def rhs(self, y: np.ndarray, u: np.ndarray, p: Any) -> np.ndarray:
        """d/dt of the augmented states y (m, k) at the doses u (m, K) of the world's K treatments."""
        ...


@dataclass(frozen=True)
class _Controls:
    """Piecewise-constant doses of many subjects: segment starts (n, B+1), padded with +inf."""

    starts: np.ndarray  # (n, B+1); starts[:, 0] = 0
    doses: np.ndarray  # (n, B+1, K); dose of each of K treatments on [starts[j], starts[j+1])

    @classmethod
    def of(cls, exposures_list: Sequence[Sequence[TreatmentExposure]], treatments: Sequence[str] = (DRUG,)) -> _Controls:
        segs = []
        for exposures in exposures_list:
            for exp in exposures:
                if exp.treatment not in treatments:
                    raise ValueError(f"unknown treatment {exp.treatment!r}: this synthetic world has {', '.join(treatments)}")
                if exp.start < 0 or not math.isfinite(exp.start) or not (math.isfinite(exp.dose) and exp.dose >= 0):
                    raise ValueError(f"invalid exposure {exp!r}: start and dose must be finite and >= 0")
            starts = np.array([0.0, *control_breakpoints(exposures, 0.0, math.inf)])
            segs.append((starts, np.stack([dose_at(exposures, t, starts) for t in treatments], axis=-1)))
        width = max((len(s) for s, _ in segs), default=1)
        n = len(segs)
        starts = np.full((n, width), np.inf)
        doses = np.zeros((n, width, len(treatments)))
        for i, (s, d) in enumerate(segs):
            starts[i, : len(s)] = s
            doses[i, : len(d)] = d
        return cls(starts, doses)

    def take(self, rows: np.ndarray) -> _Controls:
        return _Controls(self.starts[rows], self.doses[rows])

    @property
    def constant(self) -> bool:
        return self.starts.shape[1] == 1

    def dose(self, t: np.ndarray) -> np.ndarray:
        """Doses in force on [t, next change) for each row: t (m,) -> (m, K)."""
        if self.constant:
            return self.doses[:, 0]
        idx = (self.starts <= t[:, None]).sum(axis=1) - 1
        return self.doses[np.arange(len(t)), idx]

    def next_change(self, t: np.ndarray) -> np.ndarray:
        """First dose change strictly after t (inf if none): (m,)."""
        if self.constant:
            return np.full_like(t, np.inf)
        return np.where(self.starts > t[:, None], self.starts, np.inf).min(axis=1)


def _advance(y: np.ndarray, t0: np.ndarray, t1: np.ndarray, c: _Field, u: _Controls, p: _Params) -> np.ndarray:
    """RK4 from t0 to t1 (each (m,), t1 - t0 <= one grid step), split at dose changes."""
    if u.constant:  # no dose change anywhere: one step
        dose = u.doses[:, 0]
        return rk4_step(lambda v: c.rhs(v, dose, p), y, t1 - t0)
    t = t0.copy()
    while True:
        stop = np.minimum(u.next_change(t), t1)
        dt = stop - t
        if not np.any(dt > 0):
            return y
        dose = u.dose(t)
        y = rk4_step(lambda v, d=dose: c.rhs(v, d, p), y, dt)
        t = stop


def _grid(y0: np.ndarray, horizon: float, c: _Field, u: _Controls, p: _Params) -> np.ndarray:
    """States on the grid t_k = k h, k = 0..K with K h >= horizon: (K+1, n, 4)."""
    h = p.solver_step
    steps = max(1, math.ceil(horizon / h - 1e-9))
    out = np.empty((steps + 1, *y0.shape))
    out[0] = y0
    n = y0.shape[0]
    for k in range(steps):
        out[k + 1] = _advance(out[k], np.full(n, k * h), np.full(n, (k + 1) * h), c, u, p)
    return out


def _node_below(tau: np.ndarray, p: _Params, last: int) -> np.ndarray:
    """Index k of the grid node with t_k <= tau (the last node at most)."""
    k = np.minimum(np.floor(tau / p.solver_step).astype(int), last)
    k = np.where(k * p.solver_step > tau, k - 1, k)
    return np.maximum(k, 0)


def _dense(grid: np.ndarray, rows: np.ndarray, tau: np.ndarray, c: _Field, u: _Controls, p: _Params) -> np.ndarray:
    """State of subject rows (m,) at times tau (m,): RK4 from the node below. -> (m, 4)."""
    k = _node_below(tau, p, grid.shape[0] - 1)
    return _advance(grid[k, rows], k * p.solver_step, tau, c.take(rows), u.take(rows), p)


def _solve(y0: np.ndarray, tau: np.ndarray, c: _Field, u: _Controls, p: _Params) -> np.ndarray:
    """States of n subjects at times tau (n, T): (n, T, 4)."""
    n, T = tau.shape
    grid = _grid(y0, float(tau.max(initial=0.0)), c, u, p)
    rows = np.repeat(np.arange(n), T)
    return _dense(grid, rows, tau.ravel(), c, u, p).reshape(n, T, y0.shape[1])


def _event_times(grid: np.ndarray, col: int, draws: np.ndarray, c: _Field, u: _Controls, p: _Params) -> np.ndarray:
    """First t with H(t) = draw for each subject (inf if beyond the grid): (n,).

    Brackets the crossing between grid nodes, then bisects the solver's own dense
    output, so the event time inverts exactly the cumulative hazard the truth reports.
    """
    H = grid[:, :, col]  # (K+1, n)
    n = H.shape[1]
    out = np.full(n, np.inf)
    hit = H[-1] >= draws
    rows = np.flatnonzero(hit)
    if rows.size == 0:
        return out
    k = np.argmax(H[:, rows] >= draws[rows], axis=0) - 1  # H[k] < draw <= H[k+1]
    lo, hi = k * p.solver_step, (k + 1) * p.solver_step
    target = draws[rows]
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        above = _dense(grid, rows, mid, c, u, p)[:, col] >= target
        hi = np.where(above, mid, hi)
        lo = np.where(above, lo, mid)
        if np.all(hi - lo <= 1e-13):
            break
    out[rows] = hi
    return out


# --------------------------------------------------------------------------- observation model


def _imaging_map(dim: int, p: SyntheticParams) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(p.imaging_seed)
    return rng.normal(0.0, 1.0, (dim, 2)), rng.normal(0.0, 0.5, dim)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _lab_links(z: np.ndarray) -> np.ndarray:
    """Noiseless labs on the transformed (modelling) scale: z (m, 2) -> (m, 5)."""
    z1, z2 = z[:, 0], z[:, 1]
    return np.stack(
        [
            math.log(0.8) + 0.5 * z1 + 0.3 * z2,
            math.log(35.0) + 0.1 * z1 + 0.5 * z2,
            4.2 - 0.6 * np.tanh(0.5 * z1) - 0.1 * z2,
            math.log(250.0) - 0.25 * z1 - 0.05 * z2,
            1.0 + 0.2 * np.logaddexp(0.0, z1 - 2.0),
        ],
        axis=1,
    )


def _natural(eta: np.ndarray, logged: Sequence[bool] | None = None) -> np.ndarray:
    """Transformed-scale labs (m, L) -> natural scale (exp of the columns flagged ``logged``; default the first world's)."""
    out = eta.copy()
    for j, is_log in enumerate(logged if logged is not None else [name in LOG_LABS for name in CONTINUOUS_LABS]):
        if is_log:
            out[:, j] = np.exp(eta[:, j])
    return out


def _ascites_prob(z: np.ndarray) -> np.ndarray:
    return _sigmoid(-3.0 + 1.2 * z[:, 0] + 0.4 * z[:, 1])


def _stage_exceed(z: np.ndarray, p: SyntheticParams) -> np.ndarray:
    """P(stage >= j) for j = 1, 2, 3: (m, 3)."""
    return _sigmoid((z[:, [0]] - np.asarray(p.stage_cuts)) / p.stage_scale)


# --------------------------------------------------------------------------- config


def _demographics() -> list[dict]:
    """Age and sex, the static variables both synthetic worlds declare alike."""
    return [
        {"name": "age", "codes": ["STATIC//AGE"], "kind": "static", "unit": "years", "plausible_range": (0.0, 120.0)},
        {
            "name": "sex",
            "codes": ["STATIC//SEX"],
            "kind": "static",
            "plausible_range": (0.0, 1.0),
            "categories": {"female": 0.0, "male": 1.0},
        },
    ]


def synthetic_config(imaging_dim: int = 32, params: SyntheticParams | None = None) -> DatasetConfig:
    """The dataset config of the synthetic world: every variable kind, and four tests."""
    p = params or SyntheticParams()
    sd = dict(zip(CONTINUOUS_LABS, p.lab_sd, strict=True))

    def lab(
        name: str, code: str, unit: str | None, test: str, rng: tuple[float, float], ref: tuple[float, float], desc: str
    ) -> dict:
        return {
            "name": name,
            "codes": [code],
            "kind": "continuous",
            "unit": unit,
            "test": test,
            "transform": "log" if name in LOG_LABS else "none",
            "plausible_range": rng,
            "reference_range": ref,
            "description": f"{desc} (noise sd {sd[name]:g} on the {'log' if name in LOG_LABS else 'natural'} scale)",
        }

    variables = [
        *_demographics(),
        {
            "name": "subtype",
            "codes": ["STATIC//SUBTYPE"],
            "kind": "static",
            "plausible_range": (0.0, 1.0),
            "categories": {"weak_responder": 0.0, "strong_responder": 1.0},
            "description": "Disease subtype; the drug works mostly in subtype 1.",
        },
        lab("bilirubin", "LAB//BILIRUBIN", "mg/dL", "panel_a", (0.01, 1000.0), (0.1, 1.2), "Serum bilirubin"),
        lab("alt", "LAB//ALT", "U/L", "panel_a", (0.1, 1.0e5), (7.0, 56.0), "Alanine aminotransferase"),
        lab("albumin", "LAB//ALBUMIN", "g/dL", "panel_a", (0.0, 10.0), (3.5, 5.0), "Serum albumin"),
        lab("platelets", "LAB//PLATELETS", "10^9/L", "panel_b", (0.1, 1.0e4), (150.0, 400.0), "Platelet count"),
        lab("inr", "LAB//INR", None, "panel_b", (0.0, 20.0), (0.8, 1.2), "International normalised ratio"),
        {
            "name": "ascites",
            "codes": ["EXAM//ASCITES"],
            "kind": "binary",
            "test": "exam",
            "description": "Ascites on examination.",
        },
        {
            "name": "stage",
            "codes": ["EXAM//STAGE"],
            "kind": "ordinal",
            "levels": [0.0, 1.0, 2.0, 3.0],
            "test": "exam",
            "description": "Clinical stage 0-3.",
        },
        {
            "name": "ct",
            "codes": ["IMG//CT"],
            "kind": "imaging_embedding",
            "dimension": imaging_dim,
            "test": "ct",
            "description": f"Abdominal CT embedding (noise sd {p.imaging_sd:g} per dimension).",
        },
        {"name": "diabetes", "codes": ["ICD10//E11"], "kind": "history", "description": "Type 2 diabetes."},
        {"name": "hypertension", "codes": ["ICD10//I10"], "kind": "history", "description": "Essential hypertension."},
        {
            "name": DRUG,
            "codes": ["RX//DRUG"],
            "kind": "treatment",
            "unit": "dose level",
            "plausible_range": (0.0, 2.0),
            "description": "Disease-modifying drug, Emax dose response.",
        },
        {"name": "death", "codes": [MEDS_DEATH], "kind": "event"},
        {
            "name": "progression",
            "codes": ["VPATIENT//PROGRESSION"],
            "kind": "event",
            "description": "Clinical progression (non-terminal).",
        },
    ]
    tests = [
        {
            "name": "panel_a",
            "variables": ["bilirubin", "alt", "albumin"],
            "cost": 1.0,
            "turnaround_days": 1.0,
            "description": "Liver panel.",
        },
        {
            "name": "panel_b",
            "variables": ["platelets", "inr"],
            "cost": 2.0,
            "turnaround_days": 1.0,
            "description": "Blood count and coagulation.",
        },
        {"name": "exam", "variables": ["ascites", "stage"], "cost": 1.5, "description": "Clinical examination and staging."},
        {"name": "ct", "variables": ["ct"], "cost": 20.0, "turnaround_days": 3.0, "description": "Abdominal CT."},
    ]
    return DatasetConfig.model_validate(
        {
            "name": "synthetic",
            "description": "Mechanistic multimodal generator with known ground truth (vpatient.data.synthetic).",
            "horizon": 5.0,
            "variables": variables,
            "tests": tests,
        }
    )


# --------------------------------------------------------------------------- truth


@dataclass(frozen=True, eq=False)
class SyntheticTruth:
    """The ground truth of a synthetic cohort, for any subject under any exposures.

    Exposures are full lists (what was given from t=0); build a what-if with
    ``plans.exposures_under_plan(record.treatments, plan, from_time)``. Times are
    years since index, >= 0, in any order. The ``*_many`` methods take one exposure
    list per subject and times shared (T,) or per subject (n, T), where NaN pads
    ragged rows (and gives NaN out). One call integrates all its subjects at once.

    Attributes: ``params``; ``subject_ids``; ``covariates`` (DataFrame indexed by
    subject: age, sex, subtype, diabetes, hypertension); ``z0`` (n, 2) the drawn initial
    latent states; ``imaging_weights`` (W (d, 2), b (d,)).
    """

    params: Any  # SyntheticParams (DailyParams for the daily world)
    config: DatasetConfig
    subject_ids: tuple[str, ...]
    covariates: pd.DataFrame
    z0: np.ndarray  # (n, 2)
    imaging_weights: tuple[np.ndarray, np.ndarray]
    _factual: Mapping[str, tuple[TreatmentExposure, ...]] = field(repr=False)
    _rows: Mapping[str, int] = field(repr=False)
    _coef: _Field = field(repr=False)

    #: What a world is made of; a second world (:class:`DailyTruth`) overrides these.
    treatments: ClassVar[tuple[str, ...]] = (DRUG,)
    events: ClassVar[tuple[str, ...]] = EVENTS
    labs: ClassVar[tuple[str, ...]] = CONTINUOUS_LABS
    log_labs: ClassVar[frozenset[str]] = LOG_LABS
    #: Hidden states between the latent (z1, z2) and the cumulative hazards (drug effect compartments).
    n_hidden: ClassVar[int] = 0

    def augment(self, z0: np.ndarray) -> np.ndarray:
        """Initial augmented states (z, hidden compartments at 0, hazards at 0) from z0 (m, 2)."""
        return np.concatenate([z0, np.zeros((len(z0), self.n_hidden + len(self.events)))], axis=1)

    def hazard_column(self, event: str) -> int:
        """Column of ``event``'s cumulative hazard in the augmented state."""
        if event not in self.events:
            raise ValueError(f"unknown event {event!r}; the synthetic events are {', '.join(self.events)}")
        return 2 + self.n_hidden + self.events.index(event)

    def controls(self, exposures_list: Sequence[Sequence[TreatmentExposure]]) -> _Controls:
        """Doses of the world's treatments under each exposure list."""
        return _Controls.of(exposures_list, self.treatments)

    def lab_means(self, z: np.ndarray) -> np.ndarray:
        """Noiseless labs on the modelling scale, in the order of ``labs``: z (m, 2) -> (m, L)."""
        return _lab_links(z)

    @property
    def lab_sd(self) -> tuple[float, ...]:
        """Observation noise sd of each lab on its modelling scale."""
        return tuple(self.params.lab_sd)

    # -- subject facts -------------------------------------------------------

    def row(self, subject_id: str) -> int:
        try:
            return self._rows[str(subject_id)]
        except KeyError:
            raise KeyError(f"no subject {subject_id!r} in this synthetic cohort ({len(self.subject_ids)} subjects)") from None

    def factual_exposures(self, subject_id: str) -> list[TreatmentExposure]:
        """The exposures the subject's record was generated under."""
        return list(self._factual[self.subject_ids[self.row(subject_id)]])

    def static(self, subject_id: str) -> dict[str, float]:
        r = self.covariates.iloc[self.row(subject_id)]
        return {k: float(r[k]) for k in ("age", "sex", "subtype")}

    def history(self, subject_id: str) -> list[str]:
        r = self.covariates.iloc[self.row(subject_id)]
        return [code for code in HISTORY_CODES if r[code] > 0.5]

    def prior(self, subject_id: str) -> tuple[np.ndarray, np.ndarray]:
        """Mean (2,) and covariance (2, 2) of the prior the subject's z0 was drawn from."""
        return initial_state_prior(self.static(subject_id), self.history(subject_id), self.params)

    @property
    def noise_sd(self) -> dict[str, float]:
        """Observation noise sd per variable: continuous labs on their transformed scale
        (log for bilirubin, alt, platelets), ``stage`` the logistic scale of its latent
        threshold model, ``ct`` per embedding dimension. ``ascites`` is Bernoulli (no entry)."""
        out = dict(zip(self.labs, self.lab_sd, strict=True))
        return out | {"stage": self.params.stage_scale, "ct": self.params.imaging_sd}

    def vector_field(self, subject_id: str, z: np.ndarray, dose: float | Sequence[float]) -> np.ndarray:
        """dz/dt of the subject at states z (m, 2) under constant doses (one, or one per treatment): (m, 2).

        Hidden compartments (the daily world's drug effects) are taken at 0."""
        z = np.atleast_2d(np.asarray(z, dtype=float))
        c = self._coef.take(np.full(len(z), self.row(subject_id)))
        u = np.broadcast_to(np.asarray(dose, dtype=float), (len(z), len(self.treatments)))
        return c.rhs(self.augment(z), u, self.params)[:, :2]

    # -- trajectories --------------------------------------------------------

    def states_from(self, subject_id: str, z0: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Augmented states (z1, z2, H_death, H_progression) of the subject from other initial states.

        ``z0`` (m, 2) replaces the subject's drawn initial state (e.g. draws from
        :meth:`prior`); the subject's own dynamics and factual exposures, times (T,):
        (m, T, 4).
        """
        m = len(z0)
        y0 = self.augment(z0)
        controls = self.controls([self.factual_exposures(subject_id)]).take(np.zeros(m, dtype=int))
        tau = np.broadcast_to(np.asarray(times, dtype=float), (m, len(times))).copy()
        return _solve(y0, tau, self._coef.take(np.full(m, self.row(subject_id))), controls, self.params)

    def states_many(
        self, subject_ids: Sequence[str], exposures_list: Sequence[Sequence[TreatmentExposure]], times: np.ndarray
    ) -> np.ndarray:
        """Augmented states (z1, z2, hidden compartments, cumulative hazards of ``events``): (n, T, 4) here."""
        if len(subject_ids) != len(exposures_list):
            raise ValueError(f"{len(subject_ids)} subjects but {len(exposures_list)} exposure lists")
        rows = np.array([self.row(s) for s in subject_ids], dtype=int)
        tau = np.asarray(times, dtype=float)
        if tau.ndim == 1:
            tau = np.broadcast_to(tau, (len(rows), tau.size))
        if tau.ndim != 2 or tau.shape[0] != len(rows):
            raise ValueError(f"times must be (T,) or (n_subjects={len(rows)}, T), got shape {np.shape(times)}")
        missing = np.isnan(tau)
        if np.any(np.isinf(tau)) or np.any(tau[~missing] < 0):
            raise ValueError("times must be finite and >= 0 (years since index); NaN marks padding")
        y0 = self.augment(self.z0[rows])
        out = _solve(y0, np.where(missing, 0.0, tau), self._coef.take(rows), self.controls(exposures_list), self.params)
        out[missing] = np.nan
        return out

    def latent_many(
        self, subject_ids: Sequence[str], exposures_list: Sequence[Sequence[TreatmentExposure]], times: np.ndarray
    ) -> np.ndarray:
        """True latent states: (n, T, 2)."""
        return self.states_many(subject_ids, exposures_list, times)[..., :2]

    def latent(self, subject_id: str, exposures: Sequence[TreatmentExposure], times: np.ndarray) -> np.ndarray:
        """True latent state of one subject at ``times``: (T, 2)."""
        return self.latent_many([subject_id], [exposures], np.ravel(times))[0]

    def cumulative_hazard_many(
        self,
        subject_ids: Sequence[str],
        exposures_list: Sequence[Sequence[TreatmentExposure]],
        times: np.ndarray,
        event: str = "death",
    ) -> np.ndarray:
        """Cumulative hazard of ``event`` from 0: (n, T)."""
        col = self.hazard_column(event)
        return self.states_many(subject_ids, exposures_list, times)[..., col]

    def cumulative_hazard(
        self, subject_id: str, exposures: Sequence[TreatmentExposure], times: np.ndarray, event: str = "death"
    ) -> np.ndarray:
        return self.cumulative_hazard_many([subject_id], [exposures], np.ravel(times), event)[0]

    def survival_many(
        self,
        subject_ids: Sequence[str],
        exposures_list: Sequence[Sequence[TreatmentExposure]],
        times: np.ndarray,
        event: str = "death",
    ) -> np.ndarray:
        """True cause-specific survival exp(-H_event(t)) (ignores the other event and dropout): (n, T)."""
        return np.exp(-self.cumulative_hazard_many(subject_ids, exposures_list, times, event))

    def survival(
        self, subject_id: str, exposures: Sequence[TreatmentExposure], times: np.ndarray, event: str = "death"
    ) -> np.ndarray:
        """True survival of one subject from ``event``'s own hazard: (T,)."""
        return self.survival_many([subject_id], [exposures], np.ravel(times), event)[0]

    def observables_many(
        self, subject_ids: Sequence[str], exposures_list: Sequence[Sequence[TreatmentExposure]], times: np.ndarray
    ) -> pd.DataFrame:
        """Noiseless observables, one row per (subject, time): subject_id, time, then the variables."""
        tau = np.asarray(times, dtype=float)
        z = self.latent_many(subject_ids, exposures_list, tau)
        n, T, _ = z.shape
        tau = np.broadcast_to(tau, (n, T))
        frame = self._observables(z.reshape(n * T, 2), tau.ravel())
        frame.insert(0, "subject_id", np.repeat(np.asarray(subject_ids, dtype=object), T))
        return frame

    def observables(self, subject_id: str, exposures: Sequence[TreatmentExposure], times: np.ndarray) -> pd.DataFrame:
        """Noiseless observables at ``times`` on the natural scale.

        Columns: time; the continuous labs (the value with zero noise, i.e. exp of the
        log-scale mean for log labs, which is their median); ``ascites`` its probability;
        ``stage`` its expected level; ``ct_0 .. ct_{d-1}`` the noiseless embedding.
        """
        return self.observables_many([subject_id], [exposures], np.ravel(times)).drop(columns="subject_id")

    # -- the observation model -----------------------------------------------

    def observes(self, variable: str) -> bool:
        """Whether the generator has an observation model of ``variable`` (a lab, ascites, stage, ct)."""
        return variable in self.labs or variable in ("ascites", "stage", "ct")

    def stage_probabilities(self, z: np.ndarray) -> np.ndarray:
        """P(stage = j | z) for j = 0..3, floored at 1e-12: (m, 4)."""
        exceed = _stage_exceed(z, self.params)  # (m, 3) P(stage >= j)
        upper = np.concatenate([np.ones((len(z), 1)), exceed], axis=1)
        lower = np.concatenate([exceed, np.zeros((len(z), 1))], axis=1)
        return np.clip(upper - lower, 1e-12, 1.0)

    def log_likelihood(self, z: np.ndarray, variable: str, value: float | np.ndarray) -> np.ndarray:
        """log p(value | z) of one observed variable under the generator's observation model.

        ``z`` (m, 2) latent states. ``value`` is one observation (a lab on its modelling
        scale, ascites 0/1, a stage level, a ct embedding (d,)): returns (m,); or one per
        row of a batch ((n,), ct (n, d)): returns (n, m). Gaussian terms leave out their
        normalising constants (they cancel in importance weights). A batch of ct embeddings
        expands the square, so as not to hold (n, m, d) at once.
        """
        p = self.params
        if not self.observes(variable):
            raise ValueError(f"no observation model of {variable!r}; the generator observes {', '.join(self.observed)}")
        if variable in self.labs:
            j = self.labs.index(variable)
            mean = self.lab_means(z)[:, j]
            return -0.5 * ((np.asarray(value, dtype=float)[..., None] - mean) / self.lab_sd[j]) ** 2
        if variable == "ascites":
            q = np.clip(_ascites_prob(z), 1e-12, 1 - 1e-12)
            return np.where(np.asarray(value)[..., None] > 0.5, np.log(q), np.log1p(-q))
        if variable == "stage":
            level = np.rint(np.asarray(value, dtype=float)).astype(int)
            return np.moveaxis(np.log(self.stage_probabilities(z))[:, level], 0, -1)
        if variable == "ct":
            W, b = self.imaging_weights
            mean = np.tanh(z @ W.T + b)
            e = np.asarray(value, dtype=float)
            if e.ndim == 1:
                return -0.5 * (((e - mean) / p.imaging_sd) ** 2).sum(axis=1)
            sq = (e**2).sum(1)[:, None] - 2 * e @ mean.T + (mean**2).sum(1)[None]
            return -0.5 * sq / p.imaging_sd**2
        raise AssertionError(f"observes({variable!r}) without a likelihood")

    @property
    def observed(self) -> tuple[str, ...]:
        """Variables with an observation model."""
        return tuple(v.name for v in self.config.variables if self.observes(v.name))

    def draw_results(self, z: np.ndarray, variables: Sequence[str], rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One result of each variable the generator observes, per latent state z (m, 2).

        Labs on their modelling scale (m,), ascites bool (m,), stage level (m,), ct (m, d).
        Variables without an observation model are skipped. Draws from ``rng`` variable by
        variable in the order given.
        """
        p = self.params
        out: dict[str, np.ndarray] = {}
        for v in variables:
            if v in self.labs:
                j = self.labs.index(v)
                out[v] = self.lab_means(z)[:, j] + rng.normal(0, self.lab_sd[j], len(z))
            elif v == "ascites":
                out[v] = rng.random(len(z)) < _ascites_prob(z)
            elif v == "stage":
                u = rng.random(len(z))
                out[v] = np.minimum((self.stage_probabilities(z).cumsum(axis=1) < u[:, None]).sum(axis=1), len(p.stage_cuts))
            elif v == "ct":
                W, b = self.imaging_weights
                mean = np.tanh(z @ W.T + b)
                out[v] = mean + rng.normal(0, p.imaging_sd, mean.shape)
        return out

    def _observables(self, z: np.ndarray, t: np.ndarray) -> pd.DataFrame:
        """z (m, 2) with NaN rows for padding, t (m,) -> one row per state."""
        pad = np.isnan(z).any(axis=1)
        z = np.where(pad[:, None], 0.0, z)
        cols: dict[str, np.ndarray] = {"time": t}
        labs = _natural(self.lab_means(z), [name in self.log_labs for name in self.labs])
        cols |= {name: labs[:, j] for j, name in enumerate(self.labs)}
        cols |= self._other_observables(z)
        frame = pd.DataFrame(cols)
        frame.loc[pad, frame.columns[1:]] = np.nan
        return frame

    def _other_observables(self, z: np.ndarray) -> dict[str, np.ndarray]:
        """Noiseless ascites probability, expected stage and CT embedding: the columns after the labs."""
        W, b = self.imaging_weights
        cols = {"ascites": _ascites_prob(z), "stage": _stage_exceed(z, self.params).sum(axis=1)}
        img = np.tanh(z @ W.T + b)
        return cols | {f"ct_{j}": img[:, j] for j in range(W.shape[0])}


# --------------------------------------------------------------------------- cohort


@dataclass(frozen=True)
class SyntheticCohort(Cohort):
    """A :class:`~vpatient.data.cohort.Cohort` that also knows its ground truth."""

    truth: SyntheticTruth = field(kw_only=True, repr=False)


def synthetic_cohort(
    n: int,
    seed: int,
    *,
    confounding: float = 0.0,
    years: float = 6.0,
    imaging_dim: int = 32,
    params: SyntheticParams | None = None,
) -> SyntheticCohort:
    """Draw ``n`` subjects from the synthetic world (module docstring), deterministic in ``seed``.

    ``confounding`` sets how strongly baseline severity drives treatment (0: randomised);
    ``years`` is administrative censoring; ``imaging_dim`` the CT embedding's length.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not (math.isfinite(years) and years > 0):
        raise ValueError(f"years must be finite and > 0, got {years}")
    if imaging_dim < 1:
        raise ValueError(f"imaging_dim must be >= 1, got {imaging_dim}")
    p = params or SyntheticParams()
    rng = np.random.default_rng(seed)
    config = synthetic_config(imaging_dim, p)

    # covariates and history
    age = np.clip(rng.normal(p.age_mean, p.age_sd, n), 20.0, 90.0)
    sex = (rng.random(n) < p.p_male).astype(float)
    subtype = (rng.random(n) < p.p_subtype1).astype(float)
    a = (age - 55.0) / 10.0
    diabetes = (rng.random(n) < _sigmoid(p.diabetes_logit[0] + p.diabetes_logit[1] * a)).astype(float)
    hypertension = (rng.random(n) < _sigmoid(p.hypertension_logit[0] + p.hypertension_logit[1] * a)).astype(float)
    onset = -rng.uniform(0.25, 10.0, (n, len(HISTORY_CODES)))
    x = np.stack([age, sex, subtype, diabetes, hypertension], axis=1)  # (n, 5)

    # initial state
    z0 = _prior_mean(x, p) + rng.standard_normal((n, 2)) @ np.linalg.cholesky(_prior_cov(p)).T

    # treatment
    severity = z0[:, 0]
    std_sev = (severity - severity.mean()) / (severity.std() if n > 1 and severity.std() > 0 else 1.0)
    treated = rng.random(n) < _sigmoid(confounding * std_sev)
    dose = np.where(rng.random(n) < p.p_dose2, 2.0, 1.0)
    exposures = [
        (TreatmentExposure(treatment=DRUG, start=0.0, stop=None, dose=float(dose[i])),) if treated[i] else () for i in range(n)
    ]

    # latent paths and events
    coef = _Coef.of(x, p)
    controls = _Controls.of(exposures)
    y0 = np.concatenate([z0, np.zeros((n, 2))], axis=1)
    grid = _grid(y0, years, coef, controls, p)
    e_death, e_prog = rng.exponential(1.0, n), rng.exponential(1.0, n)
    t_death = _event_times(grid, 2, e_death, coef, controls, p)
    t_prog = _event_times(grid, 3, e_prog, coef, controls, p)
    t_drop = rng.exponential(1.0 / p.dropout_rate, n) if p.dropout_rate > 0 else np.full(n, np.inf)
    end = np.minimum(np.minimum(t_death, t_drop), years)

    # visits
    visits = _visit_times(rng, end, p)
    counts = np.array([len(v) for v in visits])
    rows = np.repeat(np.arange(n), counts)
    tv = np.concatenate(visits)
    z = _dense(grid, rows, tv, coef, controls, p)[:, :2]  # (V, 2)
    V = len(tv)

    # test orders: routine tests at baseline, otherwise more likely when sicker
    order_p = _sigmoid(np.asarray(p.order_intercepts)[None, :] + p.order_slope * (z[:, [0]] - p.order_centre))
    ordered = rng.random((V, len(TESTS))) < order_p
    baseline = tv == 0.0
    ordered[baseline, : len(ROUTINE_TESTS)] = True

    # measurements (drawn at every visit, kept where ordered)
    eta = _lab_links(z) + rng.standard_normal((V, len(CONTINUOUS_LABS))) * np.asarray(p.lab_sd)
    labs = _natural(eta)
    ascites = (rng.random(V) < _ascites_prob(z)).astype(float)
    stage = (z[:, [0]] + p.stage_scale * rng.logistic(0.0, 1.0, (V, 1)) > np.asarray(p.stage_cuts)).sum(axis=1).astype(float)
    W, b = _imaging_map(imaging_dim, p)
    ct = np.tanh(z @ W.T + b) + p.imaging_sd * rng.standard_normal((V, imaging_dim))

    # records
    ids = [f"syn{i:05d}" for i in range(n)]
    start = np.concatenate([[0], np.cumsum(counts)])
    raw = []
    for i in range(n):
        observations, imaging = [], []
        for v in range(start[i], start[i + 1]):
            t = float(tv[v])
            if ordered[v, 0]:
                observations += [
                    {"time": t, "variable": name, "value": float(labs[v, j])} for j, name in enumerate(CONTINUOUS_LABS[:3])
                ]
            if ordered[v, 1]:
                observations += [
                    {"time": t, "variable": name, "value": float(labs[v, j])} for j, name in enumerate(CONTINUOUS_LABS[3:], 3)
                ]
            if ordered[v, 2]:
                observations += [
                    {"time": t, "variable": "ascites", "value": float(ascites[v])},
                    {"time": t, "variable": "stage", "value": float(stage[v])},
                ]
            if ordered[v, 3]:
                imaging.append({"time": t, "modality": "ct", "embedding": ct[v].tolist()})
        events = [
            {"time": float(t), "kind": kind} for t, kind in ((t_death[i], "death"), (t_prog[i], "progression")) if t <= end[i]
        ]
        events.sort(key=lambda e: e["time"])  # stable: death first on a tie, as in the config
        raw.append(
            {
                "subject_id": ids[i],
                "static": {"age": float(age[i]), "sex": float(sex[i]), "subtype": float(subtype[i])},
                "observations": observations,
                "imaging": imaging,
                "history": sorted(
                    ({"time": float(onset[i, j]), "code": code} for j, code in enumerate(HISTORY_CODES) if x[i, 3 + j] > 0.5),
                    key=lambda h: (h["time"], h["code"]),
                ),
                "treatments": [e.model_dump() for e in exposures[i]],
                "events": events,
                "end_of_followup": float(end[i]),
            }
        )
    records = [r.in_canonical_order(config) for r in parse_records(raw, config)]

    truth = SyntheticTruth(
        params=p,
        config=config,
        subject_ids=tuple(ids),
        covariates=pd.DataFrame(x, columns=list(COVARIATES), index=pd.Index(ids, name="subject_id")),
        z0=z0,
        imaging_weights=(W, b),
        _factual={ids[i]: tuple(records[i].treatments) for i in range(n)},
        _rows={sid: i for i, sid in enumerate(ids)},
        _coef=coef,
    )
    return SyntheticCohort(name="synthetic", records=records, config=config, citation=None, truth=truth)


def synthetic_stream(n: int, seed: int, chunk_size: int = 5_000, **kwargs: Any) -> Iterator[PatientRecord]:
    """``n`` synthetic subjects drawn chunk by chunk, for cohorts too large to hold (10^5 and more).

    Each chunk is :func:`synthetic_cohort` with its own seed derived from ``seed`` and the chunk's
    number; ids run ``syn0000000`` onwards across chunks. Memory holds one chunk. The records are
    not those of ``synthetic_cohort(n, seed)`` (one draw), and the generator's truth is not kept.
    Keyword arguments go to :func:`synthetic_cohort` (its config is ``synthetic_config`` of the
    same ``imaging_dim`` and ``params``).
    """
    if n < 1 or chunk_size < 1:
        raise ValueError(f"n and chunk_size must be >= 1, got {n} and {chunk_size}")
    # one SeedSequence per chunk, as derived_seed does, without importing the benchmarks package
    seeds = np.random.SeedSequence(seed).spawn((n + chunk_size - 1) // chunk_size)
    for k, start in enumerate(range(0, n, chunk_size)):
        size = min(chunk_size, n - start)
        chunk_seed = int(seeds[k].generate_state(1)[0])
        for i, record in enumerate(synthetic_cohort(size, chunk_seed, **kwargs).records):
            yield record.model_copy(update={"subject_id": f"syn{start + i:07d}"})


def _visit_times(rng: np.random.Generator, end: np.ndarray, p: SyntheticParams) -> list[np.ndarray]:
    """Visit times per subject: 0, then Gamma gaps, strictly before end of follow-up."""
    n = len(end)
    scale = p.visit_gap_mean / p.visit_gap_shape
    horizon = float(end.max(initial=0.0))
    width = max(4, math.ceil(2.0 * horizon / p.visit_gap_mean) + 8)
    gaps = rng.gamma(p.visit_gap_shape, scale, (n, width))
    times = np.concatenate([np.zeros((n, 1)), np.cumsum(gaps, axis=1)], axis=1)
    while np.any(times[:, -1] < end):  # rare: extend the short rows' draws deterministically
        more = rng.gamma(p.visit_gap_shape, scale, (n, width))
        times = np.concatenate([times, times[:, [-1]] + np.cumsum(more, axis=1)], axis=1)
    return [times[i, times[i] < end[i]] for i in range(n)]


# --------------------------------------------------------------------------- the daily world

#: The daily world's treatments: A fast-acting, B with carry-over.
DAILY_TREATMENTS = ("drug_a", "drug_b")
#: The daily world's labs: log tumour volume, a marker that follows it, a toxicity lab (all log-transformed).
DAILY_LABS = ("volume", "marker", "neutrophils")
DAILY_EVENTS = ("death",)
#: Covariate columns of the daily world's truth.
DAILY_COVARIATES = ("age", "sex", "growth_rate")


@dataclass(frozen=True)
class DailyParams:
    """Every constant of the daily world (module docstring, "The daily world"); times in days."""

    solver_step: float = 0.125  # a power of 2, so integer days (where doses change) are exact grid nodes
    age_mean: float = 62.0
    age_sd: float = 10.0
    p_male: float = 0.5
    # initial state: log volume and toxicity
    volume0: tuple[float, float, float] = (2.0, 0.15, 0.5)  # (mean, per decade of age, sd)
    toxicity0_sd: float = 0.1
    # growth: r = growth_rate exp(rate_age a + rate_sex sex + rate_sd eta), eta ~ N(0, 1)
    growth_rate: float = 0.03
    rate_age: float = 0.1
    rate_sex: float = 0.15
    rate_sd: float = 0.3
    capacity: float = 6.0
    # drugs: effect on the log-growth rate per unit of compartment, compartment rates (1/day)
    effect: tuple[float, float] = (0.06, 0.05)
    uptake: tuple[float, float] = (2.0, 0.3)
    toxicity: tuple[float, float] = (1.0, 0.6)
    toxicity_rate: float = 0.2
    # death hazard (per day): (intercept, age per decade, log volume, toxicity)
    death_hazard: tuple[float, float, float, float] = (-8.1, 0.2, 0.8, 1.0)
    dropout_rate: float = 0.002
    # treatment runs: daily start logits (A, B), daily stop probability, reduced dose
    start_logit: tuple[float, float] = (-2.5, -2.8)
    stop_prob: float = 0.12
    p_reduced_dose: float = 0.3
    reduced_dose: float = 0.5
    # visits and observations
    p_missed_visit: float = 0.05
    lab_sd: tuple[float, float, float] = (0.05, 0.15, 0.1)
    marker_link: tuple[float, float] = (math.log(5.0), 0.7)  # log marker = a + b (log volume - 2)
    neutrophil_link: tuple[float, float] = (math.log(4.0), -0.5)  # log neutrophils = a + b toxicity

    def __post_init__(self) -> None:
        if not self.solver_step > 0:
            raise ValueError(f"solver_step must be > 0, got {self.solver_step}")


@dataclass(frozen=True)
class _DailyCoef:
    """Per-subject coefficients of the daily world's vector field, each (m,)."""

    rate: np.ndarray
    death0: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray, p: DailyParams) -> _DailyCoef:
        """x (n, 3): age, sex, growth rate."""
        a = (x[:, 0] - p.age_mean) / 10.0
        return cls(rate=x[:, 2], death0=p.death_hazard[0] + p.death_hazard[1] * a)

    def take(self, rows: np.ndarray) -> _DailyCoef:
        return _DailyCoef(self.rate[rows], self.death0[rows])

    def rhs(self, y: np.ndarray, u: np.ndarray, p: DailyParams) -> np.ndarray:
        """d/dt of y (m, 5) = (log volume, toxicity, effect A, effect B, H_death) at doses u (m, 2)."""
        v, tox, ea, eb = y[:, 0], y[:, 1], y[:, 2], y[:, 3]
        out = np.empty_like(y)
        out[:, 0] = self.rate * (1.0 - v / p.capacity) - p.effect[0] * ea - p.effect[1] * eb
        out[:, 1] = p.toxicity_rate * (p.toxicity[0] * ea + p.toxicity[1] * eb - tox)
        out[:, 2] = p.uptake[0] * (u[:, 0] - ea)
        out[:, 3] = p.uptake[1] * (u[:, 1] - eb)
        out[:, 4] = np.exp(self.death0 + p.death_hazard[2] * v + p.death_hazard[3] * tox)
        return out


@dataclass(frozen=True, eq=False)
class DailyTruth(SyntheticTruth):
    """The daily world's ground truth: the trajectory methods of :class:`SyntheticTruth`, its own observations.

    ``covariates``: age, sex and each subject's growth rate (per day); ``z0`` (n, 2) the
    drawn (log volume, toxicity) at day 0; no imaging (``imaging_weights`` are empty).
    """

    treatments: ClassVar[tuple[str, ...]] = DAILY_TREATMENTS
    events: ClassVar[tuple[str, ...]] = DAILY_EVENTS
    labs: ClassVar[tuple[str, ...]] = DAILY_LABS
    log_labs: ClassVar[frozenset[str]] = frozenset(DAILY_LABS)
    n_hidden: ClassVar[int] = 2

    def static(self, subject_id: str) -> dict[str, float]:
        r = self.covariates.iloc[self.row(subject_id)]
        return {k: float(r[k]) for k in ("age", "sex")}

    def history(self, subject_id: str) -> list[str]:
        return []

    def prior(self, subject_id: str) -> tuple[np.ndarray, np.ndarray]:
        """Mean (2,) and covariance (2, 2) of the prior the subject's (log volume, toxicity) at day 0 was drawn from."""
        return _daily_prior(self.static(subject_id)["age"], self.params)

    def lab_means(self, z: np.ndarray) -> np.ndarray:
        p = self.params
        return np.stack(
            [
                z[:, 0],
                p.marker_link[0] + p.marker_link[1] * (z[:, 0] - 2.0),
                p.neutrophil_link[0] + p.neutrophil_link[1] * z[:, 1],
            ],
            axis=1,
        )

    @property
    def noise_sd(self) -> dict[str, float]:
        """Observation noise sd of each lab on the log scale."""
        return dict(zip(self.labs, self.lab_sd, strict=True))

    def observes(self, variable: str) -> bool:
        return variable in self.labs

    def _other_observables(self, z: np.ndarray) -> dict[str, np.ndarray]:
        return {}


def _daily_prior(age: float | np.ndarray, p: DailyParams) -> tuple[np.ndarray, np.ndarray]:
    """Prior of (log volume, toxicity) at day 0: mean (..., 2) and covariance (2, 2)."""
    a = (np.asarray(age, dtype=float) - p.age_mean) / 10.0
    mean = np.stack([p.volume0[0] + p.volume0[1] * a, np.zeros_like(a)], axis=-1)
    return mean, np.diag([p.volume0[2] ** 2, p.toxicity0_sd**2])


def daily_config(params: DailyParams | None = None) -> DatasetConfig:
    """The dataset config of the daily world: three log labs, two treatments, death; time in days."""
    p = params or DailyParams()
    sd = dict(zip(DAILY_LABS, p.lab_sd, strict=True))

    def lab(name: str, code: str, unit: str, test: str, rng: tuple[float, float], desc: str) -> dict:
        return {
            "name": name,
            "codes": [code],
            "kind": "continuous",
            "unit": unit,
            "test": test,
            "transform": "log",
            "plausible_range": rng,
            "description": f"{desc} (noise sd {sd[name]:g} on the log scale)",
        }

    variables = [
        *_demographics(),
        lab("volume", "IMG//TUMOUR_VOLUME", "cm^3", "scan", (1e-3, 1e5), "Tumour volume; log volume is the latent z1"),
        lab("marker", "LAB//MARKER", "ng/mL", "blood", (1e-3, 1e5), "Tumour marker, log-linear in log volume"),
        lab("neutrophils", "LAB//NEUTROPHILS", "10^9/L", "blood", (1e-3, 100.0), "Neutrophil count, falls with toxicity z2"),
        {
            "name": "drug_a",
            "codes": ["RX//DRUG_A"],
            "kind": "treatment",
            "unit": "dose level",
            "plausible_range": (0.0, 1.0),
            "description": f"Fast-acting drug: effect compartment rate {p.uptake[0]:g}/day, "
            f"slows log growth by {p.effect[0]:g}/day at dose 1.",
        },
        {
            "name": "drug_b",
            "codes": ["RX//DRUG_B"],
            "kind": "treatment",
            "unit": "dose level",
            "plausible_range": (0.0, 1.0),
            "description": f"Drug with carry-over: effect compartment rate {p.uptake[1]:g}/day (half-life "
            f"{math.log(2) / p.uptake[1]:.1f} days after it stops), slows log growth by {p.effect[1]:g}/day at dose 1.",
        },
        {"name": "death", "codes": [MEDS_DEATH], "kind": "event"},
    ]
    tests = [
        {"name": "scan", "variables": ["volume"], "cost": 5.0, "description": "Tumour volume scan."},
        {"name": "blood", "variables": ["marker", "neutrophils"], "cost": 1.0, "description": "Tumour marker and blood count."},
    ]
    description = (
        "Daily oncology world with known ground truth (vpatient.data.synthetic, 'The daily world'); time in days. "
        "v = log tumour volume, T = toxicity, A and B the drugs' effect compartments: "
        f"dv/dt = r (1 - v/{p.capacity:g}) - {p.effect[0]:g} A - {p.effect[1]:g} B; "
        f"dT/dt = {p.toxicity_rate:g} ({p.toxicity[0]:g} A + {p.toxicity[1]:g} B - T); "
        f"dA/dt = {p.uptake[0]:g} (dose_a - A); dB/dt = {p.uptake[1]:g} (dose_b - B); "
        f"log h_death = {p.death_hazard[0]:g} + {p.death_hazard[1]:g} (age - {p.age_mean:g})/10 + "
        f"{p.death_hazard[2]:g} v + {p.death_hazard[3]:g} T. "
        "Treatments start and stop in runs, more often started in patients with larger tumours (confounding)."
    )
    return DatasetConfig.model_validate(
        {
            "name": "synthetic-daily",
            "description": description,
            "time_unit": "days",
            "horizon": 5.0,  # what-ifs look five daily visits ahead
            "variables": variables,
            "tests": tests,
        }
    )


def daily_cohort(
    n: int, seed: int, *, confounding: float = 1.0, days: int = 60, params: DailyParams | None = None
) -> SyntheticCohort:
    """Draw ``n`` subjects from the daily world (module docstring), deterministic in ``seed``.

    ``confounding`` sets how strongly the current log volume drives starting a drug (0:
    starts at random); ``days`` is administrative censoring (and the number of daily visits).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if days < 2:
        raise ValueError(f"days must be >= 2, got {days}")
    p = params or DailyParams()
    rng = np.random.default_rng(seed)
    config = daily_config(p)

    age = np.clip(rng.normal(p.age_mean, p.age_sd, n), 25.0, 90.0)
    sex = (rng.random(n) < p.p_male).astype(float)
    a = (age - p.age_mean) / 10.0
    rate = p.growth_rate * np.exp(p.rate_age * a + p.rate_sex * sex + p.rate_sd * rng.standard_normal(n))
    x = np.stack([age, sex, rate], axis=1)
    mean, cov = _daily_prior(age, p)
    z0 = mean + rng.standard_normal((n, 2)) @ np.linalg.cholesky(cov).T
    coef = _DailyCoef.of(x, p)
    probe = DailyTruth(p, config, (), pd.DataFrame(), z0, (np.zeros((0, 2)), np.zeros(0)), {}, {}, coef)
    doses = _daily_treatment_runs(rng, probe.augment(z0), coef, days, confounding, p)  # (n, days, 2)

    exposures_full = [_runs(doses[i]) for i in range(n)]
    controls = _Controls.of(exposures_full, DAILY_TREATMENTS)
    grid = _grid(probe.augment(z0), float(days), coef, controls, p)
    t_death = _event_times(grid, probe.hazard_column("death"), rng.exponential(1.0, n), coef, controls, p)
    t_drop = rng.exponential(1.0 / p.dropout_rate, n) if p.dropout_rate > 0 else np.full(n, np.inf)
    end = np.minimum(np.minimum(t_death, t_drop), float(days))

    # visits: every day in follow-up, each after day 0 missed with a small probability
    day = np.arange(days, dtype=float)
    attended = (rng.random((n, days)) >= p.p_missed_visit) & (day[None, :] < end[:, None])
    attended[:, 0] = True
    rows, cols = np.nonzero(attended)
    z = _dense(grid, rows, day[cols], coef, controls, p)[:, :2]
    eta = probe.lab_means(z) + rng.standard_normal((len(rows), len(DAILY_LABS))) * np.asarray(p.lab_sd)
    values = np.exp(eta)

    ids = [f"day{i:05d}" for i in range(n)]
    observations: list[list[dict]] = [[] for _ in range(n)]
    for k, (i, d) in enumerate(zip(rows, cols, strict=True)):
        observations[i] += [
            {"time": float(d), "variable": name, "value": float(values[k, j])} for j, name in enumerate(DAILY_LABS)
        ]
    raw = [
        {
            "subject_id": ids[i],
            "static": {"age": float(age[i]), "sex": float(sex[i])},
            "observations": observations[i],
            "treatments": [e.model_dump() for e in _cut(exposures_full[i], float(end[i]))],
            "events": [{"time": float(t_death[i]), "kind": "death"}] if t_death[i] <= end[i] else [],
            "end_of_followup": float(end[i]),
        }
        for i in range(n)
    ]
    records = [r.in_canonical_order(config) for r in parse_records(raw, config)]
    truth = DailyTruth(
        params=p,
        config=config,
        subject_ids=tuple(ids),
        covariates=pd.DataFrame(x, columns=list(DAILY_COVARIATES), index=pd.Index(ids, name="subject_id")),
        z0=z0,
        imaging_weights=(np.zeros((0, 2)), np.zeros(0)),
        _factual={ids[i]: tuple(records[i].treatments) for i in range(n)},
        _rows={sid: i for i, sid in enumerate(ids)},
        _coef=coef,
    )
    return SyntheticCohort(name="synthetic-daily", records=records, config=config, citation=None, truth=truth)


def _daily_treatment_runs(
    rng: np.random.Generator, y0: np.ndarray, coef: _DailyCoef, days: int, confounding: float, p: DailyParams
) -> np.ndarray:
    """Each subject's dose of each drug on each day [d, d+1): (n, days, 2).

    Day by day: the state at day d (integrated under the doses so far) sets the chance of
    starting each drug; a drug on is stopped with probability ``stop_prob``; a run keeps its dose.
    """
    n = len(y0)
    doses = np.zeros((n, days, len(DAILY_TREATMENTS)))
    centre, scale = y0[:, 0].mean(), (y0[:, 0].std() if n > 1 and y0[:, 0].std() > 0 else 1.0)
    y = y0
    steps = round(1.0 / p.solver_step)
    for d in range(days):
        severity = (y[:, 0] - centre) / scale
        start = rng.random((n, 2)) < _sigmoid(np.asarray(p.start_logit)[None, :] + confounding * severity[:, None])
        stop = rng.random((n, 2)) < p.stop_prob
        dose = np.where(rng.random((n, 2)) < p.p_reduced_dose, p.reduced_dose, 1.0)
        before = doses[:, d - 1] if d > 0 else np.zeros((n, 2))
        doses[:, d] = np.where(before > 0, np.where(stop, 0.0, before), np.where(start, dose, 0.0))
        today = _Controls(np.zeros((n, 1)), doses[:, d][:, None, :])
        for k in range(steps):
            y = _advance(y, np.full(n, d + k * p.solver_step), np.full(n, d + (k + 1) * p.solver_step), coef, today, p)
    return doses


def _runs(daily_doses: np.ndarray) -> list[TreatmentExposure]:
    """Daily doses (days, K) of the daily world's drugs -> one exposure per run of equal, positive dose."""
    out = []
    for k, name in enumerate(DAILY_TREATMENTS):
        dose = daily_doses[:, k]
        change = np.flatnonzero(np.diff(np.concatenate([[0.0], dose, [0.0]])) != 0)
        for start, stop in itertools.pairwise(change):
            if dose[start] > 0:
                out.append(TreatmentExposure(treatment=name, start=float(start), stop=float(stop), dose=float(dose[start])))
    return sorted(out, key=lambda e: (e.start, e.treatment))


def _cut(exposures: Sequence[TreatmentExposure], end: float) -> list[TreatmentExposure]:
    """Exposures as far as follow-up goes: runs after ``end`` dropped, the one across it stopped there."""
    return [e.model_copy(update={"stop": min(e.stop, end) if e.stop is not None else end}) for e in exposures if e.start < end]
