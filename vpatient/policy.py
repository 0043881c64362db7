"""Next-test selection: rank diagnostic tests by expected information gain (EIG) per cost.

"Which test should I order next?" For a patient at decision time t, each test of the
config's catalogue not yet done at t is scored by how much its result is expected to
reduce the entropy of a chosen target:

- ``latent``: the latent disease state z(t) (Gaussian entropy of its posterior);
- ``risk:<event>:<horizon>``: whether the event happens within the horizon (data's time unit), given
  event-free at t (entropy of that Bernoulli indicator, i.e. the mutual information
  between the test's result and the event indicator);
- ``forecast:<variable>:<horizon>``: the measured value of a continuous variable at
  t + horizon (Gaussian entropy: moment-matched predictive variance, noise included).

Estimator (nested Monte Carlo with one shared pool). S draws of z0 from the
patient's posterior given everything up to t are rolled out once, and weighted by the
likelihood of having stayed event-free up to t. Outer loop: S hypothetical results of
the test, one per draw (resampled by those weights), from the model's predictive at t
(decoder mean plus measurement noise; Bernoulli and categorical draws for signs and
stages). The posterior after a result is the pool reweighted by the result's likelihood
under the decoder (self-normalised importance sampling; the draw that produced the
result is left out); ``update="expert"`` reweights by the encoder's Gaussian expert for
the result instead, the product-of-experts update (see :func:`recommend`). Inner loop: the
other S - 1 draws of the pool. EIG = mean over outer draws of H(target | now) -
H(target | now, result); its Monte Carlo standard error is the standard deviation of
that difference over outer draws / sqrt(S). A test already done at t (any of its
variables measured at t) has nothing left to tell: its gain is 0 and it is marked done.

A budgeted greedy sequence orders tests by *marginal* gain per cost: the joint EIG of
the tests chosen so far plus a candidate, minus that of the tests chosen so far (the
joint result is one expert per test, drawn from the same z0), until the budget is spent
or the best gain per cost falls below a threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import pandas as pd
import torch

from vpatient import limits, transforms
from vpatient.cost_curves import bought, random_orders, step_curve
from vpatient.data.batching import make_batch
from vpatient.data.timeline import truncate_record
from vpatient.errors import OptionError, VPatientError, choose
from vpatient.formatting import percent, span, with_unit
from vpatient.model.batch import PatientBatch
from vpatient.quasirandom import sobol_normal, sobol_uniform
from vpatient.schemas import DatasetConfig, PatientRecord
from vpatient.virtual_patient import VirtualPatientModel, member_slices

__all__ = [
    "Distribution",
    "HypotheticalResults",
    "Pool",
    "Predictive",
    "Recommendation",
    "Target",
    "TargetKind",
    "TestGain",
    "UpdateRule",
    "draw_results",
    "eig_from_pool",
    "likelihood_log_factor",
    "pool_entropy",
    "posterior_pool",
    "predictive_at",
    "recommend",
    "systematic_resample",
    "updated_risk_range",
]

_LOG_2PI_E = math.log(2 * math.pi * math.e)


# --------------------------------------------------------------------------- targets


class TargetKind(StrEnum):
    """What a target is about (module docstring)."""

    LATENT = "latent"  # the latent disease state now
    RISK = "risk"  # whether an event happens within a horizon
    FORECAST = "forecast"  # a continuous variable's measured value at a horizon


class UpdateRule(StrEnum):
    """How a hypothetical result reweights the pool (see :func:`recommend`)."""

    LIKELIHOOD = "likelihood"  # the decoder's likelihood: the exact Bayesian update
    EXPERT = "expert"  # the encoder's expert: the product-of-experts update


class Distribution(StrEnum):
    """The form of a target's entropy: a (moment-matched) Gaussian, or a Bernoulli indicator."""

    GAUSSIAN = "gaussian"
    BERNOULLI = "bernoulli"


