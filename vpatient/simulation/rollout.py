"""The simulator's rollout kernel: the model's RK4 solve of a whole cohort, without autograd, at the CPU's pace.

Virtual patients (cohorts, trials) are rolled out here; training and single-patient
forecasts keep :meth:`LatentDynamics.solve`, whose numbers this kernel reproduces to
float32 rounding (about 1e-6 in standardised units): the same grid (every dose change a
grid point), the same 3/8-rule RK4 steps, the same dense output (states and the slopes
leaving and arriving at each grid point, for cubic Hermite interpolation).

What makes it fast, each kept because it measured faster (``vpatient.benchmarks.scale_rollout``):

- tanh(a) = 2 sigmoid(2a) - 1, with the factors folded into the weights: torch's CPU tanh
  costs about 2.5 ns an element, its sigmoid 0.4 ns, and with 256 of them per patient and
  stage the tanh alone cost more than the 41,000-FLOP matrix products.
- The first layer's input is [z, dose, static]. The static covariates are constant per
  patient and the dose constant over a step, so their part of the first layer (plus its
  bias) is computed once per patient and once per step; each RK stage multiplies only
  the latent state (16 columns of the 16 + U + S).
- Every stage writes into buffers allocated once (``addmm`` with ``out=``, activations in
  place), and the stage arithmetic is a few fused ``add``s on the (rows, D) state.
- The cohort is cut into row blocks (:data:`BLOCK_ROWS`) that run all their steps while their
  activations stay near the core; the blocks run on ``threads`` Python threads (torch
  releases the GIL inside its kernels), each at one intra-op thread. On a shared machine this
  measured faster than torch's own two intra-op threads, whose OpenMP barriers stall when
  another process holds a core.
- The output layer is pre-divided by the time scale; the hazards' division by it is a shift
  of the clamped log hazard. Monthly outputs come from :meth:`DenseSolution.on_grid`.

``torch.compile`` was left out: after the sigmoid the elementwise work it could fuse is a
small share of the time (the products dominate), and its compilation (tens of seconds here)
would not pay back for the cohort sizes users simulate.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from vpatient.model.dosing import dose_at_times
from vpatient.model.dynamics import DenseSolution, LatentDynamics, Solver, solver_grid
from vpatient.model.latent_ode import LatentODE
from vpatient.train.settings import torch_threads

__all__ = ["BLOCK_ROWS", "RolloutKernel", "default_threads", "rollout"]

#: Patients per block (measured: 256 to 4096 rows on a 2 MB L2 per core, 2048 fastest by a few per cent):
#: large enough that the per-operation cost of torch's dispatch is a few per cent, small enough
#: that a block's hidden activations (2 x rows x 128 floats) stay near the core.
BLOCK_ROWS = 2048


def default_threads() -> int:
    """Threads the rollout uses unless told: torch's intra-op thread count.

    That is every core by default, and one where the environment asks for one
    (``OMP_NUM_THREADS=1``, as Dask's worker processes and vpatient's ensemble trainers set it),
    so the kernel never oversubscribes the processes that share a machine.
    """
    return max(1, torch.get_num_threads())


@dataclass
class _Layers:
    """The vector field's weights, rearranged for the kernel (float32, contiguous, transposed for ``addmm``)."""

    w_latent: torch.Tensor  # (L, H): the first layer's latent columns, times 2
    w_controls: torch.Tensor  # (U + S, H): its dose and static columns (split by the doses' width at the solve), times 2
    b_first: torch.Tensor  # (H,), times 2
    w_hidden: torch.Tensor  # (H, H): 4 W, as it reads a sigmoid and feeds one
    b_hidden: torch.Tensor  # (H,): 2 (b - W 1)
    w_out: torch.Tensor  # (H, L): 2 W / time scale
    b_out: torch.Tensor  # (L,): (b - W 1) / time scale
    w_hazard: torch.Tensor  # (L, E)
    b_hazard: torch.Tensor  # (E,)
    log_time_scale: float


