"""Latent dynamics under treatment: dz/dt = f(z, u(t), static) / time_scale, solved with torchdiffeq.

``time_scale`` is a typical time between visits in the data's own unit (days, months,
years): the network's outputs are rates per time scale, so the same cohort recorded in
days or in years trains into the same model (hazards are per time scale too).

The state that is integrated is augmented with, per event kind k, the cumulative hazard
Lambda_k(t) = int h_k(z) and the cumulative incidence of k as the first event,
C_k(t) = int h_k(z) exp(-sum_j Lambda_j): survival curves and competing risks come from
the same solve as the labs.

Solvers: ``rk4`` (fixed step whose grid includes every dose change, so no step straddles
a jump; fast and deterministic, the default) and ``dopri5`` (adaptive, told where the
dose control jumps via ``jump_t`` so it restarts there). Every patient starts at t=0,
so a batch shares one solver grid; states at each patient's own times come from cubic
Hermite interpolation on that grid, whatever the number of distinct visit times.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import cast

import torch
from torch import nn
from torchdiffeq import odeint

from vpatient.model.dosing import dose_at_times

__all__ = ["DenseSolution", "LatentDynamics", "Solver", "solver_grid"]


class Solver(StrEnum):
    """How the latent state is integrated (module docstring)."""

    RK4 = "rk4"
    DOPRI5 = "dopri5"


class LatentDynamics(nn.Module):
    """The vector field, the hazard heads, and the solve of the augmented state."""

    def __init__(self, latent_dim: int, n_treatments: int, n_static: int, n_events: int, hidden: int, time_scale: float = 1.0):
        super().__init__()
        self.latent_dim = latent_dim
        self.time_scale = time_scale  # in the data's unit; outputs are rates per time scale
        self.n_events = n_events
        self.field = nn.Sequential(
            nn.Linear(latent_dim + n_treatments + n_static, hidden),
            nn.Tanh(),
            nn.Linear(hidden, hidden),
            nn.Tanh(),
            nn.Linear(hidden, latent_dim),
        )
        # Start near "no change": small output weights keep early training stable.
        out = cast(nn.Linear, self.field[-1])
        nn.init.normal_(out.weight, std=1e-3)
        nn.init.zeros_(out.bias)
        self.log_hazard = nn.Linear(latent_dim, n_events) if n_events else None
        if self.log_hazard is not None:
            nn.init.normal_(self.log_hazard.weight, std=0.05)
            nn.init.constant_(self.log_hazard.bias, -3.0)  # about 5% per time scale to start

    def hazards(self, z: torch.Tensor) -> torch.Tensor:
        """Hazard of each event kind per unit of the data's time, given the latent state, (..., L) -> (..., E)."""
        if self.log_hazard is None:
            return z.new_zeros(*z.shape[:-1], 0)
        log_h: torch.Tensor = self.log_hazard(z)
        return torch.exp(log_h.clamp(-12.0, 4.0)) / self.time_scale

    def velocity(self, z: torch.Tensor, dose: torch.Tensor, static: torch.Tensor) -> torch.Tensor:
        """dz/dt per unit of the data's time."""
        dz: torch.Tensor = self.field(torch.cat([z, dose, static], dim=-1))
        return dz / self.time_scale

    def augmented(self, y: torch.Tensor, dose: torch.Tensor, static: torch.Tensor) -> torch.Tensor:
        """d/dt of the augmented state [z, cumulative hazards, cumulative incidences] at a given dose."""
        z = y[..., : self.latent_dim]
        cumhaz = y[..., self.latent_dim : self.latent_dim + self.n_events]
        h = self.hazards(z)
        incidence = h * torch.exp(-cumhaz.sum(dim=-1, keepdim=True))
        return torch.cat([self.velocity(z, dose, static), h, incidence], dim=-1)

    def rhs(
        self, static: torch.Tensor, dose_times: torch.Tensor, doses: torch.Tensor, side: str = "right"
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The augmented vector field as a function of (t, y), for torchdiffeq.

        ``side="right"`` uses the dose in force from t on; ``"left"`` the dose just before t
        (the two differ only at treatment changes).
        """

        def field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            if y.dim() == 2:  # a solver step: one time t for all patients, y (B, D)
                at = t.reshape(1, 1).expand(y.shape[0], 1)
                dose = dose_at_times(dose_times, doses, at, side=side).squeeze(1)  # (B, U)
                stat = static
            else:  # every grid time at once: t (G,), y (G, B, D)
                at = t.reshape(1, -1).expand(y.shape[1], -1)
                dose = dose_at_times(dose_times, doses, at, side=side).transpose(0, 1)  # (G, B, U)
                stat = static.unsqueeze(0).expand(y.shape[0], -1, -1)
            return self.augmented(y, dose, stat)

        return field

    def solve(
        self,
        z0: torch.Tensor,
        static: torch.Tensor,
        dose_times: torch.Tensor,
        doses: torch.Tensor,
        t_max: float,
        solver: Solver = Solver.RK4,
        step: float = 1.0 / 12,
        rtol: float = 1e-6,
        atol: float = 1e-7,
    ) -> DenseSolution:
        """Integrate the augmented state from t=0 to ``t_max`` for every patient of the batch.

        z0 (B, L), static (B, S), dose_times (B, K), doses (B, K, U). The result is dense:
        :meth:`DenseSolution.at` gives the state at any per-patient times.
        """
        solver = Solver(solver)  # a misspelt name fails here instead of silently taking the adaptive branch
        y0 = torch.cat([z0, z0.new_zeros(z0.shape[0], 2 * self.n_events)], dim=-1)
        grid, jumps = solver_grid(dose_times, t_max, step, z0.dtype)
        field = self.rhs(static, dose_times, doses)
        if solver == Solver.RK4:
            return self._rk4(y0, grid, static, dose_times, doses)
        options = {"jump_t": jumps} if len(jumps) else {}
        states = odeint(field, y0, grid, method=Solver.DOPRI5, rtol=rtol, atol=atol, options=options)
        slope_from = self.rhs(static, dose_times, doses, side="right")(grid, states)
        slope_to = self.rhs(static, dose_times, doses, side="left")(grid, states)
        return DenseSolution(grid, states, slope_from, slope_to, self.latent_dim, self.n_events)

    def _rk4(
        self, y0: torch.Tensor, grid: torch.Tensor, static: torch.Tensor, dose_times: torch.Tensor, doses: torch.Tensor
    ) -> DenseSolution:
        """Fixed-step RK4 (the 3/8 rule, as torchdiffeq's ``rk4``) on a grid that holds every dose change.

        The dose is constant on each step, so it is looked up once per step. Each step's
        first stage is the slope leaving its start point, which the Hermite interpolation
        needs anyway: the dense output costs one extra evaluation, plus one per grid
        point where some dose jumps (the slope arriving there differs from the one leaving).
        """
        b = y0.shape[0]
        leaving = dose_at_times(dose_times, doses, grid.expand(b, -1), side="right").transpose(0, 1)  # (G, B, U)
        third = 1.0 / 3.0
        y, states, slopes = y0, [y0], []
        for i in range(len(grid) - 1):
            dt, u = grid[i + 1] - grid[i], leaving[i]
            k1 = self.augmented(y, u, static)
            k2 = self.augmented(y + dt * k1 * third, u, static)
            k3 = self.augmented(y + dt * (k2 - k1 * third), u, static)
            k4 = self.augmented(y + dt * (k1 - k2 + k3), u, static)
            y = y + (k1 + 3 * (k2 + k3) + k4) * dt * 0.125
            states.append(y)
            slopes.append(k1)
        slopes.append(self.augmented(y, leaving[-1], static))
        states_t, slope_from = torch.stack(states), torch.stack(slopes)  # (G, B, D)
        arriving = [slope_from[0]]
        for i in range(1, len(grid)):
            jumped = bool((leaving[i] != leaving[i - 1]).any())
            arriving.append(self.augmented(states_t[i], leaving[i - 1], static) if jumped else slope_from[i])
        return DenseSolution(grid, states_t, slope_from, torch.stack(arriving), self.latent_dim, self.n_events)


def solver_grid(dose_times: torch.Tensor, t_max: float, step: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The solver grid from 0 to ``t_max`` (steps of ``step``, the last one up to ``t_max``) and the dose changes inside it.

    Returns (grid, jumps): the grid holds every dose change, so no step and no interpolation
    interval straddles a jump; ``jumps`` are the changes alone (for adaptive solvers' ``jump_t``).
    """
    n_steps = max(1, math.ceil(t_max / step - 1e-9))
    regular = torch.arange(n_steps + 1, dtype=dtype) * step
    jumps = dose_times[torch.isfinite(dose_times) & (dose_times > 0) & (dose_times < regular[-1])].unique()
    return torch.cat([regular, jumps.to(dtype)]).unique(sorted=True), jumps


@dataclass
class DenseSolution:
    """States on the solver grid, with cubic Hermite interpolation at any per-patient time.

    grid (G,), states (G, B, D) and the derivatives leaving (``slope_from``) and
    arriving at (``slope_to``) each grid point, which differ only where the dose jumps.
    Interpolation error is O(step^4), far below observation noise at monthly steps.
    """

    grid: torch.Tensor
    states: torch.Tensor
    slope_from: torch.Tensor
    slope_to: torch.Tensor
    latent_dim: int
    n_events: int

    def at(self, times: torch.Tensor) -> torch.Tensor:
        """Augmented state at per-patient times (B, T) -> (B, T, D); times beyond the grid clamp."""
        grid = self.grid
        t = times.clamp(min=0.0, max=float(grid[-1]))
        i = (torch.searchsorted(grid, t.contiguous(), right=True) - 1).clamp(0, len(grid) - 2)  # (B, T)
        rows = torch.arange(times.shape[0]).unsqueeze(-1).expand_as(i)
        t0, t1 = grid[i], grid[i + 1]
        h = (t1 - t0).unsqueeze(-1)
        s = ((t - t0) / (t1 - t0)).unsqueeze(-1)
        y0, y1 = self.states[i, rows], self.states[i + 1, rows]
        f0, f1 = self.slope_from[i, rows], self.slope_to[i + 1, rows]
        s2, s3 = s * s, s * s * s
        return (2 * s3 - 3 * s2 + 1) * y0 + (s3 - 2 * s2 + s) * h * f0 + (-2 * s3 + 3 * s2) * y1 + (s3 - s2) * h * f1

    def on_grid(self, times: torch.Tensor) -> torch.Tensor:
        """Augmented state at times (T,) shared by every patient -> (B, T, D): :meth:`at` of ``times.expand(B, -1)``.

        The same interpolation to float rounding (the weights are per time, so each output time
        is four scaled adds of whole grid rows (B, D) that stay in cache), many times faster
        than gathering per patient. The result is a (T, B, D) array seen as (B, T, D).
        """
        grid = self.grid
        t = times.clamp(min=0.0, max=float(grid[-1]))
        i = (torch.searchsorted(grid, t.contiguous(), right=True) - 1).clamp(0, len(grid) - 2)  # (T,)
        t0, t1 = grid[i], grid[i + 1]
        h, s = t1 - t0, (t - t0) / (t1 - t0)
        s2, s3 = s * s, s * s * s
        weights = torch.stack([2 * s3 - 3 * s2 + 1, (s3 - 2 * s2 + s) * h, -2 * s3 + 3 * s2, (s3 - s2) * h], dim=1).tolist()
        out = self.states.new_empty(len(times), *self.states.shape[1:])
        for j, (g, (w0, w1, w2, w3)) in enumerate(zip(i.tolist(), weights, strict=True)):
            row = torch.mul(self.states[g], w0, out=out[j])
            row.add_(self.slope_from[g], alpha=w1).add_(self.states[g + 1], alpha=w2).add_(self.slope_to[g + 1], alpha=w3)
        return out.transpose(0, 1)

    def z(self, times: torch.Tensor) -> torch.Tensor:
        return self.at(times)[..., : self.latent_dim]

    def cumulative_hazard(self, times: torch.Tensor) -> torch.Tensor:
        return self.at(times)[..., self.latent_dim : self.latent_dim + self.n_events]

    def incidence(self, times: torch.Tensor) -> torch.Tensor:
        return self.at(times)[..., self.latent_dim + self.n_events :]