@dataclass(frozen=True)
class Target:
    """What the information is about (module docstring).

    Build one with :meth:`latent`, :meth:`risk` or :meth:`forecast` (or ``Target(kind, ...)``),
    or from the command line's text with :meth:`parse`; :meth:`check` tests its event or
    variable against a dataset config. ``str(target)`` is the text :meth:`parse` reads.
    """

    kind: TargetKind
    event: str | None = None
    variable: str | None = None
    horizon: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", choose(TargetKind, self.kind, "target kind"))
        if self.kind == TargetKind.LATENT:
            if self.event is not None or self.variable is not None:
                raise OptionError("a latent target names no event or variable")
            return
        named = self.event if self.kind == TargetKind.RISK else self.variable
        other = self.variable if self.kind == TargetKind.RISK else self.event
        if not named or other is not None:
            what = "an event" if self.kind == TargetKind.RISK else "a variable"
            raise OptionError(f"a {self.kind} target names {what}, and only that")
        if not (math.isfinite(self.horizon) and self.horizon > 0):
            raise OptionError(f"target {self}: the horizon must be a time > 0")

    @classmethod
    def latent(cls) -> Target:
        """The latent disease state at the decision time."""
        return cls(TargetKind.LATENT)

    @classmethod
    def risk(cls, event: str, years: float) -> Target:
        """Whether ``event`` happens within ``years`` (a time in the data's unit, whatever it is) of the decision time."""
        return cls(TargetKind.RISK, event=event, horizon=float(years))

    @classmethod
    def forecast(cls, variable: str, years: float) -> Target:
        """The measured value of the continuous ``variable`` ``years`` (in the data's time unit) after the decision time."""
        return cls(TargetKind.FORECAST, variable=variable, horizon=float(years))

    @classmethod
    def parse(cls, spec: str, config: DatasetConfig) -> Target:
        """``latent``, ``risk:<event>:<horizon>`` or ``forecast:<variable>:<horizon>`` (horizon in the config's time unit), checked against the config."""
        unit = config.time_unit.value
        parts = spec.strip().split(":")
        if parts == [TargetKind.LATENT]:
            return cls.latent()
        if len(parts) != 3 or parts[0] not in (TargetKind.RISK, TargetKind.FORECAST):
            raise VPatientError(f"target {spec!r}: use latent, risk:<event>:<{unit}> or forecast:<variable>:<{unit}>")
        try:
            horizon = float(parts[2])
        except ValueError:
            raise VPatientError(f"target {spec!r}: the horizon {parts[2]!r} is not a number of {unit}") from None
        if not (math.isfinite(horizon) and horizon > 0):
            raise VPatientError(f"target {spec!r}: the horizon must be > 0 {unit}")
        target = cls.risk(parts[1], horizon) if parts[0] == TargetKind.RISK else cls.forecast(parts[1], horizon)
        return target._checked(config, spec)

    def check(self, config: DatasetConfig) -> Target:
        """This target, when ``config`` has its event or continuous variable; a VPatientError naming the choices if not."""
        return self._checked(config, str(self))

    def _checked(self, config: DatasetConfig, spec: str) -> Target:
        if self.kind == TargetKind.RISK and self.event not in config.event_kinds:
            raise VPatientError(f"target {spec!r}: unknown event {self.event!r}; events: {', '.join(config.event_kinds)}")
        if self.kind == TargetKind.FORECAST:
            continuous = [v.name for v in config.variables if v.kind.value == "continuous"]
            if self.variable not in continuous:
                raise VPatientError(
                    f"target {spec!r}: {self.variable!r} is not a continuous variable; choose one of {', '.join(continuous)}"
                )
        return self

    def __str__(self) -> str:
        if self.kind == TargetKind.LATENT:
            return "latent"
        return f"{self.kind}:{self.event or self.variable}:{self.horizon:g}"


# --------------------------------------------------------------------------- the estimator


def _normalised(log_w: torch.Tensor) -> torch.Tensor:
    return torch.softmax(log_w, dim=-1)


def _entropy(values: torch.Tensor, weights: torch.Tensor, kind: Distribution, noise_var: float | torch.Tensor) -> torch.Tensor:
    """Entropy of the target under each row of weights (R, S); values (S, K) or (S,) probabilities.

    ``noise_var`` is the measurement noise variance of a forecast target: one number, or
    one per pool draw (S,) when ensemble members disagree on it (then its weighted mean
    joins the moment-matched covariance).
    """
    if kind == Distribution.BERNOULLI:
        p = (weights * values).sum(dim=-1).clamp(1e-9, 1 - 1e-9)
        return -(p * torch.log(p) + (1 - p) * torch.log1p(-p))
    mean = weights @ values  # (R, K)
    centred = values.unsqueeze(0) - mean.unsqueeze(1)  # (R, S, K)
    cov = torch.einsum("rs,rsk,rsl->rkl", weights, centred, centred)
    k = values.shape[-1]
    if isinstance(noise_var, torch.Tensor):
        noise = weights @ noise_var.to(values.dtype)
    else:
        noise = torch.full((len(weights),), noise_var, dtype=values.dtype)
    cov = cov + (noise + 1e-6)[:, None, None] * torch.eye(k, dtype=values.dtype)
    return 0.5 * (k * _LOG_2PI_E + torch.logdet(cov))