class RolloutKernel:
    """The RK4 rollout of one network's dynamics (module docstring); ``solve`` mirrors :meth:`LatentDynamics.solve`."""

    def __init__(self, dynamics: LatentDynamics, block_rows: int = BLOCK_ROWS, threads: int | None = None):
        self.latent_dim, self.n_events = dynamics.latent_dim, dynamics.n_events
        self.block_rows = block_rows
        self.threads = default_threads() if threads is None else max(1, threads)
        first, hidden, out = (cast(nn.Linear, dynamics.field[i]) for i in (0, 2, 4))
        L, tau = self.latent_dim, dynamics.time_scale
        # tanh(a) = 2 sigmoid(2a) - 1, and torch's sigmoid is several times faster than its tanh on CPUs.
        # The factor 2 goes into the layer before (a power of two: exact), the "2 s - 1" into the layer
        # after: W (2 s - 1) + b = (2 W) s + (b - W 1), its bias folded in float64.
        w1, b1 = (t.detach().double() for t in (first.weight, first.bias))
        w2, b2 = (t.detach().double() for t in (hidden.weight, hidden.bias))
        w3, b3 = (t.detach().double() for t in (out.weight, out.bias))
        hazard = dynamics.log_hazard

        def f32(t: torch.Tensor) -> torch.Tensor:
            return t.float().contiguous()

        self.layers = _Layers(
            w_latent=f32(2 * w1[:, :L].t()),
            w_controls=f32(2 * w1[:, L:].t()),
            b_first=f32(2 * b1),
            w_hidden=f32(4 * w2.t()),
            b_hidden=f32(2 * (b2 - w2.sum(dim=1))),
            w_out=f32(2 * w3.t() / tau),
            b_out=f32((b3 - w3.sum(dim=1)) / tau),
            w_hazard=f32(hazard.weight.detach().t()) if hazard is not None else torch.zeros(L, 0),
            b_hazard=f32(hazard.bias.detach()) if hazard is not None else torch.zeros(0),
            log_time_scale=math.log(tau),
        )

    # -- the solve --------------------------------------------------------------

    @torch.no_grad()
    def solve(
        self, z0: torch.Tensor, static: torch.Tensor, dose_times: torch.Tensor, doses: torch.Tensor, t_max: float, step: float
    ) -> DenseSolution:
        """The dense RK4 solution from z0 (B, L) with statics (B, S) under the dose control, as ``LatentDynamics.solve``."""
        z0, static, doses = z0.float(), static.float(), doses.float()
        grid, _ = solver_grid(dose_times, t_max, step, torch.float32)
        b, g, d = z0.shape[0], len(grid), self.latent_dim + 2 * self.n_events
        leaving = dose_at_times(dose_times, doses, grid.expand(b, -1), side="right")  # (B, G, U)
        jumped = [i for i in range(1, g) if bool((leaving[:, i] != leaving[:, i - 1]).any())]
        states = torch.empty(g, b, d)
        slope_from = torch.empty(g, b, d)
        slope_to = torch.empty(len(jumped), b, d)  # arriving slopes where some dose jumps (elsewhere: leaving)
        steps = [float(grid[i + 1] - grid[i]) for i in range(g - 1)]
        rows = max(1, min(self.block_rows, -(-b // self.threads)))  # every thread gets a block, even in a small cohort
        blocks = [(r, min(r + rows, b)) for r in range(0, b, rows)]

        def run(block: tuple[int, int]) -> None:
            r0, r1 = block
            _Block(self.layers, self.latent_dim, self.n_events, doses.shape[-1], r1 - r0).integrate(
                z0[r0:r1],
                static[r0:r1],
                leaving[r0:r1],
                steps,
                jumped,
                states[:, r0:r1],
                slope_from[:, r0:r1],
                slope_to[:, r0:r1],
            )

        if self.threads == 1 or len(blocks) == 1:
            with torch_threads(1):
                for block in blocks:
                    run(block)
        else:
            with torch_threads(1), ThreadPoolExecutor(self.threads) as pool:
                list(pool.map(run, blocks))
        arriving = slope_from
        if jumped:
            arriving = slope_from.clone()
            arriving[jumped] = slope_to
        return DenseSolution(grid, states, slope_from, arriving, self.latent_dim, self.n_events)


class _Block:
    """One row block's buffers and its integration over every step (allocated once, reused by every stage)."""

    def __init__(self, layers: _Layers, latent_dim: int, n_events: int, n_doses: int, rows: int):
        self.w = layers
        self.w_dose, self.w_static = layers.w_controls[:n_doses], layers.w_controls[n_doses:]
        self.L, self.E = latent_dim, n_events
        hidden = layers.w_hidden.shape[0]
        self.base = torch.empty(rows, hidden)  # first-layer bias + static part
        self.first = torch.empty(rows, hidden)  # ... + this step's dose part
        self.a1 = torch.empty(rows, hidden)
        self.a2 = torch.empty(rows, hidden)
        self.total = torch.empty(rows, 1)
        self.y = torch.empty(rows, latent_dim + 2 * n_events)
        self.stage = torch.empty_like(self.y)
        self.mix = torch.empty_like(self.y)
        self.k = [torch.empty_like(self.y) for _ in range(4)]

    def field(self, y: torch.Tensor, out: torch.Tensor) -> None:
        """d/dt of the augmented state ``y`` at this step's dose, into ``out`` (LatentDynamics.augmented)."""
        w, L, E = self.w, self.L, self.E
        z = y[:, :L]
        torch.addmm(self.first, z, w.w_latent, out=self.a1).sigmoid_()
        torch.addmm(w.b_hidden, self.a1, w.w_hidden, out=self.a2).sigmoid_()
        torch.addmm(w.b_out, self.a2, w.w_out, out=out[:, :L])
        if E:
            h = out[:, L : L + E]
            torch.addmm(w.b_hazard, z, w.w_hazard, out=h)
            h.clamp_(-12.0, 4.0).sub_(w.log_time_scale).exp_()  # exp(clamped log hazard) / time scale
            torch.sum(y[:, L : L + E], dim=1, keepdim=True, out=self.total)
            torch.mul(h, self.total.neg_().exp_(), out=out[:, L + E :])

    def set_dose(self, dose: torch.Tensor) -> None:
        if dose.shape[1]:
            torch.addmm(self.base, dose, self.w_dose, out=self.first)
        else:
            self.first.copy_(self.base)

    def integrate(
        self,
        z0: torch.Tensor,
        static: torch.Tensor,
        leaving: torch.Tensor,
        steps: list[float],
        jumped: list[int],
        states: torch.Tensor,
        slope_from: torch.Tensor,
        slope_to: torch.Tensor,
    ) -> None:
        """RK4 (3/8 rule) over ``steps`` from z0; writes this block's columns of the solution arrays."""
        w, L = self.w, self.L
        torch.addmm(w.b_first, static, self.w_static, out=self.base)
        y, stage, mix = self.y, self.stage, self.mix
        k1, k2, k3, k4 = self.k
        y.zero_()
        y[:, :L] = z0
        states[0] = y
        third = 1.0 / 3.0
        jump_slot = {i: j for j, i in enumerate(jumped)}
        for i, dt in enumerate(steps):
            self.set_dose(leaving[:, i])
            self.field(y, k1)
            slope_from[i] = k1
            self.field(torch.add(y, k1, alpha=dt * third, out=stage), k2)
            self.field(torch.add(y, torch.sub(k2, k1, alpha=third, out=mix), alpha=dt, out=stage), k3)
            torch.sub(k1, k2, out=mix).add_(k3)
            self.field(torch.add(y, mix, alpha=dt, out=stage), k4)
            torch.add(k2, k3, out=mix).mul_(3.0).add_(k1).add_(k4)
            y.add_(mix, alpha=dt * 0.125)
            states[i + 1] = y
            if i + 1 in jump_slot:  # the slope arriving at a dose change, under the dose before it
                self.field(y, k1)
                slope_to[jump_slot[i + 1]] = k1
        self.set_dose(leaving[:, -1])
        self.field(y, k1)
        slope_from[-1] = k1


def rollout(
    network: LatentODE,
    z0: torch.Tensor,
    static: torch.Tensor,
    dose_times: torch.Tensor,
    doses: torch.Tensor,
    until: float,
    threads: int | None = None,
) -> DenseSolution:
    """Virtual patients' dense solution, as :meth:`LatentODE.solve` gives it, by the kernel when the model solves with RK4.

    A model that solves with an adaptive solver is rolled out by that solver, as before.
    """
    if network.settings.solver != Solver.RK4:
        return network.solve(z0, static, dose_times, doses, until)
    if not network.settings.treatment_input:
        doses = torch.zeros_like(doses)
    kernel = RolloutKernel(network.dynamics, threads=threads)
    return kernel.solve(
        z0[:, : network.settings.latent_dim],
        static,
        dose_times,
        doses,
        max(until, 1e-3 * network.time_scale),
        network.solver_step,
    )
