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
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import pandas as pd

from vpatient.data.cohort import Cohort
from vpatient.plans import control_breakpoints, dose_at
from vpatient.schemas import DatasetConfig, TreatmentExposure, parse_records

__all__ = [
    "CONTINUOUS_LABS",
    "DRUG",
    "EVENTS",
    "LATENT_NAMES",
    "LOG_LABS",
    "SyntheticCohort",
    "SyntheticParams",
    "SyntheticTruth",
    "initial_state_prior",
    "rk4_step",
    "synthetic_cohort",
    "synthetic_config",
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


@dataclass(frozen=True)
class _Controls:
    """Piecewise-constant doses of many subjects: segment starts (n, B+1), padded with +inf."""

    starts: np.ndarray  # (n, B+1); starts[:, 0] = 0
    doses: np.ndarray  # (n, B+1); dose on [starts[j], starts[j+1])

    @classmethod
    def of(cls, exposures_list: Sequence[Sequence[TreatmentExposure]]) -> _Controls:
        segs = []
        for exposures in exposures_list:
            for exp in exposures:
                if exp.treatment != DRUG:
                    raise ValueError(f"unknown treatment {exp.treatment!r}: the synthetic world has only {DRUG!r}")
                if exp.start < 0 or not math.isfinite(exp.start) or not (math.isfinite(exp.dose) and exp.dose >= 0):
                    raise ValueError(f"invalid exposure {exp!r}: start and dose must be finite and >= 0")
            starts = np.array([0.0, *control_breakpoints(exposures, 0.0, math.inf)])
            segs.append((starts, dose_at(exposures, DRUG, starts)))
        width = max((len(s) for s, _ in segs), default=1)
        n = len(segs)
        starts = np.full((n, width), np.inf)
        doses = np.zeros((n, width))
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
        """Dose in force on [t, next change) for each row: t (m,) -> (m,)."""
        if self.constant:
            return self.doses[:, 0]
        idx = (self.starts <= t[:, None]).sum(axis=1) - 1
        return self.doses[np.arange(len(t)), idx]

    def next_change(self, t: np.ndarray) -> np.ndarray:
        """First dose change strictly after t (inf if none): (m,)."""
        if self.constant:
            return np.full_like(t, np.inf)
        return np.where(self.starts > t[:, None], self.starts, np.inf).min(axis=1)


def _advance(y: np.ndarray, t0: np.ndarray, t1: np.ndarray, c: _Coef, u: _Controls, p: SyntheticParams) -> np.ndarray:
    """RK4 from t0 to t1 (each (m,), t1 - t0 <= one grid step), split at dose changes."""
    if u.constant:  # no dose change anywhere: one step
        dose = u.doses[:, 0]
        return rk4_step(lambda v: _rhs(v, dose, c, p), y, t1 - t0)
    t = t0.copy()
    while True:
        stop = np.minimum(u.next_change(t), t1)
        dt = stop - t
        if not np.any(dt > 0):
            return y
        dose = u.dose(t)
        y = rk4_step(lambda v, d=dose: _rhs(v, d, c, p), y, dt)
        t = stop


def _grid(y0: np.ndarray, horizon: float, c: _Coef, u: _Controls, p: SyntheticParams) -> np.ndarray:
    """States on the grid t_k = k h, k = 0..K with K h >= horizon: (K+1, n, 4)."""
    h = p.solver_step
    steps = max(1, math.ceil(horizon / h - 1e-9))
    out = np.empty((steps + 1, *y0.shape))
    out[0] = y0
    n = y0.shape[0]
    for k in range(steps):
        out[k + 1] = _advance(out[k], np.full(n, k * h), np.full(n, (k + 1) * h), c, u, p)
    return out


def _node_below(tau: np.ndarray, p: SyntheticParams, last: int) -> np.ndarray:
    """Index k of the grid node with t_k <= tau (the last node at most)."""
    k = np.minimum(np.floor(tau / p.solver_step).astype(int), last)
    k = np.where(k * p.solver_step > tau, k - 1, k)
    return np.maximum(k, 0)


def _dense(grid: np.ndarray, rows: np.ndarray, tau: np.ndarray, c: _Coef, u: _Controls, p: SyntheticParams) -> np.ndarray:
    """State of subject rows (m,) at times tau (m,): RK4 from the node below. -> (m, 4)."""
    k = _node_below(tau, p, grid.shape[0] - 1)
    return _advance(grid[k, rows], k * p.solver_step, tau, c.take(rows), u.take(rows), p)


def _solve(y0: np.ndarray, tau: np.ndarray, c: _Coef, u: _Controls, p: SyntheticParams) -> np.ndarray:
    """States of n subjects at times tau (n, T): (n, T, 4)."""
    n, T = tau.shape
    grid = _grid(y0, float(tau.max(initial=0.0)), c, u, p)
    rows = np.repeat(np.arange(n), T)
    return _dense(grid, rows, tau.ravel(), c, u, p).reshape(n, T, y0.shape[1])


def _event_times(grid: np.ndarray, col: int, draws: np.ndarray, c: _Coef, u: _Controls, p: SyntheticParams) -> np.ndarray:
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


def _natural(eta: np.ndarray) -> np.ndarray:
    """Transformed-scale labs (m, 5) -> natural scale (exp of the log labs)."""
    out = eta.copy()
    for j, name in enumerate(CONTINUOUS_LABS):
        if name in LOG_LABS:
            out[:, j] = np.exp(eta[:, j])
    return out


def _ascites_prob(z: np.ndarray) -> np.ndarray:
    return _sigmoid(-3.0 + 1.2 * z[:, 0] + 0.4 * z[:, 1])


def _stage_exceed(z: np.ndarray, p: SyntheticParams) -> np.ndarray:
    """P(stage >= j) for j = 1, 2, 3: (m, 3)."""
    return _sigmoid((z[:, [0]] - np.asarray(p.stage_cuts)) / p.stage_scale)


# --------------------------------------------------------------------------- config


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
        {"name": "age", "codes": ["STATIC//AGE"], "kind": "static", "unit": "years", "plausible_range": (0.0, 120.0)},
        {
            "name": "sex",
            "codes": ["STATIC//SEX"],
            "kind": "static",
            "plausible_range": (0.0, 1.0),
            "categories": {"female": 0.0, "male": 1.0},
        },
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
        {"name": "death", "codes": ["MEDS_DEATH"], "kind": "event"},
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

    params: SyntheticParams
    config: DatasetConfig
    subject_ids: tuple[str, ...]
    covariates: pd.DataFrame
    z0: np.ndarray  # (n, 2)
    imaging_weights: tuple[np.ndarray, np.ndarray]
    _factual: Mapping[str, tuple[TreatmentExposure, ...]] = field(repr=False)
    _rows: Mapping[str, int] = field(repr=False)
    _coef: _Coef = field(repr=False)

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
        out = dict(zip(CONTINUOUS_LABS, self.params.lab_sd, strict=True))
        return out | {"stage": self.params.stage_scale, "ct": self.params.imaging_sd}

    def vector_field(self, subject_id: str, z: np.ndarray, dose: float) -> np.ndarray:
        """dz/dt of the subject at states z (m, 2) under a constant dose: (m, 2)."""
        z = np.atleast_2d(np.asarray(z, dtype=float))
        y = np.concatenate([z, np.zeros((len(z), 2))], axis=1)
        c = self._coef.take(np.full(len(z), self.row(subject_id)))
        return _rhs(y, np.full(len(z), float(dose)), c, self.params)[:, :2]

    # -- trajectories --------------------------------------------------------

    def states_from(self, subject_id: str, z0: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Augmented states (z1, z2, H_death, H_progression) of the subject from other initial states.

        ``z0`` (m, 2) replaces the subject's drawn initial state (e.g. draws from
        :meth:`prior`); the subject's own dynamics and factual exposures, times (T,):
        (m, T, 4).
        """
        m = len(z0)
        y0 = np.concatenate([z0, np.zeros((m, 2))], axis=1)
        controls = _Controls.of([self.factual_exposures(subject_id)]).take(np.zeros(m, dtype=int))
        tau = np.broadcast_to(np.asarray(times, dtype=float), (m, len(times))).copy()
        return _solve(y0, tau, self._coef.take(np.full(m, self.row(subject_id))), controls, self.params)

    def states_many(
        self, subject_ids: Sequence[str], exposures_list: Sequence[Sequence[TreatmentExposure]], times: np.ndarray
    ) -> np.ndarray:
        """Augmented states (z1, z2, H_death, H_progression): (n, T, 4)."""
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
        y0 = np.concatenate([self.z0[rows], np.zeros((len(rows), 2))], axis=1)
        out = _solve(y0, np.where(missing, 0.0, tau), self._coef.take(rows), _Controls.of(exposures_list), self.params)
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
        col = 2 + _event_index(event)
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
        return variable in CONTINUOUS_LABS or variable in ("ascites", "stage", "ct")

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
        if variable in CONTINUOUS_LABS:
            j = CONTINUOUS_LABS.index(variable)
            mean = _lab_links(z)[:, j]
            return -0.5 * ((np.asarray(value, dtype=float)[..., None] - mean) / p.lab_sd[j]) ** 2
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
        raise ValueError(f"no observation model of {variable!r}; the generator observes labs, ascites, stage and ct")

    def draw_results(self, z: np.ndarray, variables: Sequence[str], rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One result of each variable the generator observes, per latent state z (m, 2).

        Labs on their modelling scale (m,), ascites bool (m,), stage level (m,), ct (m, d).
        Variables without an observation model are skipped. Draws from ``rng`` variable by
        variable in the order given.
        """
        p = self.params
        out: dict[str, np.ndarray] = {}
        for v in variables:
            if v in CONTINUOUS_LABS:
                j = CONTINUOUS_LABS.index(v)
                out[v] = _lab_links(z)[:, j] + rng.normal(0, p.lab_sd[j], len(z))
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
        W, b = self.imaging_weights
        cols: dict[str, np.ndarray] = {"time": t}
        labs = _natural(_lab_links(z))
        cols |= {name: labs[:, j] for j, name in enumerate(CONTINUOUS_LABS)}
        cols["ascites"] = _ascites_prob(z)
        cols["stage"] = _stage_exceed(z, self.params).sum(axis=1)
        img = np.tanh(z @ W.T + b)
        cols |= {f"ct_{j}": img[:, j] for j in range(W.shape[0])}
        frame = pd.DataFrame(cols)
        frame.loc[pad, frame.columns[1:]] = np.nan
        return frame


def _event_index(event: str) -> int:
    if event not in EVENTS:
        raise ValueError(f"unknown event {event!r}; the synthetic events are {', '.join(EVENTS)}")
    return EVENTS.index(event)


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