def _entropy_gradient(
    values: torch.Tensor, weights: torch.Tensor, kind: Distribution, noise_var: float | torch.Tensor
) -> torch.Tensor:
    """d H / d w_s of the target's entropy at the pool's weights ``weights`` (S,): (S,).

    Only its part along the simplex matters (the control variate multiplies it by weight
    changes that sum to zero), so constants are dropped.
    """
    if kind == Distribution.BERNOULLI:
        p = (weights * values).sum().clamp(1e-9, 1 - 1e-9)
        return torch.log((1 - p) / p) * values
    centred = values - weights @ values  # (S, K)
    k = values.shape[-1]
    noise = weights @ noise_var.to(values.dtype) if isinstance(noise_var, torch.Tensor) else torch.tensor(noise_var)
    cov = torch.einsum("s,sk,sl->kl", weights, centred, centred) + (noise + 1e-6) * torch.eye(k, dtype=values.dtype)
    precision = torch.linalg.inv(cov)
    spread = torch.einsum("sk,kl,sl->s", centred, precision, centred)
    if isinstance(noise_var, torch.Tensor):  # a draw's own noise joins the covariance with its weight
        spread = spread + noise_var.to(values.dtype) * torch.trace(precision)
    return 0.5 * spread


def eig_from_pool(
    values: torch.Tensor,
    base_log_w: torch.Tensor,
    log_factor: torch.Tensor,
    outer: torch.Tensor,
    kind: Distribution | str,
    noise_var: float | torch.Tensor = 0.0,
    control_variate: bool = True,
) -> tuple[float, float]:
    """EIG (nats) and its MC standard error from a weighted pool and the factors of hypothetical results.

    values (S, K) target per pool draw (or (S,) event probabilities with ``kind="bernoulli"``,
    :attr:`Distribution.BERNOULLI`);
    base_log_w (S,) the pool's log weights now; log_factor (R, S) log density of each
    outer result's expert at each pool draw; outer (R,) the pool index each result came
    from (left out of its own inner sum).

    ``control_variate``: the entropy's first-order change with the posterior weights,
    sum_s (w_rs - w_s) dH/dw_s, has expectation zero over results drawn from the pool's own
    predictive (the posterior weights average back to the prior's), yet follows most of the
    noise of each outer draw's gain. It is subtracted with the regression coefficient that
    minimises the variance (the textbook control variate); on the closed forms of
    ``tests/test_policy.py`` this cuts a binary target's error about ten-fold and leaves a
    Gaussian's unchanged.
    """
    kind = choose(Distribution, kind, "target distribution")
    values = values.double()
    base = base_log_w.double()
    prior_weights = _normalised(base)
    prior = _entropy(values, prior_weights.unsqueeze(0), kind, noise_var)[0]
    weights = _weights_after_results(base, log_factor, outer)
    gains = prior - _entropy(values, weights, kind, noise_var)
    if control_variate and len(gains) > 2:
        control = (weights - prior_weights) @ _entropy_gradient(values, prior_weights, kind, noise_var)
        spread = control - control.mean()
        scale = float((spread * spread).sum())
        if scale > 1e-30:
            gains = gains - float((spread * (gains - gains.mean())).sum()) / scale * control
    return float(gains.mean()), float(gains.std(unbiased=True) / math.sqrt(len(gains))) if len(gains) > 1 else math.nan


def _weights_after_results(base_log_w: torch.Tensor, log_factor: torch.Tensor, outer: torch.Tensor) -> torch.Tensor:
    """(R, S) pool weights once each hypothetical result r is known, the draw that produced r left out of its own sum."""
    log_w = base_log_w.double().unsqueeze(0) + log_factor.double()
    log_w[torch.arange(len(outer)), outer] = -math.inf
    return _normalised(log_w)


def updated_risk_range(pool: Pool, log_factor: torch.Tensor, outer: torch.Tensor) -> tuple[float, float]:
    """5% and 95% over hypothetical results of a risk target's estimate once the result is known.

    The estimate after result r is the pool's event probabilities averaged with the weights the
    result gives them (the draw that produced r left out, as in :func:`eig_from_pool`).
    """
    risks = _weights_after_results(pool.log_w, log_factor, outer) @ pool.target.double()
    lower, upper = np.quantile(risks.numpy(), [0.05, 0.95])
    return float(lower), float(upper)


def pool_entropy(pool: Pool, log_w: torch.Tensor | None = None) -> float:
    """The target's entropy (nats) under the pool reweighted by ``log_w`` (default: the pool's own weights)."""
    weights = _normalised((pool.log_w if log_w is None else log_w).double())
    return float(_entropy(pool.target.double(), weights.unsqueeze(0), pool.target_kind, pool.noise_var)[0])


