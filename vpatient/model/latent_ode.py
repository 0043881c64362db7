"""The latent ODE network (the world model's torch part) and its evidence lower bound (ELBO).

Generative model, per patient: z0 ~ N(0, I); z(t) solves dz/dt = f(z, u(t), static) / tau
from t=0 under the treatments given (tau: the time scale, below); every observed cell x at time t is drawn from its
decoder given z(t) (Gaussian, Bernoulli, cumulative logit); each event kind k has
hazard h_k(z(t)) and is censored by the end of follow-up.

Inference: q(z0 | data up to a cut-off s) is the product of the prior and one Gaussian
expert per (visit <= s, test), plus static and history experts.

ELBO = E_q[ log p(every observed cell, before and after s | z0) + log p(events | z0) ]
       - KL(q(z0) || N(0, I)).
Training draws a random cut-off s per patient each epoch, so reconstructing the cells
after s is forecasting them.

Time scale: callers pass times in the data's own unit (days, months, years). The network
holds ``time_scale`` tau, a typical gap between visits in that unit (fitted from the
training data), and every place where time turns into change divides by it: the vector
field, the hazards, the individual slopes, the encoders' time and cumulative-dose inputs,
and the solver step (``ModelSettings.step`` times tau). The same cohort recorded in days
or in years therefore trains into the same model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from vpatient.model.batch import FeatureLayout, PatientBatch
from vpatient.model.decoders import ObservationDecoder
from vpatient.model.dynamics import DenseSolution, LatentDynamics, Solver
from vpatient.model.experts import VisitExperts
from vpatient.model.fusion import product_of_experts

__all__ = ["LatentODE", "ModelSettings"]


@dataclass(frozen=True)
class ModelSettings:
    """Architecture and solver settings, saved with a checkpoint."""

    # Defaults chosen on PBC's forecasting folds 0 and 1 (single models, MAE in training sds;
    # CHANGELOG, issue 11): 16 dimensions, 128 hidden units and a trend per lab gave 0.519 and
    # 0.511 where 8, 64 and no trend gave 0.538 and 0.531; each change alone gained about half.
    latent_dim: int = 16  # dimensions of the disease state that evolve
    hidden: int = 128
    baseline_offsets: bool = True  # add a constant, patient-specific offset per continuous lab
    individual_slopes: bool = True  # and a linear trend per lab: a mixed model's random slope
    # False blinds the model to treatment (encoders and dynamics see zero doses): the
    # "same architecture without the treatment input" peer of the counterfactual benchmark.
    treatment_input: bool = True
    solver: Solver = Solver.RK4
    # Solver step as a fraction of the time scale (the step in the data's unit is step * time_scale):
    # half a typical visit gap. Measured on PBC fold 0: the same forecast MAE as a quarter
    # (0.518 vs 0.519) in 0.7x the training time; the network learns the RK4 map it is given.
    step: float = 0.5

    def __post_init__(self) -> None:
        # a checkpoint's JSON gives the plain string; an unknown one is refused here, not at the first solve
        object.__setattr__(self, "solver", Solver(self.solver))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"solver": self.solver.value}


class LatentODE(nn.Module):
    """Encoders, product of experts, latent ODE with hazards, and decoders.

    The torch network of one trained model (one ensemble member); users meet it through
    :class:`vpatient.virtual_patient.VirtualPatientModel`. ``time_scale`` (> 0, in the data's
    time unit; module docstring) is fitted from the training data and saved with the
    checkpoint; 1.0 is the unit itself, as every model before it had.
    """

    def __init__(self, layout: FeatureLayout, settings: ModelSettings | None = None, time_scale: float = 1.0):
        super().__init__()
        if not (math.isfinite(time_scale) and time_scale > 0):
            raise ValueError(f"time_scale = {time_scale!r}: must be a positive time in the data's unit")
        self.layout = layout
        self.settings = settings or ModelSettings()
        self.time_scale = float(time_scale)
        s = self.settings
        # The posterior covers z0 and, when enabled, one constant offset per continuous lab:
        # the patient's own baseline level, as a mixed model's random intercept.
        n_cont = len(layout.continuous)
        self.n_offsets = (n_cont if s.baseline_offsets else 0) + (n_cont if s.individual_slopes else 0)
        self.posterior_dim = s.latent_dim + self.n_offsets
        tau = self.time_scale
        self.experts = VisitExperts(layout, self.posterior_dim, s.hidden, tau)
        self.dynamics = LatentDynamics(
            s.latent_dim, len(layout.treatments), len(layout.static), len(layout.events), s.hidden, tau
        )
        self.decoder = ObservationDecoder(layout, s.latent_dim, s.hidden, s.baseline_offsets, s.individual_slopes, tau)

    @property
    def solver_step(self) -> float:
        """The solver step the model trains and predicts with, in the data's time unit."""
        return self.settings.step * self.time_scale

    # -- inference -------------------------------------------------------------

    def posterior(self, batch: PatientBatch, cutoff: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance (B, P) of q(z0, offsets | data up to cutoff (B,)); P = posterior_dim."""
        means, precisions, present = self.experts(self._controlled(batch), cutoff)
        return product_of_experts(means, precisions, present)

    def _controlled(self, batch: PatientBatch) -> PatientBatch:
        """The batch as the model sees it: without doses when it is blind to treatment."""
        if self.settings.treatment_input:
            return batch
        return batch.with_doses(batch.dose_times, torch.zeros_like(batch.doses))

    # -- generation ------------------------------------------------------------

    def offsets(self, draws: torch.Tensor) -> torch.Tensor:
        """The per-lab intercepts and slopes of posterior draws (B, P) -> (B, n_offsets)."""
        return draws[:, self.settings.latent_dim :]

    def rollout(self, z0: torch.Tensor, batch: PatientBatch, until: float | None = None) -> DenseSolution:
        """Solve from posterior draws (B, P) under the batch's treatments, to ``until`` or the batch's last time."""
        if until is None:
            until = float(torch.cat([batch.times.reshape(-1), batch.event_time.reshape(-1), batch.followup_end]).max())
        return self.solve(z0, batch.static * batch.static_mask, batch.dose_times, batch.doses, until)

    def solve(
        self,
        z0: torch.Tensor,
        static: torch.Tensor,
        dose_times: torch.Tensor,
        doses: torch.Tensor,
        until: float,
        step: float | None = None,
    ) -> DenseSolution:
        """Solve from draws (B, P) with standardised statics (B, S) (0 where missing) and a dose control.

        ``until`` and ``step`` are in the data's time unit; ``step`` overrides the model's own
        :attr:`solver_step` (coarser is faster, less exact).
        """
        if not self.settings.treatment_input:
            doses = torch.zeros_like(doses)
        return self.dynamics.solve(
            z0[:, : self.settings.latent_dim],
            static,
            dose_times,
            doses,
            max(until, 1e-3 * self.time_scale),
            solver=self.settings.solver,
            step=step or self.solver_step,
        )

    def event_log_likelihood(
        self, solution: DenseSolution, event_time: torch.Tensor, event_observed: torch.Tensor
    ) -> torch.Tensor:
        """Cause-specific log-likelihood of events with censoring, per patient (B,)."""
        n_events = len(self.layout.events)
        if n_events == 0:
            return event_time.new_zeros(event_time.shape[0])
        state = solution.at(event_time)  # (B, E, D): kind k's row is evaluated at T_k
        kinds = torch.arange(n_events)
        latent = self.settings.latent_dim
        cumhaz = state[:, kinds, latent + kinds]  # Lambda_k(T_k), (B, E)
        log_h = torch.log(self.dynamics.hazards(state[..., :latent])[:, kinds, kinds])
        return (event_observed * log_h - cumhaz).sum(dim=-1)

    # -- objective -------------------------------------------------------------

    def elbo(
        self,
        batch: PatientBatch,
        cutoff: torch.Tensor,
        generator: torch.Generator | None = None,
        eps: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-patient means of the ELBO's terms; ``loss`` is what training minimises.

        ``eps`` (1, B, P): the posterior's standard normal draws, when made by the caller
        (data-parallel training draws them for the global batch); else drawn from ``generator``.
        """
        mean, var = self.posterior(batch, cutoff)
        terms = self.elbo_terms(batch, mean, var, generator, eps=eps)
        return {name: value.mean() for name, value in terms.items()}

    def elbo_terms(
        self,
        batch: PatientBatch,
        mean: torch.Tensor,
        var: torch.Tensor,
        generator: torch.Generator | None = None,
        n_draws: int = 1,
        eps: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The ELBO of every patient (B,) under q(z0) = N(mean, var), by reparameterised draws (``eps``, or drawn)."""
        b = len(batch)
        if eps is None:
            eps = torch.randn((n_draws, *mean.shape), generator=generator)
        z0 = (mean + var.sqrt() * eps).reshape(n_draws * b, -1)
        rep = batch if n_draws == 1 else batch.select(torch.arange(b).repeat(n_draws))
        solution = self.rollout(z0, rep)
        z_visits = solution.z(rep.times)  # (n*B, T, L)
        visit = rep.visit_mask.unsqueeze(-1)
        values = {
            "continuous": rep.continuous,
            "continuous_mask": rep.continuous_mask * visit,
            "binary": rep.binary,
            "binary_mask": rep.binary_mask * visit,
            "ordinal": rep.ordinal,
            "ordinal_mask": rep.ordinal_mask * visit,
            "imaging": rep.imaging,
            "imaging_mask": rep.imaging_mask * visit,
        }
        obs_ll = self.decoder.log_likelihood(z_visits, values, self.offsets(z0), rep.times).reshape(n_draws, b).mean(dim=0)
        event_ll = self.event_log_likelihood(solution, rep.event_time, rep.event_observed).reshape(n_draws, b).mean(dim=0)
        kl = 0.5 * (var + mean**2 - 1.0 - torch.log(var)).sum(dim=-1)
        elbo = obs_ll + event_ll - kl
        return {"loss": -elbo, "observations": obs_ll, "events": event_ll, "kl": kl}

    def refine_posterior(
        self,
        batch: PatientBatch,
        mean: torch.Tensor,
        var: torch.Tensor,
        steps: int = 60,
        learning_rate: float = 0.05,
        n_draws: int = 4,
        generator: torch.Generator | None = None,
        tolerance: float = 0.05,
        check_every: int = 5,
        check_draws: int = 16,
        members: Sequence[LatentODE] = (),
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Semi-amortised inference: improve each patient's q(z0) by maximising its own ELBO.

        Starts from the product-of-experts posterior and takes up to ``steps`` Adam steps on
        the variational mean and log-variance of every patient at once, with the model's
        weights fixed. ``batch`` must hold only what is known (a history cut at the
        forecast time). Closes the amortisation gap of the encoders.

        Every ``check_every`` steps the ELBO is evaluated with ``check_draws`` standard
        normal draws fixed for the whole refinement, so its change measures progress rather
        than Monte Carlo noise; refinement stops when that ELBO (summed over the batch) gained
        less since the last check than ``tolerance`` times its whole gain so far, a test
        that does not depend on how many observations a patient has. (The steps
        themselves use fresh draws: optimising fixed draws overfits them and, measured on
        PBC, worsens the true ELBO.) Returns the mean, the variance and the steps taken.

        With ``members`` (networks of this one's architecture: an ensemble), ``mean`` and
        ``var`` are (K, B, P), one posterior per member, refined together: the members'
        ELBOs are one vectorised call over their stacked weights (``torch.func.vmap``), with
        the same standard normal draws for every member, and the test of convergence is on
        their sum. A what-if then pays for one member's Python overhead instead of K.
        """
        m = mean.detach().clone().requires_grad_(True)
        log_v = torch.log(var.detach()).clone().requires_grad_(True)
        optimiser = torch.optim.Adam([m, log_v], lr=learning_rate)
        checker = torch.Generator().manual_seed(int(torch.randint(2**62, (), generator=generator)))
        check_state = checker.get_state()

        total_loss = self._member_loss(batch, members) if members else self._loss(batch)

        def fixed_draw_loss() -> float:
            checker.set_state(check_state)
            with torch.no_grad():
                return float(total_loss(m, torch.exp(log_v), checker, check_draws))

        frozen = [p.requires_grad for p in self.parameters()]
        for p in self.parameters():
            p.requires_grad_(False)
        first = last = fixed_draw_loss() if steps > check_every else math.inf
        taken = 0
        try:
            with torch.enable_grad():
                while taken < steps:
                    loss = total_loss(m, torch.exp(log_v), generator, n_draws)
                    optimiser.zero_grad()
                    loss.backward()
                    optimiser.step()
                    taken += 1
                    if taken % check_every == 0 and taken < steps:
                        now = fixed_draw_loss()
                        if last - now < tolerance * (first - now):
                            break
                        last = now
        finally:
            for p, flag in zip(self.parameters(), frozen, strict=True):
                p.requires_grad_(flag)
        return m.detach(), torch.exp(log_v.detach()), taken

    def _loss(self, batch: PatientBatch) -> _Loss:
        """The batch's summed negative ELBO as a function of q(z0)'s mean and variance."""

        def loss(mean: torch.Tensor, var: torch.Tensor, generator: torch.Generator | None, n_draws: int) -> torch.Tensor:
            return self.elbo_terms(batch, mean, var, generator, n_draws)["loss"].sum()

        return loss

    def _member_loss(self, batch: PatientBatch, members: Sequence[LatentODE]) -> _Loss:
        """The summed negative ELBO of K members' posteriors (K, B, P), evaluated in one vmap over their weights."""
        module = _NegativeELBO(self, batch)
        weights, buffers = torch.func.stack_module_state(list(members))
        weights = {f"network.{name}": w.detach() for name, w in weights.items()}  # the weights stay fixed
        buffers = {f"network.{name}": b for name, b in buffers.items()}

        def one(
            w: dict[str, torch.Tensor], b: dict[str, torch.Tensor], mean: torch.Tensor, var: torch.Tensor, *rest: Any
        ) -> torch.Tensor:
            out: torch.Tensor = torch.func.functional_call(module, (w, b), (mean, var, *rest))
            return out

        def loss(mean: torch.Tensor, var: torch.Tensor, generator: torch.Generator | None, n_draws: int) -> torch.Tensor:
            per_member = torch.vmap(one, in_dims=(0, 0, 0, 0, None, None), randomness="same")(
                weights, buffers, mean, var, generator, n_draws
            )
            return per_member.sum()

        return loss


_Loss = Callable[[torch.Tensor, torch.Tensor, torch.Generator | None, int], torch.Tensor]


class _NegativeELBO(nn.Module):
    """A network's summed negative ELBO of one batch as a module's forward, so torch.func can call it with other weights."""

    def __init__(self, network: LatentODE, batch: PatientBatch):
        super().__init__()
        self.network = network
        self.batch = batch

    def forward(self, mean: torch.Tensor, var: torch.Tensor, generator: torch.Generator | None, n_draws: int) -> torch.Tensor:
        return self.network.elbo_terms(self.batch, mean, var, generator, n_draws)["loss"].sum()