def _expert_log_factor(means: torch.Tensor, precisions: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """log N-kernel of diagonal experts (R, P) at pool draws (S, P): (R, S)."""
    diff = draws.unsqueeze(0) - means.unsqueeze(1)  # (R, S, P)
    return -0.5 * (precisions.unsqueeze(1) * diff**2).sum(dim=-1)


# --------------------------------------------------------------------------- results


@dataclass
class TestGain:
    """One test's expected information gain about the target."""

    test: str
    cost: float
    eig: float  # nats
    mc_error: float  # Monte Carlo standard error of eig
    done: bool  # already measured at the decision time
    predicted: dict[str, str] = field(default_factory=dict)  # variable -> predictive 5-95% range, in words
    #: A risk target only: 5% and 95% of the risk as it would be estimated once the result is known, over the
    #: test's hypothetical results; how far the result could move the estimate. None for other targets and done tests.
    updated_risk: tuple[float, float] | None = None

    @property
    def eig_per_cost(self) -> float:
        return self.eig / self.cost


@dataclass
class Recommendation:
    """The ranking of one patient's candidate tests, and a budgeted greedy order."""

    subject_id: str
    at: float
    target: Target
    n_samples: int
    seed: int
    effective_sample_size: float  # of the pool's weights (event-free up to t)
    gains: list[TestGain]  # ranked by EIG per cost, done tests last
    sequence: list[dict]  # greedy order: test, marginal EIG, cumulative EIG, cumulative cost
    prior_entropy: float = math.nan  # nats: the target's entropy before any test
    risk_now: float = math.nan  # a risk target only: the risk estimated from what is known at ``at``
    #: Cost-aware curves: rows of order ("recommended" or "random"), cumulative cost and the
    #: expected information bought by then (nats); see :meth:`cost_curve`.
    curves: list[dict] = field(default_factory=list)

    def cost_curve(self) -> pd.DataFrame:
        """Expected information (nats) and remaining entropy against cumulative cost: the greedy order and random orders.

        Both are step functions of the cost spent: a test's information counts once it is
        paid for. ``random`` is the mean over random orders of the open tests (every order
        when there are at most six), each bought in turn while the budget allows.
        """
        frame = pd.DataFrame(self.curves, columns=["order", "cost", "information"])
        frame["remaining_entropy"] = self.prior_entropy - frame["information"]
        return frame

    def table(self) -> pd.DataFrame:
        rows = [
            {
                "test": g.test,
                "eig": g.eig,
                "mc_error": g.mc_error,
                "cost": g.cost,
                "eig_per_cost": g.eig_per_cost,
                "done_at_t": g.done,
                "predicted_results": "; ".join(f"{k} {v}" for k, v in g.predicted.items()),
            }
            for g in self.gains
        ]
        return pd.DataFrame(rows)

    def to_dict(self) -> dict:
        return {
            "subject_id": self.subject_id,
            "at": self.at,
            "target": str(self.target),
            "n_samples": self.n_samples,
            "seed": self.seed,
            "effective_sample_size": self.effective_sample_size,
            "tests": self.table().to_dict(orient="records"),
            "sequence": self.sequence,
            "prior_entropy": self.prior_entropy,
            "cost_curve": self.curves,
        }


# --------------------------------------------------------------------------- the pool of one patient


@dataclass
class Pool:
    """The pool of posterior draws; with an ensemble, member k's draws are the block ``blocks[k]``."""

    draws: torch.Tensor  # (S, P) posterior draws of z0 and offsets
    log_w: torch.Tensor  # (S,) log weight: event-free up to t
    batch: PatientBatch  # the history, repeated S times
    z_now: torch.Tensor  # (S, L) latent state at t
    target: torch.Tensor  # (S, K) or (S,)
    target_kind: Distribution
    noise_var: float | torch.Tensor  # forecast targets: (S,) per draw's member
    worlds: list  # the members that drew the pool
    blocks: list[slice]


@torch.no_grad()
def posterior_pool(
    model: VirtualPatientModel, history: PatientRecord, at: float, target: Target, n: int, generator: torch.Generator
) -> Pool:
    """S posterior draws split between the members (each member's own latent space and dynamics).

    The latent state has no meaning shared between members, so a ``latent`` target reads
    the first member's alone.
    """
    worlds = model.members if target.kind != TargetKind.LATENT else model.members[:1]
    blocks = member_slices(n, len(worlds))
    batch = make_batch([history], model.config, model.scalers)
    cutoff = torch.tensor([at], dtype=torch.float32)
    posteriors = [world.posterior(batch, cutoff) for world in worlds]
    rep = batch.repeat(n)
    until = at + target.horizon
    parts: dict[str, list[torch.Tensor]] = {"draws": [], "log_w": [], "z_now": [], "target": [], "noise": []}
    for world, (mean, var), block in zip(worlds, posteriors, blocks, strict=True):
        size = block.stop - block.start
        # quasi-random draws per member: an evenly spread pool (module docstring)
        draws = mean + var.sqrt() * sobol_normal(size, mean.shape[-1], generator)
        sub = batch.repeat(size)
        solution = world.rollout(draws, sub, until=until + 1e-3)
        now = torch.full((size, 1), at)
        z_now = solution.z(now)[:, 0]
        later = torch.full((size, 1), until)
        if target.kind == TargetKind.LATENT:
            value = z_now
        elif target.kind == TargetKind.RISK:
            k = model.layout.events.index(target.event)
            gained = solution.cumulative_hazard(later)[:, 0, k] - solution.cumulative_hazard(now)[:, 0, k]
            value = 1.0 - torch.exp(-gained.clamp(min=0))
        else:
            j = model.layout.continuous.index(target.variable)
            value = world.decoder.continuous_mean(solution.z(later), world.offsets(draws), later)[:, 0, j : j + 1]
            parts["noise"].append(torch.full((size,), float(world.decoder.continuous_sd()[j]) ** 2))
        parts["draws"].append(draws)
        parts["log_w"].append(world.event_log_likelihood(solution, sub.event_time, sub.event_observed))  # history cut at t
        parts["z_now"].append(z_now)
        parts["target"].append(value)
    joined = {name: torch.cat(values) for name, values in parts.items() if values}
    if target.kind == TargetKind.FORECAST:
        noise: float | torch.Tensor = joined["noise"] if len(worlds) > 1 else float(joined["noise"][0])
        kind = Distribution.GAUSSIAN
    else:
        noise, kind = 0.0, Distribution.BERNOULLI if target.kind == TargetKind.RISK else Distribution.GAUSSIAN
    return Pool(joined["draws"], joined["log_w"], rep, joined["z_now"], joined["target"], kind, noise, list(worlds), blocks)


@dataclass
class HypotheticalResults:
    """Hypothetical results of every variable at t, one row per outer draw (standardised scales)."""

    continuous: torch.Tensor | None  # (R, 1, Dc)
    binary: torch.Tensor | None  # (R, 1, Db)
    ordinal: list[torch.Tensor]  # per ordinal variable (R, 1) class index
    imaging: torch.Tensor | None  # (R, 1, Di)


@dataclass
class Predictive:
    """The model's predictive at t of every pool draw: what a result's likelihood is computed from."""

    continuous: torch.Tensor | None  # (S, Dc) means
    binary: torch.Tensor | None  # (S, Db) probabilities
    ordinal: list[torch.Tensor]  # per ordinal variable (S, C) class probabilities
    imaging: torch.Tensor | None  # (S, Di) means
    continuous_sd: torch.Tensor | None  # (S, Dc) measurement noise of each draw's member
    imaging_sd: torch.Tensor | None  # (S, Di)


@torch.no_grad()
def predictive_at(model: VirtualPatientModel, pool: Pool, at: float) -> Predictive:
    """Each draw decoded by the member that drew it, pooled in draw order."""
    parts = []
    for world, block in zip(pool.worlds, pool.blocks, strict=True):
        decoder = world.decoder
        z = pool.z_now[block].unsqueeze(1)  # (s, 1, L)
        times = torch.full((len(z), 1), at)
        size = (len(z), -1)
        parts.append(
            Predictive(
                continuous=decoder.continuous_mean(z, world.offsets(pool.draws[block]), times)[:, 0]
                if decoder.continuous is not None
                else None,
                binary=torch.sigmoid(decoder.binary_logits(z))[:, 0] if decoder.binary is not None else None,
                ordinal=[decoder.ordinal_probs(z, j)[:, 0] for j in range(len(model.layout.ordinal))],
                imaging=decoder.imaging_mean(z)[:, 0] if decoder.imaging is not None else None,
                continuous_sd=decoder.continuous_sd().expand(size) if decoder.continuous is not None else None,
                imaging_sd=decoder.imaging_sd().expand(size) if decoder.imaging is not None else None,
            )
        )
    if len(parts) == 1:
        return parts[0]

    def cat(name: str) -> torch.Tensor | None:
        values = [getattr(p, name) for p in parts]
        return None if values[0] is None else torch.cat(values)

    return Predictive(
        continuous=cat("continuous"),
        binary=cat("binary"),
        ordinal=[torch.cat([p.ordinal[j] for p in parts]) for j in range(len(parts[0].ordinal))],
        imaging=cat("imaging"),
        continuous_sd=cat("continuous_sd"),
        imaging_sd=cat("imaging_sd"),
    )


def draw_results(
    model: VirtualPatientModel,
    predictive: Predictive,
    rows: torch.Tensor,
    generator: torch.Generator,
    quasi_random: bool = True,
) -> HypotheticalResults:
    """One hypothetical result of every variable per outer draw ``rows``, drawn from the model's predictive.

    Each result is the inverse CDF of one uniform per variable: a scrambled Sobol point
    (``quasi_random``, the default: results spread evenly over the predictive) or an
    independent uniform. Seeded from ``generator``, so a seed gives the same results
    wherever this is called.
    """
    r = len(rows)
    widths = [
        0 if predictive.continuous is None else predictive.continuous.shape[-1],
        0 if predictive.binary is None else predictive.binary.shape[-1],
        len(predictive.ordinal),
        0 if predictive.imaging is None else predictive.imaging.shape[-1],
    ]
    total = sum(widths)
    u = sobol_uniform(r, total, generator) if quasi_random else torch.rand((r, total), generator=generator).clamp(1e-7, 1 - 1e-7)
    u_cont, u_bin, u_ord, u_img = torch.split(u, widths, dim=-1)
    continuous = binary = imaging = None
    if predictive.continuous is not None:
        mean = predictive.continuous[rows]
        continuous = (mean + torch.special.ndtri(u_cont) * predictive.continuous_sd[rows]).unsqueeze(1)
    if predictive.binary is not None:
        binary = (u_bin < predictive.binary[rows]).float().unsqueeze(1)
    ordinal = []
    for j, probs in enumerate(predictive.ordinal):
        cdf = torch.cumsum(probs[rows], dim=-1)
        ordinal.append(torch.searchsorted(cdf, u_ord[:, j : j + 1].contiguous()).clamp(max=probs.shape[-1] - 1))
    if predictive.imaging is not None:
        mean = predictive.imaging[rows]
        imaging = (mean + torch.special.ndtri(u_img) * predictive.imaging_sd[rows]).unsqueeze(1)
    return HypotheticalResults(continuous, binary, ordinal, imaging)


def likelihood_log_factor(
    model: VirtualPatientModel, group, results: HypotheticalResults, predictive: Predictive
) -> torch.Tensor:
    """log p(result_i | pool draw s) of one test's variables under the decoder: (R, S).

    Gaussian terms keep their -log sd: members of an ensemble may disagree on the noise.
    """
    total = 0.0
    if group.continuous:
        idx = list(group.continuous)
        y = results.continuous[:, 0, idx].unsqueeze(1)  # (R, 1, k)
        mean = predictive.continuous[:, idx].unsqueeze(0)  # (1, S, k)
        sd = predictive.continuous_sd[:, idx].unsqueeze(0)
        total = total + (-0.5 * ((y - mean) / sd) ** 2 - torch.log(sd)).sum(dim=-1)
    if group.binary:
        idx = list(group.binary)
        y = results.binary[:, 0, idx].unsqueeze(1)
        p = predictive.binary[:, idx].unsqueeze(0).clamp(1e-6, 1 - 1e-6)
        total = total + (y * torch.log(p) + (1 - y) * torch.log1p(-p)).sum(dim=-1)
    for j in group.ordinal:
        levels = results.ordinal[j][:, 0]  # (R,)
        total = total + torch.log(predictive.ordinal[j][:, levels].T.clamp_min(1e-9))  # (R, S)
    if group.imaging:
        idx = list(group.imaging)
        y = results.imaging[:, 0, idx].unsqueeze(1)
        mean = predictive.imaging[:, idx].unsqueeze(0)
        sd = predictive.imaging_sd[:, idx].unsqueeze(0)
        total = total + (-0.5 * ((y - mean) / sd) ** 2 - torch.log(sd)).sum(dim=-1)
    return total


@torch.no_grad()
def _expert_log_factor_of(
    model: VirtualPatientModel, group, pool: Pool, rows: torch.Tensor, at: float, results: HypotheticalResults
) -> torch.Tensor:
    """log density at the pool draws of the encoder's expert for each result (the amortised PoE update): (R, S).

    Each member's draws are scored by that member's expert.
    """
    one = _one_visit(pool.batch.select(rows), at, group, results.continuous, results.binary, results.ordinal, results.imaging)
    factors = []
    for world, block in zip(pool.worlds, pool.blocks, strict=True):
        experts = world.experts
        features, _ = experts.group_features(group, one)
        mean, precision = experts.group_heads[group.name](torch.cat([features, experts.context(one)], dim=-1))
        # the Gaussian's normaliser: constant within a member, but members' experts differ in precision
        normaliser = 0.5 * torch.log(precision[:, 0]).sum(dim=-1, keepdim=True)
        factors.append(_expert_log_factor(mean[:, 0], precision[:, 0], pool.draws[block]) + normaliser)
    return torch.cat(factors, dim=1)


def _one_visit(batch: PatientBatch, at: float, group, continuous, binary, ordinal, imaging) -> PatientBatch:
    """The patients of ``batch`` with one visit at ``at`` where only ``group``'s variables are measured."""
    r = len(batch)

    def masked(values: torch.Tensor | None, index: tuple[int, ...], width: int) -> tuple[torch.Tensor, torch.Tensor]:
        mask = torch.zeros((r, 1, width))
        if index:
            mask[..., list(index)] = 1.0
        data = values if values is not None else torch.zeros((r, 1, width))
        return data * mask, mask

    cont, cont_mask = masked(continuous, group.continuous, batch.continuous.shape[-1])
    bins, bin_mask = masked(binary, group.binary, batch.binary.shape[-1])
    img, img_mask = masked(imaging, group.imaging, batch.imaging.shape[-1])
    n_ord = batch.ordinal.shape[-1]
    ords = torch.cat(ordinal, dim=-1).unsqueeze(1) if ordinal else torch.zeros((r, 1, n_ord), dtype=torch.long)
    ord_mask = torch.zeros((r, 1, n_ord))
    if group.ordinal:
        ord_mask[..., list(group.ordinal)] = 1.0
    return PatientBatch(
        subject_ids=batch.subject_ids,
        times=torch.full((r, 1), at),
        visit_mask=torch.ones((r, 1)),
        continuous=cont,
        continuous_mask=cont_mask,
        binary=bins,
        binary_mask=bin_mask,
        ordinal=ords * ord_mask.long(),
        ordinal_mask=ord_mask,
        imaging=img,
        imaging_mask=img_mask,
        static=batch.static,
        static_mask=batch.static_mask,
        history_time=batch.history_time,
        dose_times=batch.dose_times,
        doses=batch.doses,
        event_time=batch.event_time,
        event_observed=batch.event_observed,
        followup_end=batch.followup_end,
    )


def _natural_results(model: VirtualPatientModel, group, continuous, binary, ordinal) -> dict[str, np.ndarray]:
    out = {}
    for j in group.continuous:
        name = model.layout.continuous[j]
        value = continuous[:, 0, j].numpy() * model.scalers.continuous_std[j] + model.scalers.continuous_mean[j]
        out[name] = transforms.inverse(value, model.config.variable(name).transform)
    for j in group.binary:
        out[model.layout.binary[j]] = binary[:, 0, j].numpy()
    for j in group.ordinal:
        levels = np.asarray(model.layout.ordinal_levels[j])
        out[model.layout.ordinal[j]] = levels[ordinal[j][:, 0].numpy()]
    return out


def _describe(name: str, values: np.ndarray, model: VirtualPatientModel) -> str:
    spec = model.config.variable(name)
    if spec.kind.value == "binary":
        return f"positive with probability {percent(values.mean())}"
    lo, hi = np.quantile(values, [0.05, 0.95])
    return with_unit(span(lo, hi), spec.unit)


# --------------------------------------------------------------------------- the public call


@torch.no_grad()
def recommend(
    model: VirtualPatientModel,
    record: PatientRecord,
    target: Target | str = "risk:death:5",
    at: float | None = None,
    n_samples: int = 256,
    seed: int = 0,
    budget: float | None = None,
    min_gain_per_cost: float = 0.0,
    tests: Sequence[str] | None = None,
    update: UpdateRule | str = UpdateRule.LIKELIHOOD,
) -> Recommendation:
    """Rank the catalogue's tests for ``record`` at ``at`` (default: its end of follow-up) by EIG per cost.

    ``update="likelihood"`` reweights the pool by the decoder's likelihood of each
    hypothetical result: the exact Bayesian update under the generative model, so the
    expected posterior equals the prior and the gain is never negative beyond Monte
    Carlo error. ``"expert"`` uses the encoder's expert for the result instead (the
    amortised update the product of experts makes when the result arrives); it is
    faster to learn but not guaranteed consistent, and can show negative gains.
    ``target`` is a :class:`Target`, or its text (``risk:death:5``) read by :meth:`Target.parse`.
    """
    config = model.config
    chosen_target = target.check(config) if isinstance(target, Target) else Target.parse(target, config)
    if at is None:
        at = record.end_of_followup
    if not (math.isfinite(at) and at >= 0):
        raise VPatientError(f"at = {at!r}: the decision time must be >= 0 {config.time_unit.value}")
    if n_samples < 16:
        raise VPatientError(f"n_samples = {n_samples}: the estimator needs at least 16 posterior samples")
    limits.check_at_most(limits.SAMPLES, "n_samples", n_samples)
    if chosen_target.horizon > 0:
        model.check_work(at, chosen_target.horizon, "at", f"the horizon of target {chosen_target}")
    catalogue = {t.name: t for t in config.tests}
    names = list(tests) if tests is not None else list(catalogue)
    unknown = [n for n in names if n not in catalogue]
    if unknown:
        raise VPatientError(f"unknown test(s) {', '.join(unknown)}; the config's tests are {', '.join(catalogue)}")
    if not names:
        raise VPatientError(f"config {config.name!r} declares no diagnostic tests to rank")
    history = truncate_record(record, at)
    measured_now = {o.variable for o in history.observations if abs(o.time - at) < 1e-9}
    measured_now |= {s.modality for s in history.imaging if abs(s.time - at) < 1e-9}
    # One label per listed test; a test listed twice is two orders with independent results.
    labels = [name if names[:i].count(name) == 0 else f"{name}#{names[:i].count(name) + 1}" for i, name in enumerate(names)]
    test_of = dict(zip(labels, names, strict=True))
    done = {label for label in labels if measured_now & set(catalogue[test_of[label]].variables)}
    rule = choose(UpdateRule, update, "update rule")
    generator = torch.Generator().manual_seed(seed)
    pool = posterior_pool(model, history, at, chosen_target, n_samples, generator)
    weights = _normalised(pool.log_w)
    ess = float(1.0 / (weights**2).sum())
    outer = systematic_resample(weights, generator)
    open_labels = [label for label in labels if label not in done]
    predictive = predictive_at(model, pool, at)
    # Common random numbers: every test reads its variables from one joint draw, so the
    # differences between tests (what the ranking needs) carry less noise than the gains.
    # A test listed twice is a second order with its own, independent, results.
    shared = draw_results(model, predictive, outer, generator)
    results = {
        label: shared if label == test_of[label] else draw_results(model, predictive, outer, generator) for label in open_labels
    }
    factors = {}
    for label in open_labels:
        group = model.layout.group(test_of[label])
        factors[label] = (
            likelihood_log_factor(model, group, results[label], predictive)
            if rule == UpdateRule.LIKELIHOOD
            else _expert_log_factor_of(model, group, pool, outer, at, results[label])
        )

    joint_gains: dict[frozenset[str], tuple[float, float]] = {}

    def gain(selection: Sequence[str]) -> tuple[float, float]:
        key = frozenset(selection)
        if not key:
            return 0.0, 0.0
        if key not in joint_gains:
            total = sum(factors[label] for label in sorted(key))
            joint_gains[key] = eig_from_pool(pool.target, pool.log_w, total, outer, pool.target_kind, pool.noise_var)
        return joint_gains[key]

    gains = []
    for label in labels:
        test = catalogue[test_of[label]]
        if label in done:
            gains.append(TestGain(label, test.cost, 0.0, 0.0, True))
            continue
        eig, err = gain([label])
        r = results[label]
        natural = _natural_results(model, model.layout.group(test.name), r.continuous, r.binary, r.ordinal)
        predicted = {v: _describe(v, x, model) for v, x in natural.items()}
        moved = updated_risk_range(pool, factors[label], outer) if chosen_target.kind == TargetKind.RISK else None
        gains.append(TestGain(label, test.cost, eig, err, False, predicted, moved))
    gains.sort(key=lambda g: (g.done, -g.eig_per_cost, g.test))
    costs = {label: catalogue[test_of[label]].cost for label in labels}
    sequence = _greedy(open_labels, costs, gain, budget, min_gain_per_cost)
    prior = pool_entropy(pool)
    recommended = [step["test"] for step in sequence]
    curves = _curve_rows("recommended", [recommended], costs, lambda chosen: gain(chosen)[0], budget)
    curves += _curve_rows("random", random_orders(open_labels, generator), costs, lambda chosen: gain(chosen)[0], budget)
    risk_now = float(weights.double() @ pool.target.double()) if chosen_target.kind == TargetKind.RISK else math.nan
    return Recommendation(
        record.subject_id, float(at), chosen_target, n_samples, seed, ess, gains, sequence, prior, risk_now, curves
    )


def _curve_rows(name: str, orders: Sequence[Sequence[str]], costs, information, budget) -> list[dict]:
    """Rows (order, cost, information) of the mean step curve of ``orders``, at every cost where one of them steps."""
    steps = []
    for order in orders:
        chosen: list[str] = []
        points = [(0.0, 0.0)]
        for test, spent in bought(order, costs, budget):
            chosen.append(test)
            points.append((spent, information(chosen)))
        steps.append(points)
    grid = sorted({c for points in steps for c, _ in points})
    mean = np.mean([step_curve(points, grid) for points in steps], axis=0)
    return [{"order": name, "cost": float(c), "information": float(v)} for c, v in zip(grid, mean, strict=True)]


def _greedy(open_tests: list[str], costs: dict[str, float], gain, budget: float | None, threshold: float) -> list[dict]:
    chosen: list[str] = []
    so_far, spent = 0.0, 0.0
    steps = []
    remaining = list(open_tests)
    while remaining:
        best = None
        for name in remaining:
            cost = costs[name]
            if budget is not None and spent + cost > budget + 1e-12:
                continue
            joint, err = gain([*chosen, name])
            per_cost = (joint - so_far) / cost
            if best is None or per_cost > best[1]:
                best = (name, per_cost, joint, err)
        if best is None or best[1] <= threshold:
            break
        name, per_cost, joint, err = best
        spent += costs[name]
        steps.append(
            {
                "test": name,
                "marginal_eig": joint - so_far,
                "eig_per_cost": per_cost,
                "cumulative_eig": joint,
                "mc_error": err,
                "cumulative_cost": spent,
            }
        )
        chosen.append(name)
        remaining.remove(name)
        so_far = joint
    return steps


def systematic_resample(weights: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Indices of S draws resampled by their weights (systematic resampling)."""
    s = len(weights)
    u = (torch.rand(1, generator=generator) + torch.arange(s)) / s
    cdf = torch.cumsum(weights, 0)
    cdf[-1] = 1.0
    return torch.searchsorted(cdf, u).clamp(max=s - 1)
